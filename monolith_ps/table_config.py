"""Table configuration: one validated, JSON-round-trippable dataclass per table.

Plain data: validating a config imports no kernel, so every process (the agent, the
client, the launcher) can read the cluster's config cheaply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from monolith_ps.errors import ConfigError
from monolith_ps.optimizer_specs import INITIALIZERS, OPTIMIZERS

__all__ = [
    "DENSE_INITIALIZERS",
    "EVICTION_POLICIES",
    "SERVING_DTYPES",
    "TableConfig",
    "validate_training_fields",
]

EVICTION_POLICIES = ("lru", "lfu")
SERVING_DTYPES = ("float32", "float16")
DENSE_INITIALIZERS = ("zeros", "constant", "uniform", "normal")
_U64_MAX = 2**64 - 1

# numeric hyper-parameters and their allowed ranges, checked for every optimizer that has
# them; ``nesterov`` is the one boolean argument (true or false)
_ARG_RULES: dict[str, tuple[str, float, float]] = {
    # name: (rule, low, high); rule "gt" = low < x <= high, "ge" = low <= x <= high,
    # "ge_lt" = low <= x < high
    "lr": ("gt", 0.0, math.inf),
    "alpha": ("gt", 0.0, math.inf),
    "momentum": ("ge_lt", 0.0, 1.0),
    "initial_accumulator": ("ge", 0.0, math.inf),
    "eps": ("ge", 0.0, math.inf),
    "beta1": ("ge_lt", 0.0, 1.0),
    "beta2": ("ge_lt", 0.0, 1.0),
    "beta": ("ge", 0.0, math.inf),
    "l1": ("ge", 0.0, math.inf),
    "l2": ("ge", 0.0, math.inf),
    "lr_power": ("ge", -math.inf, 0.0),
}


@dataclass(frozen=True)
class TableConfig:
    """How one embedding table stores, initializes, admits, expires and trains its rows.

    ``name`` and ``dim`` are required; everything else has a default. Construction
    validates every field and raises :class:`ConfigError` naming the field.
    ``admit_after``: a key gets a row at its ``admit_after``-th occurrence in training
    lookups (pushes do not count; 1 admits every key at once), counted in a count-min
    sketch of ``sketch_width`` counters per row; ``None`` (the default) sizes the sketch to
    the keys it has counted, from 1,024 counters a row up to 2**20, so a small table keeps
    a small sketch. ``eviction: lfu`` with ``max_rows`` uses the same sketch: a key enters
    with the count the sketch holds for it, so a key that keeps coming back keeps its row.
    """

    name: str
    dim: int
    optimizer: str = "adagrad"
    optimizer_args: dict[str, float] = field(default_factory=dict)
    initializer: str = "normal"
    initializer_args: dict[str, float] = field(default_factory=dict)
    admit_after: int = 1
    ttl_seconds: float | None = None
    max_rows: int | None = None
    eviction: str = "lru"
    serving_dtype: str = "float32"
    lr_frequency_power: float = 0.0
    seed: int = 0
    tombstone_log_size: int = 1_000_000
    sketch_width: int | None = None
    memory_budget_bytes: int | None = None
    cold_dir: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableConfig:
        """Build a config from a parsed YAML/JSON mapping; unknown or missing fields raise."""
        if not isinstance(d, dict):
            raise ConfigError(f"tables[?]: must be a mapping, got {type(d).__name__}")
        name = d.get("name", "?")
        prefix = f"tables[{name}]"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{prefix}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
            )
        for required in ("name", "dim"):
            if required not in d:
                raise ConfigError(f"{prefix}.{required}: missing required field")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping that :meth:`from_dict` turns back into an equal config."""
        out = asdict(self)
        out["optimizer_args"] = dict(self.optimizer_args)
        out["initializer_args"] = dict(self.initializer_args)
        return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _validate(c: TableConfig) -> None:
    if not isinstance(c.name, str) or not c.name or not c.name.isprintable():
        raise ConfigError(f"tables[?].name: must be a non-empty printable string, got {c.name!r}")
    p = f"tables[{c.name}]"

    def fail(fld: str, what: str, got: Any) -> None:
        raise ConfigError(f"{p}.{fld}: {what}, got {got!r}")

    if not _is_int(c.dim) or c.dim < 1 or c.dim > 65536:
        fail("dim", "must be a positive integer (at most 65536)", c.dim)
    validate_training_fields(
        p,
        c.optimizer,
        c.optimizer_args,
        c.initializer,
        c.initializer_args,
        tuple(INITIALIZERS),
        c.seed,
    )
    if not _is_int(c.admit_after) or not 1 <= c.admit_after <= 65535:
        fail("admit_after", "must be an integer from 1 to 65535", c.admit_after)
    if c.ttl_seconds is not None and (
        not _is_number(c.ttl_seconds) or not 0 < c.ttl_seconds < math.inf
    ):
        fail("ttl_seconds", "must be null or a positive number of seconds", c.ttl_seconds)
    if c.max_rows is not None and (not _is_int(c.max_rows) or c.max_rows < 1):
        fail("max_rows", "must be null or a positive integer", c.max_rows)
    if c.eviction not in EVICTION_POLICIES:
        fail("eviction", f"must be one of {', '.join(EVICTION_POLICIES)}", c.eviction)
    if c.serving_dtype not in SERVING_DTYPES:
        fail("serving_dtype", f"must be one of {', '.join(SERVING_DTYPES)}", c.serving_dtype)
    if not _is_number(c.lr_frequency_power) or not 0 <= c.lr_frequency_power < math.inf:
        fail("lr_frequency_power", "must be a number >= 0", c.lr_frequency_power)
    if not _is_int(c.tombstone_log_size) or c.tombstone_log_size < 1:
        fail("tombstone_log_size", "must be a positive integer", c.tombstone_log_size)
    w = c.sketch_width
    if w is not None and (not _is_int(w) or w < 64 or w > 1 << 30 or w & (w - 1)):
        fail("sketch_width", "must be null or a power of two from 64 to 2**30", w)
    budget = c.memory_budget_bytes
    if budget is not None and (not _is_int(budget) or budget < 1):
        fail("memory_budget_bytes", "must be null or a positive integer", budget)
    if c.cold_dir is not None and (not isinstance(c.cold_dir, str) or not c.cold_dir):
        fail("cold_dir", "must be null or a non-empty directory path", c.cold_dir)
    if budget is not None and c.cold_dir is None:
        fail("cold_dir", "is required with memory_budget_bytes (where cold rows go)", None)
    if budget is None and c.cold_dir is not None:
        fail("memory_budget_bytes", "is required with cold_dir (when rows go cold)", None)


def validate_training_fields(
    where: str,
    optimizer: Any,
    optimizer_args: Any,
    initializer: Any,
    initializer_args: Any,
    initializers: tuple[str, ...],
    seed: Any,
) -> None:
    """Check an optimizer and an initializer with their arguments and the initializer's
    seed (tables and dense arrays: one set of rules and messages for both).

    Raises :class:`ConfigError` naming ``where.<field>``.
    """

    def fail(fld: str, what: str, got: Any) -> None:
        raise ConfigError(f"{where}.{fld}: {what}, got {got!r}")

    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        fail("optimizer", f"must be one of {', '.join(OPTIMIZERS)}", optimizer)
    _validate_args(
        where + ".optimizer_args", optimizer_args, dict(OPTIMIZERS[optimizer].args), _ARG_RULES
    )
    if not isinstance(initializer, str) or initializer not in initializers:
        fail("initializer", f"must be one of {', '.join(initializers)}", initializer)
    _validate_args(
        where + ".initializer_args", initializer_args, dict(INITIALIZERS[initializer].args), {}
    )
    if initializer == "uniform":
        args = dict(INITIALIZERS["uniform"].args) | initializer_args
        if not args["low"] < args["high"]:
            fail("initializer_args", "uniform needs low < high", initializer_args)
    if initializer == "normal":
        std = (dict(INITIALIZERS["normal"].args) | initializer_args)["std"]
        if std < 0:
            fail("initializer_args.std", "must be >= 0", std)
    if not _is_int(seed) or not 0 <= seed <= _U64_MAX:
        fail("seed", "must be an integer from 0 to 2**64 - 1", seed)


def _validate_args(
    where: str,
    given: Any,
    allowed: dict[str, float],
    rules: dict[str, tuple[str, float, float]],
) -> None:
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: must be a mapping, got {given!r}")
    for k, v in given.items():
        if k not in allowed:
            known = ", ".join(allowed) or "none"
            raise ConfigError(f"{where}.{k}: unknown argument (known: {known})")
        if k == "nesterov":
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{k}: must be true or false, got {v!r}")
            continue
        if not _is_number(v) or not math.isfinite(v):
            raise ConfigError(f"{where}.{k}: must be a finite number, got {v!r}")
        if k in rules:
            rule, low, high = rules[k]
            ok = {
                "gt": low < v <= high,
                "ge": low <= v <= high,
                "ge_lt": low <= v < high,
            }[rule]
            if not ok:
                left = "(" if rule == "gt" else "["
                right = ")" if rule == "ge_lt" or high == math.inf else "]"
                raise ConfigError(f"{where}.{k}: must be in {left}{low}, {high}{right}, got {v!r}")
