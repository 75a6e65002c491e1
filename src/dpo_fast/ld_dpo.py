"""LD-DPO sequence log-probabilities (TRL's ``ld_alpha``) from token log-probabilities.

LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization") damps
the part of the longer response of a pair that has no counterpart in the shorter one. TRL 1.16
(``DPOTrainer._compute_loss`` with ``ld_alpha``) counts the completion positions of each
sequence (the cumulative sum of its completion mask), takes the shared length of a pair as
``min(len_chosen, len_rejected)`` and forms a sequence's log-prob as the sum over its first
``shared`` completion tokens plus ``ld_alpha`` times the sum over the rest, for the policy and
the reference model alike. The result feeds :func:`dpo_fast.preference_loss` as the summed
log-probs do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpo_fast._arrays import check_finite_real, tensor_as_array

__all__ = ["ld_dpo_logps", "ld_dpo_masks"]

_ADAPTER = "dpo_fast.torch.ld_dpo_logps"


def _token_logps(value: Any, name: str) -> np.ndarray:
    array = tensor_as_array(value, name, _ADAPTER)
    array = np.asarray(value) if array is None else array
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64 token log-probs, got dtype "
                        f"{array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, tokens), got shape {array.shape}")
    return array


def _mask(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if value is None:
        return np.ones(shape, dtype=bool)
    array = tensor_as_array(value, name, _ADAPTER)
    array = np.asarray(value) if array is None else array
    if array.dtype != np.bool_ and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be boolean or integer (non-zero = counted), got dtype "
                        f"{array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape} but its token log-probs have shape "
                         f"{shape}")
    return array != 0


def ld_dpo_masks(chosen_mask: Any, rejected_mask: Any, *,
                 chosen_shape: tuple[int, ...] | None = None,
                 rejected_shape: tuple[int, ...] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shared and tail token masks of LD-DPO, for each side of a batch of pairs.

    A sequence's LD-DPO log-prob is ``sum(logps * shared) + ld_alpha * sum(logps * tail)``:
    what :func:`ld_dpo_logps` computes, and what ``dpo_fast.torch.ld_dpo_logps``
    differentiates (the masks are constants). Masks are ``(batch, tokens)``, non-zero where a
    token is a completion token; ``chosen_shape`` / ``rejected_shape`` stand in for a mask that
    is None (every token counted).

    Returns
    -------
    (chosen_shared, chosen_tail, rejected_shared, rejected_tail) : tuple of bool arrays
    """
    counted_c = _mask(chosen_mask, "chosen_mask", _shape_of(chosen_mask, chosen_shape))
    counted_r = _mask(rejected_mask, "rejected_mask", _shape_of(rejected_mask, rejected_shape))
    if counted_c.shape[0] != counted_r.shape[0]:
        raise ValueError(f"chosen and rejected batches differ: {counted_c.shape[0]} chosen and "
                         f"{counted_r.shape[0]} rejected sequences")
    # TRL: comp_pos = cumsum(mask); shared = min(len_c, len_r); 1 <= pos <= shared is shared,
    # pos > shared the tail (a position off the completion is in neither).
    shared = np.minimum(counted_c.sum(axis=1), counted_r.sum(axis=1))[:, None]
    masks = []
    for counted in (counted_c, counted_r):
        position = np.cumsum(counted, axis=1)
        masks += [counted & (position <= shared), counted & (position > shared)]
    return masks[0], masks[1], masks[2], masks[3]


def _shape_of(mask: Any, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape a mask must have: its token log-probs' when known, else its own."""
    if shape is not None:
        return tuple(shape)
    if mask is not None:
        return tuple(np.shape(mask))
    raise ValueError("ld_dpo_masks needs a mask or its shape (chosen_shape / rejected_shape) "
                     "for each side")


def ld_dpo_logps(chosen_token_logps: Any, rejected_token_logps: Any, chosen_mask: Any = None,
                 rejected_mask: Any = None, *, ld_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """LD-DPO sequence log-probs of a batch of pairs, as TRL 1.16's ``ld_alpha`` forms them.

    Parameters
    ----------
    chosen_token_logps, rejected_token_logps : array_like of float32/float64, shape (B, T)
        Token log-probs of the chosen and rejected sequences (``T`` may differ between the
        two), e.g. ``sequence_logps(..., return_token_logps=True).token_logps``; values off
        the completion are ignored (they may be anything, NaN included).
    chosen_mask, rejected_mask : array_like of bool or int, shape (B, T), optional
        Completion masks (non-zero = a completion token); None counts every token.
    ld_alpha : float
        Weight of the tokens past the pair's shared length (LD-DPO's alpha; 1 gives the plain
        sums, 0 cuts the longer response to the shorter one's length). Finite.

    Returns
    -------
    (chosen_logps, rejected_logps) : tuple of numpy.ndarray, shape (B,)
        float32 when both token arrays are float32 (summed in float64, rounded once), else
        float64. Pass them (and the reference model's, formed the same way) to
        :func:`dpo_fast.preference_loss`.

    Raises
    ------
    TypeError, ValueError
        Wrong dtypes or shapes, a non-finite ``ld_alpha``, or a non-finite token log-prob
        on the completion (named with its index).

    Examples
    --------
    >>> import numpy as np
    >>> from dpo_fast import ld_dpo_logps
    >>> chosen = np.array([[-1.0, -2.0, -3.0]])
    >>> rejected = np.array([[-0.5, -0.5, -9.0]])
    >>> ld_dpo_logps(chosen, rejected, [[1, 1, 1]], [[1, 1, 0]], ld_alpha=0.5)
    (array([-4.5]), array([-1.]))
    """
    chosen = _token_logps(chosen_token_logps, "chosen_token_logps")
    rejected = _token_logps(rejected_token_logps, "rejected_token_logps")
    alpha = check_finite_real(ld_alpha, "ld_alpha")
    shared_c, tail_c, shared_r, tail_r = ld_dpo_masks(
        chosen_mask, rejected_mask, chosen_shape=chosen.shape, rejected_shape=rejected.shape)
    out_dtype = np.float32 if chosen.dtype == rejected.dtype == np.float32 else np.float64
    results = []
    for values, shared, tail, name in ((chosen, shared_c, tail_c, "chosen_token_logps"),
                                       (rejected, shared_r, tail_r, "rejected_token_logps")):
        values = values.astype(np.float64)
        bad = (shared | tail) & ~np.isfinite(values)
        if bad.any():
            row, position = np.argwhere(bad)[0]
            value = float(values[row, position])
            raise ValueError(f"{name}[{row}, {position}] is {value!r}: token log-probs on the "
                             "completion must be finite")
        # TRL's two sums (where, not a product: a NaN off the completion must not reach them)
        shared_sum = np.where(shared, values, 0.0).sum(axis=1)
        tail_sum = np.where(tail, values, 0.0).sum(axis=1)
        results.append((shared_sum + alpha * tail_sum).astype(out_dtype))
    return results[0], results[1]
