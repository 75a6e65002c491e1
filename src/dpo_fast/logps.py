"""sequence_logps: per-sequence log-probabilities of labels under a language model's logits.

Every DPO step starts by turning logits ``(B, T, V)`` into one log-probability per sequence.
The usual ``log_softmax(logits).gather(labels)`` writes a second ``B*T*V`` array (hundreds of
MB for a 32k vocabulary) only to read ``B*T`` numbers out of it. Here each row of ``V`` logits
is read once from memory (twice from cache) by a fused compiled kernel that keeps only
``O(B*T)`` numbers, and the backward writes its gradient straight into the output buffer.

This layer validates arguments, allocates the outputs and documents; the arithmetic happens
in dpo_fast._kernels._logps (C loops in csrc/logps_row.h).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast import _threads
from dpo_fast._arrays import (
    check_flag,
    copy_back,
    kernel_array,
    kernel_output,
    tensor_as_array,
)
from dpo_fast._kernels import _logps

__all__ = ["SequenceLogpsResult", "sequence_logps", "sequence_logps_grad"]

# Below this many logits to process a call runs on one thread. Measured with
# bench/bench_logps.py --threshold on an idle 2-core machine (V = 1024, float32): two threads
# take 0.75x the time of one at 32k logits (44 us on one thread) and 0.7x at 64k (67 us).
# The margin is for busier machines, where waking an OpenMP pool that has gone to sleep
# costs far more than on an idle one.
PARALLEL_MIN_ELEMENTS = 1 << 16
# A gradient this large is allocated zeroed (np.zeros): beyond glibc's largest mmap threshold
# (32 MiB) calloc maps fresh pages, zero at no cost, so the kernel leaves the rows that do not
# count unwritten (36% of the rows of the benchmark batch: 180 of its 500 MB of writes) where
# np.empty would have it write their zeros. Smaller ones could come from the heap, which
# calloc clears with a memset of the whole array.
ZEROED_GRAD_MIN_BYTES = 1 << 26

@dataclass(frozen=True)
class SequenceLogpsResult:
    """What :func:`sequence_logps` returns.

    Shapes: ``S`` is ``labels.shape[:-1]`` (``(B,)`` for ``(B, T, V)`` logits, ``()`` for
    ``(N, V)`` logits, which are one sequence) and ``P`` is ``labels.shape``.

    Attributes
    ----------
    logps : numpy.ndarray, float64, shape S
        Per sequence, the sum over counted positions of
        ``log_softmax(logits / temperature)[label]``, or with ``average=True`` that sum
        divided by ``counts``. A sequence with no counted position gives ``0.0`` either way.
    counts : numpy.ndarray, int64, shape S
        Counted positions per sequence (label not ``ignore_index``, mask non-zero).
    token_accuracy : float
        Fraction of counted positions whose label is the arg-max of the logits (the first
        maximal index on ties, like ``numpy.argmax``; the temperature does not change it):
        TRL's ``mean_token_accuracy``. ``0.0`` when nothing is counted.
    logsumexp : numpy.ndarray, float64, shape P
        ``log(sum(exp(logits / temperature)))`` per counted position, ``0.0`` elsewhere. Pass
        it to :func:`sequence_logps_grad` to skip recomputing it.
    token_logps : numpy.ndarray or None, float64, shape P
        Per-position log-probabilities (``0.0`` at positions not counted), if
        ``return_token_logps=True``.
    entropy : numpy.ndarray or None, float64, shape P
        Per-position entropy of ``softmax(logits / temperature)`` in nats (``0.0`` at
        positions not counted), if ``return_entropy=True``.
    mean_entropy : float or None
        Mean of ``entropy`` over counted positions (TRL logs it as ``entropy``); ``0.0`` when
        nothing is counted; None unless ``return_entropy=True``.
    wpo_weights : numpy.ndarray or None, float64, shape S
        With ``return_wpo_weights=True``: per sequence, WPO's weight (Zhou et al. 2024, Eq. 2;
        TRL's ``use_weighting``) ``exp(mean over counted positions of (token_logp -
        log(sum_v p_v**2)))``, ``p = softmax(logits / temperature)``; ``1.0`` for a sequence
        with no counted position. TRL's per-pair weight is ``min(1, w_chosen * w_rejected)``
        (see :func:`sequence_logps`).
    logit_sums : numpy.ndarray or None, float64, shape S
        With ``return_logit_sums=True``: per sequence, the sum of the logits (as given, before
        the temperature) over its counted positions and the whole vocabulary.
    mean_logit : float or None
        With ``return_logit_sums=True``: the mean logit over all counted positions and the
        vocabulary (``logit_sums.sum() / (counts.sum() * V)``), TRL's ``logits/chosen`` when
        the call holds the chosen sequences; ``0.0`` when nothing is counted.
    """

    logps: np.ndarray
    counts: np.ndarray
    token_accuracy: float
    logsumexp: np.ndarray
    token_logps: np.ndarray | None = None
    entropy: np.ndarray | None = None
    mean_entropy: float | None = None
    wpo_weights: np.ndarray | None = None
    logit_sums: np.ndarray | None = None
    mean_logit: float | None = None


@dataclass(frozen=True)
class _Prepared:
    """Validated inputs: logits as a (B, T, V) view, labels and the counted rows."""

    logits: np.ndarray       # (B, T, V), last axis contiguous
    shape: tuple[int, ...]   # the caller's logits shape
    labels: np.ndarray       # (B * T,) int64
    rows: np.ndarray         # flat indices of the counted positions, ascending
    counts: np.ndarray       # (B,) int64
    seq_shape: tuple[int, ...]
    token_shape: tuple[int, ...]
    inv_temperature: float


def check_temperature(temperature: Any) -> float:
    """The user's temperature as a float: finite, > 0, 1 / temperature finite (shared with
    dpo_fast.linear_logps)."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {temperature!r}")
    try:
        value = float(temperature)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if not math.isfinite(1.0 / value):
        raise ValueError(f"temperature {temperature!r} is too small: 1 / temperature "
                         "overflows double precision")
    return value


def check_ignore_index(ignore_index: Any) -> int:
    """The user's ignore_index as an int that fits int64 (shared with dpo_fast.linear_logps)."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index,
                                                                   numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    value = int(ignore_index)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_index {value} does not fit in int64")
    return value


def _as_array(value: Any, name: str) -> np.ndarray:
    """np.asarray, with a clear error for torch tensors NumPy cannot take as they are."""
    array = tensor_as_array(value, name, "dpo_fast.torch.sequence_logps")
    return np.asarray(value) if array is None else array


def _as_logits(logits: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """(logits as a (B, T, V) array whose last axis is contiguous, the original shape)."""
    array = _as_array(logits, "logits")
    if array.dtype not in (np.float32, np.float64):
        hint = (" (convert it with .astype(np.float32), which copies the logits)"
                if array.dtype.kind == "f" else "")
        raise TypeError(f"logits must be float32 or float64, got dtype {array.dtype}{hint}")
    if array.ndim not in (2, 3):
        raise ValueError(f"logits must have shape (B, T, V) or (N, V), got shape "
                         f"{array.shape}")
    if array.shape[-1] == 0:
        raise ValueError(f"logits has an empty vocabulary axis: shape {array.shape}")
    view = array if array.ndim == 3 else array[np.newaxis]
    itemsize = view.itemsize
    if (view.strides[2] != itemsize or any(s % itemsize for s in view.strides[:2])
            or not view.flags.aligned):
        # The kernel walks each row of V logits with unit stride; any stride of the first
        # axes works in place. Only a strided vocabulary axis is copied (documented), and
        # logits that are not aligned (a view of a byte buffer at an odd offset).
        view = kernel_array(view, view.dtype)
    return view, array.shape


def format_position(shape: tuple[int, ...], flat: int) -> str:
    """The flat index ``flat`` of ``shape`` as ``"i, j"`` for an error message."""
    return ", ".join(str(i) for i in np.unravel_index(flat, shape))


def _as_labels(labels: Any, shape: tuple[int, ...]) -> np.ndarray:
    """labels as a flat C-contiguous int64 array (validated dtype and shape)."""
    array = _as_array(labels, "labels")
    if array.dtype == np.bool_ or array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {array.dtype}")
    if array.shape != shape:
        logits_shape = "(" + ", ".join([*map(str, shape), "V"]) + ")"
        raise ValueError(f"labels has shape {array.shape} but logits has shape "
                         f"{logits_shape}: labels must have shape {shape} (one label per "
                         "position; shift them yourself, see sequence_logps)")
    if array.dtype == np.uint64 and array.size:
        too_big = np.flatnonzero(array.ravel() > np.iinfo(np.int64).max)
        if too_big.size:
            flat = int(too_big[0])
            raise ValueError(f"labels[{format_position(shape, flat)}] = "
                             f"{int(array.ravel()[flat])} is out of range")
    return kernel_array(array, np.int64).reshape(-1)


def as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """mask as a flat C-contiguous uint8 array of 0/1, or None."""
    if mask is None:
        return None
    array = _as_array(mask, "mask")
    if array.dtype != np.bool_ and array.dtype.kind not in "iu":
        raise TypeError(f"mask must be boolean or integer (non-zero = counted), got dtype "
                        f"{array.dtype}")
    if array.shape != shape:
        raise ValueError(f"mask has shape {array.shape} but labels have shape {shape}")
    counted = array if array.dtype == np.bool_ else array != 0
    return np.ascontiguousarray(counted).reshape(-1).view(np.uint8)


def _prepare(logits: Any, labels: Any, ignore_index: Any, mask: Any, temperature: Any
             ) -> _Prepared:
    ignore = check_ignore_index(ignore_index)
    temp = check_temperature(temperature)
    view, shape = _as_logits(logits)
    token_shape = shape[:-1]
    flat_labels = _as_labels(labels, token_shape)
    flat_mask = as_mask(mask, token_shape)
    n_b, n_t, vocab = view.shape
    rows = np.empty(n_b * n_t, dtype=np.int64)
    counts = np.empty(n_b, dtype=np.int64)
    n_rows, first_bad = _logps.select_rows(
        flat_labels.reshape(n_b, n_t),
        None if flat_mask is None else flat_mask.reshape(n_b, n_t),
        ignore, vocab, rows, counts)
    if first_bad >= 0:
        raise ValueError(
            f"labels[{format_position(token_shape, first_bad)}] = "
            f"{int(flat_labels[first_bad])} is out of range for a vocabulary of {vocab}: "
            f"a counted label must be in [0, {vocab}) (or equal ignore_index={ignore}, or be "
            "masked out)")
    return _Prepared(logits=view, shape=shape, labels=flat_labels, rows=rows[:n_rows],
                     counts=counts, seq_shape=token_shape[:-1], token_shape=token_shape,
                     inv_temperature=1.0 / temp)


def _raise_non_finite(prep: _Prepared, status: np.ndarray, rows: np.ndarray) -> None:
    """Raise ValueError naming the first counted position whose logits are not finite."""
    bad = rows[status[rows] == _logps.NONFINITE]
    flat = int(bad[0])
    n_t = prep.logits.shape[1]
    row = prep.logits[flat // n_t, flat % n_t]
    where = format_position(prep.token_shape, flat)
    non_finite = np.flatnonzero(~np.isfinite(row))
    if non_finite.size:
        v = int(non_finite[0])
        raise ValueError(f"logits[{where}, {v}] is {float(row[v])!r}: logits must be finite at "
                         "every counted position (positions skipped by mask or ignore_index "
                         "are not read)")
    raise ValueError(f"logits[{where}, :] / temperature overflows double precision (largest "
                     f"logit {float(row.max())!r}, temperature {1 / prep.inv_temperature!r})")


@dataclass(frozen=True)
class RowResults:
    """Per-position results of the counted rows, before the per-sequence sums: what
    :func:`sequence_result` turns into a :class:`SequenceLogpsResult` (linear_logps shares it).

    ``token_logps``, ``logsumexp``, ``entropy`` (or None) and ``status`` have one entry per
    position (B*T, zeros where not counted); ``log_sum_p2`` and ``logit_sums`` (or None: not
    asked for) one per counted row, aligned with ``rows``."""

    rows: np.ndarray
    n_t: int
    vocab: int
    counts: np.ndarray
    seq_shape: tuple[int, ...]
    token_shape: tuple[int, ...]
    token_logps: np.ndarray
    logsumexp: np.ndarray
    entropy: np.ndarray | None
    status: np.ndarray
    log_sum_p2: np.ndarray | None = None
    logit_sums: np.ndarray | None = None


def _logit_sums(rr: RowResults, sequence_of_row: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sequence sums of the counted rows' logit sums, and the mean logit. Only float64
    logits near the largest double can overflow a sum: that is an error, not a NaN."""
    row_sums = rr.logit_sums
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.bincount(sequence_of_row, weights=row_sums, minlength=rr.counts.size)
        total = float(sums.sum())
    if not math.isfinite(total):
        bad = rr.rows[~np.isfinite(row_sums)]
        where = (f"logits[{format_position(rr.token_shape, int(bad[0]))}, :]" if bad.size
                 else "the counted logits")
        raise ValueError(f"return_logit_sums: the sum of {where} overflows double precision "
                         "(logits near the largest double); call without return_logit_sums")
    mean = total / (rr.rows.size * rr.vocab) if rr.rows.size else 0.0
    return sums.reshape(rr.seq_shape), mean


def sequence_result(rr: RowResults, *, average: bool, want_tokens: bool) -> SequenceLogpsResult:
    """The per-sequence sums of counted rows' results (in row order, whatever the thread
    count), the optional WPO weights and logit sums, and the result."""
    rows, counts = rr.rows, rr.counts
    n_b, n_rows = counts.size, rr.rows.size
    sums = np.empty(n_b)
    n_argmax, entropy_sum = _logps.sequence_sums(rows, rr.n_t, rr.token_logps, rr.entropy,
                                                 rr.status, sums)
    if average:
        sums = np.divide(sums, counts, out=np.zeros(n_b), where=counts > 0)
    wpo_weights = logit_sums = mean_logit = None
    sequence_of_row = rows // rr.n_t
    if rr.log_sum_p2 is not None:
        # TRL: mean over counted positions of (token logp - log sum p^2), a count of 0 taken
        # as 1 (so the weight is exp(0) = 1). bincount adds in row order: deterministic.
        adjusted = np.bincount(sequence_of_row, weights=rr.token_logps[rows] - rr.log_sum_p2,
                               minlength=n_b)
        wpo_weights = np.exp(adjusted / np.maximum(counts, 1)).reshape(rr.seq_shape)
    if rr.logit_sums is not None:
        logit_sums, mean_logit = _logit_sums(rr, sequence_of_row)
    return SequenceLogpsResult(
        logps=sums.reshape(rr.seq_shape),
        counts=counts.reshape(rr.seq_shape),
        token_accuracy=n_argmax / n_rows if n_rows else 0.0,
        logsumexp=rr.logsumexp.reshape(rr.token_shape),
        token_logps=rr.token_logps.reshape(rr.token_shape) if want_tokens else None,
        entropy=None if rr.entropy is None else rr.entropy.reshape(rr.token_shape),
        mean_entropy=(None if rr.entropy is None
                      else entropy_sum / n_rows if n_rows else 0.0),
        wpo_weights=wpo_weights,
        logit_sums=logit_sums,
        mean_logit=mean_logit,
    )


def sequence_logps(logits: Any, labels: Any, *, ignore_index: int = -100, mask: Any = None,
                   average: bool = False, temperature: float = 1.0,
                   return_token_logps: bool = False, return_entropy: bool = False,
                   return_wpo_weights: bool = False, return_logit_sums: bool = False,
                   n_threads: int | None = None) -> SequenceLogpsResult:
    """Per-sequence log-probabilities of ``labels`` under ``logits``, in one fused pass.

    For each counted position ``(b, t)`` the token log-probability is
    ``log_softmax(logits[b, t] / temperature)[labels[b, t]]``; ``logps[b]`` is their sum over
    ``t`` (or mean, with ``average=True``). Each row of ``V`` logits is read once from memory
    by a compiled kernel (a two-pass log-sum-exp over the row held in cache, in double
    precision, vectorised, OpenMP threads over rows); no ``B*T*V`` temporary is made: the
    extra memory is ``O(B*T)``.

    Parameters
    ----------
    logits : array_like, float32 or float64, shape (B, T, V) or (N, V)
        Unnormalised scores. Any strides over the first axes are read in place (e.g.
        ``logits[:, :-1]``); a vocabulary axis that is not contiguous is copied first.
        ``(N, V)`` logits are one sequence of ``N`` positions.
    labels : array_like of int, shape (B, T) or (N,)
        The token to score at each position, **already shifted**: for a causal LM whose
        output at position ``t`` predicts token ``t + 1``, pass ``logits[:, :-1]`` and
        ``input_ids[:, 1:]`` (as TRL's ``selective_log_softmax`` expects).
    ignore_index : int, default -100
        Positions whose label equals it are not counted (and their logits are not read).
    mask : array_like of bool or int, shape of labels, optional
        Positions where it is 0 / False are not counted either (and not read); their labels
        are not checked.
    average : bool, default False
        Divide each sequence's sum by its count. A sequence with no counted position gives
        ``0.0`` (never NaN).
    temperature : float, default 1.0
        Finite, > 0: the log-softmax is taken of ``logits / temperature`` (computed in double
        as ``logits * (1 / temperature)``).
    return_token_logps : bool, default False
        Also return the per-position log-probabilities.
    return_entropy : bool, default False
        Also return the per-position entropy and its mean (about 20% more time).
    return_wpo_weights : bool, default False
        Also return ``wpo_weights``, WPO's per-sequence weights (TRL's ``use_weighting``),
        from the same pass over each row (``log(sum p**2)`` is computed as
        ``log(sum exp(z - m)**2) - 2 log(sum exp(z - m))``, never by squaring
        probabilities). They carry no gradient (TRL computes them under ``no_grad``).
    return_logit_sums : bool, default False
        Also return ``logit_sums`` and ``mean_logit``, TRL's ``logits/chosen`` and
        ``logits/rejected`` metrics, from the same pass. The extras of ``return_entropy``,
        ``return_wpo_weights`` and ``return_logit_sums`` share one loop: asking for one or
        all of them costs about the same.
    n_threads : int, optional
        OpenMP threads. None: the CPUs this process may use (affinity, cgroup quota,
        ``OMP_NUM_THREADS``). Calls with fewer than ``PARALLEL_MIN_ELEMENTS`` logits to read
        run on one thread. Results are bit-identical for every value.

    Returns
    -------
    SequenceLogpsResult
        ``logps``, ``counts``, ``token_accuracy``, ``logsumexp`` and, if asked for,
        ``token_logps``, ``entropy``, ``mean_entropy``, ``wpo_weights``, ``logit_sums`` and
        ``mean_logit``. All floating-point results are
        float64 whatever the logits' dtype: a float32 sum of hundreds of token log-probs
        near -5000 would already be off by ~2e-4.

    Raises
    ------
    TypeError
        logits not float32/float64, labels not integers, mask not bool/integer, or a
        non-numeric scalar argument.
    ValueError
        Shapes that do not match; a counted label outside ``[0, V)`` or a NaN/inf logit at a
        counted position (the message names the first such position); a temperature that is
        not finite and > 0; a bad ``n_threads``.

    See Also
    --------
    sequence_logps_grad : the gradient with respect to the logits.

    Notes
    -----
    Every logit of a counted row must be finite: a vocabulary masked with ``-inf`` is
    rejected like NaN (use a large negative finite value, e.g. ``np.finfo(dtype).min``).
    Per row, in double precision: ``m = max(z)``, ``s = sum(exp(z - m))``,
    ``logp = (z[label] - m) - log(s)``, ``entropy = log(s) - sum(exp(z - m) * (z - m)) / s``
    with ``z = logits * (1 / temperature)``; the sum over the row uses fixed lanes and the sum
    over a sequence runs in position order, so results are the same bits for every thread
    count and SIMD code path. float64 logits: within ~1e-15 of a float64 reference. float32
    logits (contract: token log-probs within 1e-6): each ``exp(z - m)`` comes from a float
    exp at temperature 1 (1.05 float ulps, twice the SIMD lanes; z - m is one float
    subtraction) and from a short double one otherwise (2.2e-10 relative), the sums staying
    double: token log-probs and entropies within ~4e-8, per-sequence sums within ~3e-9 a token
    (bench/README-logps.md).

    TRL's WPO (``DPOConfig(use_weighting=True)``) from one call on the concatenated batch
    (chosen sequences first, ``n`` pairs), then into the loss as TRL multiplies it::

        out = sequence_logps(logits, labels, return_wpo_weights=True)
        w = out.wpo_weights
        pair_weights = np.minimum(w[:n] * w[n:], 1.0)    # TRL clamps at 1
        preference_loss(out.logps[:n], out.logps[n:], ref_c, ref_r, weights=pair_weights)

    TRL takes ``exp(mean_c + mean_r)`` where this takes ``exp(mean_c) * exp(mean_r)``: the
    two differ by rounding only (a few ulp).

    Examples
    --------
    A causal LM's output at position ``t`` scores token ``t + 1``, so the labels are the
    input ids shifted left by one and the last position's logits are dropped:

    >>> import numpy as np
    >>> from dpo_fast import sequence_logps
    >>> input_ids = np.array([[5, 3, 7, 1, 0, 0],
    ...                       [2, 4, 4, 6, 1, 0]])
    >>> attention_mask = input_ids != 0                    # 0 is padding here
    >>> logits = np.random.default_rng(0).normal(size=(2, 6, 8)).astype(np.float32)
    >>> labels = input_ids[:, 1:].copy()
    >>> labels[:, :1] = -100                               # do not score the prompt's token
    >>> result = sequence_logps(logits[:, :-1], labels, mask=attention_mask[:, 1:])
    >>> result.counts
    array([2, 3])
    >>> result.logps.round(4)
    array([-4.9581, -9.2718])
    >>> sequence_logps(logits[:, :-1], labels, mask=attention_mask[:, 1:],
    ...                average=True).logps.round(4)
    array([-2.479 , -3.0906])
    """
    # The common call (NumPy logits and int64 labels, no mask, below the parallel threshold,
    # none of the WPO / logit extras) in one compiled step; anything else, or anything wrong,
    # is validated below.
    if return_wpo_weights is False and return_logit_sums is False:
        common = _logps.common_call(logits, labels, ignore_index, mask, average, temperature,
                                    return_token_logps, return_entropy, n_threads,
                                    PARALLEL_MIN_ELEMENTS)
        if common is not None:
            return SequenceLogpsResult(*common)
    want_average = check_flag(average, "average")
    want_tokens = check_flag(return_token_logps, "return_token_logps")
    want_entropy = check_flag(return_entropy, "return_entropy")
    want_wpo = check_flag(return_wpo_weights, "return_wpo_weights")
    want_logit_sums = check_flag(return_logit_sums, "return_logit_sums")
    threads = _threads.validate_n_threads(n_threads)
    prep = _prepare(logits, labels, ignore_index, mask, temperature)
    n_b, n_t, vocab = prep.logits.shape
    rows = prep.rows

    # Zeros: positions not counted keep 0.0 (the kernel writes counted rows only).
    token_logps = np.zeros(n_b * n_t)
    logsumexp = np.zeros(n_b * n_t)
    entropy = np.zeros(n_b * n_t) if want_entropy else None
    log_sum_p2 = np.zeros(n_b * n_t) if want_wpo else None
    row_logit_sums = np.zeros(n_b * n_t) if want_logit_sums else None
    status = np.zeros(n_b * n_t, dtype=np.uint8)
    n_bad = _logps.forward(
        prep.logits, prep.labels, rows, prep.inv_temperature, token_logps, logsumexp,
        entropy, status,
        n_threads=_threads.resolve_n_threads(threads, rows.size * vocab, PARALLEL_MIN_ELEMENTS),
        log_sum_p2=log_sum_p2, logit_sum=row_logit_sums)
    if n_bad:
        _raise_non_finite(prep, status, rows)

    return sequence_result(RowResults(
        rows=rows, n_t=n_t, vocab=vocab, counts=prep.counts, seq_shape=prep.seq_shape,
        token_shape=prep.token_shape, token_logps=token_logps, logsumexp=logsumexp,
        entropy=entropy, status=status,
        log_sum_p2=None if log_sum_p2 is None else log_sum_p2[rows],
        logit_sums=None if row_logit_sums is None else row_logit_sums[rows]),
        average=want_average, want_tokens=want_tokens)


def as_upstream(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """An upstream gradient as float64, broadcast to ``shape`` (TypeError / ValueError
    naming ``name``)."""
    array = _as_array(value, name)
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    try:
        return np.broadcast_to(array.astype(np.float64, copy=False), shape)
    except ValueError:
        raise ValueError(f"{name} has shape {array.shape}, which does not broadcast to "
                         f"{shape}") from None


def _check_grad_out(out: Any, shape: tuple[int, ...], dtype: np.dtype,
                    inputs: dict[str, Any]) -> np.ndarray:
    """The caller's ``out`` array, checked; ``inputs`` are the arguments it must not overlap
    by name (the kernel reads logits, labels, mask and logsumexp while it writes, and the
    other inputs are the caller's too)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected the logits' dtype {dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected the logits' shape {shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    for name, value in inputs.items():
        if isinstance(value, np.ndarray) and np.may_share_memory(out, value):
            raise ValueError(f"out overlaps {name}")
    return out


def _raise_non_finite_upstream(prep: _Prepared, flat: int, g_seq: np.ndarray,
                               g_tok: np.ndarray | None) -> None:
    """Raise ValueError for the counted position ``flat`` whose upstream weight (grad_logps
    of its sequence plus grad_token_logps there), divided by the temperature, is not finite."""
    where = format_position(prep.token_shape, flat)
    sequence = flat // prep.logits.shape[1]
    if not math.isfinite(g_seq[sequence]):
        label = (f"grad_logps[{format_position(prep.seq_shape, sequence)}]"
                 if prep.seq_shape else "grad_logps")
        raise ValueError(f"{label} is {float(g_seq[sequence])!r}: the upstream gradient must "
                         "be finite")
    if g_tok is not None and not math.isfinite(g_tok[flat]):
        raise ValueError(f"grad_token_logps[{where}] is {float(g_tok[flat])!r}: the upstream "
                         "gradient must be finite")
    raise ValueError(f"the upstream gradient at position [{where}] (grad_logps plus "
                     f"grad_token_logps, divided by temperature {1 / prep.inv_temperature!r}) "
                     "overflows double precision")


def _as_logsumexp(logsumexp: Any, token_shape: tuple[int, ...]) -> np.ndarray:
    """The forward call's log-sum-exp as a flat float64 array, checked."""
    array = _as_array(logsumexp, "logsumexp")
    if array.dtype.kind not in "iuf" or array.dtype.itemsize > 8:
        raise TypeError(f"logsumexp must hold real numbers (SequenceLogpsResult.logsumexp, "
                        f"float64), got dtype {array.dtype}")
    if array.shape != token_shape:
        raise ValueError(f"logsumexp has shape {array.shape}, expected {token_shape} "
                         "(SequenceLogpsResult.logsumexp)")
    return kernel_array(array, np.float64).reshape(-1)


def sequence_logps_grad(logits: Any, labels: Any, grad_logps: Any, *, ignore_index: int = -100,
                        mask: Any = None, average: bool = False, temperature: float = 1.0,
                        grad_token_logps: Any = None, logsumexp: Any = None,
                        n_threads: int | None = None, out: np.ndarray | None = None
                        ) -> np.ndarray:
    """Gradient of ``sum(grad_logps * logps)`` with respect to ``logits``, in one fused pass.

    ``logps`` is :func:`sequence_logps` with the same arguments. Each counted row gets
    ``w * (onehot(label) - softmax(logits / temperature)) / temperature`` with
    ``w = grad_logps[b]`` (divided by the sequence's count when ``average=True``), plus
    ``grad_token_logps[b, t]`` if given; rows not counted get zeros. The kernel writes straight
    into the returned array: no other ``B*T*V`` memory is used.

    Parameters
    ----------
    logits, labels, ignore_index, mask, average, temperature
        As for :func:`sequence_logps`, and they must be the same.
    grad_logps : array_like, broadcastable to labels.shape[:-1]
        Upstream gradient of each sequence's value (e.g. ``1.0`` for ``d sum(logps)``).
    grad_token_logps : array_like, broadcastable to labels.shape, optional
        Upstream gradient of the per-position log-probabilities, added to the above.
    logsumexp : array_like, shape of labels, optional
        ``SequenceLogpsResult.logsumexp`` from the forward call on the same logits: the pass
        then computes one exp per logit instead of re-deriving the normaliser (about half the
        work). Without it the normaliser is recomputed in the same pass, from cache. Real
        numbers, finite wherever a position is counted (else ValueError).
    n_threads : int, optional
        As for :func:`sequence_logps`; results are bit-identical for every value.
    out : numpy.ndarray, optional
        Where to write: C-contiguous, writeable, of the logits' shape and dtype, not
        overlapping any array argument. Otherwise a new array is returned. (An ``out`` that
        is not aligned, e.g. a view of a byte buffer at an odd offset, is filled through an
        aligned temporary.)

    Returns
    -------
    numpy.ndarray
        The gradient, of the logits' shape and dtype. float64: computed in double.
        float32: the softmax terms in float arithmetic (twice the SIMD lanes), each within
        ``3e-7 * |upstream| / temperature`` of the float64 value (the label's term in double,
        rounded once).
        Positions whose total upstream weight is 0 (not counted, or a zero upstream) get
        exact zeros and their logits are not read.

    Raises
    ------
    TypeError, ValueError
        As for :func:`sequence_logps`; a NaN/inf logit is reported only when ``logsumexp``
        is not given (the forward call has checked those rows). ValueError also where a
        counted position's upstream gradient divided by the temperature is not finite (it
        would make the row's zero softmax entries NaN), or its ``logsumexp`` is not.

    Examples
    --------
    >>> import numpy as np
    >>> from dpo_fast import sequence_logps, sequence_logps_grad
    >>> logits = np.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
    >>> labels = np.array([[2, 0]])
    >>> result = sequence_logps(logits, labels)
    >>> sequence_logps_grad(logits, labels, 1.0, logsumexp=result.logsumexp).round(4)
    array([[[-0.09  , -0.2447,  0.3348],
            [ 0.6667, -0.3333, -0.3333]]])
    """
    # The common call (what dpo_fast.torch's backward passes, below the parallel threshold) in
    # one compiled step; anything else, or anything wrong, is validated below.
    grad = _logps.common_grad_call(logits, labels, grad_logps, ignore_index, mask, average,
                                   temperature, grad_token_logps, logsumexp, n_threads, out,
                                   PARALLEL_MIN_ELEMENTS)
    if grad is not None:
        return grad
    want_average = check_flag(average, "average")
    threads = _threads.validate_n_threads(n_threads)
    prep = _prepare(logits, labels, ignore_index, mask, temperature)
    n_b, n_t, vocab = prep.logits.shape
    rows = prep.rows
    g_seq = as_upstream(grad_logps, prep.seq_shape, "grad_logps").reshape(n_b)
    g_tok = (None if grad_token_logps is None else
             as_upstream(grad_token_logps, prep.token_shape, "grad_token_logps").reshape(-1))
    lse = None if logsumexp is None else _as_logsumexp(logsumexp, prep.token_shape)

    # Per-row weights, O(B*T): the only place the sequence structure enters the backward.
    per_sequence = g_seq
    if want_average:
        per_sequence = np.divide(g_seq, prep.counts, out=np.zeros(n_b), where=prep.counts > 0)
    weight = np.zeros(n_b * n_t)
    if rows.size:
        weight[rows] = per_sequence[rows // n_t]
        if g_tok is not None:
            with np.errstate(over="ignore"):  # (an overflow is reported just below)
                weight[rows] += g_tok[rows]

    if rows.size:
        # The kernel scales each row by weight / temperature: where that is not finite, the
        # zero softmax entries of the row would become inf * 0 = NaN.
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = weight[rows] * prep.inv_temperature
        if not np.isfinite(scaled).all():
            _raise_non_finite_upstream(prep, rows[~np.isfinite(scaled)][0], g_seq, g_tok)
    if lse is not None and rows.size:
        # A row's gradient is exp(logit - lse): a NaN/inf normaliser (not from a successful
        # forward call) would give NaN silently.
        used = rows[weight[rows] != 0.0]
        bad = used[~np.isfinite(lse[used])]
        if bad.size:
            flat = int(bad[0])
            raise ValueError(f"logsumexp[{format_position(prep.token_shape, flat)}] is "
                             f"{float(lse[flat])!r}: it must be finite at every counted "
                             "position (pass SequenceLogpsResult.logsumexp of the same call)")

    grad_zeroed = False
    if out is None:
        grad_zeroed = (math.prod(prep.shape) * prep.logits.dtype.itemsize
                       >= ZEROED_GRAD_MIN_BYTES)
        allocate = np.zeros if grad_zeroed else np.empty
        grad = target = allocate(prep.shape, dtype=prep.logits.dtype)
    else:
        target = _check_grad_out(out, prep.shape, prep.logits.dtype, {
            "logits": logits, "labels": labels, "mask": mask, "grad_logps": grad_logps,
            "grad_token_logps": grad_token_logps, "logsumexp": logsumexp})
        grad = kernel_output(target)
    status = np.zeros(n_b * n_t, dtype=np.uint8)
    n_bad = _logps.backward(
        prep.logits, prep.labels, weight, lse, prep.inv_temperature,
        grad.reshape(n_b * n_t, vocab), status,
        n_threads=_threads.resolve_n_threads(threads, n_b * n_t * vocab, PARALLEL_MIN_ELEMENTS),
        grad_zeroed=grad_zeroed)
    if n_bad:
        counted = rows[weight[rows] != 0.0]
        _raise_non_finite(prep, status, counted)
    return copy_back(grad, target)
