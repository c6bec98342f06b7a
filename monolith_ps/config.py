"""The cluster config file: tables, dense arrays, server, snapshot and sync settings.

One YAML or JSON file describes a whole cluster and is read by every process of it
(servers, the sync agent, the local launcher, the Helm ConfigMap mounts the same file)::

    tables:
      - {name: user_id, dim: 64, optimizer: adagrad, optimizer_args: {lr: 0.05},
         initializer: normal, admit_after: 2, ttl_seconds: 604800, serving_dtype: float16}
    dense:
      - {name: mlp, size: 4096, optimizer: adam, optimizer_args: {lr: 0.001}}
    server: {max_message_bytes: 67108864, expiry_sweep_interval: 60s}
    snapshot: {full_interval: 1h, incremental_interval: 5m, keep: 3}
    sync: {sparse_interval: 5m, dense_interval: 24h, chunk_rows: 65536}

Every section but ``tables`` is optional. Unknown fields are errors, so a typo never
passes silently; every error is a ``ConfigError`` naming the field path
(``tables[1].dim``). Every field, its default, limits and cost: ``docs/config.md`` (a test
fails when a field of these dataclasses is missing there).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from monolith_ps.errors import ConfigError
from monolith_ps.table_config import DENSE_INITIALIZERS, TableConfig, validate_training_fields

__all__ = [
    "CALLER_ROLES",
    "AuthConfig",
    "ClusterConfig",
    "ConfigError",
    "DenseConfig",
    "ServerConfig",
    "SnapshotConfig",
    "SyncConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_TABLE_PREFIX = re.compile(r"^tables\[[^\]]*\]")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Fields of a dense array checked by validate_training_fields, as a table's are.
_TRAINING_FIELDS = frozenset(
    ("optimizer", "optimizer_args", "initializer", "initializer_args", "seed")
)


def parse_duration(value: str | float | int, field: str = "duration") -> float:
    """Seconds from ``"300s"``, ``"5m"``, ``"1.5h"``, ``"2d"``, ``"250ms"`` or a number."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a duration such as 300s, 5m or 24h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ConfigError(f"{field}: expected a duration such as 300s, 5m or 24h, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{field}: duration must be finite and >= 0, got {value!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """A named dense float32 array, held by training shard 0 and updated by its optimizer."""

    name: str
    size: int
    optimizer: str = "sgd"
    optimizer_args: Mapping[str, float] = dataclasses.field(default_factory=dict)
    initializer: str = "zeros"
    initializer_args: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Limits and background work of every PS server."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_batch_keys: int = 1 << 20  # keys in one Lookup or Push, all tables together
    expiry_sweep_interval: float = 60.0
    push_dedup_window: int = 100_000  # remembered request ids
    max_workers: int = 0  # gRPC handler threads; 0 = 4 per core, at least 16
    # Delta streams (ExportDelta, ApplyDelta) of each kind open at once; 0 = half the
    # handler threads. More are refused with RESOURCE_EXHAUSTED, so threads stay free for
    # health and the unary RPCs.
    max_streams: int = 0
    stream_idle_timeout: float = 30.0  # a stream whose peer moves nothing this long is cut
    stream_max_duration: float = 900.0  # no stream lives longer
    # Bytes that exports and full resyncs in flight may hold together (a full resync stages
    # the new generation of a table within it; past it the stream is refused).
    stream_memory_bytes: int = 4 << 30
    # Smallest chunk an export cuts, in row bytes: a smaller ExportDelta max_chunk_rows is
    # raised to it, so a client cannot make the server encode one message per row. 0 = none.
    min_chunk_bytes: int = 64 << 10


@dataclasses.dataclass(frozen=True)
class SnapshotConfig:
    """When training servers write snapshots and how many full chains they keep."""

    full_interval: float = 3600.0
    incremental_interval: float = 300.0
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """How often the sync agent moves sparse rows and dense arrays to serving."""

    sparse_interval: float = 300.0
    dense_interval: float = 86400.0
    chunk_rows: int = 65536


CALLER_ROLES = ("trainer", "reader", "agent", "admin")


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Who a caller is, for per-RPC authorization (switched on and off by the server's
    ``--auth`` flag, not here).

    ``identities`` maps a client certificate's subject CN or a SAN (DNS name, URI, e-mail
    or IP as written in the certificate) to a role. ``token_files`` and ``token_env`` name,
    per role, a file or an environment variable holding that role's bearer tokens (one a
    line), so no token is written in the config itself.
    """

    identities: Mapping[str, str] = dataclasses.field(default_factory=dict)
    token_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    token_env: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The whole config file, validated."""

    tables: tuple[TableConfig, ...]
    dense: tuple[DenseConfig, ...] = ()
    server: ServerConfig = ServerConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    sync: SyncConfig = SyncConfig()
    auth: AuthConfig = AuthConfig()

    def table(self, name: str) -> TableConfig:
        """The config of table ``name`` (``KeyError`` naming it when absent)."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"no table named {name!r} in the config")


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or JSON config file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if path.endswith(".json"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    else:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return parse_config(raw)


def parse_config(raw: Any) -> ClusterConfig:
    """Validate an already parsed config mapping (the contents of the file)."""
    _require_mapping(raw, "config")
    _reject_unknown(raw, {"tables", "dense", "server", "snapshot", "sync", "auth"}, "")
    if "tables" not in raw:
        raise ConfigError("tables: required (a list of table definitions)")
    tables = _parse_tables(raw["tables"])
    dense = _parse_dense(raw.get("dense") or [])
    server = _parse_section(raw.get("server"), ServerConfig, "server")
    snapshot = _parse_section(raw.get("snapshot"), SnapshotConfig, "snapshot")
    sync = _parse_section(raw.get("sync"), SyncConfig, "sync")
    auth = _parse_auth(raw.get("auth"))
    for where, value, minimum in (
        ("server.max_message_bytes", server.max_message_bytes, 1 << 16),
        ("server.max_batch_keys", server.max_batch_keys, 1),
        ("server.expiry_sweep_interval", server.expiry_sweep_interval, 0.001),
        ("server.stream_idle_timeout", server.stream_idle_timeout, 0.05),
        ("server.stream_max_duration", server.stream_max_duration, 0.05),
        ("server.stream_memory_bytes", server.stream_memory_bytes, 1 << 16),
        ("server.min_chunk_bytes", server.min_chunk_bytes, 0),
        ("snapshot.full_interval", snapshot.full_interval, 0.001),
        ("snapshot.incremental_interval", snapshot.incremental_interval, 0.001),
        ("snapshot.keep", snapshot.keep, 1),
        ("sync.sparse_interval", sync.sparse_interval, 0.001),
        ("sync.dense_interval", sync.dense_interval, 0.001),
        ("sync.chunk_rows", sync.chunk_rows, 1),
    ):
        if value < minimum:
            raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return ClusterConfig(
        tables=tables, dense=dense, server=server, snapshot=snapshot, sync=sync, auth=auth
    )


def config_to_dict(config: ClusterConfig) -> dict[str, Any]:
    """The plain mapping that ``parse_config`` turns back into ``config``."""
    return {
        "tables": [table.to_dict() for table in config.tables],
        "dense": [
            {
                **dataclasses.asdict(dense),
                "optimizer_args": dict(dense.optimizer_args),
                "initializer_args": dict(dense.initializer_args),
            }
            for dense in config.dense
        ],
        "server": dataclasses.asdict(config.server),
        "snapshot": dataclasses.asdict(config.snapshot),
        "sync": dataclasses.asdict(config.sync),
        "auth": {
            "identities": dict(config.auth.identities),
            "token_files": dict(config.auth.token_files),
            "token_env": dict(config.auth.token_env),
        },
    }


def _parse_auth(raw: Any) -> AuthConfig:
    if raw is None:
        return AuthConfig()
    _require_mapping(raw, "auth")
    _reject_unknown(raw, {"identities", "token_files", "token_env"}, "auth")
    parsed: dict[str, dict[str, str]] = {}
    for section in ("identities", "token_files", "token_env"):
        entries = raw.get(section) or {}
        _require_mapping(entries, f"auth.{section}")
        for key, value in entries.items():
            where = f"auth.{section}.{key}"
            if not isinstance(key, str) or not key or not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
            role = value if section == "identities" else key
            if role not in CALLER_ROLES:
                raise ConfigError(
                    f"{where}: unknown role {role!r} (roles: {', '.join(CALLER_ROLES)})"
                )
        parsed[section] = dict(entries)
    return AuthConfig(**parsed)


def _parse_tables(raw: Any) -> tuple[TableConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("tables: expected a non-empty list of table definitions")
    tables = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"tables[{i}]"
        _require_mapping(entry, where)
        try:
            table = TableConfig.from_dict(dict(entry))
        except (ValueError, TypeError) as exc:
            # The table names itself "tables[<name>]"; the file reader knows the position.
            message = _TABLE_PREFIX.sub(where, _message(exc), count=1)
            if not message.startswith(where):
                message = f"{where}: {message}"
            raise ConfigError(message) from exc
        if table.name in seen:
            raise ConfigError(f"{where}.name: duplicate table name {table.name!r}")
        seen.add(table.name)
        tables.append(table)
    return tuple(tables)


def _parse_dense(raw: Any) -> tuple[DenseConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("dense: expected a list of dense array definitions")
    arrays = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"dense[{i}]"
        dense = _parse_section(entry, DenseConfig, where, checked_later=_TRAINING_FIELDS)
        if not dense.name or not isinstance(dense.name, str):
            raise ConfigError(f"{where}.name: expected a non-empty string")
        if dense.name in seen:
            raise ConfigError(f"{where}.name: duplicate dense array name {dense.name!r}")
        if dense.size < 1:
            raise ConfigError(f"{where}.size: must be >= 1, got {dense.size}")
        validate_training_fields(
            where,
            dense.optimizer,
            dense.optimizer_args,
            dense.initializer,
            dense.initializer_args,
            DENSE_INITIALIZERS,
            dense.seed,
        )
        seen.add(dense.name)
        arrays.append(dense)
    return tuple(arrays)


def _parse_section(
    raw: Any, cls: type, where: str, checked_later: frozenset[str] = frozenset()
) -> Any:
    """A frozen dataclass from a mapping, checking key names and the types of the fields
    not in ``checked_later`` (those the caller checks itself)."""
    if raw is None:
        return cls()
    _require_mapping(raw, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, set(fields), where)
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in raw:
            raise ConfigError(f"{where}.{name}: required")
    values = {}
    for name, value in raw.items():
        if name in checked_later:
            values[name] = value
        else:
            values[name] = _coerce(value, fields[name], f"{where}.{name}")
    return cls(**values)


def _coerce(value: Any, field: dataclasses.Field, where: str) -> Any:
    default = field.default
    annotation = str(field.type)
    if annotation == "float":  # every float of a section is a duration
        return parse_duration(value, where)
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation == "int" or isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must be >= 0, got {value}")
        return value
    raise AssertionError(f"no coercion for {where} ({annotation})")  # pragma: no cover


def _require_mapping(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")


def _reject_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
        )


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__
