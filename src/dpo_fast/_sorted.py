"""The batch-sorted loss types (aot, aot_unpaired) of preference_loss's general path.

AOT (Melnyk et al. 2024; TRL's ``aot`` / ``aot_pair``) sorts the policy's and the reference's
log-ratios (aot: of chosen against rejected; aot_unpaired: of policy against reference, per
side) across the batch and takes the sigmoid loss of the sorted differences; the loss of the
i-th sorted pair belongs to the pair at position i of the first sort, and its derivatives go
back through the permutations. dpo_fast._general runs the per-pair kernel and calls
``add_sorted_terms``; the differences are formed, sorted and put back in compiled loops
(_kernels/_sort.pyx), so the only NumPy passes left are the loss sum and, for the weighted or
mixed calls, the adds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from dpo_fast import _threads
from dpo_fast._kernels import _pairwise, _sort
from dpo_fast._registry import KERNEL_IDS, SORTED_TYPES

__all__ = ["add_sorted_terms", "sorted_term"]


# The sorts' buffers (scratch, sorted values, positions, the sorted losses and derivatives)
# are kept per thread from one call to the next, up to this many 8-byte words (64 MiB: 2e6
# pairs without gradients). Fresh pages cost ~1 ms per 4 MiB to fault in here, a quarter of
# aot's time at 1e6 pairs when every call allocated them. Per thread: two threads may run
# preference_loss at once.
CACHED_WORDS = 2**23
_cache = threading.local()


def _take_workspace(words: int) -> np.ndarray:
    """This thread's kept uint64 buffer if it holds ``words`` (taken out of the cache while in
    use: a nested call on this thread gets a fresh one), else a fresh buffer."""
    kept = getattr(_cache, "buffer", None)
    if kept is not None and kept.shape[0] >= words:
        _cache.buffer = None
        return kept
    return np.empty(words, dtype=np.uint64)


def _give_back(buffer: np.ndarray) -> None:
    """Keep ``buffer`` for this thread's next call (the larger of it and the one kept, within
    CACHED_WORDS)."""
    kept = getattr(_cache, "buffer", None)
    if buffer.shape[0] <= CACHED_WORDS and (kept is None or kept.shape[0] < buffer.shape[0]):
        _cache.buffer = buffer


class _Workspace:
    """Consecutive pieces of one uint64 buffer: the arrays of one sorted term."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer, self.used = buffer, 0

    def take(self, words: int) -> np.ndarray:
        piece = self.buffer[self.used:self.used + words]
        self.used += words
        return piece


def _workspace_words(length: int, want_slope: bool) -> int:
    """The words sorted_term takes from its workspace: the sorts' scratch (then the sorted
    losses), two sorted value arrays, two position arrays (uint32), two derivative arrays."""
    if length > _sort.MAX_LENGTH:
        return 0
    return (_sort.scratch_length(length) + 2 * length + 2 * ((length + 1) // 2)
            + (2 * length if want_slope else 0))


def _sorted_differences(first: np.ndarray | None, second: np.ndarray | None, scale: float,
                        want_order: bool, n_threads: int, length: int,
                        scratch: np.ndarray | None, values: np.ndarray | None,
                        order: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(sorted ``first * scale - second * scale``, their positions or None, whether all are
    finite): _sort.sorted_differences (into ``values`` and ``order`` when given), or numpy's
    stable argsort beyond its uint32 positions. ``first`` None: no reference (aot's reference
    log-ratios are then all zero)."""
    if first is None:
        return np.zeros(length), (np.arange(length, dtype=np.uint32) if want_order else None), \
            True
    if length > _sort.MAX_LENGTH:
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(first, np.float64) * scale
            if second is not None:
                values = values - np.asarray(second, np.float64) * scale
        order = np.argsort(values, kind="stable")
        return values[order] + 0.0, order if want_order else None, bool(
            np.isfinite(values).all())
    return _sort.sorted_differences(
        np.ascontiguousarray(first),
        None if second is None else np.ascontiguousarray(second), scale, want_order, n_threads,
        scratch, values, order if want_order else None)


def sorted_term(name: str, arrays: Sequence[np.ndarray | None], beta: float, epsilon: float,
                threads: int | None, want_slope: bool, workspace: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, float, np.ndarray, np.ndarray | None]:
    """aot / aot_unpaired: the per-position losses and derivatives d loss / d delta / scale
    (float64; None without ``want_slope``), the scale, the pair each position's loss belongs
    to and the pair its rejected derivative goes to (None without ``want_slope``).

    The differences are sorted across the batch and the sigmoid kernel runs on the sorted
    ones. Where a difference of inputs near DBL_MAX overflows they are taken in quarters
    (``scale`` 0.25: x/4 is exact for normal x) with 4*beta, which restores the scale exactly;
    plain differences otherwise (quarters are exact but for subnormals).

    ``workspace``: a uint64 buffer of at least ``_workspace_words(length, want_slope)`` that
    the returned arrays are views of (the caller keeps it until it is done with them); None:
    fresh arrays.
    """
    length = arrays[0].shape[0]
    n_threads = _threads.resolve_n_threads(threads, length)
    pc, pr, rc, rr = arrays
    # (The rejected positions are only wanted for aot_unpaired's rejected derivatives; aot's
    # are the chosen ones.)
    if name == "aot":  # (chosen - rejected of the policy, then of the reference)
        sides = ((pc, pr, True), (rc, rr, False))
    else:  # (policy - reference of the chosen, then of the rejected)
        sides = ((pc, rc, True), (pr, rr, want_slope))
    words = _workspace_words(length, want_slope)
    if workspace is not None and workspace.shape[0] < words:
        raise ValueError(f"workspace must hold {words} words")
    pieces = _Workspace(np.empty(words, dtype=np.uint64) if workspace is None else workspace)
    # One scratch for both sorts, then for the sorted losses: 24 bytes a pair less peak
    # memory, and fewer fresh pages.
    scratch = pieces.take(_sort.scratch_length(length)) if words else None
    outs = [(pieces.take(length).view(np.float64),
             pieces.take((length + 1) // 2).view(np.uint32)[:length]) if words else (None, None)
            for _ in sides]

    def sort_side(side: int, scale: float) -> tuple[np.ndarray, np.ndarray | None, bool]:
        first, second, want_order = sides[side]
        return _sorted_differences(first, second, scale, want_order, n_threads, length,
                                   scratch, *outs[side])

    for scale in (1.0, 0.25):
        shifted = sort_side(0, scale)
        baseline = sort_side(1, scale) if shifted[2] else None
        if baseline is not None and baseline[2]:
            break
    if baseline is None:  # (not finite in quarters either: NaN or inf inputs)
        baseline = sort_side(1, scale)
    (shifted_values, chosen_order, _), (baseline_values, rejected_order, _) = shifted, baseline
    if name == "aot":
        rejected_order = chosen_order
    # The sorted losses go to the scratch, the sorts being done. (The kernel writes both
    # derivatives or neither; the rejected one is not used.)
    losses = np.empty(length) if scratch is None else scratch[:length].view(np.float64)
    grads = [(np.empty(length) if not words else pieces.take(length).view(np.float64))
             if want_slope else None for _ in range(2)]
    term = {"losses": losses, "chosen_rewards": None, "rejected_rewards": None,
            "grad_chosen": grads[0], "grad_rejected": grads[1]}
    config = _pairwise.LossConfig(((KERNEL_IDS["sigmoid"], 0, 1.0),), beta=beta / scale,
                                  label_smoothing=epsilon)
    _pairwise.run(config, shifted_values, baseline_values, None, None, None, None, None, term,
                  n_threads)
    return term["losses"], term["grad_chosen"], scale, chosen_order, rejected_order


def _scatter(source: np.ndarray, order: np.ndarray, out: np.ndarray, scale: float,
             divisor: float, negate: bool, n_threads: int) -> None:
    """``out[order] = ±(source * scale / divisor)``: compiled, or NumPy for int64 positions
    (inputs beyond the sort's uint32 ones)."""
    if order.dtype == np.uint32 and out.flags.c_contiguous:
        _sort.scatter(source, order, out, scale, divisor, negate, n_threads)
        return
    values = source * scale / divisor
    out[order] = 0.0 - values if negate else values


def alone(types: Sequence[str], type_weights: Sequence[float],
          pair_weights: np.ndarray | None) -> bool:
    """Whether the call is one sorted type alone, unweighted: its losses and gradients are
    then the term's, written in place (no per-pair kernel losses to add them to)."""
    return len(types) == 1 and pair_weights is None and type_weights[0] == 1.0


def add_sorted_terms(types: Sequence[str], type_weights: Sequence[float],
                     arrays: Sequence[np.ndarray | None], outputs: Mapping[str, np.ndarray],
                     kernel_outputs: Mapping[str, np.ndarray | None], staged: bool,
                     pair_weights: np.ndarray | None, beta: float, smoothing: float,
                     grad_divisor: float, threads: int | None) -> float:
    """Add the sorted types' terms to the per-pair kernel's outputs and return the loss sum.

    ``kernel_outputs`` are what the kernel wrote (float64 when ``staged``: float32 outputs
    get the sums rounded once at the end), ``outputs`` the call's arrays, ``arrays`` the
    inputs the kernel read. For one sorted type alone (``alone``) the kernel wrote no losses
    or gradients and the terms are put straight into ``outputs``.
    """
    length = arrays[0].shape[0]
    want_grad = outputs.get("grad_chosen") is not None
    words = _workspace_words(length, want_grad)
    # (One sorted type alone into float32 outputs: the float64 losses in pair order too.)
    extra = length if (words and outputs["losses"].dtype != np.float64
                       and alone(types, type_weights, pair_weights)) else 0
    buffer = _take_workspace(words + extra)
    try:
        return _add_sorted_terms(types, type_weights, arrays, outputs, kernel_outputs, staged,
                                 pair_weights, beta, smoothing, grad_divisor, threads,
                                 buffer[:words], buffer[words:words + extra])
    finally:
        _give_back(buffer)


def _add_sorted_terms(types: Sequence[str], type_weights: Sequence[float],
                      arrays: Sequence[np.ndarray | None], outputs: Mapping[str, np.ndarray],
                      kernel_outputs: Mapping[str, np.ndarray | None], staged: bool,
                      pair_weights: np.ndarray | None, beta: float, smoothing: float,
                      grad_divisor: float, threads: int | None, workspace: np.ndarray,
                      spare: np.ndarray) -> float:
    """add_sorted_terms with its buffers: ``workspace`` for sorted_term, ``spare`` (empty, or
    one float64 array's words) for the float64 losses of float32 outputs."""
    length = arrays[0].shape[0]
    n_threads = _threads.resolve_n_threads(threads, length)
    want_grad = outputs.get("grad_chosen") is not None
    fresh = workspace.shape[0] == 0  # (beyond the sort's length: numpy's arrays)
    if alone(types, type_weights, pair_weights):
        term_losses, slope, scale, chosen_order, rejected_order = sorted_term(
            types[0], arrays, beta, smoothing, threads, want_grad,
            None if fresh else workspace)
        target = outputs["losses"]
        # The sum is taken over the float64 losses in pair order, as for every other type.
        losses = target if target.dtype == np.float64 and target.flags.c_contiguous \
            else spare.view(np.float64) if spare.shape[0] == length else np.empty(length)
        _scatter(term_losses, chosen_order, losses, 1.0, 1.0, False, n_threads)
        total = float(np.sum(losses))
        if losses is not target:
            target[...] = losses
        if want_grad:
            # The kernel's gradients are zero: 0 + x = x, 0 - x on the rejected side.
            _scatter(slope, chosen_order, outputs["grad_chosen"], scale, grad_divisor, False,
                     n_threads)
            _scatter(slope, rejected_order, outputs["grad_rejected"], scale, grad_divisor,
                     True, n_threads)
        return total

    losses = np.asarray(kernel_outputs["losses"], np.float64)
    grads = [None if kernel_outputs.get(key) is None
             else np.asarray(kernel_outputs[key], np.float64)
             for key in ("grad_chosen", "grad_rejected")]
    for name in [name for name in types if name in SORTED_TYPES]:
        type_weight = type_weights[types.index(name)]
        term_losses, slope, scale, chosen_order, rejected_order = sorted_term(
            name, arrays, beta, smoothing, threads, grads[0] is not None,
            None if fresh else workspace)
        weight = np.full(length, type_weight) if pair_weights is None else \
            type_weight * pair_weights[chosen_order]
        # A zero weight removes the term even where its loss is inf (beta * (c - r)
        # overflowed), as dpo_mul0 does in the kernels: not 0 * inf = NaN.
        with np.errstate(invalid="ignore"):
            losses[chosen_order] += np.where(weight == 0.0, 0.0, weight * term_losses)
        if grads[0] is not None:
            step = weight * (slope * scale) / grad_divisor
            grads[0][chosen_order] += step
            grads[1][rejected_order] -= step
    total = float(np.sum(losses))
    if staged or losses is not kernel_outputs["losses"]:
        outputs["losses"][...] = losses
    for key, grad in zip(("grad_chosen", "grad_rejected"), grads):
        if grad is not None and grad is not outputs[key]:
            outputs[key][...] = grad
    if staged:
        outputs["chosen_rewards"][...] = kernel_outputs["chosen_rewards"]
        outputs["rejected_rewards"][...] = kernel_outputs["rejected_rewards"]
    return total
