"""Every knob of infaas in typed sections, and the one precedence that loads them: default < files < env < CLI.

Defaults are written once, here (the autoscaling sections reuse the pure policies' config classes, whose
defaults are the single source). `load_settings` layers, lowest first: the defaults, `/etc/infaas/infaas.toml`,
`$INFAAS_HOME/config.toml`, `--config FILE`, environment variables `INFAAS_<SECTION>_<KEY>` (plus a few
historical aliases such as `INFAAS_MASTER`), then CLI options. It returns the settings and, for every key,
where its value came from. Unknown keys are rejected with their path; bad values name the key and its source.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infaas_cli.config import DEFAULT_HOME, HOME_ENV
from infaas_cli.catalog.records import MAX_CACHE_MIB
from infaas_cli.errors import InfaasError
from infaas_cli.policy.autoscale import AutoscaleConfig
from infaas_cli.policy.drift import DriftConfig
from infaas_cli.policy.baselines import POLICIES, POLICY_ALIASES
from infaas_cli.policy.cluster_autoscale import ClusterAutoscaleConfig
from infaas_cli.protocol.messages import MAX_NAME, MAX_PINNED_REPLICAS

#: The host-wide file, written by the deployment (ansible / packages).
SYSTEM_CONFIG_FILE = Path("/etc/infaas/infaas.toml")
#: The per-user file, inside the data directory.
HOME_CONFIG_NAME = "config.toml"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: A daemon's --log-file rotates at this size and keeps this many old files: at most 4 × 10 MiB per daemon.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: The most freed artifacts a master remembers for workers that were away (master.artifact_tombstones_max): each
#: is one small record in its store and one digest in a returning worker's `drop_artifacts`.
MAX_ARTIFACT_TOMBSTONES = 1_000_000

#: Historical environment variables, still honoured (the canonical INFAAS_<SECTION>_<KEY> wins over them).
ENV_ALIASES = {
    "INFAAS_MASTER": "client.master",
    "INFAAS_CURVE_SECRET_KEY": "security.curve_secret_key",
    "INFAAS_MASTER_PUBLIC_KEY": "security.master_public_key",
    "INFAAS_SCALE_OUT_COMMAND": "cluster.scale_out_command",
    "INFAAS_SCALE_IN_COMMAND": "cluster.scale_in_command",
}

#: Keys holding a file or directory: `~` is expanded, and a relative path in a config file is relative to that file.
PATH_KEYS = frozenset({"master.data_dir", "master.prices_file", "worker.cache_dir", "security.curve_secret_key",
                       "security.authorized_keys", "security.master_public_key",
                       "gateway.tls_cert_file", "gateway.tls_key_file"})


class SettingsError(InfaasError):
    code = "bad_config"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{key} {message}")


_TCP_ENDPOINT = re.compile(r"tcp://(?P<host>[^\s/]+):(?P<port>\d{1,5}|\*)")


def endpoint_error(value: str) -> str | None:
    """Why `value` is not a ZeroMQ endpoint infaas can bind or connect (tcp://HOST:PORT, ipc://PATH,
    inproc://NAME), with the fix; None when it is one. Checked before ZeroMQ sees it, whose own error is opaque."""
    scheme, sep, rest = value.partition("://")
    if scheme == "tcp":
        match = _TCP_ENDPOINT.fullmatch(value)
        if match and (match["port"] == "*" or int(match["port"]) <= 65535):
            return None
        return f"{value!r} is not tcp://HOST:PORT (a port 0 … 65535), e.g. tcp://127.0.0.1:7010"
    if scheme in ("ipc", "inproc") and rest.strip():
        return None
    if scheme in ("http", "https"):
        return (f"{value!r} is an HTTP address: the master speaks ZeroMQ, e.g. tcp://127.0.0.1:7010 (http:// is "
                "the gateway's REST front, for curl or tritonclient)")
    return f"{value!r} is not a ZeroMQ endpoint; use tcp://HOST:PORT (e.g. tcp://127.0.0.1:7010) or ipc://PATH"


def _check_endpoint(key: str, value: str | None) -> None:
    problem = None if value is None else endpoint_error(value)
    _check(problem is None, key, f"must be a ZeroMQ endpoint: {problem}")


def _check_log_rotation(section: str, max_bytes: int, backups: int) -> None:
    _check(max_bytes >= 4096, f"{section}.log_max_bytes", "must be >= 4096 bytes, e.g. 10485760 (10 MiB)")
    _check(backups >= 1, f"{section}.log_backups", "must be >= 1 (rotated files kept)")


@dataclass(frozen=True)
class MasterSettings:
    client_endpoint: str = "tcp://127.0.0.1:7010"  # where clients connect (port 0: pick a free one)
    worker_endpoint: str = "tcp://127.0.0.1:7011"  # where workers connect
    data_dir: str | None = None  # the master's own data directory; default $INFAAS_HOME/master
    heartbeat_interval_s: float = 1.0  # expected worker heartbeat interval
    dead_after_missed_heartbeats: int = 3  # a worker this many heartbeats late is dead
    forget_dead_worker_s: float = 30.0  # a dead worker leaves the cluster view after this
    policy: str = "infaas"  # infaas (the full system) | fixed-peak | fixed-autoscale (baselines; static, replicate: aliases)
    prices_file: str | None = None  # hardware prices (default configs/prices.toml)
    pending_timeout_s: float = 60.0  # a query waiting this long for a worker fails
    max_attempts: int = 3  # tries of a query on different workers before it fails
    max_pending_per_client: int = 1000  # queries one client may have in flight
    max_loop_lag_ms: float = 500.0  # refuse queries (overloaded) while the loop is this far behind its sockets
    max_pending: int = 50000  # queries all clients together may have in flight
    max_waiting_replies_per_client: int = 100000  # replies held for a client that does not read yet
    max_waiting_replies: int = 250000  # replies held for all such clients together (bounds memory)
    worker_garbage_limit: int = 20  # garbage frames before a worker is disconnected
    metrics_port: int | None = None  # Prometheus /metrics on the client door's interface (None: off; 0: a free port)
    prediction_cache_mib: int = 0  # result cache per model registered without --cache-mib, MiB (0: off)
    #: Pinned at start: MODEL or VARIANT = replicas, kept loaded and warm (a model: its fastest variant at batch 1).
    min_loaded: dict[str, int] = field(default_factory=dict)
    rollout_warm_timeout_s: float = 60.0  # a roll-out switches after this even if the new version is not warm yet
    rollout_drain_timeout_s: float = 60.0  # …and unloads the old one after this even with queries in flight
    #: Artifacts a removal's sweep freed, remembered (in data_dir) to drop from the cache of a worker that was away
    #: then, when it registers or comes back; past this many the oldest are forgotten (0: none remembered).
    artifact_tombstones_max: int = 10_000
    log_level: str = "INFO"
    log_max_bytes: int = LOG_MAX_BYTES  # a --log-file rotates at this size (the gateway's too)
    log_backups: int = LOG_BACKUPS  # rotated files kept beside it (FILE.1 … FILE.N)

    def __post_init__(self) -> None:
        _check_endpoint("master.client_endpoint", self.client_endpoint)
        _check_endpoint("master.worker_endpoint", self.worker_endpoint)
        _check(self.heartbeat_interval_s > 0, "master.heartbeat_interval_s", "must be > 0 seconds")
        _check(self.dead_after_missed_heartbeats >= 1, "master.dead_after_missed_heartbeats", "must be >= 1")
        _check(self.forget_dead_worker_s >= 0, "master.forget_dead_worker_s", "must be >= 0 seconds")
        _check(self.policy in POLICIES or self.policy in POLICY_ALIASES, "master.policy",
               f"must be one of {', '.join(POLICIES)} (or {', '.join(POLICY_ALIASES)}), not {self.policy!r}")
        _check(self.pending_timeout_s > 0, "master.pending_timeout_s", "must be > 0 seconds")
        _check(self.max_attempts >= 1, "master.max_attempts", "must be >= 1")
        _check(self.max_pending_per_client >= 1, "master.max_pending_per_client", "must be >= 1")
        _check(self.max_loop_lag_ms > 0, "master.max_loop_lag_ms", "must be > 0")
        _check(self.max_pending >= self.max_pending_per_client, "master.max_pending",
               f"must be >= master.max_pending_per_client ({self.max_pending_per_client})")
        _check(self.worker_garbage_limit >= 1, "master.worker_garbage_limit", "must be >= 1")
        _check(self.metrics_port is None or 0 <= self.metrics_port <= 65535, "master.metrics_port",
               "must be a TCP port 0 … 65535 (0: a free one), or empty for no metrics endpoint")
        _check(self.max_waiting_replies_per_client >= 1, "master.max_waiting_replies_per_client", "must be >= 1")
        _check(self.max_waiting_replies >= self.max_waiting_replies_per_client, "master.max_waiting_replies",
               f"must be >= master.max_waiting_replies_per_client ({self.max_waiting_replies_per_client})")
        _check(0 <= self.prediction_cache_mib <= MAX_CACHE_MIB, "master.prediction_cache_mib",
               f"must be a size in MiB from 0 (no cache unless a model sets register --cache-mib) to {MAX_CACHE_MIB}")
        _check(self.rollout_warm_timeout_s > 0, "master.rollout_warm_timeout_s", "must be > 0 seconds, e.g. 60")
        _check(self.rollout_drain_timeout_s > 0, "master.rollout_drain_timeout_s", "must be > 0 seconds, e.g. 60")
        _check(0 <= self.artifact_tombstones_max <= MAX_ARTIFACT_TOMBSTONES, "master.artifact_tombstones_max",
               f"must be a count from 0 (forget freed artifacts at once) to {MAX_ARTIFACT_TOMBSTONES}")
        _check(self.log_level.upper() in LOG_LEVELS, "master.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        _check_log_rotation("master", self.log_max_bytes, self.log_backups)
        for name, replicas in self.min_loaded.items():
            _check(isinstance(name, str) and 0 < len(name) <= MAX_NAME, "master.min_loaded",
                   f"keys must be model or variant names of 1 to {MAX_NAME} characters, not {name!r}")
            _check(not isinstance(replicas, bool) and isinstance(replicas, int) and
                   1 <= replicas <= MAX_PINNED_REPLICAS, f"master.min_loaded.{name}",
                   f"must be a whole number of replicas from 1 to {MAX_PINNED_REPLICAS}, not {replicas!r}")


@dataclass(frozen=True)
class WorkerSettings:
    master_endpoint: str = "tcp://127.0.0.1:7011"  # the master's worker endpoint
    worker_id: str | None = None  # stable id; default a random one
    cache_dir: str | None = None  # artifact cache; default $INFAAS_HOME/worker-cache
    cores: int | None = None  # cores to offer; default those this process may use
    heartbeat_interval_s: float = 1.0  # seconds between heartbeats
    max_batch_wait_ms: float = 2.0  # longest a query waits for its batch to fill
    inline_max_ms: float = 1.0  # batches faster than this run on the receiving thread
    budget_wait_s: float = 5.0  # longest a load waits for memory / cores to free up
    metrics_window_s: float = 5.0  # window of the QPS / latency metrics in heartbeats
    master_grace_s: float = 60.0  # exit (status 3) once the master has been out of reach this long (0: never)
    log_level: str = "INFO"
    log_max_bytes: int = LOG_MAX_BYTES  # a --log-file rotates at this size
    log_backups: int = LOG_BACKUPS  # rotated files kept beside it (FILE.1 … FILE.N)

    def __post_init__(self) -> None:
        _check_endpoint("worker.master_endpoint", self.master_endpoint)
        _check(self.cores is None or self.cores >= 1, "worker.cores", "must be >= 1")
        _check(self.heartbeat_interval_s > 0, "worker.heartbeat_interval_s", "must be > 0 seconds")
        _check(self.max_batch_wait_ms >= 0, "worker.max_batch_wait_ms", "must be >= 0 ms")
        _check(self.inline_max_ms >= 0, "worker.inline_max_ms", "must be >= 0 ms")
        _check(self.budget_wait_s >= 0, "worker.budget_wait_s", "must be >= 0 seconds")
        _check(self.metrics_window_s > 0, "worker.metrics_window_s", "must be > 0 seconds")
        _check(self.master_grace_s >= 0, "worker.master_grace_s", "must be >= 0 seconds (0: never exit)")
        _check(self.log_level.upper() in LOG_LEVELS, "worker.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        _check_log_rotation("worker", self.log_max_bytes, self.log_backups)


@dataclass(frozen=True)
class SecuritySettings:
    curve_secret_key: str | None = None  # this process's .key_secret: turns CurveZMQ on
    authorized_keys: str | None = None  # master: directory of the public .key files allowed in
    master_public_key: str | None = None  # worker / client: the master's public .key

    def client_keys(self) -> tuple[str, str] | None:
        """(own .key_secret, the master's public .key) for a worker or client: both or neither."""
        if bool(self.curve_secret_key) != bool(self.master_public_key):
            raise SettingsError("CurveZMQ needs both security.curve_secret_key (--curve-secret-key, "
                                "$INFAAS_CURVE_SECRET_KEY) and security.master_public_key (--master-public-key, "
                                "$INFAAS_MASTER_PUBLIC_KEY); only one is set")
        return (self.curve_secret_key, self.master_public_key) if self.curve_secret_key else None


@dataclass(frozen=True)
class ClientSettings:
    master: str | None = None  # the master's client endpoint; default the one `infaas up` started
    timeout_s: float = 30.0  # how long a client waits for an answer

    def __post_init__(self) -> None:
        _check_endpoint("client.master", self.master)
        _check(self.timeout_s > 0, "client.timeout_s", "must be > 0 seconds")


@dataclass(frozen=True)
class GatewaySettings:
    """The Open Inference Protocol gateway (`infaas gateway`) beside the master; port 0 picks a free one."""

    host: str = "127.0.0.1"  # the interface the HTTP and gRPC listeners bind
    http_port: int = 8000  # REST (KServe v2 / Open Inference Protocol)
    grpc_port: int = 8001  # gRPC (the same protocol's GRPCInferenceService)
    tls_cert_file: str | None = None  # PEM certificate: turns TLS on for HTTP and gRPC (with tls_key_file)
    tls_key_file: str | None = None  # its PEM private key
    master: str | None = None  # the master's client endpoint; default client.master, else the one `infaas up` started

    def __post_init__(self) -> None:
        for key in ("http_port", "grpc_port"):
            _check(0 <= getattr(self, key) <= 65535, f"gateway.{key}", "must be a port, 0 … 65535 (0: a free one)")
        _check(bool(self.host), "gateway.host", "must name an interface, e.g. 127.0.0.1 or 0.0.0.0")
        _check(bool(self.tls_cert_file) == bool(self.tls_key_file), "gateway.tls_cert_file",
               "and gateway.tls_key_file turn TLS on together; set both or neither")
        _check_endpoint("gateway.master", self.master)


_CLUSTER = ClusterAutoscaleConfig()  # its defaults are the single source of the thresholds below


@dataclass(frozen=True)
class ClusterSettings:
    """Horizontal autoscaling: the pure policy's thresholds, plus the commands that add or remove a host."""

    scale_out_utilisation: float = _CLUSTER.scale_out_utilisation  # scale out when every host is above this
    scale_in_utilisation: float = _CLUSTER.scale_in_utilisation  # scale in when every host is below this
    out_window_s: float = _CLUSTER.out_window_s  # how long all hosts must be busy
    in_window_s: float = _CLUSTER.in_window_s  # how long all hosts must be idle (> out_window_s)
    backoff_s: float = _CLUSTER.backoff_s  # nothing more for this long after a scaling action
    min_workers: int = _CLUSTER.min_workers
    max_workers: int = _CLUSTER.max_workers
    scale_out_command: str | None = None  # run to add a worker host
    scale_in_command: str | None = None  # run to remove the drained host $INFAAS_WORKER_ID

    def __post_init__(self) -> None:
        self.policy()  # the policy's own checks

    def policy(self) -> ClusterAutoscaleConfig:
        """The pure policy's config from this section."""
        return ClusterAutoscaleConfig(**{f.name: getattr(self, f.name)
                                         for f in dataclasses.fields(ClusterAutoscaleConfig)})


@dataclass(frozen=True)
class Settings:
    master: MasterSettings = field(default_factory=MasterSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    drift: DriftConfig = field(default_factory=DriftConfig)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}


#: Section name -> its type, in file order.
SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings)}


def section_keys(section: str) -> dict[str, Any]:
    """Key -> type of one section."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys() -> list[str]:
    """Every key as `section.key`."""
    return [f"{s}.{k}" for s in SECTIONS for k in section_keys(s)]


def env_var(key: str) -> str:
    """The environment variable of a key: master.policy -> INFAAS_MASTER_POLICY."""
    return "INFAAS_" + key.replace(".", "_").upper()


# -- conversion -------------------------------------------------------------------------------------------------

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert_table(value: Any) -> dict[str, int]:
    """A NAME = count table: a TOML table, or `NAME=N,NAME=N` from the environment or --set; ValueError else."""
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not name.strip() for name, sep, _ in pairs):
            raise ValueError("must be NAME=N pairs separated by commas, e.g. digits-mlp=1,digits-cnn-s=2")
        value = {name.strip(): count.strip() for name, _, count in pairs}
    if not isinstance(value, dict):
        raise ValueError('must be a table of NAME = count, e.g. { "digits-mlp" = 1 }')
    table = {}
    for name, count in value.items():
        try:
            table[str(name)] = _convert(f"{name}", int, count)
        except ValueError:
            raise ValueError(f"must map each name to a whole number; {name} = {count!r} is not one") from None
    return table


def _convert(key: str, hint: Any, value: Any) -> Any:
    """A TOML value, env string or CLI value as the key's type; ValueError when it does not fit."""
    if typing.get_origin(hint) is dict:
        return _convert_table(value)
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None or (optional and isinstance(value, str) and value.strip() == ""):
        if optional:
            return None
        raise ValueError("needs a value")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("must be true or false")
    if base is int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("must be an integer")
    if base is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        else:
            raise ValueError("must be a number")
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if base is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise ValueError(f"has an unsupported type {hint}")  # a new field type: teach _convert about it


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


# -- loading ----------------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None


def _file_layer(path: Path) -> dict[str, Any]:
    """`section.key` -> raw value of one config file; unknown sections and keys rejected with their path."""
    data = _read_toml(path)
    layer: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            raise SettingsError(f"unknown section [{section}] in {path}; known sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise SettingsError(f"{section} in {path} must be a table ([{section}]), not a value")
        keys = section_keys(section)
        for key, value in table.items():
            if key not in keys:
                raise SettingsError(f"unknown key {section}.{key} in {path}; known keys of [{section}]: "
                                    f"{', '.join(keys)}")
            if f"{section}.{key}" in PATH_KEYS and isinstance(value, str) and value:
                value = str((path.parent / Path(value).expanduser()).resolve()) if not value.startswith("~") \
                    else str(Path(value).expanduser())
            layer[f"{section}.{key}"] = value
    return layer


def _env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    layer: dict[str, tuple[Any, str]] = {}
    for alias, key in ENV_ALIASES.items():
        if env.get(alias):
            layer[key] = (env[alias], alias)
    for key in all_keys():
        name = env_var(key)
        if name in env:
            layer[key] = (env[name], name)
    return layer


def config_files(config_file: str | os.PathLike[str] | None = None, home: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None, system_file: Path = SYSTEM_CONFIG_FILE) -> list[Path]:
    """The config files that apply, lowest precedence first: system, $INFAAS_HOME/config.toml, --config."""
    env = os.environ if env is None else env
    home_dir = Path(home if home is not None else env.get(HOME_ENV) or DEFAULT_HOME).expanduser()
    files = [p for p in (system_file, home_dir / HOME_CONFIG_NAME) if p.is_file()]
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise SettingsError(f"--config {path} does not exist; pass an existing TOML file "
                                "(configs/infaas.toml is a commented example)")
        files.append(path)
    return files


def load_settings(config_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None, *, home: str | os.PathLike[str] | None = None,
                  system_file: Path = SYSTEM_CONFIG_FILE) -> tuple[Settings, dict[str, str]]:
    """(settings, key -> source) from defaults < system file < $INFAAS_HOME/config.toml < config_file < env < overrides.

    `overrides` maps `section.key` to a CLI value; None means "not given". A source is "default", a file's path,
    an environment variable's name, or "cli".
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    sources = {key: "default" for key in all_keys()}
    for path in config_files(config_file, home, env, system_file):
        for key, value in _file_layer(path).items():
            raw[key], sources[key] = value, str(path)
    for key, (value, name) in _env_layer(env).items():
        raw[key], sources[key] = value, name
    return _build(raw, sources, overrides or {}, "the command-line overrides")


def override(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """The settings with some `section.key`s replaced (None: left as is), converted and checked as a load would."""
    raw = {f"{section}.{key}": value for section, values in settings.to_dict().items()
           for key, value in values.items() if value is not None}
    return _build(raw, {key: "given" for key in all_keys()}, overrides, "the overrides")[0]


def _build(raw: dict[str, Any], sources: dict[str, str], overrides: Mapping[str, Any],
           where: str) -> tuple[Settings, dict[str, str]]:
    known = set(sources)
    for key, value in overrides.items():
        if key not in known:
            raise SettingsError(f"unknown key {key} in {where}; known keys: {', '.join(sorted(known))}")
        if value is not None:
            raw[key], sources[key] = value, "cli"
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = {}
        for key, hint in section_keys(section).items():
            path = f"{section}.{key}"
            if path in raw:
                try:
                    values[key] = _convert(path, hint, raw[path])
                except ValueError as exc:
                    raise SettingsError(f"{path} {exc}, not {_describe(raw[path])} (set by {sources[path]})") from None
        try:
            sections[section] = cls(**values)
        except InfaasError as exc:
            raise SettingsError(f"{exc}{_blame(section, str(exc), sources)}") from None
    return Settings(**sections), sources


def _blame(section: str, message: str, sources: Mapping[str, str]) -> str:
    """' (key set by source, …)' for the non-default keys of a section that an error message names."""
    named = [k for k in section_keys(section)
             if re.search(rf"(?<![\w.]){re.escape(k)}\b|\b{re.escape(section)}\.{re.escape(k)}\b", message)]
    set_by = [f"{section}.{k} set by {sources[f'{section}.{k}']}" for k in named
              if sources[f"{section}.{k}"] != "default"]
    return f" ({'; '.join(set_by)})" if set_by else ""


def with_home_defaults(settings: Settings, home: str | os.PathLike[str]) -> Settings:
    """Fill the directories that default to places under the data directory."""
    home = Path(home)
    master, worker = settings.master, settings.worker
    if master.data_dir is None:
        master = dataclasses.replace(master, data_dir=str(home / "master"))
    if worker.cache_dir is None:
        worker = dataclasses.replace(worker, cache_dir=str(home / "worker-cache"))
    return dataclasses.replace(settings, master=master, worker=worker)


# -- writing ----------------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_toml(settings: Settings, *, only_changed: bool = False) -> str:
    """The settings as a config file that loads back to the same values (unset optional keys are left out)."""
    defaults = Settings().to_dict()
    lines: list[str] = []
    for section, values in settings.to_dict().items():
        body = [f"{k} = {_toml_value(v)}" for k, v in values.items()
                if v is not None and not (only_changed and defaults[section][k] == v)]
        if body:
            lines += ([""] if lines else []) + [f"[{section}]", *body]
    return "\n".join(lines) + "\n"
