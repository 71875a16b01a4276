"""Settings, read once at the edge (CLI start) and passed down.

Sources, lowest precedence first: defaults, a YAML file (``--config FILE.yaml``),
environment variables ``AIOPS_*`` (nested with ``__``, e.g. ``AIOPS_KAFKA__BOOTSTRAP=host:9092``).
No other module reads the environment.

>>> s = load_settings(env={"AIOPS_RUNTIME__LATENESS_S": "30"})
>>> s.runtime.lateness_s
30.0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class RuntimeSettings(BaseModel):
    step_s: float = Field(15.0, gt=0, description="alignment step for derived series when a scenario names none")
    lateness_s: float = Field(60.0, ge=0, description="how far behind the newest record a record may arrive")
    stale_steps: int = Field(4, ge=1, description="steps a series' last value stands in for missed scrapes")
    max_gap_steps: int = Field(20, ge=1, description="a longer gap restarts a counter's rate instead of spanning it")


class DetectSettings(BaseModel):
    threshold: float = Field(0.5, description="production alert threshold on the detector score")
    warmup: int = Field(40, ge=1, description="samples a series needs before it may alert")
    min_duration: int = Field(2, ge=1, description="consecutive anomalous steps before an onset is confirmed")
    recover_steps: int = Field(4, ge=1, description="consecutive calm steps before an anomaly ends")
    confirm_z: float = Field(4.0, ge=0, description="robust deviation (in scales) a step needs to count as anomalous")


class LogSettings(BaseModel):
    warmup_s: float = Field(1800.0, ge=0, description="templates first seen within this time are not 'new'")
    max_templates_per_service: int = Field(2000, ge=10)
    max_line_bytes: int = Field(64 * 1024, ge=256, description="longer lines are truncated before mining")


class LimitSettings(BaseModel):
    """Cardinality limits where raw series enter (issue 8, hostile input): a label explosion is
    refused and reported (counted as a rejected record with a reason, a warning once per service
    per ``warn_interval_s``), never allowed to eat memory; series already tracked keep working."""

    max_labels: int = Field(64, ge=1, description="labels per sample; a sample with more is rejected")
    max_label_len: int = Field(1024, ge=16, description="characters per label name or value")
    max_series_per_service: int = Field(10_000, ge=1, description="raw series the deriver tracks per service; "
                                        "new ones beyond it are refused until old ones go idle")
    max_series: int = Field(1_000_000, ge=1, description="raw series the deriver tracks in all, over all services "
                            "(a flood of unique service names is refused here)")
    warn_interval_s: float = Field(300.0, gt=0, description="event time between two warnings about one service")


class CorrelateSettings(BaseModel):
    window_s: float = Field(600.0, gt=0, description="signals this close in time may join one incident")
    resolve_after_s: float = Field(600.0, gt=0, description="calm time before an incident resolves")
    flap_window_s: float = Field(1800.0, ge=0, description="a re-fire within this time re-opens the incident")
    change_lookback_s: float = Field(1800.0, ge=0, description="changes this long before onset count as suspects")
    min_signals: int = Field(2, ge=1, description="signals needed to open an incident (unless one is severe)")
    persist_s: float = Field(300.0, ge=0, description="a lone symptom active this long opens an incident")
    open_hold_s: float = Field(180.0, ge=0, description="an incident opens only once a symptom lasted this long "
                               "(longer than a transient: a burst or spike of a minute or two)")
    onset_tolerance_s: float = Field(30.0, ge=0, description="onsets this close count as simultaneous in ranking")


class ActSettings(BaseModel):
    dry_run: bool = True
    ledger_path: Path | None = Field(
        None, description="durable action ledger (JSON lines, fsynced); None: <state_dir>/actions.jsonl")
    kubeconfig: Path | None = Field(None, description="None: the pod's service account, else ~/.kube/config")
    kube_context: str | None = None
    approve_token_file: Path | None = Field(
        None, description="bearer token for POST /actions/ID/approve; None disables HTTP approval")
    retrain_token_file: Path | None = Field(None, description="bearer token sent to the retrain pipeline endpoint")
    tick_s: float = Field(5.0, gt=0, description="how often approvals, expiries and verifications are checked")


class LogFieldSettings(BaseModel):
    """Dotted paths tried in order to find each field of a JSON log message (first match wins)."""

    ts: list[str] = Field(default_factory=lambda: ["ts", "timestamp", "@timestamp", "time", "date"])
    service: list[str] = Field(default_factory=lambda: [
        "service", "service.name", "kubernetes.labels.app.kubernetes.io/name", "kubernetes.labels.app",
        "kubernetes.pod_labels.app.kubernetes.io/name", "kubernetes.pod_labels.app",
        "kubernetes.container_name", "kubernetes.container.name"])
    level: list[str] = Field(default_factory=lambda: ["level", "severity", "log.level", "lvl", "levelname"])
    message: list[str] = Field(default_factory=lambda: ["message", "log", "msg"])


class DriftSettings(BaseModel):
    """How drift is measured; one set for every model."""

    reference_size: int = Field(1000, ge=20, description="predictions of a model version that form its reference")
    window_s: float = Field(900.0, gt=0, description="the current window compared with the reference")
    min_window: int = Field(200, ge=10, description="predictions the window needs before it is judged")
    eval_every_s: float = Field(60.0, gt=0)
    bins: int = Field(10, ge=2, description="quantile bins of numeric features for PSI")
    psi_threshold: float = Field(0.2, gt=0, description="PSI at or above this (and p < alpha) is drift")
    psi_clear: float = Field(0.1, gt=0, description="drift ends when every PSI is below this")
    alpha: float = Field(0.01, gt=0, lt=1, description="KS / chi-square p-value needed to call drift")
    onset_evals: int = Field(2, ge=1)
    clear_evals: int = Field(2, ge=1)
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    error_margin: float = Field(0.05, ge=0, description="error above the reference error by this is decay")
    min_labels: int = Field(100, ge=10, description="labelled predictions the window needs to judge its error")
    max_window: int = Field(20000, ge=100, description="the window keeps at most this many predictions")
    max_pending_labels: int = Field(100_000, ge=0, description="predictions remembered for a late label")
    max_models: int = Field(1000, ge=1)
    predictions_topic: str | None = Field(None, description="Kafka topic of a model's prediction log, read by `aiops run` with the telemetry topics; None: not read")


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "aiops"
    metrics_topic: str = "aiops.metrics"
    logs_topic: str = "aiops.logs"
    events_topic: str = "aiops.events"
    alerts_topic: str | None = None
    dead_letter_topic: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None
    max_batch: int = Field(5000, ge=1)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    # Added for the live daemon (issue 3): message forms, TLS client certs, consumer behaviour.
    metrics_format: Literal["auto", "jsonline", "prometheus_kafka_adapter"] = "auto"
    logs_format: Literal["json", "raw"] = Field("json", description="raw: one text line per message")
    log_fields: LogFieldSettings = Field(default_factory=lambda: LogFieldSettings())
    service_header: str = Field("service", description="header naming the service of a raw log line (else the key)")
    client_id: str = "aiops"
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    queue_batches: int = Field(4, ge=1, description="decoded batches buffered between consumer and pipeline")
    commit_interval_s: float = Field(1.0, ge=0, description="processed offsets are committed at most this often")


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    remote_write: bool = Field(True, description="accept Prometheus remote-write on POST /api/v1/write")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)


class AlertmanagerSettings(BaseModel):
    urls: list[str] = Field(default_factory=list)
    resend_s: float = 60.0
    generator_url: str = ""
    alertname: str = "AiopsIncident"
    timeout_s: float = Field(5.0, gt=0)


class WebhookSettings(BaseModel):
    url: str | None = None
    secret: str | None = Field(None, description="HMAC-SHA256 key; signs each body in X-Aiops-Signature")
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    buffer_size: int = Field(1000, ge=1, description="alerts waiting to be sent; the oldest are dropped beyond it")


class PrometheusPollSettings(BaseModel):
    url: str | None = None
    queries: list[str] = Field(default_factory=list, description="PromQL selectors run through query_range")
    interval_s: float = Field(30.0, gt=0)
    delay_s: float = Field(30.0, ge=0, description="stay this far behind now so late scrapes are in")
    max_points: int = Field(10000, ge=10, description="points per series per request (Prometheus caps 11000)")
    timeout_s: float = Field(30.0, gt=0)


class LiveSettings(BaseModel):
    queue_size: int = Field(10000, ge=1, description="records buffered from HTTP sources before they push back")
    shutdown_timeout_s: float = Field(20.0, gt=0, description="SIGTERM: drain, flush and commit within this time")
    idle_advance_s: float = Field(5.0, gt=0, description="with no input this long, event time follows the wall clock")
    # Added for checkpoints (issue 8): state and Kafka offsets saved together, offsets committed after.
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="wall time between checkpoints of the pipeline state (and the offset commits "
        "that follow them); one is also taken at shutdown")
    checkpoint_keep: int = Field(1, ge=0, description="older checkpoint generations kept as fallbacks")
    # Added for scale-out (issue 8, docs/scale-out.md): several instances in one consumer group.
    mode: Literal["single", "scale_out"] = Field(
        "single", description="single: one pipeline, file checkpoints; scale_out: per-partition detection with "
        "state in a Kafka changelog, one correlator (failover by a second consumer group) fed by a signals topic")
    signals_topic: str = Field("aiops.signals", description="scale_out: the internal topic of closed steps "
                               "(one partition; created if missing)")
    changelog_topic: str = Field("aiops.state", description="scale_out: compacted topic holding per-partition "
                                 "and correlator state (created if missing, with the input topics' partition count)")
    stale_s: float = Field(0.0, ge=0, description="scale_out: a partition this far (event time) behind the most "
                           "advanced one stops holding the correlator back; 0: never (it waits for the group to "
                           "move a dead owner's partitions)")


class Settings(BaseSettings):
    """All daemon settings. Build with :func:`load_settings`, never at import time."""

    model_config = SettingsConfigDict(env_prefix="AIOPS_", env_nested_delimiter="__", extra="forbid")

    rules_dir: Path = Path("rules")
    state_dir: Path = Path("state")
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    detect: DetectSettings = Field(default_factory=DetectSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    correlate: CorrelateSettings = Field(default_factory=CorrelateSettings)
    act: ActSettings = Field(default_factory=ActSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    prometheus: PrometheusPollSettings = Field(default_factory=PrometheusPollSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)


class ConfigError(Exception):
    """The configuration file or environment is invalid; the message says where."""


def load_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, an optional YAML file and the environment.

    ``env`` is the environment to read (the CLI passes ``os.environ``); ``None`` reads none,
    which keeps tests independent of the machine they run on.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: top level must be a mapping")
        file_values = loaded or {}
    env_vars = {k: v for k, v in (env or {}).items() if k.startswith("AIOPS_")}

    class _Configured(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_EnvSource(settings_cls, env_vars), _DictSource(settings_cls, file_values))

    try:
        built = _Configured()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return Settings.model_validate(built.model_dump())


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class _EnvSource(PydanticBaseSettingsSource):
    """``AIOPS_A__B=v`` -> ``{"a": {"b": "v"}}``, from an explicit mapping rather than os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._env.items():
            path = key[len("AIOPS_"):].lower().split("__")
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[path[-1]] = value
        return out
