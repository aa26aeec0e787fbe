"""The node daemon's configuration: one TOML file, validated by pydantic, overridable from the environment.

Every key can be overridden by an environment variable ``GREENFERRY_<SECTION>__<KEY>`` (nested sections
join with ``__``, e.g. ``GREENFERRY_MQTT__PORT=1884`` or ``GREENFERRY_SIGNALS__PRODUCTION__TOPIC=pv/w``).
Environment values win over the file. Errors name the file (or variable) and the field.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self

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
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from greenferry.core.signals import SignalKind
from greenferry.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "DaemonConfig",
    "DrConfig",
    "ElasticGroupConfig",
    "HttpConfig",
    "InfluxTelemetryConfig",
    "MigrationConfig",
    "MqttConfig",
    "NodeConfig",
    "OpenAdrConfig",
    "PeerConfig",
    "PeerTlsConfig",
    "PowerConfig",
    "SignalConfig",
    "SignalsConfig",
    "SqliteTelemetryConfig",
    "TlsConfig",
    "load_config",
]

ENV_PREFIX = "GREENFERRY_"
MAX_CONFIG_BYTES = 1024 * 1024
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # node names appear in MQTT topics and file names
_TOPIC_FORBIDDEN = ("+", "#", "\x00")


# The environment that overrides the file in the current load_config call (os.environ by default).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("greenferry_config_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        return parse_env_vars(
            os.environ if environ is None else environ,
            self.case_sensitive,
            self.env_ignore_empty,
            self.env_parse_none_str,
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Section):
    """[node]: who this node is and where it keeps its state."""

    name: str = Field(pattern=_NAME_RE, description="Node name, unique in the fleet (used in MQTT topics).")
    site: str = Field(pattern=_NAME_RE, description="Site (micro-datacenter) this node belongs to.")
    hardware_profile: str = Field("h100-sxm", description="Built-in profile name or a profile YAML path.")
    gpu_count: int = Field(1, ge=0, le=64, description="GPUs on this node (used by the model power meter).")
    data_dir: Path = Field(Path("/var/lib/greenferry"), description="State: spool, SQLite, journals.")
    policy: str = Field("lookahead", description="Orchestration policy name (see `greenferry simulate`).")
    decision_interval_s: float = Field(
        10.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between policy decisions."
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from greenferry.core.policy import policy_names

        names = policy_names()
        if value not in names:
            raise ValueError(f"unknown policy {value!r}; known: {', '.join(names)}")
        return value

    @field_validator("hardware_profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        from greenferry.hardware_profiles import resolve_profile

        resolve_profile(value)  # raises ConfigError (a ValueError) naming the problem
        return value


class TlsConfig(_Section):
    """[mqtt.tls]: server verification and optional client certificate."""

    ca_file: Path | None = Field(None, description="CA bundle to verify the broker (None: system store).")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(_Section):
    """[mqtt]: the broker the node subscribes to and publishes its status on."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    username: str | None = Field(None, description="Username, if the broker asks for one.")
    password: SecretStr | None = Field(None, description="Password (prefer GREENFERRY_MQTT__PASSWORD).")
    tls: TlsConfig | None = Field(None, description="TLS settings; a [mqtt.tls] section turns TLS on.")
    client_id: str | None = Field(None, description="Default: greenferry-<node name>.")
    topic_prefix: str = Field(
        "greenferry/v1", min_length=1, description="Prefix of the topics greenferry publishes."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval (s).")
    reconnect_min_s: float = Field(
        0.2, gt=0, le=60, allow_inf_nan=False, description="Shortest delay before a reconnect (s)."
    )
    reconnect_max_s: float = Field(
        5.0, gt=0, le=600, allow_inf_nan=False, description="Longest delay between reconnects (s)."
    )
    max_payload_bytes: int = Field(
        256 * 1024, ge=64, le=16 * 1024 * 1024, description="Larger payloads are rejected unread."
    )
    status_interval_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="Seconds between refreshes of the retained status (surplus, power, stale signals).",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        _check_topic(value)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _delays(self) -> Self:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        return self


PayloadFormat = Literal["number", "json", "greenferry"]


class SignalConfig(_Section):
    """[signals.<kind>]: where one signal comes from and how to read it."""

    topic: str = Field(min_length=1, description="MQTT topic (wildcards allowed for subscription).")
    format: PayloadFormat = Field(
        "number",
        description="number: a plain number (Tasmota/evcc/HA); json: a number at `field`; "
        "greenferry: the documented greenferry schema for this kind.",
    )
    field: str | None = Field(None, description="Dotted path to the value in JSON, e.g. ENERGY.Power.")
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="Factor to SI (1000 for kW).")
    max_age_s: float = Field(300.0, gt=0, description="A reading older than this is stale (s).")
    qos: Literal[0, 1, 2] = Field(1, description="Subscription QoS.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("topic must not contain NUL")
        return value

    @model_validator(mode="after")
    def _field_for_json(self) -> Self:
        if self.format == "json" and not self.field:
            raise ValueError("format 'json' needs `field`, the dotted path to the value")
        if self.format != "json" and self.field:
            raise ValueError("`field` only applies to format 'json'")
        if not math.isfinite(self.max_age_s):
            raise ValueError("max_age_s must be finite")
        return self


class SignalsConfig(_Section):
    """[signals]: every signal is optional; a missing one is simply not known."""

    production: SignalConfig | None = None
    load: SignalConfig | None = None
    surplus_forecast: SignalConfig | None = None
    carbon: SignalConfig | None = None
    price: SignalConfig | None = None
    demand_response: SignalConfig | None = None

    def configured(self) -> dict[SignalKind, SignalConfig]:
        """The configured signals by kind."""
        out: dict[SignalKind, SignalConfig] = {}
        for kind in SignalKind:
            signal = getattr(self, kind.value)
            if signal is not None:
                out[kind] = signal
        return out


class InfluxTelemetryConfig(_Section):
    """[telemetry] type = "influxdb": InfluxDB 2, or anything speaking /api/v2/write (VictoriaMetrics)."""

    type: Literal["influxdb"] = Field(description="Selects this sink.")
    url: str = Field(pattern=r"^https?://", description="e.g. http://influx.example:8086")
    token: SecretStr = Field(
        SecretStr(""), description="API token (prefer GREENFERRY_TELEMETRY__TOKEN); empty for none."
    )
    org: str = Field("greenferry", description="InfluxDB organisation.")
    bucket: str = Field("greenferry", description="InfluxDB bucket.")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Points per write request at most.")
    flush_interval_s: float = Field(
        1.0, gt=0, le=600, allow_inf_nan=False, description="Longest a point waits before a write (s)."
    )
    gzip: bool = Field(True, description="Compress write requests.")
    timeout_s: float = Field(
        10.0, gt=0, le=300, allow_inf_nan=False, description="Timeout of one write request (s)."
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=64 * 1024,
        description="Disk spool bound while the server is unreachable (bytes); the oldest points go first.",
    )
    sample_interval_s: float = Field(
        5.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between node and GPU telemetry points."
    )


class SqliteTelemetryConfig(_Section):
    """[telemetry] type = "sqlite" (the default): a local store, read with `greenferry telemetry export`."""

    type: Literal["sqlite"] = Field("sqlite", description="Selects this sink (the default).")
    path: Path | None = Field(None, description="Default: <data_dir>/telemetry.sqlite.")
    retention_s: float = Field(
        7 * 86400.0, gt=0, allow_inf_nan=False, description="Points older than this are deleted (s)."
    )
    sample_interval_s: float = Field(
        5.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between node and GPU telemetry points."
    )


TelemetryConfig = Annotated[InfluxTelemetryConfig | SqliteTelemetryConfig, Field(discriminator="type")]


class PowerConfig(_Section):
    """[power]: how GPU and host power are measured."""

    source: Literal["auto", "nvml", "model"] = Field(
        "auto", description="auto: NVML when it loads, else the hardware-profile model (one log line)."
    )
    interval_s: float = Field(
        1.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between power readings."
    )
    rapl: bool = Field(True, description="Read host CPU power from /sys/class/powercap when readable.")
    gpu_indices: list[int] | None = Field(None, description="NVML device indices to use (default: all).")


class HttpConfig(_Section):
    """[http]: the node endpoint (/healthz, /readyz, /metrics, /v1/status)."""

    enabled: bool = Field(True, description="Serve the node endpoint.")
    host: str = Field("127.0.0.1", description="Listen address (0.0.0.0 in containers).")
    port: int = Field(9470, ge=0, le=65535, description="0 picks a free port (tests).")


class PeerTlsConfig(_Section):
    """[peer.tls]: this node's certificate for mutual TLS with its peers (`greenferry certs issue`)."""

    ca_file: Path = Field(description="The cluster CA certificate (PEM): peers must be signed by it.")
    cert_file: Path = Field(description="This node's certificate (PEM), signed by the cluster CA.")
    key_file: Path = Field(description="This node's private key (PEM, mode 0600); also signs manifests.")


class PeerConfig(_Section):
    """[peer]: the peer API other daemons call to negotiate migrations and send checkpoints."""

    host: str = Field("127.0.0.1", description="Listen address of the peer API.")
    port: int = Field(9471, ge=0, le=65535, description="Listen port (0 picks a free port: tests, demo).")
    advertise_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL peers use to reach this node (default: built from host and the bound port).",
    )
    tls: PeerTlsConfig | None = Field(None, description="Mutual TLS; required unless `insecure` is true.")
    insecure: bool = Field(False, description="Plain HTTP without authentication: local demos only.")
    advert_interval_s: float = Field(
        10.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds between state adverts on MQTT."
    )
    advert_max_age_s: float = Field(
        60.0, gt=0, le=86400, allow_inf_nan=False, description="A peer silent this long is ignored."
    )
    default_bandwidth_bps: float = Field(
        100e6,
        gt=0,
        allow_inf_nan=False,
        description="Assumed bandwidth to a peer before a transfer measured it.",
    )
    streams: int = Field(4, ge=1, le=64, description="Parallel streams per checkpoint transfer.")
    compress: bool = Field(False, description="zstd-compress chunks when both ends support it.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=2**31, description="Largest request body the peer API accepts."
    )

    @model_validator(mode="after")
    def _auth(self) -> Self:
        if self.tls is None and not self.insecure:
            raise ValueError("[peer] needs a [peer.tls] section (mutual TLS), or insecure = true for demos")
        if self.tls is not None and self.insecure:
            raise ValueError("[peer] has both tls and insecure = true; choose one")
        return self


class MigrationConfig(_Section):
    """[migration]: the feasibility model's parameters and the protocol's time limits."""

    alpha: float = Field(
        0.1, gt=0, le=1, allow_inf_nan=False, description="Share of the window a migration may use."
    )
    checkpoint_write_s: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="Expected time to write a checkpoint (s)."
    )
    restore_s: float = Field(30.0, ge=0, allow_inf_nan=False, description="Expected restore time (s).")
    transfer_efficiency: float = Field(
        0.9, gt=0, le=1, allow_inf_nan=False, description="Share of the bandwidth a transfer achieves."
    )
    network_energy_j_per_byte: float = Field(
        8e-8, ge=0, allow_inf_nan=False, description="Network energy per byte moved (J/B)."
    )
    forecast_step_s: float = Field(
        300.0, ge=1, le=3600, allow_inf_nan=False, description="Epoch length of the policies' forecast (s)."
    )
    horizon_s: float = Field(
        86400.0, ge=60, le=7 * 86400, allow_inf_nan=False, description="How far ahead policies plan (s)."
    )
    deadline_factor: float = Field(
        3.0,
        ge=1,
        le=100,
        allow_inf_nan=False,
        description="A migration aborts after this many times its predicted duration (plus slack_s).",
    )
    slack_s: float = Field(
        60.0, ge=1, le=3600, allow_inf_nan=False, description="Fixed slack added to every deadline (s)."
    )
    confirm_timeout_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="A destination that started a job stops it if the source does not confirm within this.",
    )


class DrConfig(_Section):
    """[dr]: how the node answers grid demand-response events (MQTT ``demand_response`` signal, OpenADR).

    Each event is turned into a power target; the planner meets it with the cheapest mix of GPU power caps,
    pausing jobs at a checkpoint and migrating jobs away, or opts out when nothing suffices.
    """

    enabled: bool = Field(True, description="Act on demand-response events (false: always opt out).")
    simple_shed_fractions: list[float] = Field(
        [0.0, 0.25, 0.5, 1.0],
        min_length=4,
        max_length=4,
        description="Share of the node's flexible GPU power shed for SIMPLE levels 0, 1, 2, 3.",
    )
    price_threshold_per_kwh: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="A PRICE at or above this is answered like SIMPLE level `price_level` (None: ignored).",
    )
    price_level: int = Field(1, ge=0, le=3, description="SIMPLE level a price above the threshold maps to.")
    allow_power_cap: bool = Field(True, description="The planner may cap GPU power limits (NVML).")
    allow_pause: bool = Field(True, description="The planner may pause jobs at a checkpoint.")
    allow_migrate: bool = Field(True, description="The planner may migrate jobs away (needs [peer]).")
    min_delivery_fraction: float = Field(
        0.95,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Opt in only when the plan delivers at least this share of the requested reduction.",
    )
    baseline_window_s: float = Field(
        300.0, ge=1, le=86400, allow_inf_nan=False, description="Power averaged before an event (s)."
    )


class OpenAdrConfig(_Section):
    """[openadr]: an OpenADR 2.0b VEN (optional extra ``greenferry[openadr]``, openleadr) for one VTN."""

    vtn_url: str = Field(
        pattern=r"^https?://", description="The VTN's OpenADR endpoint, e.g. https://vtn/OpenADR2/Simple/2.0b"
    )
    ven_name: str = Field(min_length=1, max_length=256, description="This VEN's name as the VTN knows it.")
    ven_id: str | None = Field(
        None, max_length=256, description="Registered VEN id (None: the VTN assigns one)."
    )
    poll_interval_s: float = Field(
        10.0, ge=0.1, le=3600, allow_inf_nan=False, description="How often the VEN polls the VTN (s)."
    )
    report_interval_s: float = Field(
        60.0, ge=1, le=86400, allow_inf_nan=False, description="How often measured load is reported (s)."
    )
    cert_file: Path | None = Field(None, description="VEN certificate (PEM) for TLS and XML signatures.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the VEN certificate.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the VTN (None: system store).")
    vtn_fingerprint: str | None = Field(
        None, description="Fingerprint of the VTN certificate whose signatures are accepted."
    )

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("[openadr] cert_file and key_file go together")
        return self


# torchrun --rdzv-conf defaults: a heartbeat window of 6 x 5 s (a shorter one split a job in two in tests).
_DEFAULT_RDZV_CONF: dict[str, str | int | float] = {
    "last_call_timeout": 5,
    "keep_alive_interval": 5,
    "keep_alive_max_attempt": 6,
    "join_timeout": 600,
}


class ElasticGroupConfig(_Section):
    """[[elastic]]: this node's share of an elastic data-parallel job (torchrun, c10d rendezvous).

    The node joins the job (starts a torchrun agent with ``nproc_per_node`` workers) while its surplus
    covers its share, and leaves (SIGTERM to the agent, after a committed step) when it stops doing so.
    Every member of a group lists the same ``name``, ``command`` and ``rendezvous_endpoint``; exactly one
    hosts the rendezvous store (``host_store``). See docs/distributed.md.
    """

    name: str = Field(pattern=_NAME_RE, description="The job's name: torchrun's --rdzv-id and MQTT topics.")
    command: list[str] = Field(
        min_length=1,
        max_length=1000,
        description="The training script and its arguments, as torchrun runs it.",
    )
    nproc_per_node: int = Field(1, ge=1, le=64, description="Workers (GPUs) this node contributes.")
    max_nodes: int = Field(
        8, ge=1, le=1024, description="Most nodes in the job at once (torchrun --nnodes=1:N)."
    )
    rendezvous_endpoint: str = Field(
        pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$", description="host:port of the c10d rendezvous store."
    )
    host_store: bool = Field(False, description="This node runs the rendezvous store (one member per job).")
    store_command: list[str] | None = Field(
        None,
        description="Command that serves the store on {port} (default: python -m greenferry.elastic_store).",
    )
    join_surplus_w: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Surplus needed to join (default: the workers' training power plus the host share).",
    )
    join_delay_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description="Surplus must last this long before joining (s).",
    )
    leave_delay_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description="A shortfall must last this long before leaving (s).",
    )
    stop_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Wait for the agent to leave before killing it (s).",
    )
    max_restarts: int = Field(100, ge=0, le=100_000, description="torchrun --max-restarts.")
    rdzv_conf: dict[str, str | int | float] = Field(
        default_factory=lambda: dict(_DEFAULT_RDZV_CONF),
        description="torchrun --rdzv-conf entries (is_host=false is always added).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for the agent and workers."
    )

    @field_validator("rendezvous_endpoint")
    @classmethod
    def _port(cls, value: str) -> str:
        port = int(value.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1..65535")
        return value


class DaemonConfig(BaseSettings):
    """The whole node configuration (node.toml)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    node: NodeConfig
    mqtt: MqttConfig | None = None
    signals: SignalsConfig = SignalsConfig()
    telemetry: TelemetryConfig = SqliteTelemetryConfig()
    power: PowerConfig = PowerConfig()
    http: HttpConfig = HttpConfig()
    peer: PeerConfig | None = Field(None, description="The peer API; without it the node never migrates.")
    migration: MigrationConfig = MigrationConfig()
    dr: DrConfig = DrConfig()
    openadr: OpenAdrConfig | None = Field(
        None, description="An OpenADR 2.0b VEN; without it only MQTT events."
    )
    elastic: list[ElasticGroupConfig] = Field(
        default_factory=list, description="Elastic jobs this node takes a share of while it has surplus."
    )
    shutdown_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Longest a graceful shutdown may take before the remaining tasks are cancelled (s).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file (passed as init values); no .env or secrets dir."""
        return (_MappingEnvSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _signals_need_broker(self) -> Self:
        if self.signals.configured() and self.mqtt is None:
            raise ValueError("signals are configured but there is no [mqtt] section to receive them")
        if self.peer is not None and self.mqtt is None:
            raise ValueError("[peer] needs an [mqtt] section: peers find each other through MQTT adverts")
        return self

    @property
    def telemetry_sqlite_path(self) -> Path:
        """Where the SQLite telemetry store lives (also used as the spool directory's parent)."""
        if isinstance(self.telemetry, SqliteTelemetryConfig) and self.telemetry.path is not None:
            return self.telemetry.path
        return self.node.data_dir / "telemetry.sqlite"

    @property
    def client_id(self) -> str:
        """MQTT client id."""
        if self.mqtt is not None and self.mqtt.client_id:
            return self.mqtt.client_id
        return f"greenferry-{self.node.name}"

    @property
    def mqtt_prefix(self) -> str:
        """Prefix of greenferry's own topics (greenferry/v1 without an [mqtt] section)."""
        return self.mqtt.topic_prefix if self.mqtt is not None else "greenferry/v1"

    def status_topic(self) -> str:
        """Retained status topic, greenferry/v1/nodes/{node}/status."""
        prefix = self.mqtt.topic_prefix if self.mqtt is not None else "greenferry/v1"
        return f"{prefix}/nodes/{self.node.name}/status"


def _check_topic(topic: str) -> None:
    for bad in _TOPIC_FORBIDDEN:
        if bad in topic:
            raise ValueError(f"topic prefix must not contain {bad!r}")


def _format_errors(source: str, err: ValidationError, environ: Mapping[str, str]) -> str:
    lines = [f"{source}: {err.error_count()} problem(s)"]
    env_keys = {k.upper() for k in environ if k.upper().startswith(ENV_PREFIX)}
    for item in err.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        env_name = ENV_PREFIX + "__".join(str(p).upper() for p in item["loc"])
        origin = f" (from ${env_name})" if env_name in env_keys else ""
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {loc}{origin}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read, override from the environment, and validate a node config.

    Args:
        path: the TOML file.
        environ: environment to read overrides from (default: ``os.environ``).

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or does not validate; the message lists
            every problem with its dotted field path.
    """
    path = Path(path)
    env = dict(os.environ if environ is None else environ)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a config file (limit 1 MiB)")
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    return config_from_mapping(data, source=str(path), environ=env)


def config_from_mapping(
    data: Mapping[str, Any], *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> DaemonConfig:
    """Validate an already parsed config, with environment overrides (see :func:`load_config`)."""
    env = dict(os.environ if environ is None else environ)
    token = _ENVIRON.set(env)
    try:
        return DaemonConfig(**data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err, env)) from err
    except ValueError as err:  # e.g. an env var that is not valid JSON for a nested section
        raise ConfigError(f"{source}: {err}") from err
    finally:
        _ENVIRON.reset(token)
