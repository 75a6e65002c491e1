"""linear_sequence_logps: per-sequence log-probabilities from hidden states, without the logits.

A language model's logits ``hidden @ weight.T (+ bias)`` are the largest tensor of a DPO step
(``B*T*V`` floats: 8 x 2048 tokens x a 128k vocabulary is 8.4 GB in float32). Here they are
never built: the counted positions' hidden states are projected one tile of
``rows x VOCAB_TILE`` logits at a time (each tile one BLAS matrix product, NumPy's
``matmul``), and each tile is folded at once by the compiled row kernel of
:func:`dpo_fast.sequence_logps` into running per-row statistics (an online log-sum-exp: max,
sum of exp, the label's logit, and what the optional outputs need). The backward recomputes
each tile (its own tiles, up to twice the rows and half the columns: ``backward_tile``) and
turns it in place into ``upstream * (onehot - softmax) / temperature`` before two
more products accumulate the gradients of ``hidden``, ``weight`` and ``bias``. For a frozen
``lm_head`` (only ``d hidden`` wanted), :func:`linear_sequence_logps_and_token_grads` also sums
each row's softmax-weighted weight rows during the forward (one more product per tile), and
:func:`linear_hidden_grad` scales them by the upstream gradient: two products in all instead
of three.

Memory: beyond the inputs, the outputs and ``O(B*T)`` per-position numbers (64 bytes per
counted position), one logits tile of at most ``TILE_BYTES`` (16 MiB), a block of gathered
hidden states of at most ``HIDDEN_TILE_BYTES`` (8 MiB; the backward adds its gradient and one
partial product of that size) and a ``WEIGHT_CHUNK_BYTES`` (8 MiB) partial product for
``d weight``: at most 24 MiB forward and 48 MiB backward, whatever ``B``, ``T``, ``V`` and
``H``. Half-precision weights add their tile upcast to float32 (``VOCAB_TILE x H`` floats:
16 MiB at ``H = 1024``). The frozen-head forward adds its token gradients (``H`` numbers per
counted position, kept for the backward, which makes one more array of that size) and one
``HIDDEN_TILE_BYTES`` partial product. ``dpo-fast bench --section fused`` measures it.

This layer validates, tiles and documents; the arithmetic on the tiles happens in
dpo_fast._kernels._logps (C loops in csrc/logps_linear.h).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast import _threads
from dpo_fast._arrays import check_flag, tensor_as_array
from dpo_fast._kernels import _logps
from dpo_fast.logps import (
    PARALLEL_MIN_ELEMENTS,
    RowResults,
    SequenceLogpsResult,
    as_mask,
    as_upstream,
    check_ignore_index,
    check_temperature,
    format_position,
    sequence_result,
)

__all__ = ["TILE_BYTES", "VOCAB_TILE", "BFloat16Array", "linear_hidden_grad",
           "linear_sequence_logps", "linear_sequence_logps_and_token_grads",
           "linear_sequence_logps_grad"]

# Vocabulary columns per tile. The boundaries (0, VOCAB_TILE, 2 * VOCAB_TILE, ...) are fixed, and
# each row's statistics are merged tile by tile in that order, so the fold does not depend on
# how many rows a tile holds (TILE_BYTES), nor on the thread count (only the BLAS product may
# round differently for another matrix shape).
VOCAB_TILE = 4096
# Bytes of one tile of logits (in the computing dtype): 1024 rows x 4096 float32 logits.
TILE_BYTES = 16 << 20
# Bytes of a block of gathered hidden states (and of its d hidden): fewer rows per tile for a
# large H.
HIDDEN_TILE_BYTES = 8 << 20
# Bytes of the partial product for d weight (VOCAB_TILE rows at most, fewer for a large H).
WEIGHT_CHUNK_BYTES = 8 << 20

_ADAPTER = "dpo_fast.torch.linear_sequence_logps"
_FLOATS = (np.float16, np.float32, np.float64)
# The statistics columns of a row's state (csrc/logps_linear.h).
_M, _S, _W, _Q, _XSUM, _XMAX, _XLABEL, _ARGMAX = range(8)


@dataclass(frozen=True)
class _Prepared:
    hidden: np.ndarray        # (B, T, H)
    weight: np.ndarray        # (V, H)
    bias: np.ndarray | None   # (V,) in the computing dtype
    compute: np.dtype         # float32 (for float16 inputs too) or float64
    labels: np.ndarray        # (B * T,) int64
    rows: np.ndarray          # flat indices of the counted positions, ascending
    counts: np.ndarray        # (B,) int64
    token_shape: tuple[int, ...]
    seq_shape: tuple[int, ...]
    inv_temperature: float

    @property
    def n_t(self) -> int:
        return self.hidden.shape[1]

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The hidden states of flat positions ``rows``, (len(rows), H), computing dtype."""
        block = self.hidden[rows // self.n_t, rows % self.n_t]
        return block.astype(self.compute, copy=False)

    def weight_tile(self, v0: int, v1: int) -> np.ndarray:
        tile = self.weight[v0:v1]
        return tile.astype(self.compute, copy=False)  # float16: upcast per tile

    def row_tile(self) -> int:
        """Rows per tile: TILE_BYTES of logits, HIDDEN_TILE_BYTES of hidden states."""
        columns = min(VOCAB_TILE, self.vocab)
        itemsize = self.compute.itemsize
        by_logits = TILE_BYTES // (columns * itemsize)
        by_hidden = HIDDEN_TILE_BYTES // max(1, self.hidden.shape[2] * itemsize)
        return max(1, min(by_logits, by_hidden))

    def backward_tile(self, n_rows: int) -> tuple[int, int]:
        """(rows, columns) of a backward tile: TILE_BYTES of logits, up to twice the forward's
        rows (as HIDDEN_TILE_BYTES allows) with as many fewer columns, down to VOCAB_TILE // 2.
        The backward's tiles need no fixed boundaries (each logit's gradient is its own), and
        each block of rows streams the whole weight three times: fewer, taller blocks cost
        less (measured on the 2-core machine, B8 T512 H1024 V32000 float32, four busy runs:
        2048 x 2048 tiles took 0.82-0.96x the backward's time with 1024 x 4096 ones; 4096 x
        1024 ones, 0.99x)."""
        itemsize = self.compute.itemsize
        min_columns = max(1, min(VOCAB_TILE // 2, self.vocab))
        by_hidden = HIDDEN_TILE_BYTES // max(1, self.hidden.shape[2] * itemsize)
        rows = max(1, min(n_rows, by_hidden, TILE_BYTES // (min_columns * itemsize)))
        columns = max(1, min(VOCAB_TILE, self.vocab, TILE_BYTES // (rows * itemsize)))
        return rows, columns


class BFloat16Array:
    """bfloat16 numbers held as their uint16 bit patterns (NumPy has no bfloat16), for
    :func:`linear_sequence_logps` and its gradient: what ``dpo_fast.torch`` passes for
    bfloat16 tensors (no copy). Indexing gives another BFloat16Array; ``astype`` converts
    (exactly: every bfloat16 is a float32), so each tile is upcast only when it is used.

    Parameters
    ----------
    bits : numpy.ndarray of uint16
        The bit patterns, any shape and strides.
    """

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray) -> None:
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
            raise TypeError("BFloat16Array holds a numpy.ndarray of uint16 bit patterns")
        self.bits = bits

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def ndim(self) -> int:
        return self.bits.ndim

    @property
    def dtype(self) -> np.dtype:
        """float32, the dtype it computes in (and that its values convert to exactly)."""
        return np.dtype(np.float32)

    def __getitem__(self, index: Any) -> BFloat16Array:
        return BFloat16Array(self.bits[index])

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        widened = self.bits.astype(np.uint32) << np.uint32(16)
        return widened.view(np.float32).astype(dtype, copy=False)


def _float_input(value: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, BFloat16Array):
        array = value
    else:
        array = tensor_as_array(value, name, _ADAPTER)
        array = np.asarray(value) if array is None else array
    if array.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, float32 or float64, got dtype {array.dtype}")
    if array.ndim not in ndims:
        wanted = {(2, 3): "(B, T, H) or (N, H)", (2,): "(V, H)", (1,): "(V,)"}[ndims]
        raise ValueError(f"{name} must have shape {wanted}, got shape {array.shape}")
    return array


def _prepare(hidden: Any, weight: Any, labels: Any, bias: Any, mask: Any, ignore_index: Any,
             temperature: Any) -> _Prepared:
    ignore = check_ignore_index(ignore_index)
    temp = check_temperature(temperature)
    h = _float_input(hidden, "hidden", (2, 3))
    w = _float_input(weight, "weight", (2,))
    if w.dtype != h.dtype:
        raise TypeError(f"weight has dtype {w.dtype} but hidden has dtype {h.dtype}: pass both "
                        "in one dtype")
    if w.shape[0] == 0:
        raise ValueError(f"weight has an empty vocabulary axis: shape {w.shape}")
    if w.shape[1] != h.shape[-1]:
        raise ValueError(f"weight has shape {w.shape} but hidden has {h.shape[-1]} features "
                         f"(shape {h.shape}): weight must have shape (V, {h.shape[-1]}), like "
                         "an lm_head's weight")
    vocab = w.shape[0]
    b = None
    if bias is not None:
        b = _float_input(bias, "bias", (1,))
        if b.dtype != h.dtype:
            raise TypeError(f"bias has dtype {b.dtype} but hidden has dtype {h.dtype}: pass "
                            "it in the same dtype")
        if b.shape[0] != vocab:
            raise ValueError(f"bias has shape {b.shape} but weight has {vocab} rows: bias must "
                             f"have shape ({vocab},)")
    compute = np.dtype(np.float64 if h.dtype == np.float64 else np.float32)
    if b is not None:
        b = np.ascontiguousarray(b.astype(compute, copy=False))
    token_shape = h.shape[:-1]
    label_array = tensor_as_array(labels, "labels", _ADAPTER)
    label_array = np.asarray(labels) if label_array is None else label_array
    if label_array.dtype == np.bool_ or label_array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {label_array.dtype}")
    if label_array.shape != token_shape:
        raise ValueError(f"labels has shape {label_array.shape} but hidden has shape {h.shape}: "
                         f"labels must have shape {token_shape} (one label per position, "
                         "already shifted)")
    if label_array.dtype == np.uint64 and label_array.size and (
            label_array.max() > np.iinfo(np.int64).max):
        flat = int(np.argmax(label_array.ravel() > np.iinfo(np.int64).max))
        raise ValueError(f"labels[{format_position(token_shape, flat)}] = "
                         f"{int(label_array.ravel()[flat])} is out of range")
    flat_labels = np.ascontiguousarray(label_array, dtype=np.int64).reshape(-1)
    flat_mask = as_mask(mask, token_shape)
    h3 = h if h.ndim == 3 else h[np.newaxis]
    n_b, n_t = h3.shape[:2]
    rows = np.empty(n_b * n_t, dtype=np.int64)
    counts = np.empty(n_b, dtype=np.int64)
    n_rows, first_bad = _logps.select_rows(
        flat_labels.reshape(n_b, n_t),
        None if flat_mask is None else flat_mask.reshape(n_b, n_t), ignore, vocab, rows, counts)
    if first_bad >= 0:
        raise ValueError(
            f"labels[{format_position(token_shape, first_bad)}] = {int(flat_labels[first_bad])} "
            f"is out of range for weight's vocabulary of {vocab}: a counted label must be in "
            f"[0, {vocab}) (or equal ignore_index={ignore}, or be masked out)")
    return _Prepared(hidden=h3, weight=w, bias=b, compute=compute, labels=flat_labels,
                     rows=rows[:n_rows], counts=counts, token_shape=token_shape,
                     seq_shape=token_shape[:-1], inv_temperature=1.0 / temp)


def _raise_non_finite(prep: _Prepared, flat: int) -> None:
    """ValueError for the counted position ``flat`` whose projected logits are not finite."""
    where = format_position(prep.token_shape, flat)
    h = prep.gather(np.array([flat]))[0]
    with np.errstate(all="ignore"):
        row = prep.weight_tile(0, prep.vocab) @ h
        if prep.bias is not None:
            row = row + prep.bias
    bad = np.flatnonzero(~np.isfinite(row))
    v = int(bad[0]) if bad.size else int(np.argmax(np.abs(row)))
    if not np.isfinite(h).all():
        j = int(np.flatnonzero(~np.isfinite(h))[0])
        cause = f"hidden[{where}, {j}] is {float(h[j])!r}"
    elif not np.isfinite(prep.weight_tile(v, v + 1)[0]).all():
        weight_row = prep.weight_tile(v, v + 1)[0]
        j = int(np.flatnonzero(~np.isfinite(weight_row))[0])
        cause = f"weight[{v}, {j}] is {float(weight_row[j])!r}"
    elif prep.bias is not None and not np.isfinite(prep.bias[v]):
        cause = f"bias[{v}] is {float(prep.bias[v])!r}"
    elif bad.size:
        cause = f"the product overflows {prep.compute.name}"
    else:
        cause = (f"logit / temperature overflows double precision (temperature "
                 f"{1 / prep.inv_temperature!r})")
    raise ValueError(f"the logit of hidden[{where}] at vocabulary index {v} (hidden @ weight.T "
                     f"+ bias) is not finite: {cause}; logits must be finite at every counted "
                     "position (positions skipped by mask or ignore_index are not projected)")


def _fold_threads(n_threads: int | None, elements: int) -> int:
    """OpenMP threads of the loops on the tiles: one unless the caller asks for more. The
    matrix products already use every core through the BLAS, whose worker threads keep
    spinning for a while after each product: more folding threads then compete with them
    (measured on the 2-core machine, issue shape: the forward 0.75x and the backward 0.88x the
    time with one folding thread instead of two)."""
    if n_threads is None:
        return 1
    return _threads.resolve_n_threads(n_threads, elements, PARALLEL_MIN_ELEMENTS)


def _forward_state(prep: _Prepared, want_extras: bool, n_threads: int | None,
                   weight_sums: np.ndarray | None = None) -> np.ndarray:
    """Each counted row's statistics (csrc/logps_linear.h), tile by tile. With
    ``weight_sums`` ((counted rows, H), computing dtype), also fills it with each row's
    ``sum over j != label of exp(z_j - m) * weight[j]`` (``m`` the row's final running max),
    accumulated like the flash-attention output: rescaled by ``exp(m_old - m_new)`` when the
    max moves, plus one more product per tile (``_token_hidden_grads`` uses it)."""
    rows = prep.rows
    vocab = prep.vocab
    state = np.zeros((rows.size, _logps.LINEAR_STATE))
    state[:, _M] = -np.inf
    status = np.zeros(rows.size, dtype=np.uint8)
    per_tile = max(1, min(prep.row_tile(), rows.size))
    columns = min(VOCAB_TILE, vocab)
    buffer = np.empty(per_tile * columns, dtype=prep.compute)
    threads = _fold_threads(n_threads, rows.size * vocab)
    partial = None
    if weight_sums is not None and vocab > VOCAB_TILE:
        partial = np.empty((per_tile, prep.hidden.shape[2]), dtype=prep.compute)
    for r0 in range(0, rows.size, per_tile):
        r1 = min(r0 + per_tile, rows.size)
        hidden = prep.gather(rows[r0:r1])
        labels = prep.labels[rows[r0:r1]]
        for v0 in range(0, vocab, VOCAB_TILE):
            v1 = min(v0 + VOCAB_TILE, vocab)
            w_tile = prep.weight_tile(v0, v1)
            tile = buffer[:(r1 - r0) * (v1 - v0)].reshape(r1 - r0, v1 - v0)
            with np.errstate(all="ignore"):  # (a non-finite logit is reported below)
                np.matmul(hidden, w_tile.T, out=tile)
            m_before = None if weight_sums is None else state[r0:r1, _M].copy()
            _logps.linear_fold(tile, None if prep.bias is None else prep.bias[v0:v1], v0,
                               labels, prep.inv_temperature, state[r0:r1], status[r0:r1],
                               want_extras=want_extras, n_threads=threads)
            if weight_sums is not None:
                _add_weight_sums(prep, tile, w_tile, v0, labels, m_before, state[r0:r1, _M],
                                 weight_sums[r0:r1], partial, threads)
    if status.any():
        _raise_non_finite(prep, int(rows[np.argmax(status != 0)]))
    return state


def _add_weight_sums(prep: _Prepared, tile: np.ndarray, w_tile: np.ndarray, v0: int,
                     labels: np.ndarray, m_before: np.ndarray, m_now: np.ndarray,
                     sums: np.ndarray, partial: np.ndarray | None, threads: int) -> None:
    """Fold a tile of logits (bias added) into ``sums`` (see _forward_state); the tile is
    overwritten with ``exp(z - m)``, 0 in the label's column (whose term _token_hidden_grads
    adds exactly, in double)."""
    m_now = np.ascontiguousarray(m_now)
    k = tile.shape[0]
    # c = -1 turns linear_tile_grad's -c * exp(z - lse) into exp(z - m) (z <= m: no overflow)
    _logps.linear_tile_grad(tile, None, v0, labels, prep.inv_temperature, np.full(k, -1.0),
                            m_now, n_threads=threads)
    inside = np.flatnonzero((labels >= v0) & (labels < v0 + tile.shape[1]))
    tile[inside, labels[inside] - v0] = 0
    if v0 == 0:
        np.matmul(tile, w_tile, out=sums)
        return
    with np.errstate(invalid="ignore"):  # -inf - -inf: a non-finite row, reported later
        sums *= np.exp(m_before - m_now)[:, np.newaxis]
    np.matmul(tile, w_tile, out=partial[:k])
    sums += partial[:k]


def _token_hidden_grads(prep: _Prepared, state: np.ndarray, weight_sums: np.ndarray
                        ) -> np.ndarray:
    """Turn ``weight_sums`` in place into each counted row's gradient of its token log-prob
    with respect to its hidden state times the temperature, ``weight[label] - sum_j p_j
    weight[j]``, written ``weight[label] (1 - p_label) - weight_sums / s`` so that a confident
    row (p_label near 1) loses nothing to cancellation: ``1 - p_label`` is taken in double."""
    m, s = state[:, _M], state[:, _S]
    p_label = np.exp(state[:, _XLABEL] * prep.inv_temperature - (m + np.log(s)))
    labels = prep.labels[prep.rows]
    per_tile = min(prep.row_tile(), max(1, prep.rows.size))
    for r0 in range(0, prep.rows.size, per_tile):
        r1 = min(r0 + per_tile, prep.rows.size)
        w_label = prep.weight[labels[r0:r1]].astype(np.float64)
        grad = (w_label * (1.0 - p_label[r0:r1, np.newaxis])
                - weight_sums[r0:r1] / s[r0:r1, np.newaxis])
        weight_sums[r0:r1] = grad
    return weight_sums


def linear_sequence_logps(hidden: Any, weight: Any, labels: Any, *, bias: Any = None,
                          ignore_index: int = -100, mask: Any = None, average: bool = False,
                          temperature: float = 1.0, return_token_logps: bool = False,
                          return_entropy: bool = False, return_wpo_weights: bool = False,
                          return_logit_sums: bool = False, n_threads: int | None = None
                          ) -> SequenceLogpsResult:
    """:func:`dpo_fast.sequence_logps` of the logits ``hidden @ weight.T + bias``, never built.

    The result is that of ``sequence_logps(hidden @ weight.T + bias, labels, ...)`` (up to the
    rounding of the matrix product): per sequence the sum (or mean) over counted positions of
    ``log_softmax(logits / temperature)[label]``. Only counted positions (not masked, label
    not ``ignore_index``) are projected; the logits exist one tile at a time
    (``TILE_BYTES``, 16 MiB, of ``rows x VOCAB_TILE`` logits), each tile the product of a
    block of hidden states and a slice of ``weight`` by NumPy's BLAS, folded at once into
    running per-row statistics by the compiled row kernel. Extra memory: about
    ``TILE_BYTES + 1024 * H * 4`` bytes plus ``O(B*T)``, whatever ``B``, ``T`` and ``V``.

    Parameters
    ----------
    hidden : array_like, float16, float32 or float64, shape (B, T, H) or (N, H)
        The final hidden states (the input of the ``lm_head``), **already aligned with the
        labels** (for a causal LM, ``hidden[:, :-1]`` with ``input_ids[:, 1:]``). Any strides;
        float16 (and bfloat16 as a :class:`BFloat16Array`) is computed in float32, tile by
        tile.
    weight : array_like, shape (V, H), hidden's dtype
        The ``lm_head`` weight (``torch.nn.Linear(H, V).weight``).
    labels : array_like of int, shape (B, T) or (N,)
        As for :func:`dpo_fast.sequence_logps`.
    bias : array_like, shape (V,), hidden's dtype, optional
        The ``lm_head`` bias, added in the computing dtype.
    ignore_index, mask, average, temperature, return_token_logps, return_entropy,
    return_wpo_weights, return_logit_sums, n_threads
        As for :func:`dpo_fast.sequence_logps`, except ``n_threads``: the OpenMP threads of
        the loops on the tiles, **one by default** (the matrix products run on NumPy's BLAS,
        with its own thread setting, e.g. ``OPENBLAS_NUM_THREADS``; its threads hold the cores
        right after each product). Results are the same bits for every value.

    Returns
    -------
    SequenceLogpsResult
        The fields of :func:`dpo_fast.sequence_logps`'s result (``logsumexp`` feeds
        :func:`linear_sequence_logps_grad`).

    Raises
    ------
    TypeError
        A dtype that is not float16/32/64 or that differs between ``hidden``, ``weight`` and
        ``bias``; non-integer labels; a bad option.
    ValueError
        ``weight`` not of shape ``(V, H)`` for hidden's ``H``; labels or mask not of hidden's
        leading shape; a bias not of length ``V``; a counted label outside ``[0, V)``; a
        non-finite logit at a counted position (naming the position, the vocabulary index and
        the input that made it).

    Notes
    -----
    Determinism: each row's tiles are folded in vocabulary order over fixed boundaries
    (multiples of ``VOCAB_TILE``), so the results are the same bits for every ``n_threads``.
    The number of rows per tile (``TILE_BYTES``) changes only the shape of the BLAS call,
    which the BLAS may round differently (OpenBLAS, float32: ~1e-9 relative). Accuracy:
    everything after the product is double precision; float64 matches a plain float64
    reference to ~1e-15 relative, float32 to the product's own rounding (~1e-7 per logit).

    Examples
    --------
    >>> import numpy as np
    >>> from dpo_fast import linear_sequence_logps, sequence_logps
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.normal(size=(2, 5, 8))
    >>> weight = rng.normal(size=(11, 8))
    >>> labels = rng.integers(0, 11, size=(2, 5))
    >>> fused = linear_sequence_logps(hidden, weight, labels)
    >>> plain = sequence_logps(hidden @ weight.T, labels)
    >>> bool(np.allclose(fused.logps, plain.logps, rtol=1e-12))
    True
    """
    return _linear_sequence_logps(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, mask=mask,
        average=average, temperature=temperature, return_token_logps=return_token_logps,
        return_entropy=return_entropy, return_wpo_weights=return_wpo_weights,
        return_logit_sums=return_logit_sums, n_threads=n_threads)[0]


def linear_sequence_logps_and_token_grads(hidden: Any, weight: Any, labels: Any,
                                          **options: Any
                                          ) -> tuple[SequenceLogpsResult, np.ndarray]:
    """:func:`linear_sequence_logps` (same arguments) and, for a frozen ``lm_head``, what
    :func:`linear_hidden_grad` needs to give ``d hidden`` with no product at all.

    Besides the tile pass, each tile of ``exp(z - m)`` (``m`` the row's running max) is
    multiplied by its slice of ``weight`` and summed over the vocabulary (rescaled when ``m``
    moves, as flash attention's output): one more BLAS product per tile. Forward and backward
    then cost two products, instead of three for :func:`linear_sequence_logps` and
    ``linear_sequence_logps_grad(wrt=("hidden",))``, which recomputes the logits.

    Returns
    -------
    (SequenceLogpsResult, token_grads)
        ``token_grads`` (counted positions, H), computing dtype: the gradient of each counted
        position's token log-prob with respect to its hidden state, times the temperature
        (``weight[label] - sum_j softmax_j weight[j]``), in the order of the flat positions.
        Extra memory: this array, and one ``HIDDEN_TILE_BYTES`` partial product.
    """
    return _linear_sequence_logps(hidden, weight, labels, want_token_grads=True, **options)


def _linear_sequence_logps(hidden: Any, weight: Any, labels: Any, *, bias: Any = None,
                           ignore_index: int = -100, mask: Any = None, average: bool = False,
                           temperature: float = 1.0, return_token_logps: bool = False,
                           return_entropy: bool = False, return_wpo_weights: bool = False,
                           return_logit_sums: bool = False, n_threads: int | None = None,
                           want_token_grads: bool = False
                           ) -> tuple[SequenceLogpsResult, np.ndarray | None]:
    want_average = check_flag(average, "average")
    want_tokens = check_flag(return_token_logps, "return_token_logps")
    want_entropy = check_flag(return_entropy, "return_entropy")
    want_wpo = check_flag(return_wpo_weights, "return_wpo_weights")
    want_logit_sums = check_flag(return_logit_sums, "return_logit_sums")
    threads = _threads.validate_n_threads(n_threads)
    prep = _prepare(hidden, weight, labels, bias, mask, ignore_index, temperature)
    token_grads = None
    if want_token_grads:
        token_grads = np.empty((prep.rows.size, prep.hidden.shape[2]), dtype=prep.compute)
    state = _forward_state(prep, want_entropy or want_wpo or want_logit_sums, threads,
                           token_grads)
    if token_grads is not None and prep.rows.size:
        _token_hidden_grads(prep, state, token_grads)

    rows, n_t = prep.rows, prep.n_t
    n_positions = prep.labels.size
    log_s = np.log(state[:, _S])
    token_logps = np.zeros(n_positions)
    token_logps[rows] = (state[:, _XLABEL] * prep.inv_temperature - state[:, _M]) - log_s
    logsumexp = np.zeros(n_positions)
    logsumexp[rows] = state[:, _M] + log_s
    status = np.full(n_positions, _logps.NOT_ARGMAX, dtype=np.uint8)
    status[rows[state[:, _ARGMAX] == prep.labels[rows]]] = _logps.ARGMAX
    entropy = None
    if want_entropy:
        entropy = np.zeros(n_positions)
        entropy[rows] = log_s - state[:, _W] / state[:, _S]
    result = sequence_result(RowResults(
        rows=rows, n_t=n_t, vocab=prep.vocab, counts=prep.counts, seq_shape=prep.seq_shape,
        token_shape=prep.token_shape, token_logps=token_logps, logsumexp=logsumexp,
        entropy=entropy, status=status,
        log_sum_p2=(np.log(state[:, _Q]) - 2.0 * log_s) if want_wpo else None,
        logit_sums=state[:, _XSUM] if want_logit_sums else None),
        average=want_average, want_tokens=want_tokens)
    return result, token_grads


def _row_weights(prep: _Prepared, grad_logps: Any, grad_token_logps: Any, average: bool
                 ) -> np.ndarray:
    """The upstream weight of each counted row (grad_logps of its sequence, divided by the
    count with average=True, plus grad_token_logps there), checked finite once scaled."""
    n_b, rows, n_t = prep.counts.size, prep.rows, prep.n_t
    g_seq = as_upstream(grad_logps, prep.seq_shape, "grad_logps").reshape(n_b)
    if average:
        g_seq = np.divide(g_seq, prep.counts, out=np.zeros(n_b), where=prep.counts > 0)
    with np.errstate(over="ignore", invalid="ignore"):
        weight = g_seq[rows // n_t]
        if grad_token_logps is not None:
            g_tok = as_upstream(grad_token_logps, prep.token_shape, "grad_token_logps")
            weight = weight + g_tok.reshape(-1)[rows]
        scaled = weight * prep.inv_temperature
    if not np.isfinite(scaled).all():
        flat = int(rows[np.argmax(~np.isfinite(scaled))])
        where = format_position(prep.token_shape, flat)
        raise ValueError(f"the upstream gradient at position [{where}] (grad_logps plus "
                         "grad_token_logps, divided by the temperature) is not finite: the "
                         "upstream gradient must be finite")
    return scaled


def linear_sequence_logps_grad(hidden: Any, weight: Any, labels: Any, grad_logps: Any, *,
                               bias: Any = None, ignore_index: int = -100, mask: Any = None,
                               average: bool = False, temperature: float = 1.0,
                               grad_token_logps: Any = None, logsumexp: Any = None,
                               wrt: tuple[str, ...] = ("hidden", "weight", "bias"),
                               n_threads: int | None = None
                               ) -> tuple[np.ndarray | None, np.ndarray | None,
                                          np.ndarray | None]:
    """Gradients of ``sum(grad_logps * logps)`` with respect to ``hidden``, ``weight``, ``bias``.

    ``logps`` is :func:`linear_sequence_logps` with the same arguments. Each tile of logits is
    recomputed (one BLAS product), turned in place into
    ``w * (onehot(label) - softmax(logits / temperature)) / temperature`` (``w`` the row's
    upstream weight, as in :func:`dpo_fast.sequence_logps_grad`) and accumulated:
    ``d hidden[rows] += tile @ weight[cols]``, ``d weight[cols] += tile.T @ hidden[rows]``,
    ``d bias[cols] += tile.sum(0)``. Rows whose weight is 0 (not counted, or a zero upstream)
    are not projected. Accumulation is in the computing dtype: float32 for float16/float32
    inputs, float64 for float64.

    Parameters
    ----------
    hidden, weight, labels, bias, ignore_index, mask, average, temperature, n_threads
        As for :func:`linear_sequence_logps`, and they must be the same.
    grad_logps : array_like, broadcastable to labels.shape[:-1]
        Upstream gradient of each sequence's value.
    grad_token_logps : array_like, broadcastable to labels.shape, optional
        Upstream gradient of the per-position log-probabilities, added.
    logsumexp : array_like, shape of labels, optional
        ``SequenceLogpsResult.logsumexp`` of the forward call; without it the forward's tile
        pass runs first to compute it (about the forward's cost again).
    wrt : tuple of str, default ("hidden", "weight", "bias")
        Which gradients to compute; the others are returned as None (a frozen ``lm_head``
        skips the ``d weight`` product, a third of the work). ``"bias"`` is ignored (None)
        without a bias.

    Returns
    -------
    (d_hidden, d_weight, d_bias)
        Of the shapes of ``hidden``, ``weight`` and ``bias``, in the computing dtype (float32
        for float16 inputs); zeros at positions not counted.
    """
    want_average = check_flag(average, "average")
    threads = _threads.validate_n_threads(n_threads)
    if isinstance(wrt, str) or not set(wrt) <= {"hidden", "weight", "bias"}:
        raise ValueError(f"wrt must be a tuple of 'hidden', 'weight' and 'bias', got {wrt!r}")
    prep = _prepare(hidden, weight, labels, bias, mask, ignore_index, temperature)
    scale = _row_weights(prep, grad_logps, grad_token_logps, want_average)
    if logsumexp is None:
        state = _forward_state(prep, False, threads)
        lse = state[:, _M] + np.log(state[:, _S])
    else:
        lse_array = tensor_as_array(logsumexp, "logsumexp", _ADAPTER)
        lse_array = np.asarray(logsumexp) if lse_array is None else lse_array
        if lse_array.dtype.kind not in "iuf" or lse_array.shape != prep.token_shape:
            raise ValueError(f"logsumexp must be SequenceLogpsResult.logsumexp of the forward "
                             f"call (real numbers of shape {prep.token_shape}), got "
                             f"{lse_array.dtype} of shape {lse_array.shape}")
        lse = lse_array.astype(np.float64).reshape(-1)[prep.rows]
        if not np.isfinite(lse).all():
            flat = int(prep.rows[np.argmax(~np.isfinite(lse))])
            raise ValueError(f"logsumexp[{format_position(prep.token_shape, flat)}] is not "
                             "finite: pass SequenceLogpsResult.logsumexp of the same call")
    used = scale != 0.0
    rows, scale, lse = prep.rows[used], scale[used], lse[used]

    n_h = prep.hidden.shape[2]
    vocab = prep.vocab
    d_hidden = d_weight = d_bias = None
    if "hidden" in wrt:
        d_hidden = np.zeros(prep.hidden.shape, dtype=prep.compute)
    if "weight" in wrt:
        d_weight = np.zeros((vocab, n_h), dtype=prep.compute)
    if "bias" in wrt and prep.bias is not None:
        d_bias = np.zeros(vocab, dtype=prep.compute)
    if rows.size and (d_hidden is not None or d_weight is not None or d_bias is not None):
        _backward_tiles(prep, rows, scale, lse, d_hidden, d_weight, d_bias,
                        _fold_threads(threads, rows.size * vocab))
    if d_hidden is not None:
        d_hidden = d_hidden.reshape(prep.token_shape + (n_h,))
    return d_hidden, d_weight, d_bias


def linear_hidden_grad(hidden: Any, weight: Any, labels: Any, grad_logps: Any,
                       token_grads: np.ndarray, *, bias: Any = None, ignore_index: int = -100,
                       mask: Any = None, average: bool = False, temperature: float = 1.0,
                       grad_token_logps: Any = None) -> np.ndarray:
    """``d hidden`` of :func:`linear_sequence_logps_grad` from the ``token_grads`` of
    :func:`linear_sequence_logps_and_token_grads` (same arguments): each counted position's
    upstream weight / temperature times its row, no product (a frozen ``lm_head``).

    Returns
    -------
    numpy.ndarray
        Of ``hidden``'s shape, computing dtype; zeros at positions not counted.
    """
    want_average = check_flag(average, "average")
    prep = _prepare(hidden, weight, labels, bias, mask, ignore_index, temperature)
    n_h = prep.hidden.shape[2]
    if token_grads.shape != (prep.rows.size, n_h) or token_grads.dtype != prep.compute:
        raise ValueError(f"token_grads must be the ({prep.rows.size}, {n_h}) {prep.compute} "
                         "array of linear_sequence_logps_and_token_grads with the same "
                         f"arguments, got {token_grads.dtype} of shape {token_grads.shape}")
    scale = _row_weights(prep, grad_logps, grad_token_logps, want_average)
    d_hidden = np.zeros(prep.hidden.shape, dtype=prep.compute)
    rows, n_t = prep.rows, prep.n_t
    d_hidden[rows // n_t, rows % n_t] = token_grads * scale.astype(prep.compute)[:, np.newaxis]
    return d_hidden.reshape(prep.token_shape + (n_h,))


def _backward_tiles(prep: _Prepared, rows: np.ndarray, scale: np.ndarray, lse: np.ndarray,
                    d_hidden: np.ndarray | None, d_weight: np.ndarray | None,
                    d_bias: np.ndarray | None, threads: int) -> None:
    vocab, n_h, n_t = prep.vocab, prep.hidden.shape[2], prep.n_t
    per_tile, columns = prep.backward_tile(rows.size)
    buffer = np.empty(per_tile * columns, dtype=prep.compute)
    itemsize = prep.compute.itemsize
    chunk = max(1, min(columns, WEIGHT_CHUNK_BYTES // max(1, n_h * itemsize)))
    several = rows.size > per_tile
    partial_w = (np.empty((chunk, n_h), dtype=prep.compute)
                 if d_weight is not None and several else None)
    partial_h = (np.empty((per_tile, n_h), dtype=prep.compute)
                 if d_hidden is not None and vocab > columns else None)
    for r0 in range(0, rows.size, per_tile):
        r1 = min(r0 + per_tile, rows.size)
        k = r1 - r0
        block = rows[r0:r1]
        hidden = prep.gather(block)
        labels = prep.labels[block]
        d_block = np.empty((k, n_h), dtype=prep.compute) if d_hidden is not None else None
        for v0 in range(0, vocab, columns):
            v1 = min(v0 + columns, vocab)
            w_tile = prep.weight_tile(v0, v1)
            tile = buffer[:k * (v1 - v0)].reshape(k, v1 - v0)
            np.matmul(hidden, w_tile.T, out=tile)
            _logps.linear_tile_grad(tile, None if prep.bias is None else prep.bias[v0:v1], v0,
                                    labels, prep.inv_temperature, scale[r0:r1], lse[r0:r1],
                                    n_threads=threads)
            # The first product of a block / of a weight slice is written in place; later
            # ones go through a bounded buffer and are added (NumPy has no GEMM with beta=1).
            if d_block is not None:
                if v0 == 0:
                    np.matmul(tile, w_tile, out=d_block)
                else:
                    np.matmul(tile, w_tile, out=partial_h[:k])
                    d_block += partial_h[:k]
            if d_weight is not None:
                for c0 in range(0, v1 - v0, chunk):
                    c1 = min(c0 + chunk, v1 - v0)
                    if r0 == 0:
                        np.matmul(tile[:, c0:c1].T, hidden, out=d_weight[v0 + c0:v0 + c1])
                    else:
                        np.matmul(tile[:, c0:c1].T, hidden, out=partial_w[:c1 - c0])
                        d_weight[v0 + c0:v0 + c1] += partial_w[:c1 - c0]
            if d_bias is not None:
                d_bias[v0:v1] += tile.sum(axis=0)
        if d_hidden is not None:
            d_hidden[block // n_t, block % n_t] = d_block
