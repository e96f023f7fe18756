"""The tuning step's search space: TrainConfig keys with the values to try, read from YAML and validated.

A space file has two sections (see histoxai/configs/search_space.yaml):

  fixed:   TrainConfig values set for every trial, over the base config (optional)
  search:  TrainConfig key -> `table` (the thesis's Table 3.2 values, kept in histoxai/config.py),
           a list of choices, or a range {low, high, log: false, step: null}

Parameters that only matter under another parameter's value are sampled only then (CONDITIONS):
weight decay only with AdamW, the constant learning rate only without a schedule, the warmup-cosine
parameters only with that schedule. Every problem raises InputError naming the file and the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from histoxai.config import FIELDS, TrainConfig, with_values
from histoxai.errors import InputError, did_you_mean

# child -> (parent, parent values under which the training code uses the child)
CONDITIONS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "weight_decay": ("optimizer", ("adamw",)),
    "learning_rate": ("lr_schedule", ("none",)),
    "initial_lr": ("lr_schedule", ("warmup_cosine",)),
    "warmup_target_lr": ("lr_schedule", ("warmup_cosine",)),
    "warmup_epochs": ("lr_schedule", ("warmup_cosine",)),
    "decay_epochs": ("lr_schedule", ("warmup_cosine",)),
}
NOT_SEARCHABLE = ("targets", "loss_weights")  # not single values: set them in the base config
TABLE = "table"
SECTIONS = ("fixed", "search")
RANGE_KEYS = ("low", "high", "log", "step")
assert set(CONDITIONS) | {p for p, _ in CONDITIONS.values()} <= set(FIELDS)


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched key: `choices`, or a numeric range low..high (kind 'int' or 'float')."""

    name: str
    kind: str  # "choice", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Searched parameters (parents before the parameters they condition) and fixed values."""

    params: tuple[Param, ...]
    fixed: dict[str, Any]
    source: str

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "search": {p.name: p.to_dict() for p in self.params}}

    def start_config(self, base: TrainConfig) -> TrainConfig:
        """The base config with the fixed values applied; every trial starts from it."""
        return with_values(base, self.fixed, f"{self.source}: fixed")

    def active(self, name: str, values: Mapping[str, Any], start: TrainConfig) -> bool:
        """Whether the training code uses `name`, given the values chosen so far."""
        if name not in CONDITIONS:
            return True
        parent, when = CONDITIONS[name]
        return values.get(parent, getattr(start, parent)) in when

    def sample(self, trial, start: TrainConfig) -> dict[str, Any]:
        """Values for one Optuna trial; conditional parameters only where their parent enables them."""
        values: dict[str, Any] = {}
        for param in self.params:
            if self.active(param.name, values, start):
                values[param.name] = param.suggest(trial)
        return values

    def check_against(self, start: TrainConfig) -> None:
        """A conditional parameter must be usable: its parent searched over an enabling value, or
        set to one in the config (otherwise every trial would ignore it)."""
        by_name = {p.name: p for p in self.params}
        for param in self.params:
            if param.name not in CONDITIONS:
                continue
            parent, when = CONDITIONS[param.name]
            if parent in by_name:
                options = by_name[parent].choices
                if not any(v in when for v in options):
                    raise InputError(f"{self.source}: parameter {param.name!r} is only used when {parent} is "
                                     f"one of {list(when)}, but {parent}'s choices are {list(options)}")
            elif (value := getattr(start, parent)) not in when:
                raise InputError(f"{self.source}: parameter {param.name!r} is only used when {parent} is one "
                                 f"of {list(when)}, but the config sets {parent}: {value!r}; "
                                 f"search {parent} too or drop {param.name}")


def _check_value(name: str, value: Any, source: str) -> Any:
    try:
        return FIELDS[name].metadata["check"](value)
    except ValueError as err:  # the field's check says what it expected
        raise InputError(f"{source}: parameter {name!r}: {err}") from None


def _choices(name: str, values: list, source: str) -> Param:
    if not values:
        raise InputError(f"{source}: parameter {name!r}: expected at least one choice, got an empty list")
    checked = []
    for value in values:
        if value is not None and not isinstance(value, bool | int | float | str):
            raise InputError(f"{source}: parameter {name!r}: choice {value!r} is not a single value; "
                             "expected numbers, strings, booleans or null")
        checked.append(_check_value(name, value, source))
    if len(set(map(repr, checked))) != len(checked):
        raise InputError(f"{source}: parameter {name!r}: choices {values} repeat a value")
    return Param(name, "choice", choices=tuple(checked))


def _range(name: str, spec: Mapping, source: str) -> Param:
    default = FIELDS[name].default
    if isinstance(default, bool) or not isinstance(default, int | float):
        raise InputError(f"{source}: parameter {name!r}: a range {{low, high}} needs a numeric key; "
                         "give a list of choices")
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown or "low" not in spec or "high" not in spec:
        raise InputError(f"{source}: parameter {name!r}: expected a range with keys low and high "
                         f"(optional log, step), got keys {sorted(spec)}")
    kind = "int" if isinstance(default, int) else "float"
    low, high = (_check_value(name, spec[k], source) for k in ("low", "high"))
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise InputError(f"{source}: parameter {name!r}: log must be true or false, got {log!r}")
    if not low < high:
        raise InputError(f"{source}: parameter {name!r}: expected low < high, got low {low}, high {high}")
    if log and low <= 0:
        raise InputError(f"{source}: parameter {name!r}: a log range needs low > 0, got {low}")
    if step is not None:
        valid = isinstance(step, int) if kind == "int" else isinstance(step, int | float)
        if isinstance(step, bool) or not valid or step <= 0 or log:
            raise InputError(f"{source}: parameter {name!r}: step must be a positive "
                             f"{'integer' if kind == 'int' else 'number'} and not combined with log, "
                             f"got {step!r}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _param(name: str, spec: Any, source: str) -> Param:
    if name not in FIELDS:
        raise InputError(f"{source}: unknown parameter {name!r}{did_you_mean(name, FIELDS)}; expected "
                         "TrainConfig keys among "
                         f"{sorted(k for k in FIELDS if k not in NOT_SEARCHABLE)}")
    if name in NOT_SEARCHABLE:
        raise InputError(f"{source}: parameter {name!r} cannot be searched; set it in the config")
    if spec == TABLE:
        table = FIELDS[name].metadata["search"]
        if table is None:
            raise InputError(f"{source}: parameter {name!r} has no Table 3.2 values; "
                             "give a list of choices or a range {low, high}")
        spec = table
    if isinstance(spec, list):
        return _choices(name, spec, source)
    if isinstance(spec, Mapping):
        return _range(name, spec, source)
    raise InputError(f"{source}: parameter {name!r}: expected `table`, a list of choices or a range "
                     f"{{low, high}}, got {spec!r}")


def parse_space(values: Mapping[str, Any], source: str = "search space") -> SearchSpace:
    """Validate a {fixed, search} mapping into a SearchSpace."""
    if not isinstance(values, Mapping):
        raise InputError(f"{source}: expected a mapping with sections {list(SECTIONS)}")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise InputError(f"{source}: unknown section {unknown[0]!r}{did_you_mean(unknown[0], SECTIONS)}; "
                         f"expected sections {list(SECTIONS)}")
    fixed, search = values.get("fixed") or {}, values.get("search")
    if not isinstance(fixed, Mapping):
        raise InputError(f"{source}: section 'fixed' must map TrainConfig keys to values")
    if not isinstance(search, Mapping) or not search:
        raise InputError(f"{source}: section 'search' must map at least one TrainConfig key to its values")
    both = sorted(set(fixed) & set(search))
    if both:
        raise InputError(f"{source}: parameter {both[0]!r} is both fixed and searched; keep one")
    for name, value in fixed.items():
        if name not in FIELDS:
            raise InputError(f"{source}: fixed: unknown key {name!r}{did_you_mean(name, FIELDS)}; "
                             "expected TrainConfig keys")
        _check_value(name, value, f"{source}: fixed")
    params = [_param(str(name), spec, source) for name, spec in search.items()]
    # Parents first, so a conditional parameter sees its parent's value when it is sampled; then
    # TrainConfig's order, not the mapping's: a seeded sampler draws values in this order, and a
    # mapping passed as a KFP parameter (a protobuf Struct) comes back in arbitrary key order.
    order = list(FIELDS)
    params.sort(key=lambda p: (p.name in CONDITIONS, order.index(p.name)))
    return SearchSpace(tuple(params), dict(fixed), source)


def table_space() -> SearchSpace:
    """The thesis's Table 3.2 space: every TrainConfig key that carries Table 3.2 values."""
    return parse_space({"search": {k: TABLE for k, f in FIELDS.items() if f.metadata["search"] is not None}},
                       "Table 3.2 space")


def load_space(uri: str | None, option: str = "--search-space") -> SearchSpace:
    """Read a space file (local or gs://, or a shipped name such as search_space_demo); None gives the
    Table 3.2 space."""
    import yaml

    from histoxai.config import read_named

    if uri is None:
        return table_space()
    try:
        values = yaml.safe_load(read_named(uri, option, kind="search_space"))
    except yaml.YAMLError as err:
        raise InputError(f"{uri}: not valid YAML ({err})") from None
    return parse_space(values or {}, str(uri))


def restore_ints(values: dict) -> dict:
    """KFP passes dict parameters as JSON numbers, so 8 arrives as 8.0: make integer keys' values (also
    inside search specs: choices, low, high, step) integers again."""
    def as_int(value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [as_int(v) for v in value]
        if isinstance(value, dict):
            return {k: v if k == "log" else as_int(v) for k, v in value.items()}
        return value

    int_keys = {k for k, f in FIELDS.items() if str(f.type).replace(" ", "") in ("int", "int|None")}
    return {k: as_int(v) if k in int_keys else v for k, v in values.items()}
