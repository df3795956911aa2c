"""Typed run configuration: dataclasses, YAML files and dotted command-line overrides.

Every run is described by one dataclass tree. The common sections (``data``, ``sampler``, ``aug``,
``cutswap``, ``optim``, ``sched``, ``train``, ``eval``) live here; each method subclasses :class:`RunConfig`
to add its own sections (``idkl.py`` adds ``tgsa``, ``csa``, ...; ``dakd.py`` adds ``teacher``, ``kd``,
``mask``, ...). The top-level ``method`` key of a YAML file picks the class.

Loading uses OmegaConf structured configs, so types are checked and unknown keys are errors; vireid wraps
OmegaConf's errors into :class:`~vireid.errors.ConfigError` messages that name the file (or override) and
the nearest valid key. A YAML file may start with ``_base_: other.yaml`` (path relative to the file) to
inherit from another config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from vireid.errors import ConfigError

# --------------------------------------------------------------------------------------------------------
# Allowed ranges of numeric options
# --------------------------------------------------------------------------------------------------------
#
# Every numeric option declares the values it accepts in its dataclass field metadata (``allowed``), and
# :func:`validate_ranges` checks the whole config tree in one place when it is built. Why: a value of the
# right type can still be meaningless (``train.epochs=0`` finishes "done" without a checkpoint,
# ``optim.lr=-1`` trains uphill, ``eval.batch_size=0`` fails deep inside a DataLoader); catching it at load
# time names the key and the allowed range in one line. Every packaged section declares its ranges (the method
# sections next to their dataclasses); a number without a declared range must still be finite.


@dataclass(frozen=True)
class Range:
    """A closed or open interval of numbers; ``None`` bounds are unbounded. Lists are checked element-wise."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    integer: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        low = f"[{num(self.ge)}" if self.ge is not None else f"({num(self.gt)}" if self.gt is not None else "(-inf"
        high = f"{num(self.le)}]" if self.le is not None else f"{num(self.lt)})" if self.lt is not None else "inf)"
        kind = "an integer" if self.integer else "a finite number"
        return f"{kind} in {low}, {high}"


@dataclass(frozen=True)
class WordsOrRange:
    """One of a few words (case-insensitive) or a number in ``numbers`` (numbers may arrive as strings)."""

    words: tuple[str, ...]
    numbers: Range

    def allows(self, value: Any) -> bool:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in self.words:
                return True
            try:
                value = float(text) if any(c in text for c in ".e") else int(text)
            except ValueError:
                return False
        return self.numbers.allows(value)

    def describe(self) -> str:
        return f"one of {', '.join(self.words)} or {self.numbers.describe()}"


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    words: tuple[str, ...] = (),
) -> Any:
    """A dataclass field whose values must lie in a range (``ge``/``gt``/``le``/``lt``), checked on load.

    An integer default makes the range integer-only. ``words`` also admits these strings (for options such
    as ``sampler.epoch_length`` that take a keyword or a number).
    """
    integer = isinstance(default, int) and not isinstance(default, bool)
    numbers = Range(ge=ge, gt=gt, le=le, lt=lt, integer=integer or bool(words))
    allowed: Range | WordsOrRange = WordsOrRange(words, numbers) if words else numbers
    return field(default=default, metadata={"allowed": allowed})


def each_in_range(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
) -> dict[str, Range]:
    """Field metadata for a list option whose every element must lie in a range."""
    return {"allowed": Range(ge=ge, gt=gt, le=le, lt=lt, integer=integer)}


def unit_interval(default: float) -> Any:
    """A probability or fraction: a number in [0, 1]."""
    return bounded(default, ge=0.0, le=1.0)


def validate_ranges(cfg: Any, *, source: str = "config") -> None:
    """Check every field of a config dataclass tree against its declared ``allowed`` metadata.

    Fields without a declared range must still hold finite numbers (a NaN or inf option is never
    meaningful). Raises one :class:`ConfigError` naming ``source`` and, for every offending key (all of them,
    so that one run fixes them all), the value and what is allowed.
    """
    problems = _range_problems(cfg, prefix="")
    if problems:
        keys = ", ".join(key for key, _ in problems)
        raise ConfigError(f"{source}: {'; '.join(text for _, text in problems)}.", fix=f"set {keys} within range.")


def _range_problems(cfg: Any, prefix: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not dataclasses.is_dataclass(cfg):
        return problems
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            problems.extend(_range_problems(value, prefix=f"{key}."))
            continue
        allowed = f.metadata.get("allowed")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if allowed is not None:
                ok = item is None or allowed.allows(item)
                what = allowed.describe()
            else:
                ok = not (isinstance(item, float) and not math.isfinite(item))
                what = "a finite number"
            if not ok:
                element = " (each element)" if isinstance(value, list | tuple) else ""
                problems.append((key, f"'{key}' is {item!r} but must be {what}{element}"))
                break
    return problems


# --------------------------------------------------------------------------------------------------------
# Common sections
# --------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the data is and how images enter the network."""

    dataset: str = "sysu"
    """Catalog name: sysu, regdb, llcm, rgbnt201, rgbt_pedes, rgbnt201_pedes (see ``vireid.data.catalog``)."""
    root: str | None = None
    """Dataset root. Required: vireid has no built-in default paths."""
    trial: int = bounded(1, ge=1, le=10)
    """RegDB training trial 1..10 (the checkpoint records it; testing another trial is an error)."""
    height: int = bounded(288, ge=8)
    width: int = bounded(144, ge=8)
    workers: int = bounded(4, ge=0)
    """DataLoader worker processes per rank (0 = load in the main process)."""
    cache: bool = False
    """Decode and resize every training image once into a memory-mapped array (``<run>/cache``)."""
    cache_dir: str | None = None
    strict_counts: bool = False
    """Make a mismatch with the published image/identity counts an error rather than a warning."""
    val_ids: int = bounded(0, ge=0)
    """Identities held out of training for checkpoint selection on datasets without an official
    validation split (RegDB, LLCM, RGBNT201). 0 = automatic (10% of training ids, at least 2)."""
    thermal_gray3: bool = False
    """Decode thermal images as grayscale replicated to 3 channels (RGBT-PEDE behaviour)."""


@dataclass
class SamplerConfig:
    """Cross-modality identity sampler (method-baseline.md section 2)."""

    P: int = bounded(8, ge=1)
    """Identities per batch (global, over all DDP ranks)."""
    K: int = bounded(4, ge=1)
    """Images per identity and per modality."""
    epoch_length: str = bounded("agw", ge=1, words=("agw", "idkl"))
    """``agw`` (floor(N/(P*K))+1 batches, N = larger modality), ``idkl`` (until identities run out), or an
    integer number of iterations."""
    mode: Literal["agw", "idkl"] = "agw"


@dataclass
class AugConfig:
    """Training augmentation preset and its knobs (method-baseline.md section 3)."""

    preset: Literal["agw", "caj", "idkl", "dakd", "none"] = "agw"
    pad: int = bounded(10, ge=0)
    pad_fill: int = bounded(0, ge=0, le=255)
    """Padding value before the random crop: 0 in AGW/CAJ/MCE, 127 in IDKL and DAKD's RegDB loader."""
    flip: float = unit_interval(0.5)
    erasing_p: float = unit_interval(0.5)
    erasing_fill: Literal["release", "zero"] = "release"
    """ChannelRandomErasing fill: the CAJ constants in normalised space (release) or zeros."""
    adaptive_gray_p: float = unit_interval(0.5)


@dataclass
class CutSwapConfig:
    """CutSwap (DAKD): a rectangle of the visible image replaced by a channel-replicated copy."""

    p: float = unit_interval(0.0)
    """Probability per visible image; 0 disables CutSwap."""
    mode: Literal["region", "full_image"] = "region"
    """``region`` is the intended behaviour; ``full_image`` reproduces the DAKD release's effective one."""
    ratio_min: float = bounded(0.3, gt=0.0, le=1.0)
    ratio_max: float = bounded(0.6, gt=0.0, le=1.0)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = bounded(0.1, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = bounded(5e-4, ge=0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=each_in_range(ge=0.0, lt=1.0))
    eps: float = bounded(1e-8, gt=0.0)
    backbone_lr_mult: float = bounded(0.1, ge=0.0)
    """Learning-rate multiplier of the pretrained backbone group relative to ``lr`` (AGW: 0.1)."""


@dataclass
class SchedConfig:
    name: Literal["warmup_step", "multistep", "cosine", "constant"] = "warmup_step"
    warmup_epochs: int = bounded(10, ge=0)
    warmup_curve: Literal["agw", "linear"] = "agw"
    """``agw``: factor (e+1)/warmup_epochs (AGW, CAJ, MCE); ``linear``: warmup_start + (1-warmup_start)*e/warmup_epochs
    (IRRA), reaching 1 at e = warmup_epochs."""
    warmup_start: float = unit_interval(0.1)
    milestones: list[int] = field(default_factory=lambda: [20, 50], metadata=each_in_range(ge=0, integer=True))
    gamma: float = bounded(0.1, gt=0.0)
    min_lr_factor: float = unit_interval(0.0)


@dataclass
class TrainConfig:
    epochs: int = bounded(81, ge=1)
    seed: int = bounded(0, ge=0, lt=2**32)
    amp: Literal["none", "bf16", "fp16", "auto"] = "auto"
    """``auto`` = bf16 on a GPU that supports it, otherwise fp32 (AMP is off on the CPU by default)."""
    channels_last: bool = False
    grad_clip: float = bounded(0.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    out_dir: str = "runs"
    name: str | None = None
    """Run folder name under ``out_dir``; default ``<method>-<dataset>-<timestamp>``."""
    checkpoint_every: int = bounded(1, ge=1)
    """Save a resumable checkpoint every N epochs (the last epoch is always saved)."""
    checkpoint_every_iters: int = bounded(0, ge=0)
    """Also save every N iterations inside an epoch (0 = off)."""
    keep_last: int = bounded(2, ge=1)
    log_every: int = bounded(20, ge=1)
    iters_per_epoch: int = bounded(0, ge=0)
    """Cap on iterations per epoch (0 = the sampler's natural length). Used by CPU demo configs."""
    sync_bn: bool = True
    """Convert BatchNorm layers to SyncBatchNorm under DDP, so statistics match a single-process run."""
    deterministic: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    feature: Literal["bn", "pooled"] = "bn"
    select_metric: Literal["mAP", "rank1", "mINP"] = "mAP"
    """Validation metric that picks the best checkpoint."""
    flip: bool = False
    """Flip test-time augmentation (CAJ testa.py); recorded in every result."""
    batch_size: int = bounded(128, ge=1)
    every: int = bounded(2, ge=0)
    """Evaluate on the selection split every N epochs (0 = only at the end)."""
    selection: Literal["val", "last", "test"] = "val"
    """Checkpoint selection: validation identities, the last epoch, or (only with ``allow_test_selection``)
    the test split, which is then labelled in every output."""
    allow_test_selection: bool = False
    protocols: list[str] = field(default_factory=list)
    """Protocol ids run by ``vireid test`` (empty = every standard protocol of the dataset)."""
    rerank: Literal["none", "joint", "query_only"] = "none"
    rerank_k1: int = bounded(20, ge=1)
    rerank_k2: int = bounded(6, ge=1)
    rerank_lambda: float = unit_interval(0.3)


@dataclass
class RunConfig:
    """Root of every run configuration. Methods subclass it and add their own sections."""

    method: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    cutswap: CutSwapConfig = field(default_factory=CutSwapConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check_loaded(self, source: str) -> None:
        """Cross-key checks a method runs when a config is loaded from a file or with overrides.

        :func:`load_config` calls it on the final (merged) config; ``source`` names the file and overrides for
        the message. A config dict given without overrides (a run's stored config, reloaded by
        ``load_model``) is a record of what ran and is not re-checked. The base class checks nothing.
        """


C = TypeVar("C")

# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def packaged_configs() -> Path:
    """Folder of the configs shipped inside the package (the repository's ``configs/`` links to it)."""
    return Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or a preset name such as ``baseline/sysu`` looked up among the packaged configs."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    name = str(path).removeprefix("configs/")
    packaged = packaged_configs() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    presets = sorted(str(p.relative_to(packaged_configs()))[:-5] for p in packaged_configs().glob("*/*.yaml"))
    raise ConfigError(
        f"config file {path} does not exist.",
        fix=f"give a YAML path or one of the presets: {', '.join(presets)}.",
    )


def read_yaml(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file, resolving ``_base_`` inheritance (the child's keys win).

    A ``_base_`` chain that comes back to a file already in it (a file naming itself, or a longer loop) is a
    :class:`ConfigError` that prints the chain, rather than a RecursionError.
    """
    path = resolve_config_path(path)
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(str(p) for p in (*_chain[_chain.index(resolved) :], resolved))
        raise ConfigError(
            f"_base_ inheritance loops: {loop}.", fix="make one file of this chain stop naming the next as _base_."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).", fix="save the config file as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of keys at the top level.")
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ must be a file name, got {base!r}.")
        parent = read_yaml(path.parent / base, _chain=(*_chain, resolved))
        data = deep_merge(parent, data)
    return data


def deep_merge(base: dict, child: dict) -> dict:
    """``base`` with ``child`` laid over it, nested mappings merged key by key (``_base_`` files, overrides)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.epochs=10", "data.root=/d"]`` into a nested dict. Values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' has no '='.", fix="write overrides as dotted.key=value, e.g. train.epochs=10."
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key part.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'.")
        node[parts[-1]] = value
    return nested


def build_config(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
    """Validate ``data`` against dataclass ``cls`` and return an instance.

    Unknown keys, wrong types, invalid choices and numbers outside their declared range
    (:func:`validate_ranges`) raise :class:`ConfigError` naming ``source``, the dotted key and (for unknown
    keys) the closest valid key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(cls)
    _check_keys(cls, data, prefix="", source=source)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(data))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: invalid value for '{key}': {first}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate_ranges(obj, source=source)
    return obj  # type: ignore[return-value]


def _check_keys(cls: type, data: Any, prefix: str, source: str) -> None:
    """Reject unknown keys with the nearest valid one, before OmegaConf's less specific message."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            valid = sorted(fields)
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix}{near[0]}'?" if near else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'.{hint} Valid keys here: {', '.join(valid)}.")
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' is a section; give it a mapping, not {value!r}.")
            _check_keys(sub, value, prefix=f"{prefix}{key}.", source=source)


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - defensive: forward refs we cannot resolve
        return {}


def config_class_for(method: str) -> type[RunConfig]:
    """The config dataclass of a registered method (``baseline``, ``idkl``, ``dakd``, ``dikdnet``)."""
    from vireid.methods.registry import get_method

    cls = get_method(method).config_class
    if not issubclass(cls, RunConfig):
        raise ConfigError(f"method '{method}': config_class {cls.__qualname__} must subclass vireid.config.RunConfig.")
    return cls


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    method: str | None = None,
) -> RunConfig:
    """Load a run configuration from a YAML file (or a dict) plus dotted overrides.

    The method is taken from ``method`` if given, else the overrides, else the file, else ``baseline``.
    The method's cross-key checks (:meth:`RunConfig.check_loaded`) run on the final config unless ``source``
    is a dict given without overrides (a run's stored config).
    """
    if source is None:
        data: dict[str, Any] = {}
        where = "defaults"
    elif isinstance(source, dict):
        data = dict(source)
        where = "config dict"
    else:
        data = read_yaml(source)
        where = str(source)
    over = parse_overrides(overrides)
    name = method or over.get("method") or data.get("method") or "baseline"
    try:
        cls = config_class_for(str(name))
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from None
    base_obj = build_config(cls, deep_merge(data, {"method": name}), source=where)
    if not over:
        if not isinstance(source, dict):
            base_obj.check_loaded(where)
        return base_obj
    merged = deep_merge(to_dict(base_obj), over)
    final = build_config(cls, merged, source=f"{where} + overrides")
    final.check_loaded(f"{where} + overrides")
    return final


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML/JSON dumps and checkpoint sidecars)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (used to refuse resuming a changed run)."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(config_diff(a, b, prefix=f"{prefix}{key}."))
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


# --------------------------------------------------------------------------------------------------------
# Sections shared by the ResNet-based VI-ReID methods (baseline, IDKL, DAKD)
# --------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """ResNet backbone options (method-baseline.md section 1)."""

    backbone: str = "resnet50"
    """torchvision ResNet name (resnet18/34/50/101)."""
    pretrained: str = "imagenet"
    """``imagenet`` (local file or torch cache, never downloaded), ``none``, or a weights file path."""
    width: int = bounded(64, ge=1)
    """Channels of the first ResNet stage (64 = torchvision). Smaller widths make CPU demos and tests fast;
    ImageNet weights need 64."""
    last_stride: int = bounded(1, ge=1, le=2)
    stems: Literal["per_modality", "shared"] = "per_modality"
    non_local: bool = True
    nl_layer2: list[int] = field(default_factory=lambda: [2, 3])
    nl_layer3: list[int] = field(default_factory=lambda: [3, 4, 5])
    nl_inter_channels: int | str = bounded(1, ge=1, words=("half",))
    """Non-local inner width: 1 reproduces the AGW release (``r // r``); ``half`` = C/2."""
    pooling: Literal["gem", "avg"] = "gem"
    gem_p: float = bounded(3.0, gt=0.0)
    gem_learnable: bool = False
    bnneck_bias_frozen: bool = True
