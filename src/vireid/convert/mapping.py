"""Key mapping from a release's state dict onto a vireid model, and the refusals when they do not fit.

A source declares one :class:`KeyMapping`: an explicit table of prefix renames (release prefix -> vireid
prefix), the release keys it drops on purpose (each with the reason: a dead ResNet copy, a training
memory), and the wrapper prefixes it strips (``module.`` from ``nn.DataParallel``). Applying it never
guesses: a release key that no rule names is *unexpected*, a vireid key that no release key fills is
*missing*, and either refuses the conversion with the keys grouped by prefix. The only keys filled in are
BatchNorm ``num_batches_tracked`` counters absent from files written by old PyTorch versions (they do not
change any output) and the copies a source declares with :class:`CopyFrom` (a vireid tensor that the release
keeps only once, such as DAKD's per-modality running statistics); they are listed in the sidecar.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from vireid.errors import CheckpointError


class ConversionError(CheckpointError):
    """A release checkpoint does not fit the vireid model of the chosen config (keys, shapes, architecture)."""


@dataclass(frozen=True)
class Rename:
    """``release`` prefix -> ``vireid`` prefix.

    ``drop_if_model_lacks``: when the vireid model has no key under the renamed prefix (e.g. DAKD's student
    without the optional identity classifier), the release keys are dropped with this reason instead of
    being refused; empty means they must land.
    """

    release: str
    vireid: str
    drop_if_model_lacks: str = ""


@dataclass(frozen=True)
class Drop:
    """Release keys under ``prefix`` that are dropped on purpose, and why (recorded in the sidecar)."""

    prefix: str
    reason: str


@dataclass(frozen=True)
class CopyFrom:
    """vireid keys under ``prefix`` that the release does not store separately, filled from the vireid key with
    ``prefix`` replaced by ``source`` (already placed from the release file), and why.

    Example: the DAKD/MCE releases keep one set of BatchNorm running statistics for both modalities; vireid's
    student under ``student.bn=per_modality`` keeps a second, infrared set (``infrared_bn_stats.<layer>``).
    Filling it with the release's single set makes the converted model compute exactly the release's output.
    """

    prefix: str
    source: str
    reason: str


@dataclass(frozen=True)
class KeyMapping:
    """The explicit release -> vireid key table of one source.

    Renames are matched longest release prefix first, so a specific entry (``NL_2.0.W.1.``) wins over a
    general one. A key matching a :class:`Drop` prefix is dropped before any rename is tried.
    """

    renames: tuple[Rename, ...]
    drops: tuple[Drop, ...] = ()
    strip_prefixes: tuple[str, ...] = ("module.",)
    copies: tuple[CopyFrom, ...] = ()

    def strip(self, key: str) -> str:
        for prefix in self.strip_prefixes:
            if key.startswith(prefix):
                return key[len(prefix) :]
        return key

    def drop_reason(self, key: str) -> str | None:
        for rule in self.drops:
            if key.startswith(rule.prefix):
                return rule.reason
        return None

    def rename(self, key: str) -> tuple[str, Rename] | None:
        """The vireid name of a (stripped) release key and the rule that produced it, or ``None``."""
        best: Rename | None = None
        for rule in self.renames:
            if key.startswith(rule.release) and (best is None or len(rule.release) > len(best.release)):
                best = rule
        if best is None:
            return None
        return best.vireid + key[len(best.release) :], best


@dataclass
class MappedState:
    """A release state dict renamed into vireid's names.

    Attributes:
        tensors: vireid key -> tensor (every key the rules placed).
        origin: vireid key -> the release key it came from.
        dropped: reason -> release keys dropped for it.
        unmapped: release keys no rule names (refused later unless the model is checked first).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)


def rename_state(state: Mapping[str, torch.Tensor], mapping: KeyMapping) -> MappedState:
    """Apply ``mapping`` to every tensor of ``state``; conflicts (two release keys -> one key) are refused."""
    out = MappedState()
    for raw_key, tensor in state.items():
        key = mapping.strip(raw_key)
        reason = mapping.drop_reason(key)
        if reason is not None:
            out.dropped.setdefault(reason, []).append(raw_key)
            continue
        renamed = mapping.rename(key)
        if renamed is None:
            out.unmapped.append(raw_key)
            continue
        new_key, _ = renamed
        if new_key in out.tensors:
            raise ConversionError(
                f"release keys {out.origin[new_key]} and {raw_key} both map to {new_key}.",
                fix="the file holds two copies of one layer (a DataParallel and a plain copy?); save one of them.",
            )
        out.tensors[new_key] = tensor
        out.origin[new_key] = raw_key
    return out


def _declared_copy(key: str, placed: Mapping[str, torch.Tensor], mapping: KeyMapping) -> torch.Tensor | None:
    """The placed tensor a :class:`CopyFrom` rule fills ``key`` from, or ``None`` when no rule applies."""
    for rule in mapping.copies:
        if key.startswith(rule.prefix):
            return placed.get(rule.source + key[len(rule.prefix) :])
    return None


def fit_to_model(
    mapped: MappedState, model_state: Mapping[str, torch.Tensor], mapping: KeyMapping, *, what: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check ``mapped`` against the model's state dict; return (tensors to load strictly, filled keys).

    Release keys renamed by a rule with ``drop_if_model_lacks`` into a prefix the model does not have are
    moved to ``mapped.dropped``. Any other difference raises one :class:`ConversionError` listing unexpected,
    missing and mis-shaped keys grouped by prefix; ``what`` names the file and the model in that message.
    """
    unexpected = list(mapped.unmapped)
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in mapped.tensors.items():
        if key in model_state:
            to_load[key] = tensor
            continue
        rule = mapping.rename(mapping.strip(mapped.origin[key]))
        optional = rule is not None and rule[1].drop_if_model_lacks
        if optional and not any(k.startswith(rule[1].vireid) for k in model_state):
            mapped.dropped.setdefault(rule[1].drop_if_model_lacks, []).append(mapped.origin[key])
        else:
            unexpected.append(f"{mapped.origin[key]} (-> {key})" if mapped.origin[key] != key else key)
    filled: list[str] = []
    missing: list[str] = []
    for key, tensor in model_state.items():
        if key in to_load:
            continue
        copied = _declared_copy(key, to_load, mapping)
        if copied is not None:
            to_load[key] = copied.clone()
            filled.append(key)
        elif key.endswith(".num_batches_tracked"):
            # Old PyTorch files lack this counter; it only matters to BatchNorm with momentum=None.
            to_load[key] = torch.zeros_like(tensor)
            filled.append(key)
        else:
            missing.append(key)
    mis_shaped = [
        f"{mapped.origin.get(k, k)} {tuple(v.shape)} vs vireid {k} {tuple(model_state[k].shape)}"
        for k, v in to_load.items()
        if tuple(v.shape) != tuple(model_state[k].shape)
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected release keys: {group_by_prefix(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} vireid keys missing from the file: {group_by_prefix(missing)}")
    if mis_shaped:
        shown = "; ".join(mis_shaped[:4]) + (f"; ... ({len(mis_shaped) - 4} more)" if len(mis_shaped) > 4 else "")
        problems.append(f"{len(mis_shaped)} tensors of another shape: {shown}")
    if problems:
        raise ConversionError(
            f"{what}: " + "; ".join(problems) + ".",
            fix="check --from (the release the file comes from) and --config (the vireid recipe it was trained "
            "with); a file edited by hand or from another code version is not converted.",
        )
    return to_load, filled


def group_by_prefix(keys: Iterable[str], *, limit: int = 8) -> str:
    """``"a.b.* (12), c.* (1)"``: keys grouped by their dotted prefix up to the first index (at most 3 parts)."""
    groups: Counter[str] = Counter()
    for key in keys:
        parts = key.split(" ")[0].split(".")
        prefix: list[str] = []
        for part in parts[:-1]:
            if part.isdigit() or len(prefix) == 3:
                break
            prefix.append(part)
        groups[".".join(prefix) + ".*" if prefix else parts[0]] += 1
    items = [f"{name} ({count})" for name, count in sorted(groups.items())]
    if len(items) > limit:
        items = [*items[:limit], f"... {len(items) - limit} more groups"]
    return ", ".join(items)


def non_local_renames(release_prefix: str, stage: str, indices: Iterable[int]) -> tuple[Rename, ...]:
    """Renames of the AGW ``Non_local`` blocks ``<release_prefix>.<k>`` onto ``<stage>.non_local.<index>``.

    The release keeps the blocks of a stage in a ``ModuleList`` (``NL_2.0``, ``NL_2.1``) applied after the
    blocks ``indices`` (its ``NL_2_idx``); inside a block ``g.0`` is the g conv, ``W.0`` the output conv and
    ``W.1`` the output BatchNorm, which vireid names ``g``, ``out_conv`` and ``out_bn``.
    """
    inner = (("g.0.", "g."), ("W.0.", "out_conv."), ("W.1.", "out_bn."), ("theta.", "theta."), ("phi.", "phi."))
    return tuple(
        Rename(f"{release_prefix}.{k}.{old}", f"{stage}.non_local.{index}.{new}")
        for k, index in enumerate(indices)
        for old, new in inner
    )
