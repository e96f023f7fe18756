"""The training configuration: every hyperparameter's name, default and allowed values, loaded from YAML.

`TrainConfig` is the one home of hyperparameter names: `histoxai train` reads it from YAML (plus
`--set key=value` overrides), the tuning step samples configs of this same schema (`FIELDS` lists each
key with its allowed values), and a trained model's folder carries the resolved config.yaml.
Unknown keys and bad values raise InputError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from histoxai.errors import InputError, did_you_mean

# The eight Keras applications of the thesis (section 3.2.3) and a tiny CNN for tests and the demo.
BACKBONES = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ConvNeXtTiny",
             "ConvNeXtSmall", "DenseNet121", "EfficientNetV2S", "tiny")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("none", "warmup_cosine")
PRECISIONS = ("auto", "float32", "mixed_float16")
MONITORS = ("val_loss", "val_r2")
CACHES = ("auto", "memory", "none")
MIN_IMAGE_SIZE = 32  # the smallest input every Keras application accepts


class _Bad(ValueError):
    """A value that fails its field's check; the message says what was expected."""


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            raise _Bad(f"expected an integer in [{low}, {high if high is not None else 'inf'}], got {value}")
        return value
    return check


def _float(low: float, high: float, *, high_open: bool = False) -> Callable[[Any], float]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Bad(f"expected a number, got {value!r}")
        if value < low or value > high or (high_open and value == high):
            raise _Bad(f"expected a number in [{low}, {high}{')' if high_open else ']'}, got {value}")
        return float(value)
    return check


def _positive_float(value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise _Bad(f"expected a positive number, got {value!r}")
    return float(value)


def _choice(options: Iterable[Any]) -> Callable[[Any], Any]:
    options = tuple(options)

    def check(value):
        if not isinstance(value, str) or value not in options:
            raise _Bad(f"expected one of {list(options)}, got {value!r}")
        return value
    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _auto_or_bool(value):
    if value == "auto" or isinstance(value, bool):
        return value
    raise _Bad(f"expected auto, true or false, got {value!r}")


def _precision(value):
    if isinstance(value, str) and "bfloat16" in value:
        raise _Bad(f"{value!r} is not offered: Grad-CAM++ and LayerCAM fail on bfloat16 models; "
                   f"expected one of {list(PRECISIONS)}")
    return _choice(PRECISIONS)(value)


def _weights(value):
    if value is None or value == "none":
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected imagenet, none (null) or a weights file path/gs:// URI, got {value!r}")
    return value


def _targets(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",")]
    if not isinstance(value, list | tuple) or not value or not all(isinstance(t, str) and t for t in value):
        raise _Bad(f"expected a non-empty list of manifest target columns (e.g. [MD, FA]), got {value!r}")
    if len(set(value)) != len(value):
        raise _Bad(f"expected distinct targets, got {list(value)}")
    return tuple(value)


def _loss_weights(value):
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise _Bad(f"expected a mapping target -> weight (e.g. {{MD: 1.0, FA: 2.0}}), got {value!r}")
    return {str(k): _positive_float(v) for k, v in value.items()}


def _field(default, check: Callable[[Any], Any], doc: str, search: list | dict | None = None):
    """A config key; `search` is the thesis's Table 3.2 space for the tuning step: a list of values,
    or {"low", "high", "log"} for a numeric range."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc, "search": search})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; defaults follow the thesis's best model (Table 3.3)."""

    targets: tuple[str, ...] | None = _field(
        None, _targets, "manifest target columns: [MD, FA] multi-task, [CC] single-task (or --targets)")
    backbone: str = _field("EfficientNetV2S", _choice(BACKBONES), "backbone network", list(BACKBONES[:-1]))
    weights: str | None = _field("imagenet", _weights,
                                 "imagenet, none, or a weights file path / gs:// URI (e.g. KimiaNet)")
    image_size: int | None = _field(None, _optional(_int(MIN_IMAGE_SIZE, 2048)),
                                    "input side in pixels; null: the data's patch size (else resized)")
    batch_size: int = _field(16, _int(1, 4096), "global batch size", [4, 8, 16, 24, 32])
    frozen_epochs: int = _field(100, _int(0, 10000), "max epochs with the backbone frozen (phase 1)")
    finetune_epochs: int = _field(100, _int(0, 10000), "max epochs fine-tuning the whole network (phase 2)",
                                  {"low": 50, "high": 100, "log": False})
    patience: int = _field(10, _int(1, 10000), "early stopping: epochs without improvement of `monitor`")
    monitor: str = _field("val_loss", _choice(MONITORS),
                          "early stopping / best-weights criterion (val_r2 = mean over targets)")
    optimizer: str = _field("adamw", _choice(OPTIMIZERS), "optimizer", list(OPTIMIZERS))
    weight_decay: float = _field(0.008, _float(0.0, 1.0), "AdamW decoupled weight decay (ignored by adam)",
                                 {"low": 1e-3, "high": 1e-2, "log": True})
    lr_schedule: str = _field("warmup_cosine", _choice(LR_SCHEDULES), "learning-rate schedule",
                              list(LR_SCHEDULES))
    learning_rate: float = _field(1e-4, _positive_float, "constant LR when lr_schedule is none",
                                  [1e-5, 3e-5, 5e-5, 1e-4])
    initial_lr: float = _field(1e-5, _positive_float, "warmup_cosine: LR at step 0",
                               [1e-5, 3e-5, 5e-5, 1e-4])
    warmup_target_lr: float = _field(5e-5, _positive_float, "warmup_cosine: LR reached after warmup",
                                     [5e-4, 1e-3, 3e-3])
    warmup_epochs: int = _field(17, _int(0, 10000), "warmup_cosine: epochs of linear warmup",
                                {"low": 5, "high": 20, "log": False})
    decay_epochs: int = _field(60, _int(1, 10000), "warmup_cosine: epochs of cosine decay after warmup",
                               {"low": 50, "high": 100, "log": False})
    dropout: float = _field(0.3, _float(0.0, 1.0, high_open=True), "dropout after global pooling")
    dense_units: int = _field(256, _int(1, 65536), "shared linear dense layer after pooling")
    feature_units: int = _field(64, _int(1, 65536), "per-target linear feature layer")
    feature_dropout: float = _field(0.3, _float(0.0, 1.0, high_open=True), "per-target dropout")
    loss_weights: dict[str, float] | None = _field(None, _loss_weights, "static loss weight per target")
    augment_flip: bool = _field(False, _bool, "random horizontal and vertical flips", [False, True])
    augment_rot90: bool = _field(False, _bool, "random rotation by k x 90 degrees", [False, True])
    augment_rotation_degrees: float = _field(0.0, _float(0.0, 45.0),
                                             "random rotation up to +-this many degrees (0 = off)")
    finetune_batchnorm: bool = _field(True, _bool, "phase 2 also updates BatchNorm statistics")
    precision: str = _field("auto", _precision, "auto: mixed_float16 on GPU, float32 on CPU")
    jit_compile: str | bool = _field("auto", _auto_or_bool, "XLA; auto: on for GPU, off for CPU")
    deterministic: str | bool = _field("auto", _auto_or_bool,
                                       "TF op determinism; auto: on for CPU, off for GPU (speed)")
    cache: str = _field("auto", _choice(CACHES), "keep decoded patches in memory (auto: when they fit)")
    seed: int = _field(42, _int(0, 2**31 - 1), "seeds Python, NumPy, TF, shuffles and augmentation")

    def __post_init__(self):
        problems = []
        if self.backbone == "tiny" and self.weights == "imagenet":
            problems.append(("weights", "the tiny CNN has no ImageNet weights; "
                                        "expected none or a weights file"))
        if self.loss_weights and self.targets:
            extra = sorted(set(self.loss_weights) - set(self.targets))
            if extra:
                problems.append(("loss_weights", f"names targets {extra} that are not in targets "
                                                 f"{list(self.targets)}"))
        if self.frozen_epochs + self.finetune_epochs == 0:
            problems.append(("finetune_epochs", "frozen_epochs and finetune_epochs are both 0; "
                                                "expected at least one epoch"))
        if problems:
            key, why = problems[0]
            raise _Bad(f"{key}: {why}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets) if self.targets else None
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping into a TrainConfig; missing keys take their defaults."""
    if not isinstance(values, Mapping):
        raise InputError(f"{source}: expected a mapping of hyperparameters, got {type(values).__name__}")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise InputError(f"{source}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], FIELDS)}; "
                         f"expected keys among {sorted(FIELDS)}")
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = FIELDS[key].metadata["check"](value)
        except _Bad as err:
            raise InputError(f"{source}: key {key!r}: {err}") from None
    try:
        return TrainConfig(**checked)
    except _Bad as err:
        key, _, why = str(err).partition(": ")
        raise InputError(f"{source}: key {key!r}: {why}") from None


def with_values(config: TrainConfig, values: Mapping[str, Any], source: str = "overrides") -> TrainConfig:
    """A copy of `config` with some keys changed, validated like a loaded file."""
    return from_dict({**config.to_dict(), **values}, source)


def fit_to_patches(config: TrainConfig, patch_sizes: Iterable[int], source: str) -> TrainConfig:
    """The config with image_size set to the data's patch size when the config leaves it open (null),
    so the model's input follows the pipeline's `patch_size` without a second setting."""
    if config.image_size is not None:
        return config
    sizes = sorted({int(size) for size in patch_sizes})
    if len(sizes) != 1:
        raise InputError(f"{source}: patches of sizes {sizes or 'none'}; set image_size in the config to "
                         "the model's input size")
    return with_values(config, {"image_size": sizes[0]}, f"{source} (image_size from the patch size)")


def parse_overrides(pairs: Iterable[str], source: str = "--set", form: str = "KEY=VALUE") -> dict[str, Any]:
    """['batch_size=8', 'targets=[CC]'] -> {'batch_size': 8, 'targets': ['CC']} (values parsed as YAML);
    `source` and `form` name the option and its shape in errors."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{source} {pair!r}: expected {form}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InputError(f"{source} {pair!r}: value is not valid YAML ({err})") from None
    return out


def shipped_names(kind: str) -> list[str]:
    """Names of the YAML files shipped in the package (histoxai/configs/): kind "config" gives the
    training configs, "search_space" the tuning search spaces."""
    from importlib import resources

    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("histoxai") / "configs").iterdir()
                   if p.name.endswith(".yaml"))
    return [n for n in names if n.startswith("search_space") == (kind == "search_space")]


def read_named(source: str, option: str = "--config", kind: str = "config") -> str:
    """The text of a YAML file (local or gs://) or, when no such file exists, of the file shipped with
    the package under that name (`demo`, `thesis`, `search_space`, ...)."""
    from importlib import resources
    from pathlib import Path

    from histoxai import storage

    source = str(source)
    what = "a YAML search space" if kind == "search_space" else "a YAML config"
    if not storage.is_gcs(source) and Path(source).is_dir():
        raise InputError(f"{option} {source}: is a folder; expected {what} file, a gs:// URI or one of "
                         f"{', '.join(shipped_names(kind))}")
    if storage.is_gcs(source) or Path(source).exists():
        try:
            return storage.read_text(source)
        except UnicodeDecodeError as err:
            raise InputError(f"{option} {source}: not UTF-8 text (byte {err.start}: {err.reason}); "
                             f"expected {what} file in UTF-8") from None
        except OSError as err:
            raise InputError(f"{option} {source}: cannot be read ({err.strerror}); expected {what} file") \
                from None
    names = shipped_names(kind)
    if source in names:
        return (resources.files("histoxai") / "configs" / f"{source}.yaml").read_text()
    raise InputError(f"{option} {source}: no such file; expected a YAML file, a gs:// URI or one of "
                     f"{', '.join(names)}{did_you_mean(source, names)}")


def load_config(source: str | None, overrides: Mapping[str, Any] | None = None,
                option: str = "--config") -> TrainConfig:
    """Read a YAML config (a file, gs:// URI or shipped name; None = all defaults), apply overrides,
    validate."""
    if not source:
        return config_from_yaml("", overrides, "defaults")
    return config_from_yaml(read_named(source, option), overrides, str(source))


def config_from_yaml(text: str, overrides: Mapping[str, Any] | None = None,
                     source: str = "config") -> TrainConfig:
    """Validate YAML text (a mapping of hyperparameters; empty = all defaults) with overrides applied.

    `source` names the text in error messages (a file, or a pipeline parameter).
    """
    import yaml

    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{source}: expected a mapping of hyperparameters at the top level")
    if overrides:
        values = {**values, **overrides}
        source = f"{source} (with overrides {sorted(overrides)})"
    return from_dict(values, source)


def as_pipeline_parameter(values: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig values as a KFP dict parameter, which cannot hold null: weights null becomes
    "none" (same meaning), other null keys are left out (they take their defaults)."""
    out = {k: v for k, v in values.items() if v is not None}
    if "weights" in values and values["weights"] is None:
        out["weights"] = "none"
    return out
