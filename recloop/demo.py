"""The whole loop on one machine, with simulated users: ``recloop demo`` / ``make demo``.

1. A simulated world (``recloop.sources.simulator``; with ``--movielens PATH`` one whose users,
   items and tastes are that MovieLens data set's) with two weeks of logged traffic that ends
   now, landed in a fresh home.
2. A real Airflow for that home (``recloop.airflow_local``): ``recloop_features`` and
   ``recloop_training`` run through its scheduler; the first champion is registered in MLflow.
3. The BentoML service (``recloop serve``) on that champion, exploring (epsilon-greedy by
   default, ``DemoConfig.policy``).
4. Simulated hours: simulated users ask ``/recommend`` and click by the world's true click
   model, sending ``/feedback``. Halfway, every user's taste shifts towards a trend. After
   each hour, ``recloop_features`` and ``recloop_metrics`` run for it; when the metrics DAG
   detects the degradation it updates the asset ``retrain_requested``, Airflow's scheduler
   starts ``recloop_training``, the gate promotes a new champion, and the service swaps to it.
5. Every registered version replayed on the same requests (``recloop.counterfactual``): the
   true CTR its greedy slates would have had, so the new champion's recovery is measured
   against the old champion on the very traffic the old one would have kept serving.
6. A summary per hour (estimated CTR with its interval, the true CTR of what was served,
   each version's replayed true CTR, alarms, the version serving) printed and written to
   ``<home>/demo/summary.json``.

Time is simulated: each hour lasts as long as its requests take, and the events carry the
wall-clock times at which they really happened, so every window the DAGs read is real.
The world's clock (taste, hour of day) starts at a fixed hour of day and advances one simulated
hour per demo hour, so a run's CTR curve does not depend on when it ran.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recloop.counterfactual import LiveRequest
from recloop.settings import Settings
from serving.launch import free_port, wait_ready

DAGS = ["recloop_features", "recloop_training", "recloop_metrics"]
HISTORY_MARGIN_HOURS = 4  # ratings follow clicks by up to 3 hours in the simulator
SLATE = 10  # items the simulated users ask for, and each version's replayed slate


@dataclass(frozen=True)
class DemoConfig:
    # Simulated hours of live traffic: after the shift at hour 4 and the retraining it
    # triggers, the hourly off-policy evidence needs a few hours to promote a candidate.
    hours: int = 12
    shift_hour: int = 4  # the taste shift happens at the start of this hour
    requests_per_hour: int = 1500
    users: int = 500
    items: int = 300
    history_days: int = 14
    seed: int = 42
    # The candidates each training run trains (cheap ones, for time). item_ctr learns from
    # the logged impressions; the replay shows what each would have earned, promoted or not.
    models: tuple[str, ...] = ("popularity", "ease", "item_ctr")
    # The gate's protocol (promotion.protocol: "P1", or "recent" to judge on the newest
    # interactions) and, when set, popularity as a trending model with this half life in
    # hours. Measured both ways (see the README): no clear gain over the defaults yet.
    gate_protocol: str = "P1"
    # promotion.criterion: "offline" (NDCG@10 on gate_protocol) or "off_policy" (the doubly
    # robust CTR on the impressions the service logged picks and judges the challenger).
    gate_criterion: str = "offline"
    trending_half_life_hours: float | None = None
    # The service's exploration: serving.policy ("epsilon_greedy", or "plackett_luce", whose
    # randomised rankings show any candidate in any slot) and its parameter.
    policy: str = "epsilon_greedy"
    epsilon: float = 0.2
    temperature: float = 0.2
    extra_hours: int = 4  # hours added, at most, until a new champion serves a whole hour
    shift_weight: float = 0.9  # how far every taste moves towards the trend at the shift
    # The world's hour of day when the live hours start. Preferences depend on the hour of
    # day, so a clock tied to the wall clock would make each run's CTR curve depend on when
    # it ran; 20:00 is the history's busiest hour.
    start_hour_of_day: int = 20
    concurrency: int = 8  # simultaneous simulated users
    # A MovieLens folder: the world's users, items and tastes come from it (users and items
    # above are then unused; see recloop.sources.simulator.movielens_world).
    movielens: str | None = None


def new_champion(first: str, final: str | None, served: list[dict[str, int] | None]) -> str | None:
    """The version that replaced the first champion in front of users: the alias's last
    version (``final``) when the service served it in some hour, else the replacing version
    that served the most requests in the last hour that served one; None if none served.

    A version promoted during the demo's last hour (that hour's runs go on while its users
    come, and extra_hours may be spent) has no hour left to be served in: the loop closed
    with the one before it, which is what the replay and the recovery judge."""
    if final is not None and final != first and any(final in (s or {}) for s in served):
        return final
    new = None
    for hour in served:
        replacing = {v: n for v, n in (hour or {}).items() if v != first}
        if replacing:
            new = max(replacing, key=replacing.__getitem__)
    return new


@dataclass
class HourRecord:
    hour: int
    simulated_start: str
    start: str
    end: str
    requests: int
    impressions: int
    clicks: int
    true_ctr: float  # expected CTR of the slates served, from the world's click model
    ctr: float | None = None  # estimated by recloop_metrics
    ctr_low: float | None = None
    ctr_high: float | None = None
    alarms: list[str] | None = None
    retrain_requested: bool = False
    promoted: str | None = None  # a version recloop_metrics promoted on online evidence
    served_versions: dict[str, int] | None = None
    champion_version: str | None = None
    seconds: dict[str, float] | None = None
    # version -> true CTR of its greedy top 10 on this hour's requests (recloop.counterfactual);
    # only versions registered before the hour began
    replayed_true_ctr: dict[str, float] | None = None
    # the same requests' best possible true CTR, each one's best 10 of the items the first
    # champion could show it, and a random 10 of them's (recloop.counterfactual's
    # replay with references): the ceiling and the floor
    best_true_ctr: float | None = None
    random_true_ctr: float | None = None


class Demo:
    def __init__(self, settings: Settings, config: DemoConfig, echo=print):
        self.settings = settings
        self.config = config
        self.echo = echo
        self.key = secrets.token_urlsafe(24)
        self.service: subprocess.Popen | None = None
        self.airflow = None
        self.world = None
        self.records: list[HourRecord] = []
        self.requests: list[LiveRequest] = []

    # -- setup ---------------------------------------------------------------------------
    def task_env(self) -> dict[str, str]:
        """Settings every Airflow task and the service run with (the demo's choices)."""
        overrides = dict(self.settings.training.model_config_overrides)
        half_life = self.config.trending_half_life_hours
        if half_life is not None:
            overrides["popularity"] = {**overrides.get("popularity", {}),
                                       "half_life_hours": half_life}  # fmt: skip
        return {
            "RECLOOP_HOME": str(self.settings.home),
            "RECLOOP_TRAINING__MODELS": json.dumps(list(self.config.models)),
            "RECLOOP_TRAINING__MODEL_CONFIG_OVERRIDES": json.dumps(overrides),
            "RECLOOP_PROMOTION__PROTOCOL": self.config.gate_protocol,
            "RECLOOP_PROMOTION__CRITERION": self.config.gate_criterion,
            # The log's files become visible to readers a second after they are written, so
            # each simulated hour's events are there when its DAG runs read them.
            "RECLOOP_EVENT_LOG__SEAL_SECONDS": "1",
            # The demo starts every run itself, one per simulated hour: a wall-clock hour
            # passing mid-demo must not start recloop_metrics over several simulated hours
            # (nor the daily training at 03:00). Assets still start runs.
            "RECLOOP_AIRFLOW__TIMED_SCHEDULES": "false",
        }

    def build_world(self) -> None:
        from recloop import warehouse
        from recloop.ingest import ingest_simulation
        from recloop.sources.simulator import WorldConfig, build_world

        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        # The history ends hours before now: its last clicks are rated up to three hours
        # later, and the data gate rightly fails events stamped in the future.
        end = now - timedelta(hours=HISTORY_MARGIN_HOURS)
        base = WorldConfig(
            users=self.config.users, items=self.config.items, days=self.config.history_days,
            seed=self.config.seed, start=end - timedelta(days=self.config.history_days),
            drift=0.0, movielens=self.config.movielens,
        )  # fmt: skip
        if self.settings.events_dir.exists() and any(self.settings.events_dir.iterdir()):
            raise RuntimeError(
                f"{self.settings.home} already holds an event log: the demo needs a fresh home "
                "(set RECLOOP_HOME to a new folder, or `make clean`)"
            )
        self.settings.ensure_home()
        warehouse.init_warehouse(self.settings)
        self.echo(f"simulating {self.config.history_days} days of history ...")
        ingest_simulation(self.settings, base)
        history_end = base.start + timedelta(days=base.days)
        # The world's clock for the live hours: the first start_hour_of_day after the history.
        # (Only the world's taste and context read it; events carry wall-clock times.)
        wait = (self.config.start_hour_of_day - history_end.hour) % 24
        self.live_start = history_end + timedelta(hours=wait)
        shifted = replace(base, shift_at=self.live_start + timedelta(hours=self.config.shift_hour),
                          shift_weight=self.config.shift_weight)  # fmt: skip
        self.world = build_world(shifted)
        (self.settings.home / "demo").mkdir(parents=True, exist_ok=True)
        (self.settings.home / "demo" / "world.json").write_text(json.dumps(shifted.to_dict()))

    def start_airflow(self) -> None:
        from recloop.airflow_local import LocalAirflow

        self.airflow = LocalAirflow(self.settings, free_port(), self.task_env())
        self.echo(f"starting Airflow (home {self.settings.home / 'airflow'}) ...")
        self.airflow.start()
        self.airflow.wait_for_dags(DAGS)

    def start_service(self) -> None:
        port = free_port()
        env = {
            **os.environ, **self.task_env(),
            "RECLOOP_SERVING__API_KEYS": json.dumps([self.key]),
            "RECLOOP_SERVING__PORT": str(port),
            "RECLOOP_SERVING__POLICY": self.config.policy,
            "RECLOOP_SERVING__EPSILON": str(self.config.epsilon),
            "RECLOOP_SERVING__TEMPERATURE": str(self.config.temperature),
            "RECLOOP_SERVING__WATCH_SECONDS": "2",
        }  # fmt: skip
        log = open(self.settings.home / "demo" / "serve.log", "ab")  # noqa: SIM115
        recloop = str(Path(sys.executable).with_name("recloop"))
        self.service = subprocess.Popen(
            [recloop, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        ready = wait_ready(self.url, self.service, timeout=180)
        champion = (ready.get("models") or {}).get("champion") or {}
        self.echo(f"service ready at {self.url} (champion v{champion.get('version')})")

    # -- one simulated hour of traffic ----------------------------------------------------
    def _one_request(self, client: httpx.Client, hour: int, n: int) -> dict[str, Any]:
        from recloop.sources.simulator import DEVICES

        world, config = self.world, self.config
        rng = np.random.default_rng([config.seed, 7, hour, n])
        at = self.live_start + timedelta(hours=hour + n / config.requests_per_hour)
        users = world.users_at(at)
        user = int(users[rng.integers(len(users))])
        user_id = world.users[user].user_id
        device = DEVICES[rng.choice(len(DEVICES), p=world.user_devices[user])]
        context = {"hour": at.hour, "weekday": at.weekday(), "device": device}
        body = {"user_id": user_id, "k": SLATE, "context": context}
        response = client.post("/recommend", json=body)
        response.raise_for_status()
        slate = response.json()
        items = [row["item_id"] for row in slate["items"]]
        truth = world.click_probabilities(user_id, items, at, context)
        clicked = rng.random(len(items)) < truth
        events = []
        request = LiveRequest(
            hour=hour,
            n=n,
            user_id=user_id,
            at=at,
            context=context,
            clicked=tuple(i for i, c in zip(items, clicked, strict=True) if c),
        )
        for row, click in zip(slate["items"], clicked, strict=True):
            if not click:
                continue
            common = {"user_id": user_id, "item_id": row["item_id"],
                      "request_id": slate["request_id"], "position": row["slot"],
                      "propensity": row["propensity"], "model_version": slate["model_version"],
                      "policy": slate["policy"], "context": context}  # fmt: skip
            now = datetime.now(UTC).isoformat()
            events.append({"event_id": str(uuid.uuid4()), "ts": now, "event_type": "click",
                           **common})  # fmt: skip
            if rng.random() < 0.5:
                events.append({"event_id": str(uuid.uuid4()), "ts": now, "event_type": "rating",
                               "value": world.rating(user_id, row["item_id"], at),
                               **common})  # fmt: skip
        if events:
            client.post("/feedback", json={"events": events}).raise_for_status()
        return {"impressions": len(items), "clicks": int(clicked.sum()),
                "expected": float(truth.sum()), "version": slate["model_version"],
                "request": request}  # fmt: skip

    def traffic(self, hour: int) -> HourRecord:
        start = datetime.now(UTC)
        headers = {"X-API-Key": self.key}
        with (
            httpx.Client(base_url=self.url, headers=headers, timeout=60) as client,
            ThreadPoolExecutor(self.config.concurrency) as pool,
        ):
            results = list(pool.map(lambda n: self._one_request(client, hour, n),
                                    range(self.config.requests_per_hour)))  # fmt: skip
        end = datetime.now(UTC)
        self.requests.extend(r["request"] for r in results)
        impressions = sum(r["impressions"] for r in results)
        return HourRecord(
            hour=hour, simulated_start=(self.live_start + timedelta(hours=hour)).isoformat(),
            start=start.isoformat(), end=end.isoformat(), requests=len(results),
            impressions=impressions, clicks=sum(r["clicks"] for r in results),
            true_ctr=sum(r["expected"] for r in results) / max(impressions, 1),
            served_versions=dict(Counter(r["version"] for r in results)),
        )  # fmt: skip

    def trigger_hour(self, record: HourRecord) -> tuple[str, str]:
        """Start the hour's runs of recloop_features and recloop_metrics (its exact interval)."""
        time.sleep(2.5)  # the service's impression flush (0.02 s) and the log's seal (1 s)
        features = self.airflow.trigger("recloop_features")
        metrics = self.airflow.trigger("recloop_metrics",
                                       {"start": record.start, "end": record.end})  # fmt: skip
        return features, metrics

    def collect_hour(self, record: HourRecord, runs: tuple[str, str]) -> None:
        """Wait for the hour's runs and read back what recloop_metrics concluded."""
        import pandas as pd

        from monitoring import store

        features, metrics = runs
        self.airflow.wait("recloop_metrics", metrics)
        self.airflow.wait("recloop_features", features)
        end = datetime.fromisoformat(record.end)
        rows = store.read(self.settings, "online_metrics")
        hour = rows[(rows["hour_end"] == end) & (rows["window"] == "hour")]
        if len(hour):
            from monitoring.estimators import wilson

            # The versions' rows pooled: Wilson at the sum of their effective sizes (each
            # already shrunk for its users' many impressions; monitoring.online).
            clicks, shown = int(hour["clicks"].sum()), int(hour["impressions"].sum())
            effective = float(hour["effective_impressions"].sum())
            record.ctr = clicks / shown
            record.ctr_low, record.ctr_high = wilson(record.ctr * effective, effective,
                                                     self.settings.monitoring.alpha)  # fmt: skip
        alarms = store.read(self.settings, "alarms")
        if len(alarms):
            record.alarms = [f"{a['kind']}: {a['detail']}" for a in
                             alarms[alarms["hour_end"] == end].to_dict("records")]  # fmt: skip
        decisions = store.read(self.settings, "decisions")
        mine = decisions[decisions["hour_end"] == end]
        record.retrain_requested = bool(len(mine) and mine["requested"].iloc[-1])
        if len(mine) and "promoted" in mine and pd.notna(mine["promoted"].iloc[-1]):
            record.promoted = str(mine["promoted"].iloc[-1])
        record.champion_version = self._champion()

    def _champion(self) -> str | None:
        from training import registry

        client = registry.configure(self.settings)
        version = registry.alias_version(client, registry.CHAMPION)
        return str(version.version) if version is not None else None

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        try:
            self.build_world()
            self.start_airflow()
            # Unpaused, so that their triggered and asset-driven runs go; with the clocks off
            # (task_env) that starts nothing by itself. The first features run backfills the
            # history, then training trains the first champion, as a new deployment would.
            for dag_id in DAGS:
                self.airflow.unpause(dag_id)
            self.echo("first features and champion: triggered runs ...")
            for dag_id in ("recloop_features", "recloop_training"):
                started = time.monotonic()
                run = self.airflow.wait(dag_id, self.airflow.trigger(dag_id))
                self.echo(f"  {dag_id}: {run['state']} in {time.monotonic() - started:.0f} s")
            first_champion = self._champion()
            if first_champion is None:
                raise RuntimeError("recloop_training promoted no champion; see its MLflow run")
            self.start_service()
            # Users do not wait for the DAGs: each hour's runs go on while the next hour's
            # traffic flows, as they would in production.
            hour, last, pending = 0, self.config.hours, None
            while hour < last or pending is not None:
                hour_started = time.monotonic()
                record = self.traffic(hour) if hour < last else None
                traffic_seconds = time.monotonic() - hour_started
                if pending is not None:
                    done, runs = pending
                    self.collect_hour(done, runs)
                    self.records.append(done)
                    self._echo_hour(done)
                pending = None
                if record is not None:
                    record.seconds = {"traffic": round(traffic_seconds, 1)}
                    pending = (record, self.trigger_hour(record))
                    hour += 1
                served = [*self.records, *([pending[0]] if pending else [])]
                waiting = self._unsettled(first_champion, served)
                most = self.config.hours + self.config.extra_hours
                if hour == last and waiting and last < most:
                    last += 1
            replayed = self.replay_versions(first_champion)
            return self.summary(first_champion, replayed, time.monotonic() - began)
        finally:
            self.stop()

    def _unsettled(self, first_champion: str, served: list[HourRecord]) -> bool:
        """Whether users should keep coming (up to ``extra_hours`` more): the replay judges a
        version only on hours that began after it was registered, so the demo goes on while
        a requested retraining has not yet put a new champion in front of users for a whole
        hour, while a training run is still in flight, and until the champion of the moment
        (a retraining's, or one promoted on online evidence) has served a whole hour on its
        own."""
        requested = any(r.retrain_requested for r in self.records)
        replaced = any(r.served_versions and first_champion not in r.served_versions
                       for r in served)  # fmt: skip
        if requested and not replaced:
            return True
        if self.records and self.records[-1].retrain_requested:
            return True  # its training run may not have been created yet
        training = self.airflow.runs("recloop_training")
        if any(run["state"] in ("queued", "running") for run in training):
            return True
        champion = self._champion()
        return champion != first_champion and not any(
            set(r.served_versions or {}) == {champion} for r in served
        )

    def replay_versions(self, first_champion: str) -> dict[str, dict[str, Any]]:
        """Each registered version's greedy slates on the requests of every hour that began
        after it was registered; their true CTR per hour goes into the hour records, with the
        best possible and a random slate's on the first champion's catalogue. Returns, per
        version, its kind, first hour and expected clicks per request ((hour, n) keyed); the
        first champion's entry also has the best and the random slates' ("best", "random")."""
        from recloop.counterfactual import replay
        from training import registry

        started = time.monotonic()
        # The demo echoes its own progress; MLflow's bar per download would bury it.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        client = registry.configure(self.settings)
        versions = client.search_model_versions(f"name='{registry.MODEL_NAME}'")
        starts = {r.hour: datetime.fromisoformat(r.start) for r in self.records}
        replayed: dict[str, dict[str, Any]] = {}
        for version in sorted(versions, key=lambda v: int(v.version)):
            created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
            hours = sorted(h for h, start in starts.items() if start >= created)
            if not hours:
                continue
            model = registry.download_model(self.settings, str(version.version))
            mine = [r for r in self.requests if r.hour >= hours[0]]
            first = str(version.version) == first_champion
            replayed_version = replay(
                model, self.world, mine, k=SLATE, fresh_clicks=self.settings.serving.fresh_clicks,
                earlier=[r for r in self.requests if r.hour < hours[0]], references=first,
            )  # fmt: skip
            expected, shown = replayed_version.expected, replayed_version.shown
            best, uniform = replayed_version.best, replayed_version.random
            for record in self.records:
                rows = [i for i, r in enumerate(mine) if r.hour == record.hour]
                if rows:
                    ctr = float(expected[rows].sum() / max(shown[rows].sum(), 1))
                    record.replayed_true_ctr = {**(record.replayed_true_ctr or {}),
                                                str(version.version): round(ctr, 5)}  # fmt: skip
                    if best is not None and uniform is not None:
                        record.best_true_ctr = round(float(best[rows].mean() / SLATE), 5)
                        record.random_true_ctr = round(float(uniform[rows].mean() / SLATE), 5)
            keyed = [(r.hour, r.n) for r in mine]
            replayed[str(version.version)] = {
                "kind": version.tags.get("kind"), "from_hour": hours[0],
                "expected": dict(zip(keyed, expected, strict=True)),
            }  # fmt: skip
            if best is not None and uniform is not None:
                replayed[str(version.version)]["best"] = dict(zip(keyed, best, strict=True))
                replayed[str(version.version)]["random"] = dict(zip(keyed, uniform, strict=True))
        self.echo(f"replayed {len(replayed)} versions on the live requests "
                  f"in {time.monotonic() - started:.0f} s")  # fmt: skip
        return replayed

    def recovery(self, replayed: dict[str, dict[str, Any]], first: str, final: str | None,
                 served_from: int | None) -> dict[str, Any] | None:  # fmt: skip
        """The new champion's true CTR less the old one's, on the requests of the hours the
        new one served (both replayed greedily, paired per request, t interval). The new one
        is replayed only from the first hour that began after it was registered, which is
        the hour after the swap when the swap came mid-hour."""
        from recloop.counterfactual import paired_difference

        if served_from is None or first not in replayed or final not in replayed:
            return None
        start = max(served_from, replayed[final]["from_hour"])
        keys = [(r.hour, r.n) for r in self.requests if r.hour >= start]
        if not keys:
            return None
        new = np.array([replayed[final]["expected"][key] for key in keys])
        old = np.array([replayed[first]["expected"][key] for key in keys])
        gain = paired_difference(new, old, slots=SLATE, alpha=self.settings.monitoring.alpha)
        best = np.array([replayed[first]["best"][key] for key in keys])
        uniform = np.array([replayed[first]["random"][key] for key in keys])
        return {"from_hour": start, "new": final, "old": first,
                "new_true_ctr": float(new.mean() / SLATE),
                "old_true_ctr": float(old.mean() / SLATE),
                # What a ranking that knew the truth would have earned on these requests:
                # the share of the way there that retraining went is (new - old) / (best - old).
                "best_true_ctr": float(best.mean() / SLATE),
                "random_true_ctr": float(uniform.mean() / SLATE),  # and one that knew nothing
                "gain": gain}  # fmt: skip

    def _echo_hour(self, r: HourRecord) -> None:
        interval = f"[{r.ctr_low:.3f}, {r.ctr_high:.3f}]" if r.ctr is not None else "-"
        estimate = f"{r.ctr:.3f}" if r.ctr is not None else "-"
        served = ",".join(f"v{v}" for v in sorted(r.served_versions or {}))
        self.echo(
            f"hour {r.hour:2d}: CTR {estimate} {interval} true {r.true_ctr:.3f} served {served}"
            f"{' ALARM ' + '; '.join(a.split(':')[0] for a in r.alarms) if r.alarms else ''}"
            f"{' -> retrain requested' if r.retrain_requested else ''}"
            f"{f' -> v{r.promoted} promoted' if r.promoted else ''} "
            f"({r.seconds['traffic']:.0f} s of traffic)"
        )

    def summary(
        self, first_champion: str, replayed: dict[str, dict[str, Any]], seconds: float
    ) -> dict[str, Any]:
        training_runs = self.airflow.runs("recloop_training")
        asset_runs = [r for r in training_runs if r["run_type"] == "asset_triggered"]
        final = self._champion()
        new = new_champion(first_champion, final, [r.served_versions for r in self.records])
        served_from = next((r.hour for r in self.records if new in (r.served_versions or {})),
                           None)  # fmt: skip
        covered = [r.ctr_low <= r.true_ctr <= r.ctr_high for r in self.records
                   if r.ctr is not None]  # fmt: skip
        summary = {
            "config": asdict(self.config),
            "seconds": round(seconds, 1),
            "shift_hour": self.config.shift_hour,
            "first_champion": first_champion,
            "final_champion": final,  # the alias at the end
            "new_champion": new,  # the replacing version users met (new_champion)
            "drift_detected_hours": [r.hour for r in self.records if r.alarms and
                                     any(a.startswith("degradation") for a in r.alarms)],
            "retrain_requested_hours": [r.hour for r in self.records if r.retrain_requested],
            # hour -> version recloop_metrics promoted on online evidence (challenger_wins)
            "online_promotions": {r.hour: r.promoted for r in self.records if r.promoted},
            "asset_triggered_training_runs": [
                {"run_id": r["dag_run_id"], "state": r["state"]} for r in asset_runs
            ],
            "new_champion_served_from_hour": served_from,
            "versions": {version: {"kind": v["kind"], "from_hour": v["from_hour"]}
                         for version, v in replayed.items()},
            # The loop's payoff in truth, not in estimates: what the new champion earned on the
            # hours it served, against what the old one would have earned on the same requests.
            "recovery": self.recovery(replayed, first_champion, new, served_from),
            "ctr_interval_coverage": sum(covered) / len(covered) if covered else None,
            "hours": [asdict(r) for r in self.records],
            "dashboard": str(self.settings.monitoring_dir / "dashboard.html"),
            "airflow_home": str(self.settings.home / "airflow"),
        }  # fmt: skip
        path = self.settings.home / "demo" / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        summary["summary_path"] = str(path)
        return summary

    def stop(self) -> None:
        from recloop.processes import stop_tree

        if self.service is not None:
            stop_tree(self.service)
            self.service = None
        if self.airflow is not None:
            self.airflow.stop()
