"""preference_loss: the array API over the fused compiled kernel.

This layer validates arguments, applies the dtype rules, allocates (or checks) the outputs and
documents; the arithmetic happens in one pass of dpo_fast._kernels._pairwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast import _threads
from dpo_fast._kernels import _pairwise
from dpo_fast._seed import round4, round4_list, validate_beta

__all__ = ["PreferenceLossResult", "preference_loss", "LOSS_TYPES", "REDUCTIONS"]

# The loss-type registry: public name -> kernel id (csrc/pair_losses.h).
LOSS_TYPES: Mapping[str, int] = dict(_pairwise.LOSS_IDS)
# What label_smoothing means per loss type: the epsilon of conservative DPO / rDPO, in
# [0, 0.5); exo_pair's epsilon, in (0, 1), where 0 (the default) stands for TRL's 1e-3;
# any other loss type does not use it and refuses a non-zero value.
_SMOOTHED_HALF_OPEN = frozenset({"sigmoid", "robust"})
_EXO_DEFAULT_EPSILON = 1e-3
REDUCTIONS = ("mean", "sum", "none")
OUTPUT_NAMES = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")
# Positions in the kernel's sums (dpo_fast._kernels._pairwise.SUM_NAMES).
(_SUM_LOSS, _SUM_CHOSEN, _SUM_REJECTED, _SUM_MARGIN, _SUM_ACCURACY, _SUM_CHOSEN_LOGP,
 _SUM_REJECTED_LOGP) = range(len(_pairwise.SUM_NAMES))
_PREFERENCE_ARG_NAMES = ("chosen_logps", "rejected_logps", "ref_chosen_logps",
                         "ref_rejected_logps")
_SEED_ARG_NAMES = ("log_probs_chosen_policy", "log_probs_rejected_policy",
                   "log_probs_chosen_ref", "log_probs_rejected_ref")


@dataclass(frozen=True)
class PreferenceLossResult:
    """What :func:`preference_loss` returns.

    Attributes
    ----------
    loss : float or numpy.ndarray
        The reduced loss: a Python float for ``reduction="mean"`` or ``"sum"``; for
        ``reduction="none"`` the per-pair array (the same object as ``losses``).
    losses : numpy.ndarray
        Per-pair losses.
    chosen_rewards, rejected_rewards : numpy.ndarray
        Implicit rewards ``beta * (policy - reference)`` per pair (not rounded).
    grad_chosen, grad_rejected : numpy.ndarray or None
        Derivatives of the reduced loss with respect to ``chosen_logps`` and
        ``rejected_logps`` (per-pair derivatives of each pair's loss for ``"none"``), or None
        unless ``compute_grad=True``.
    metrics : dict of str to float
        TRL's names: ``rewards/chosen``, ``rewards/rejected`` (means), ``rewards/accuracies``
        (share of pairs with chosen reward strictly above rejected), ``rewards/margins`` (mean
        of the difference), ``logps/chosen``, ``logps/rejected`` (means of the policy
        log-probs).
    """

    loss: float | np.ndarray
    losses: np.ndarray
    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    grad_chosen: np.ndarray | None
    grad_rejected: np.ndarray | None
    metrics: dict[str, float]


def _as_input_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a 1-D NumPy array of a supported dtype (no copy yet), or a clear error."""
    if type(value) is np.ndarray:  # the common case, kept cheap for small batches
        array = value
    else:
        if value is None:
            raise TypeError(f"{name} is required, got None")
        if isinstance(value, (list, tuple)) and bool in map(type, value):
            # NumPy would silently turn True into 1.0 next to floats; the list fast path of
            # dpo_loss refuses bools, and so does this one.
            index = list(map(type, value)).index(bool)
            raise TypeError(f"{name}[{index}] must be a real number, got bool")
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nested sequences
            raise ValueError(f"{name} must be a 1-D sequence of numbers: {exc}") from None
    dtype = array.dtype
    kind = dtype.kind
    if kind == "f":
        if dtype.itemsize > 8:
            raise TypeError(f"{name} has dtype {dtype}; convert it to float64 first")
    elif kind not in "iu":
        if kind == "O":
            _raise_for_object_array(array, name)
        raise TypeError(f"{name} must hold real numbers (float or integer), got dtype {dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _raise_for_object_array(array: np.ndarray, name: str) -> None:
    """Explain why NumPy could not make numbers of ``array`` (dtype object)."""
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    for index, item in enumerate(array):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            if isinstance(item, (list, tuple, np.ndarray)):
                raise ValueError(f"{name} must be 1-D: element {index} is a "
                                 f"{type(item).__name__}")
            raise TypeError(f"{name}[{index}] must be a real number, got "
                            f"{type(item).__name__}")
        try:
            float(item)
        except OverflowError:
            raise ValueError(f"{name}[{index}] = {item!r} is not representable as a finite "
                             "float") from None
    raise TypeError(f"{name} must hold real numbers, got dtype object")


def _prepare_inputs(values: Sequence[Any], names: Sequence[str], force_float64: bool = False
                    ) -> tuple[list[np.ndarray | None], type, list[np.ndarray]]:
    """Validate the input arrays (None allowed after the first two) and convert them to one
    C-contiguous floating dtype: float32 if every input is float32 (or float16), else
    float64. Copies only where needed; the caller's arrays are never written.

    Returns the converted arrays, their dtype, and the caller's arrays as given (views, for
    the overlap check of ``out=``: a strided input is copied, but ``out`` must not alias the
    original either)."""
    arrays: list[np.ndarray | None] = [_as_input_array(values[0], names[0]),
                                       _as_input_array(values[1], names[1])]
    for value, name in zip(values[2:], names[2:]):
        arrays.append(None if value is None else _as_input_array(value, name))
    if (arrays[2] is None) != (arrays[3] is None):
        given, missing = (names[2], names[3]) if arrays[3] is None else (names[3], names[2])
        raise ValueError(f"{given} was given but {missing} was not: pass both reference "
                         "log-probs, or neither for the reference-free loss")
    present = [a for a in arrays if a is not None]
    length = present[0].shape[0]
    for array, name in zip(present[1:], names[1:]):
        if array.shape[0] != length:
            raise ValueError(f"length mismatch: {names[0]} has {length} elements but "
                             f"{name} has {array.shape[0]}")
    if length == 0:
        raise ValueError(f"{names[0]} is empty: at least one pair is needed")
    single = not force_float64 and all(a.dtype.kind == "f" and a.dtype.itemsize <= 4
                                       for a in present)
    dtype = np.float32 if single else np.float64
    converted = [None if a is None else np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    return converted, dtype, present


def _check_outputs(out: Mapping[str, Any] | None, wanted: Sequence[str], length: int,
                   dtype: type, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Allocate the outputs, or check the caller's preallocated ones in ``out``."""
    if out is None:
        return {key: np.empty(length, dtype=dtype) for key in wanted}
    if not isinstance(out, Mapping):
        raise TypeError(f"out must be a dict of arrays keyed by {OUTPUT_NAMES}, got "
                        f"{type(out).__name__}")
    given = dict(out)
    for key in given:
        if key not in OUTPUT_NAMES:
            raise ValueError(f"out has unknown key {key!r}; expected some of {OUTPUT_NAMES}")
        if key not in wanted:
            raise ValueError(f"out[{key!r}] was given but compute_grad=False")
    arrays: dict[str, np.ndarray] = {}
    for key in wanted:
        if key not in given:
            arrays[key] = np.empty(length, dtype=dtype)
            continue
        array = given[key]
        label = f"out[{key!r}]"
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{label} must be a numpy.ndarray, got {type(array).__name__}")
        if array.dtype != dtype:
            raise TypeError(f"{label} has dtype {array.dtype}, but the inputs give "
                            f"{np.dtype(dtype)} results")
        if array.shape != (length,):
            raise ValueError(f"{label} has shape {array.shape}, expected ({length},)")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"{label} must be C-contiguous and writeable")
        for other in [*inputs, *arrays.values()]:
            if np.may_share_memory(array, other):
                raise ValueError(f"{label} overlaps an input or another output")
        arrays[key] = array
    return arrays


def _first_non_finite(arrays: Sequence[np.ndarray | None], names: Sequence[str]) -> None:
    """Raise ValueError naming the first NaN/inf among the inputs (input order, then index)."""
    for array, name in zip(arrays, names):
        if array is None:
            continue
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            index = int(bad[0])
            raise ValueError(f"{name}[{index}] is {float(array[index])!r}: inputs must be "
                             "finite (pass check_finite=False to let NaN/inf through)")


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _real(value: Any, name: str) -> float:
    """``value`` as a float (inf if too large), or TypeError naming the parameter."""
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _smoothing_for(loss_type: str, label_smoothing: Any) -> float:
    """The epsilon the kernel gets for ``loss_type``, checked against that loss's range."""
    epsilon = _real(label_smoothing, "label_smoothing")
    if loss_type in _SMOOTHED_HALF_OPEN:
        if not 0.0 <= epsilon < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type="
                             f"{loss_type!r}, got {label_smoothing!r}")
    elif loss_type == "exo_pair":
        if epsilon == 0.0:
            return _EXO_DEFAULT_EPSILON
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"label_smoothing must be in (0, 1) for loss_type='exo_pair', "
                             f"got {label_smoothing!r}")
    elif epsilon != 0.0:
        raise ValueError(f"label_smoothing is not used by loss_type={loss_type!r}; "
                         f"got {label_smoothing!r}")
    return epsilon


def _run(values: Sequence[Any], names: Sequence[str], *, beta: Any, loss_type: Any,
         label_smoothing: Any, discopop_tau: Any, reduction: Any, compute_grad: Any,
         check_finite: Any, n_threads: Any, out: Mapping[str, Any] | None,
         force_float64: bool = False) -> PreferenceLossResult:
    beta_value = validate_beta(beta)
    if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; supported: {sorted(LOSS_TYPES)}")
    smoothing = _smoothing_for(loss_type, label_smoothing)
    tau = _real(discopop_tau, "discopop_tau")
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"discopop_tau must be finite and > 0, got {discopop_tau!r}")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    want_grad = _check_flag(compute_grad, "compute_grad")
    want_finite = _check_flag(check_finite, "check_finite")
    threads = _threads.validate_n_threads(n_threads)

    arrays, dtype, originals = _prepare_inputs(values, names, force_float64)
    length = arrays[0].shape[0]
    wanted = OUTPUT_NAMES if want_grad else OUTPUT_NAMES[:3]
    # The caller's arrays (a converted copy cannot overlap anything the caller holds).
    outputs = _check_outputs(out, wanted, length, dtype, originals)

    kernel = _pairwise.pairwise_loss_f32 if dtype is np.float32 else _pairwise.pairwise_loss_f64
    sums = kernel(
        *arrays, outputs["losses"], outputs["chosen_rewards"], outputs["rejected_rewards"],
        outputs.get("grad_chosen"), outputs.get("grad_rejected"), LOSS_TYPES[loss_type],
        beta_value, smoothing, tau, float(length) if reduction == "mean" else 1.0,
        _threads.resolve_n_threads(threads, length),
    )
    # Any NaN/inf input makes a reward sum non-finite, so this costs nothing when all is well;
    # a finite overflow of a sum is told apart by the exact search.
    # (One test for all 7: a NaN or inf term makes the sum non-finite; a false alarm from an
    # overflowing sum of finite terms only costs the exact checks below.)
    finite_sums = math.isfinite(sum(sums))
    if want_finite and not finite_sums:
        _first_non_finite(arrays, names)
    means = [total / length for total in sums]
    if not finite_sums:
        # With inputs near DBL_MAX a sum can overflow although every term and the mean are
        # finite: take the means that overflowed the slow way, dividing before adding.
        def share(values: np.ndarray) -> np.ndarray:
            return np.asarray(values, np.float64) / length

        shares = {
            _SUM_LOSS: lambda: share(outputs["losses"]),
            _SUM_CHOSEN: lambda: share(outputs["chosen_rewards"]),
            _SUM_REJECTED: lambda: share(outputs["rejected_rewards"]),
            _SUM_MARGIN: lambda: (share(outputs["chosen_rewards"])
                                  - share(outputs["rejected_rewards"])),
            _SUM_CHOSEN_LOGP: lambda: share(arrays[0]),
            _SUM_REJECTED_LOGP: lambda: share(arrays[1]),
        }
        for index, total in enumerate(sums):
            if not math.isfinite(total) and index in shares:
                means[index] = float(np.sum(shares[index]()))

    if reduction == "mean":
        loss: float | np.ndarray = means[_SUM_LOSS]
    elif reduction == "sum":
        loss = sums[_SUM_LOSS]
    else:
        loss = outputs["losses"]
    metrics = {
        "rewards/chosen": means[_SUM_CHOSEN],
        "rewards/rejected": means[_SUM_REJECTED],
        "rewards/accuracies": means[_SUM_ACCURACY],
        "rewards/margins": means[_SUM_MARGIN],
        "logps/chosen": means[_SUM_CHOSEN_LOGP],
        "logps/rejected": means[_SUM_REJECTED_LOGP],
    }
    return PreferenceLossResult(
        loss=loss, losses=outputs["losses"], chosen_rewards=outputs["chosen_rewards"],
        rejected_rewards=outputs["rejected_rewards"], grad_chosen=outputs.get("grad_chosen"),
        grad_rejected=outputs.get("grad_rejected"), metrics=metrics,
    )


def preference_loss(chosen_logps: Any, rejected_logps: Any, ref_chosen_logps: Any = None,
                    ref_rejected_logps: Any = None, *, beta: float = 0.1,
                    loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                    discopop_tau: float = 0.05, reduction: str = "mean",
                    compute_grad: bool = False,
                    check_finite: bool = True, n_threads: int | None = None,
                    out: Mapping[str, np.ndarray] | None = None) -> PreferenceLossResult:
    """Pairwise preference loss (DPO and family) over arrays, in one fused compiled pass.

    With log-ratios ``c = chosen_logps - ref_chosen_logps`` and
    ``r = rejected_logps - ref_rejected_logps`` and ``z = beta * (c - r)``, the ``"sigmoid"``
    loss (DPO) of a pair is ``-(1 - eps) * log(sigmoid(z)) - eps * log(sigmoid(-z))`` with
    ``eps = label_smoothing`` (conservative DPO, as in the DPO authors' code; ``eps = 0`` is
    plain DPO). Every loss type is evaluated stably in double precision: finite inputs never
    give NaN, and ``|z|`` up to 1e6 and beyond gives the exact limits (or ``inf`` where the
    value itself overflows).

    Parameters
    ----------
    chosen_logps, rejected_logps : array_like, shape (n,)
        Policy log-probabilities of the chosen and rejected responses (summed over tokens).
    ref_chosen_logps, ref_rejected_logps : array_like, shape (n,), optional
        The same under the reference model. Both None (the default): reference-free, the
        log-ratios are taken against 0.
    beta : float, default 0.1
        Inverse temperature; finite and > 0.
    loss_type : str, default "sigmoid"
        The per-pair loss (formulas and sources in the README's loss table):
        ``"sigmoid"`` (DPO), ``"hinge"`` (SLiC), ``"ipo"`` (IPO, summed log-ratios),
        ``"exo_pair"``, ``"nca_pair"``, ``"robust"`` (rDPO), ``"bco_pair"``, ``"sppo_hard"``,
        ``"apo_zero"``, ``"apo_down"``, ``"discopop"``.
    label_smoothing : float, default 0.0
        ``eps``: for ``"sigmoid"`` and ``"robust"`` in ``[0, 0.5)``; for ``"exo_pair"`` in
        ``(0, 1)``, with 0 meaning TRL's default 1e-3; other loss types do not use it and
        refuse a non-zero value.
    discopop_tau : float, default 0.05
        DiscoPOP's temperature (TRL's default); finite and > 0.
    reduction : {"mean", "sum", "none"}, default "mean"
        How ``loss`` reduces the per-pair losses.
    compute_grad : bool, default False
        Also return the derivatives of the reduced loss with respect to ``chosen_logps`` and
        ``rejected_logps``, computed in the same pass.
    check_finite : bool, default True
        Raise ValueError (naming the input and the first bad index) if any input holds NaN
        or inf. The check is folded into the kernel's pass and costs nothing measurable.
    n_threads : int, optional
        OpenMP threads. None: the CPUs this process may use (affinity mask, cgroup quota,
        ``OMP_NUM_THREADS``). Inputs below a measured size run on one thread either way.
        Results are bit-identical for every value.
    out : dict of str to numpy.ndarray, optional
        Preallocated outputs, keyed by any of ``"losses"``, ``"chosen_rewards"``,
        ``"rejected_rewards"`` and, with ``compute_grad=True``, ``"grad_chosen"``,
        ``"grad_rejected"``: C-contiguous, writeable, of the result dtype and shape ``(n,)``,
        overlapping no input. Missing keys are allocated.

    Returns
    -------
    PreferenceLossResult
        ``loss``, ``losses``, ``chosen_rewards``, ``rejected_rewards``, ``grad_chosen``,
        ``grad_rejected`` and ``metrics`` (TRL's names); see :class:`PreferenceLossResult`.

    Notes
    -----
    dtypes: if every input is float32 (or float16) the outputs are float32; otherwise
    (float64, integer or mixed inputs) they are float64. The arithmetic and all sums are
    double precision either way, so float32 outputs are the float64 results rounded once.
    Strided and read-only inputs are accepted (strided ones are copied); inputs are never
    written.

    Examples
    --------
    >>> import numpy as np
    >>> result = preference_loss(np.array([-2.0, -1.5]), np.array([-3.0, -2.5]),
    ...                          np.array([-2.5, -2.0]), np.array([-2.5, -2.0]), beta=0.5)
    >>> round(result.loss, 6)
    0.474077
    >>> result.chosen_rewards
    array([0.25, 0.25])
    >>> result.metrics["rewards/accuracies"]
    1.0
    """
    return _run((chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps),
                _PREFERENCE_ARG_NAMES, beta=beta, loss_type=loss_type,
                label_smoothing=label_smoothing, discopop_tau=discopop_tau, reduction=reduction,
                compute_grad=compute_grad, check_finite=check_finite, n_threads=n_threads,
                out=out)


def _dpo_loss_general(chosen_policy: Any, rejected_policy: Any, chosen_ref: Any,
                      rejected_ref: Any, beta: Any) -> dict[str, Any]:
    """dpo_loss for inputs the list fast path does not take (arrays, long sequences).

    Always float64, like the list path, so both give the same numbers.
    """
    for value, name in zip((chosen_ref, rejected_ref), _SEED_ARG_NAMES[2:]):
        if value is None:
            raise TypeError(f"{name} is required, got None")
    result = _run((chosen_policy, rejected_policy, chosen_ref, rejected_ref), _SEED_ARG_NAMES,
                  beta=beta, loss_type="sigmoid", label_smoothing=0.0, discopop_tau=0.05,
                  reduction="mean",
                  compute_grad=False, check_finite=True, n_threads=None, out=None,
                  force_float64=True)
    return {"loss": round4(result.loss),
            "chosen_rewards": round4_list(result.chosen_rewards),
            "rejected_rewards": round4_list(result.rejected_rewards)}
