"""One hour of monitoring: estimate -> write -> decide, as the recloop_metrics DAG runs it.

``estimate`` reads the week of impressions that ends at the hour's end, computes the online
metrics (monitoring.online), the off-policy estimates of the challenger and of any configured
candidate on the champion's logged slates (monitoring.ope), and the alarms (monitoring.drift,
plus ``challenger_wins``), and writes them to the hour's Parquet files (monitoring.store).
A candidate whose off-policy estimate fails is recorded as not estimated (with the error) and
the hour goes on.
``publish`` logs the hour to MLflow (experiment ``online-metrics``, one run per hour) and
redraws the dashboard. ``decide`` says whether to request a retraining: an alarm of a kind
in ``monitoring.retrain_on`` and no request within the cooldown for the same champion.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from monitoring import drift, logs, online, ope, store
from monitoring.estimators import clustered_ctr
from recloop.redaction import log_failure
from recloop.settings import Settings

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)
EXPERIMENT = "online-metrics"


# The off_policy table's row of each candidate's paired gain over the champion, by the weights
# behind it (monitoring.off_policy_weights; ope.compare says which it could use).
GAIN_ROW = {"item_position": "dr_gain", "position_based": "pbm_ips_gain"}
# The off_policy table's row (one per window, NaN values, the error in ``error``) of a
# candidate whose estimate failed this hour (``_off_policy``).
NOT_ESTIMATED = "not_estimated"


def _registry_versions(settings: Settings) -> dict[str, Any]:
    """champion and challenger ModelVersions (None when unset), and the other candidates:
    ``monitoring.candidates`` and, by default, the newest version of every model kind."""
    from training import registry

    if settings.profile == "local" and not (settings.mlflow_dir / "mlflow.db").exists():
        return {"champion": None, "challenger": None, "extra": []}
    client = registry.configure(settings)
    extra = [
        client.get_model_version(registry.MODEL_NAME, v) for v in settings.monitoring.candidates
    ]
    if settings.monitoring.newest_of_each_kind:
        newest: dict[str, Any] = {}
        for version in client.search_model_versions(f"name='{registry.MODEL_NAME}'"):
            kind = version.tags.get("kind", "unknown")
            if kind not in newest or int(version.version) > int(newest[kind].version):
                newest[kind] = version
        extra += list(newest.values())
    return {
        "champion": registry.alias_version(client, registry.CHAMPION),
        "challenger": registry.alias_version(client, registry.CHALLENGER),
        "extra": extra,
    }


def _off_policy(
    settings: Settings,
    champion_rows: pd.DataFrame,
    start: datetime,
    candidates: list[Any],
    champion: Any,
    earlier_looks: dict[str, int],
    clicks: pd.DataFrame,
) -> tuple[pd.DataFrame, list[drift.Alarm]]:
    """Estimates per candidate over the hour and since its registration, each request's
    slates answered with the user's clicks before it (``clicks``), as the service answered
    them (``ope.greedy_slates``). Since registration, also the IPS confidence sequence
    (vw-estimators) and the gain row (``GAIN_ROW``: ``dr_gain`` or ``pbm_ips_gain``, by
    ``monitoring.off_policy_weights`` and what the log allows): the candidate's CTR estimate
    less the champion's own greedy slates', paired on the same impressions
    (``ope.compare``), at level alpha / (candidates x looks x (looks + 1)), where looks counts
    this hour and the earlier hours that tested the candidate (``earlier_looks``, by version):
    alpha spent over the candidates and the hourly looks (Bonferroni; the sum over looks is
    alpha), so a candidate checked every hour keeps the error rate. Looks are counted, not
    derived from the clock, so a demo's compressed hours count right. ``challenger_wins`` is
    raised when that gain's lower bound is above zero and the log can judge the candidate
    (``training.promotion.unsupported``: at most ``promotion.off_policy_max_unlogged`` of its
    slots show items the window never logged, where the reward model alone speaks, and its
    mean importance weight, ``support_*``, reaches 1 less that share; for the
    position-based IPS gain, which has no reward model and can only underestimate a
    candidate the log does not fully support, the share is the champion's slates' and the
    weight's floor is not checked). (The IPS sequence is
    reported, not used: where the logging policy explores uniformly over a hundred items it
    stays near [0, 1] for anything the champion would not show.)

    A candidate whose estimate fails (its model, its slates or an estimator raises) is
    logged and gets a ``NOT_ESTIMATED`` row per window with the error instead of its
    estimates, and raises no alarm; the other candidates are estimated as usual."""
    from training import registry
    from training.promotion import unsupported

    alpha = settings.monitoring.alpha
    weights = settings.monitoring.off_policy_weights
    fresh = settings.serving.fresh_clicks
    rows, alarms = [], []
    champion_slates: dict[str, list[str]] | None = None

    def estimated(
        version: Any, since: pd.DataFrame, windows: list[tuple[str, pd.DataFrame]]
    ) -> tuple[list, list]:
        """One candidate's rows and alarms, every window's (what may fail, as one)."""
        nonlocal champion_slates
        found, raised = [], []
        model = registry.download_model(settings, str(version.version))
        slates = ope.greedy_slates(model, since, clicks, fresh_clicks=fresh)
        for window, part in windows:
            result = ope.evaluate(part, slates, alpha, weights)
            common = {**_window_columns(version, window, part, alpha),
                      "impressions": result["impressions"],
                      "matches": result.get("matches", 0)}  # fmt: skip
            for name, estimate in result["estimates"].items():
                found.append({**common, "estimator": name, "value": estimate.value,
                              "low": estimate.low, "high": estimate.high})  # fmt: skip
            if window != "since_registered" or not result["estimates"]:
                continue
            cs_low, cs_high = result["cs"]
            found.append({**common, "estimator": "ips_cs",
                          "value": result["estimates"]["ips"].value,
                          "low": cs_low, "high": cs_high})  # fmt: skip
            if champion_slates is None:
                champion_model = registry.download_model(settings, str(champion.version))
                champion_slates = ope.greedy_slates(champion_model, champion_rows, clicks,
                                                    fresh_clicks=fresh)  # fmt: skip
            looks = 1 + earlier_looks.get(str(version.version), 0)
            level = alpha / (len(candidates) * looks * (looks + 1))
            compared = ope.compare(part, {"candidate": slates, "champion": champion_slates},
                                   baseline="champion", alpha=level,
                                   weights=weights)  # fmt: skip
            if not compared["targets"]:
                continue
            used = compared["weights"]
            gain = compared["targets"]["candidate"]["gain"]
            base = compared["targets"]["champion"]["estimates"][ope.ESTIMATE_OF[used]]
            # The same gain on the new users' impressions alone, for the gate's cold-start
            # check (training.promotion).
            cold = ope.cold_start_gains(part, {"candidate": slates, "champion": champion_slates},
                                        baseline="champion", alpha=level,
                                        weights=weights)  # fmt: skip
            candidate = compared["targets"]["candidate"]
            mean_weight = candidate["support"]
            support = {} if mean_weight is None else mean_weight.numbers("support")
            row = {**common, "estimator": GAIN_ROW[used], "value": gain.value, "low": gain.low,
                   "high": gain.high, "level": 1 - level, "baseline": base.value,
                   "unlogged_share": candidate["unlogged_share"],
                   "baseline_unlogged_share": compared["targets"]["champion"]["unlogged_share"],
                   "position_based": float(used == "position_based"), **support,
                   **cold.get("candidate", {})}  # fmt: skip
            found.append(row)
            # Only where the log can judge the candidate: not where too many of its slots
            # show items the champion's exploration never showed (the reward model alone
            # speaks; under IPS those slots only pull the gain down), nor where its weights
            # say the log has barely met its items.
            if gain.low > 0 and unsupported(row, settings.promotion, promote=True) is None:
                raised.append(drift.Alarm(
                    "challenger_wins", str(version.version),
                    f"version {version.version}'s {ope.LABEL[used]} CTR beats the champion's "
                    f"greedy slates on them by {gain.value:+.4f}, "
                    f"{1 - level:.2%} interval [{gain.low:+.4f}, {gain.high:+.4f}] "
                    f"({result['impressions']} impressions since it was registered)",
                    base.value, base.value + gain.value,
                ))  # fmt: skip
        return found, raised

    for version in candidates:
        registered = pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC")
        since = champion_rows[champion_rows["ts"] >= registered]
        if since.empty:
            continue
        windows = [(window, part) for window, part in (
            ("hour", since[since["ts"] >= pd.Timestamp(start)]), ("since_registered", since))
            if not part.empty]  # fmt: skip
        # One candidate's failure (a model that will not load, an estimator that raises on
        # this log) must not cost the hour its metrics, alarms and decision, nor the other
        # candidates their estimates; nor may it pass unseen: it is logged, and each of the
        # candidate's windows gets a NOT_ESTIMATED row with the error, which ``estimate``
        # returns and ``decide`` gives as part of its reason. All or nothing per candidate:
        # rows of a half-estimated candidate could be read as its whole evidence.
        try:
            found, raised = estimated(version, since, windows)
        except Exception as error:
            # Redacted: the error text is stored, returned as XCom and logged, and MLflow's
            # messages name the tracking URI with any credentials in it.
            said = log_failure(
                log, settings,
                f"off-policy estimate of candidate version {version.version} "
                f"({version.tags.get('kind', 'unknown')}) failed; the hour records it as not "
                "estimated", error,
            )  # fmt: skip
            found = [{**_window_columns(version, window, part, alpha), "impressions": len(part),
                      "matches": 0, "estimator": NOT_ESTIMATED, "value": math.nan,
                      "low": math.nan, "high": math.nan, "error": said}
                     for window, part in windows]  # fmt: skip
            raised = []
        rows += found
        alarms += raised
    return pd.DataFrame(rows), alarms


def _window_columns(version: Any, window: str, part: pd.DataFrame, alpha: float) -> dict:
    """The columns every off_policy row of a candidate's window has, estimated or not: the
    candidate, the window and the champion's own CTR on it."""
    _, low, high, _ = clustered_ctr(part["clicked"], part["user_id"], alpha=alpha)
    return {"candidate_version": str(version.version),
            "candidate_kind": version.tags.get("kind", "unknown"), "window": window,
            "champion_ctr": float(part["clicked"].mean()), "champion_low": low,
            "champion_high": high}  # fmt: skip


def not_estimated(off_policy: pd.DataFrame) -> dict[str, str]:
    """Per candidate version, the error its off-policy estimate failed with, from an hour's
    off_policy rows (``_off_policy``'s ``NOT_ESTIMATED`` rows)."""
    if off_policy.empty or "error" not in off_policy:
        return {}
    failed = off_policy[off_policy["estimator"] == NOT_ESTIMATED]
    return dict(zip(failed["candidate_version"].astype(str), failed["error"].astype(str),
                    strict=True))  # fmt: skip


def _earlier_looks(settings: Settings, end: datetime) -> dict[str, int]:
    """Per candidate version, the hours before ``end`` whose gain test it had."""
    written = store.read(settings, "off_policy")
    if written.empty or "estimator" not in written:
        return {}
    tested = written[(written["estimator"].isin(GAIN_ROW.values()))
                     & (written["hour_end"] < pd.Timestamp(end))]  # fmt: skip
    return tested.groupby("candidate_version")["hour_end"].nunique().to_dict()


def estimate(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Compute and write the hour [start, end). Returns a summary for the task log."""
    config = settings.monitoring
    events = logs.read_events(
        settings, end - WEEK, end + timedelta(seconds=config.attribution_seconds)
    )
    week = logs.impressions(settings, end - WEEK, end, events=events)
    catalogue = len(set(events.column("item_id").to_pylist())) if events.num_rows else 0
    metrics = online.online_metrics(
        week, start, end, catalogue=catalogue, alpha=config.alpha,
        half_life_hours=config.ewma_half_life_hours,
    )  # fmt: skip
    versions = _registry_versions(settings)
    champion = versions["champion"]
    champion_version = str(champion.version) if champion is not None else None
    alarms: list[drift.Alarm] = []
    hour = week[week["ts"] >= pd.Timestamp(start)]
    users = logs.user_attributes(settings)
    if users is None:
        log.warning("no user_attributes export yet (run the feature pipeline): the requesting "
                    "users' attributes are not tested for drift this hour")  # fmt: skip
    alarms += drift.feature_drift(hour, week[week["ts"] < pd.Timestamp(start)],
                                  config.psi_threshold, config.min_requests, users=users,
                                  alpha=config.alpha)  # fmt: skip
    off_policy = pd.DataFrame()
    if champion_version is not None:
        served = week[(week["model_version"] == champion_version) & (week["arm"] == "champion")]
        started = int((served["ts"] < pd.Timestamp(start)).sum())
        alarm = drift.degradation(served["clicked"].to_numpy(), started, champion_version,
                                  config.adwin_delta)  # fmt: skip
        if alarm is not None:
            alarms.append(alarm)
        candidates = [v for v in [versions["challenger"], *versions["extra"]]
                      if v is not None and str(v.version) != champion_version]  # fmt: skip
        unique = {str(v.version): v for v in candidates}
        # Each request's slates are answered with the clicks the service had folded in.
        clicks = logs.clicks(settings, end - WEEK, end, events=events)
        off_policy, wins = _off_policy(settings, served, start, list(unique.values()),
                                       champion, _earlier_looks(settings, end), clicks)  # fmt: skip
        alarms += wins
    stamp = {"hour_start": pd.Timestamp(start), "hour_end": pd.Timestamp(end),
             "champion_version": champion_version}  # fmt: skip
    store.write(settings, "online_metrics", end, metrics.assign(hour_start=pd.Timestamp(start)))
    store.write(settings, "off_policy", end, off_policy.assign(**stamp) if len(off_policy) else
                pd.DataFrame())  # fmt: skip
    store.write(settings, "alarms", end,
                pd.DataFrame([{**stamp, **a.to_dict()} for a in alarms]))  # fmt: skip
    hour_rows = metrics[(metrics["window"] == "hour")]
    return {
        "hour_start": start.isoformat(), "hour_end": end.isoformat(),
        "impressions": int(hour_rows["impressions"].sum()) if len(hour_rows) else 0,
        "clicks": int(hour_rows["clicks"].sum()) if len(hour_rows) else 0,
        "champion_version": champion_version,
        "alarms": [a.to_dict() for a in alarms],
        "off_policy_rows": len(off_policy),
        # Candidate version -> the error its off-policy estimate failed with this hour.
        "off_policy_not_estimated": not_estimated(off_policy),
    }  # fmt: skip


def decide(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Request a retraining when the hour raised an alarm of a configured kind, unless one was
    requested within the cooldown while the same champion served (a champion promoted since
    that request is judged afresh: its own degradation is new evidence, not the old alarm
    again). The decision is written either way, with the champion it was made for."""
    config = settings.monitoring
    alarms = store.read(settings, "alarms")
    hour_alarms = alarms[alarms["hour_end"] == pd.Timestamp(end)] if len(alarms) else alarms
    triggering = [row for row in hour_alarms.to_dict("records") if row["kind"] in config.retrain_on]
    champion = _stamped_champion(hour_alarms)
    past = store.read(settings, "decisions")
    recent = pd.DataFrame()
    if len(past):
        cutoff = pd.Timestamp(end) - pd.Timedelta(hours=config.retrain_cooldown_hours)
        recent = past[past["requested"] & (past["hour_end"] > cutoff)
                      & (past["hour_end"] < pd.Timestamp(end))]  # fmt: skip
        if champion is not None and "champion_version" in recent:
            # A request written without a champion (before decisions carried one) counts.
            made_for = recent["champion_version"]
            recent = recent[made_for.isna() | (made_for.astype(str) == champion)]
    promoted = None
    wins = [row for row in hour_alarms.to_dict("records") if row["kind"] == "challenger_wins"]
    if wins and config.promote_on_win:
        promoted, said = _promote_winner(settings, end, wins, past, champion)
        if promoted is not None:
            # The winner serves now: retraining for the same evidence would undo nothing
            # and judge it again; other alarms still count.
            triggering = [row for row in triggering if row["kind"] != "challenger_wins"]
    requested = bool(triggering) and recent.empty
    if not triggering:
        reason = "no alarm of a kind in monitoring.retrain_on"
    elif not recent.empty:
        reason = (f"alarm ({', '.join(sorted({r['kind'] for r in triggering}))}) within the "
                  f"cooldown of the request at {recent['hour_end'].max().isoformat()}")  # fmt: skip
    else:
        reason = "; ".join(row["detail"] for row in triggering)
    if wins and config.promote_on_win:
        reason = f"{said}; {reason}"
    if failed := _hour_not_estimated(settings, end):
        # Said in the decision too: an hour with no challenger_wins because a candidate
        # could not be estimated is not an hour in which none won.
        reason += "; off-policy estimate failed, not estimated: " + ", ".join(
            f"version {version} ({error})" for version, error in sorted(failed.items())
        )
    decision = {"hour_start": pd.Timestamp(start), "hour_end": pd.Timestamp(end),
                "requested": requested, "reason": reason, "promoted": promoted,
                "champion_version": champion}  # fmt: skip
    store.write(settings, "decisions", end, pd.DataFrame([decision]))
    return {"requested": requested, "reason": reason, "hour_end": end.isoformat(),
            "promoted": promoted}  # fmt: skip


def _hour_not_estimated(settings: Settings, end: datetime) -> dict[str, str]:
    """``not_estimated`` of the hour ending at ``end``, as written."""
    written = store.read(settings, "off_policy")
    if written.empty or "hour_end" not in written:
        return {}
    return not_estimated(written[written["hour_end"] == pd.Timestamp(end)])


def _stamped_champion(hour_alarms: pd.DataFrame) -> str | None:
    """The champion the hour's alarms were raised under (``estimate`` stamps each alarm)."""
    if hour_alarms.empty or "champion_version" not in hour_alarms:
        return None
    stamped = hour_alarms["champion_version"].dropna()
    return str(stamped.iloc[0]) if len(stamped) else None


def _champion_now(settings: Settings) -> str | None:
    """The version the ``champion`` alias points at now (None when unset)."""
    from training import registry

    champion = registry.alias_version(registry.configure(settings), registry.CHAMPION)
    return str(champion.version) if champion is not None else None


def _promoted_by_this_hour(
    end: datetime, version: str, past: pd.DataFrame, stamped: str | None
) -> bool:
    """Whether the champion ``version`` was promoted by the hour ending at ``end`` itself, in
    an earlier attempt of this task (an Airflow retry, a cleared task). The hour's stored
    decision says so when the first attempt got as far as writing it; when it did not (it
    died between moving the alias and writing), the hour's alarms were raised under another
    champion (``stamped``) and no other hour's decision promoted the version."""
    if past.empty or "promoted" not in past:
        return stamped is not None and stamped != version
    promoted = past["promoted"].astype(str)
    this_hour = past["hour_end"] == pd.Timestamp(end)
    if this_hour.any():
        return bool((promoted[this_hour] == version).any())
    return stamped is not None and stamped != version and not (promoted == version).any()


def _promote_winner(
    settings: Settings,
    end: datetime,
    wins: list[dict[str, Any]],
    past: pd.DataFrame,
    stamped: str | None,
) -> tuple[str | None, str]:
    """Feed the hour's best ``challenger_wins`` candidate (the largest gain) to the promotion
    gate (``training.pipeline.promote_on_evidence``) with its gain row as evidence.
    Returns (the version promoted or None, what happened in words). A failure is logged and
    said, and the alarm then requests a retraining as any other.

    A rerun of the hour (``past``: the decisions written so far; ``stamped``: the champion
    the hour's alarms were raised under) records the first attempt's promotion again: the
    gate would now say the winner "is already the champion", and the hour would lose its
    promotion and request a retraining for the evidence the promotion acted on."""
    from training.pipeline import promote_on_evidence

    estimates = store.read(settings, "off_policy")
    winners = [w["subject"] for w in wins]
    mine = estimates[(estimates["hour_end"] == pd.Timestamp(end))
                     & (estimates["estimator"].isin(GAIN_ROW.values()))
                     & (estimates["candidate_version"].isin(winners))]  # fmt: skip
    if mine.empty:
        return None, "promotion on online evidence: the hour's gain rows are missing"
    best = mine.sort_values("value", ascending=False).iloc[0]
    evidence = {
        "impressions": float(best["impressions"]), "matches": float(best["matches"]),
        "challenger_value": float(best["baseline"] + best["value"]),
        "baseline_value": float(best["baseline"]), "gain_value": float(best["value"]),
        "gain_low": float(best["low"]), "gain_high": float(best["high"]),
        "alpha": float(1 - best["level"]),
        "unlogged_share": float(best.get("unlogged_share", 0.0)),
        "position_based": float(best["estimator"] == GAIN_ROW["position_based"]),
    }  # fmt: skip
    for key in ("support_value", "support_low", "support_high", "baseline_unlogged_share",
                "cold_impressions", "cold_matches", "cold_gain_value", "cold_gain_low",
                "cold_gain_high"):  # fmt: skip
        if key in best and pd.notna(best[key]):
            evidence[key] = float(best[key])
    version = str(best["candidate_version"])
    try:
        if _champion_now(settings) == version and _promoted_by_this_hour(
            end, version, past, stamped
        ):
            said = "already promoted by this hour's evidence (a rerun)"
            log.info("promotion on online evidence: version %s %s", version, said)
            return version, f"promoted version {version} on online evidence ({said})"
        # Measured against the stamped champion: if another promotion replaced it since,
        # the evidence compares with a model that no longer serves (nothing is promoted).
        decision = promote_on_evidence(settings, version, evidence, against=stamped)
    except Exception as error:
        log_failure(log, settings, f"promoting version {version} on online evidence failed",
                    error)  # fmt: skip
        return None, f"promotion of version {version} on online evidence failed (see the log)"
    said = "; ".join(decision.reasons)
    log.info("promotion on online evidence: %s", said)
    if decision.promote:
        return version, f"promoted version {version} on online evidence ({said})"
    return None, f"version {version} not promoted on online evidence ({said})"


def publish(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """The hour in MLflow (one run per hour, rerun = same run) and the dashboard redrawn."""
    import mlflow

    from monitoring import dashboard
    from training import registry

    tables = store.read_all(settings)
    page, figures = dashboard.render(settings, tables)
    registry.configure(settings, experiment=EXPERIMENT)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    key = store.hour_key(end)
    existing = client.search_runs([experiment.experiment_id], f"tags.`recloop.hour` = '{key}'")
    metrics = tables["online_metrics"]
    hour = metrics[(metrics["hour_end"] == pd.Timestamp(end))] if len(metrics) else metrics
    off_policy = tables["off_policy"]
    off_hour = (off_policy[off_policy["hour_end"] == pd.Timestamp(end)]
                if len(off_policy) else off_policy)  # fmt: skip
    run_id = existing[0].info.run_id if existing else None
    with mlflow.start_run(run_id=run_id, run_name=f"hour {end.isoformat()}") as run:
        mlflow.set_tags({"recloop.hour": key, "hour_start": start.isoformat(),
                         "hour_end": end.isoformat()})  # fmt: skip
        values: dict[str, float] = {}
        for row in hour.to_dict("records"):
            if row["window"] not in ("hour", "ewma"):
                continue
            name = f"{row['window']}.{row['arm']}.v{row['model_version']}"
            for field in ("ctr", "ctr_low", "ctr_high", "impressions", "ndcg", "mrr"):
                value = row.get(field)
                if value is not None and isinstance(value, int | float) and math.isfinite(value):
                    values[f"{name}.{field}"] = float(value)
        for row in off_hour.to_dict("records"):
            name = f"ope.{row['window']}.v{row['candidate_version']}.{row['estimator']}"
            for field in ("value", "low", "high"):
                if math.isfinite(row[field]):
                    values[f"{name}.{field}"] = float(row[field])
        # MLflow metric names allow letters, digits, _ - . / and spaces only.
        clean = {
            k.replace("(", "_").replace(")", "").replace("=", "_"): v for k, v in values.items()
        }
        if clean:
            mlflow.log_metrics(clean)
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}.png")
        mlflow.log_artifact(str(page), "dashboard")
        run_id = run.info.run_id
    return {"run_id": run_id, "dashboard": str(page), "metrics_logged": len(clean)}
