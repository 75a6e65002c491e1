"""The loss types: what dpo_fast knows about each, read from the compiled kernels.

One table holds every fact about a loss type: ``DPO_LOSS_REGISTRY`` in
``_kernels/csrc/pair_losses.h``, one row per type (name, kernel id, flags, label_smoothing's
range). This module turns it into :class:`LossType` records and the sets the rest of the
package asks for (validation, the scorer, the tests and the benchmarks); none of them keeps a
list of its own. Adding a per-pair loss: a function and a row in pair_losses.h, and its
reference formula in the tests (``tests/test_registry.py`` fails until every place knows it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dpo_fast._kernels import _pairwise

__all__ = ["LossType", "LOSS_REGISTRY", "LOSS_TYPES", "KERNEL_IDS", "PLAIN_TYPES",
           "SORTED_TYPES", "BATCH_COUPLED_LOSS_TYPES", "LENGTH_LOSS_TYPES", "NEEDS_LENGTHS",
           "SMOOTHING_LIMITS", "F_DIVERGENCE_LOSS_TYPES", "REFERENCE_FREE_TYPES",
           "PER_PAIR_TYPES", "GT_REWARD_LOSS_TYPES"]


@dataclass(frozen=True)
class LossType:
    """One row of the registry.

    Attributes
    ----------
    name : str
        TRL's name (``loss_type=``).
    kernel_id : int
        The id the kernels know it by.
    plain : bool
        Runs on the plain fused loop when alone, unweighted and without lengths.
    sorted : bool
        Sorted across the batch first (aot, aot_unpaired); no kernel case of its own.
    normalized : bool
        Has a kernel case for length-normalised log-ratios.
    needs_lengths : tuple of str
        The length arguments it requires (``chosen_lengths``, ``rejected_lengths``).
    optional_lengths : bool
        Normalised by the lengths when both are given (ipo).
    divergence : bool
        TRL's ``f_divergence_type`` applies.
    batch_coupled : bool
        A pair's loss depends on the other pairs of the batch (the scorer refuses it).
    batch_constant : bool
        The same value for every pair, computed by the caller (sft).
    reference_free : bool
        Refuses reference log-probs (simpo).
    normalized_rewards : bool
        Rewards are ``beta * p / n`` (simpo), not ``beta * (p - ref)``.
    smoothing_max : float
        label_smoothing's exclusive upper bound (lower bound 0); 0 when the type ignores it.
    smoothing_positive : bool
        label_smoothing must be > 0 (exo_pair takes its log; TRL 1.16 refuses 0 too).
    gt_rewards : bool
        Needs the pairs' ground-truth reward margins (NeMo-Aligner's rpo_* losses).
    fused_as_general : bool
        Alone with weight 1, runs on the fused loop with the general loop's bits (sft with
        its batch constant, rpo_sq with the margins).
    """

    name: str
    kernel_id: int
    plain: bool
    sorted: bool
    normalized: bool
    needs_lengths: tuple[str, ...]
    optional_lengths: bool
    divergence: bool
    batch_coupled: bool
    batch_constant: bool
    reference_free: bool
    normalized_rewards: bool
    smoothing_max: float
    smoothing_positive: bool
    gt_rewards: bool = False
    fused_as_general: bool = False

    @property
    def uses_lengths(self) -> bool:
        """Whether the type reads chosen_lengths / rejected_lengths at all."""
        return bool(self.needs_lengths) or self.optional_lengths


def _record(name: str, kernel_id: int, flags: int, smoothing_max: float) -> LossType:
    bits = _pairwise.LOSS_FLAGS

    def has(flag: str) -> bool:
        return bool(flags & bits[flag])

    if has("lengths_both"):
        needs: tuple[str, ...] = ("chosen_lengths", "rejected_lengths")
    elif has("lengths_chosen"):
        needs = ("chosen_lengths",)
    else:
        needs = ()
    return LossType(
        name=name, kernel_id=kernel_id, plain=has("plain"), sorted=has("sorted"),
        normalized=has("normalized"), needs_lengths=needs,
        optional_lengths=has("lengths_optional"), divergence=has("divergence"),
        batch_coupled=has("batch_coupled"), batch_constant=has("batch_constant"),
        reference_free=has("reference_free"), normalized_rewards=has("normalized_rewards"),
        smoothing_max=smoothing_max, smoothing_positive=has("smoothing_positive"),
        gt_rewards=has("gt_rewards"), fused_as_general=has("fused_as_general"))


LOSS_REGISTRY: Mapping[str, LossType] = {
    row[0]: _record(*row) for row in _pairwise.loss_registry()}

# The loss types, in the order of the README's table.
LOSS_TYPES: tuple[str, ...] = tuple(LOSS_REGISTRY)
KERNEL_IDS: Mapping[str, int] = {name: t.kernel_id for name, t in LOSS_REGISTRY.items()}
# One loss type of raw log-ratios, no modifier: the plain kernel loop (the fastest).
PLAIN_TYPES = frozenset(name for name, t in LOSS_REGISTRY.items() if t.plain)
SORTED_TYPES = frozenset(name for name, t in LOSS_REGISTRY.items() if t.sorted)
# dpo_fast.score and dpo_fast.dask refuse these: they see the data in pieces.
BATCH_COUPLED_LOSS_TYPES = frozenset(
    name for name, t in LOSS_REGISTRY.items() if t.batch_coupled)
# The types a scorer can run batch by batch.
PER_PAIR_TYPES: tuple[str, ...] = tuple(
    name for name in LOSS_TYPES if name not in BATCH_COUPLED_LOSS_TYPES)
# The types that read chosen_lengths / rejected_lengths at all (the scorer reads length
# columns for these only), and the lengths each one requires.
LENGTH_LOSS_TYPES = frozenset(name for name, t in LOSS_REGISTRY.items() if t.uses_lengths)
NEEDS_LENGTHS: Mapping[str, tuple[str, ...]] = {
    name: t.needs_lengths for name, t in LOSS_REGISTRY.items() if t.needs_lengths}
# The types that use label_smoothing, each with its exclusive upper bound (lower bound 0).
SMOOTHING_LIMITS: Mapping[str, float] = {
    name: t.smoothing_max for name, t in LOSS_REGISTRY.items() if t.smoothing_max > 0.0}
F_DIVERGENCE_LOSS_TYPES = frozenset(name for name, t in LOSS_REGISTRY.items() if t.divergence)
REFERENCE_FREE_TYPES = frozenset(
    name for name, t in LOSS_REGISTRY.items() if t.reference_free)
# The types that read gt_reward_margins (and gt_reward_scale).
GT_REWARD_LOSS_TYPES = frozenset(name for name, t in LOSS_REGISTRY.items() if t.gt_rewards)
