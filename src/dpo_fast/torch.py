"""PyTorch autograd for dpo_fast's kernels, on the CPU (the optional extra ``dpo_fast[torch]``).

``import dpo_fast`` never imports torch; this module does, when it is imported.

- :func:`sequence_logps`: per-sequence log-probabilities from logits ``(B, T, V)`` with a
  fused backward that writes ``(onehot - softmax) / temperature`` straight into the gradient
  buffer (no ``log_softmax`` copy of the logits, forward or backward).
- :func:`linear_sequence_logps`: the same from the hidden states and the ``lm_head``
  (fused linear + log-softmax): the logits exist one fixed-size tile at a time, forward and
  backward, with gradients to the hidden states, the weight and the bias.
- :func:`preference_loss`: the DPO-family loss of :func:`dpo_fast.preference_loss` with its
  keyword parameters; the backward reuses the derivatives the kernel computed in the forward
  pass (no second pass).

Tensors: CPU float32 and float64 tensors are handed to the kernels without a copy (any strides
over the leading axes; the vocabulary axis of logits must be contiguous or it is copied).
float16 and bfloat16 are upcast to float32 (a copy) and their gradients cast back. Tensors on
another device raise ValueError naming it: there is no GPU kernel and no silent fallback (move
the tensors with ``.cpu()``, or keep the GPU path in plain PyTorch).

Gradients flow to ``logits`` (:func:`sequence_logps`), to ``hidden``, ``weight`` and ``bias``
(:func:`linear_sequence_logps`) and to ``chosen_logps`` /
``rejected_logps`` (:func:`preference_loss`) only. Every other argument is a constant: a tensor
(or a list holding a tensor) that requires grad there, such as reference log-probs,
``weights``, ``chosen_lengths`` or a ``temperature`` tensor, raises ValueError naming it while
grad mode is on, rather than its gradient being dropped silently (pass it ``.detach()``-ed, or
``.item()`` for a scalar). Double backward is not supported: a backward with
``create_graph=True`` that reaches either function raises RuntimeError, rather than returning a
gradient without ``grad_fn`` (a gradient penalty built on it would silently add nothing);
compute such terms in plain PyTorch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_fast import kto as _np_kto
from dpo_fast import ld_dpo as _np_ld_dpo
from dpo_fast import linear_logps as _np_linear
from dpo_fast import logps as _np_logps
from dpo_fast import losses as _np_losses
from dpo_fast._arrays import check_finite_real
from dpo_fast._optional import require

torch = require("torch", needed_by="dpo_fast.torch", extra="torch")

__all__ = ["KTOLossResult", "PreferenceLossResult", "SequenceLogpsResult", "kto_loss",
           "ld_dpo_logps", "linear_sequence_logps", "preference_loss", "sequence_logps"]

_NATIVE = (torch.float32, torch.float64)
# Bound once: module attribute lookups on the hot path of every training step.
_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_np_preference_loss = _np_losses.preference_loss
_UPCAST = (torch.float16, torch.bfloat16)
# Keyword values that cannot hold a tensor (the constants check has nothing to look at).
_SCALARS = frozenset({float, int, str, bool, type(None)})


@dataclass(frozen=True)
class SequenceLogpsResult:
    """What :func:`sequence_logps` returns: :class:`dpo_fast.SequenceLogpsResult` as tensors.

    ``logps`` and ``token_logps`` carry autograd (to ``logits``); the other tensors are
    detached. Floating tensors have the logits' dtype (float32 for float16/bfloat16 logits);
    the values are the float64 results of the kernel rounded once.

    Attributes
    ----------
    logps : torch.Tensor, shape labels.shape[:-1]
    counts : torch.Tensor, int64, shape labels.shape[:-1]
    token_accuracy : float
    logsumexp : torch.Tensor, shape labels.shape
    token_logps : torch.Tensor or None, shape labels.shape
    entropy : torch.Tensor or None, shape labels.shape (detached)
    mean_entropy : float or None
    wpo_weights : torch.Tensor or None, shape labels.shape[:-1] (detached, like TRL's)
    logit_sums : torch.Tensor or None, shape labels.shape[:-1] (detached)
    mean_logit : float or None
    """

    logps: torch.Tensor
    counts: torch.Tensor
    token_accuracy: float
    logsumexp: torch.Tensor
    token_logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    mean_entropy: float | None = None
    wpo_weights: torch.Tensor | None = None
    logit_sums: torch.Tensor | None = None
    mean_logit: float | None = None


class PreferenceLossResult:
    """What :func:`preference_loss` returns: :class:`dpo_fast.PreferenceLossResult` as tensors.

    Read-only. The per-pair tensors are made on first access (each a view of the NumPy
    result, no copy), so a training step that reads only ``loss`` pays for nothing else.

    Attributes
    ----------
    loss : torch.Tensor
        The reduced loss (0-d for ``reduction="mean"`` / ``"sum"``, per pair for ``"none"``),
        with autograd to ``chosen_logps`` and ``rejected_logps``.
    losses, chosen_rewards, rejected_rewards : torch.Tensor
        Per pair, detached (for ``reduction="none"``, ``losses`` is ``loss`` itself).
    metrics : dict of str to float
        TRL's names, as in :class:`dpo_fast.PreferenceLossResult`.
    """

    __slots__ = ("_loss", "_result", "_tensors")
    __match_args__ = ("loss", "losses", "chosen_rewards", "rejected_rewards", "metrics")

    def __init__(self, loss: torch.Tensor, result: Any) -> None:
        object.__setattr__(self, "_loss", loss)
        object.__setattr__(self, "_result", result)  # the NumPy PreferenceLossResult
        object.__setattr__(self, "_tensors", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PreferenceLossResult is read-only: cannot set {name!r}")

    def _tensor_of(self, name: str) -> torch.Tensor:
        tensor = self._tensors.get(name)
        if tensor is None:
            tensor = self._tensors[name] = torch.from_numpy(getattr(self._result, name))
        return tensor

    @property
    def loss(self) -> torch.Tensor:
        return self._loss

    @property
    def losses(self) -> torch.Tensor:
        return self._loss if isinstance(self._result.loss, np.ndarray) else \
            self._tensor_of("losses")

    @property
    def chosen_rewards(self) -> torch.Tensor:
        return self._tensor_of("chosen_rewards")

    @property
    def rejected_rewards(self) -> torch.Tensor:
        return self._tensor_of("rejected_rewards")

    @property
    def metrics(self) -> dict[str, float]:
        return self._result.metrics

    def __repr__(self) -> str:
        return (f"PreferenceLossResult(loss={self.loss!r}, losses={self.losses!r}, "
                f"chosen_rewards={self.chosen_rewards!r}, "
                f"rejected_rewards={self.rejected_rewards!r}, metrics={self.metrics!r})")


# ------------------------------------------------------------------ tensor <-> NumPy


def _check_cpu(tensor: torch.Tensor, name: str) -> None:
    if not tensor.is_cpu:  # (is_cpu: a flag; tensor.device builds an object, ~10x slower)
        raise ValueError(
            f"{name} is on device {tensor.device}, but dpo_fast.torch runs on the CPU only (no "
            f"GPU kernels, no silent copies): move it with {name}.cpu(), or compute this step "
            "in plain PyTorch on that device")


def _float_array(tensor: Any, name: str) -> np.ndarray:
    """A NumPy view of a CPU float32/float64 tensor (float16/bfloat16: a float32 copy)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    _check_cpu(tensor, name)
    # detach() makes a new tensor object (~1 us): only where .numpy() needs it.
    data = tensor.detach() if tensor.requires_grad else tensor
    if data.dtype in _UPCAST:
        data = data.to(torch.float32)
    elif data.dtype not in _NATIVE:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, float16 or "
                        f"bfloat16), got {data.dtype}")
    return data.resolve_neg().numpy()


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float32 if tensor.dtype in _UPCAST else tensor.dtype


def _index_array(value: Any, name: str, allow_bool: bool) -> Any:
    """labels / mask as NumPy (a copy, so that later in-place changes cannot reach the
    backward); anything that is not a tensor is left to the NumPy layer's checks."""
    if value is None or not isinstance(value, torch.Tensor):
        return None if value is None else np.array(value)
    _check_cpu(value, name)
    if value.dtype.is_floating_point or value.dtype.is_complex or (
            value.dtype == torch.bool and not allow_bool):
        kinds = "a bool or integer" if allow_bool else "an integer"
        raise TypeError(f"{name} must be {kinds} tensor, got {value.dtype}")
    # (No detach(): an integer or bool tensor cannot require grad, and .numpy() of one that
    # does not needs none; it would make a new tensor object, ~1 us.)
    return value.numpy().copy()


def _check_constants(function: str, arguments: dict[str, Any]) -> None:
    """Refuse the arguments that are not differentiated here but require grad.

    Autograd would otherwise drop their gradient without a word (``w.grad`` stays None).
    Lists and tuples are searched too: the NumPy layer converts the tensors inside them.
    Under ``torch.no_grad()`` nothing is differentiated, so nothing is refused.
    """
    def check(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                fix = f"{name}.item()" if value.dim() == 0 else f"{name}.detach()"
                raise ValueError(f"{name} requires grad, but dpo_fast.torch.{function} does not "
                                 f"differentiate with respect to {name}: pass {fix}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check(item, f"{name}[{i}]")

    if torch.is_grad_enabled():
        for name, value in arguments.items():
            check(value, name)


def _any_non_scalar(values: Any) -> bool:
    """Whether a keyword value could hold a tensor (then _check_constants must look)."""
    for value in values:
        if type(value) not in _SCALARS:
            return True
    return False


def _first_order_only(function: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a Function's backward as not differentiable, refusing ``create_graph=True``.

    The engine runs a backward with grad mode on exactly when ``create_graph=True``. torch's
    ``once_differentiable`` errors only when the upstream gradient itself requires grad;
    otherwise it returns a gradient without ``grad_fn``, so a gradient penalty built on it
    silently adds nothing. Raising here fails at the first backward instead.
    """
    def decorate(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def wrapper(ctx: Any, *grads: Any) -> Any:
            if torch.is_grad_enabled():
                _refuse_double_backward(function)
            return backward(ctx, *grads)
        return wrapper
    return decorate


def _refuse_double_backward(function: str) -> None:
    raise RuntimeError(
        f"dpo_fast.torch.{function} does not support double backward (create_graph=True): its "
        "gradient comes from a compiled kernel and is not differentiable, so second-order "
        "terms would be silently missing; compute a gradient penalty (or other second-order "
        "term) in plain PyTorch instead")


# The NumPy dtype of each compute dtype: results are rounded by NumPy's cast (the same
# round-to-nearest as torch's), ~10 us a call cheaper than Tensor.to inside autograd.
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # (np.asarray, not np.ascontiguousarray: that makes the 0-d logps of (N, V) logits 1-d.)
    numpy_dtype = _NUMPY_DTYPES.get(dtype)
    if array.dtype == numpy_dtype and array.flags.c_contiguous:
        return torch.from_numpy(array)   # the common case: no conversion to make
    if numpy_dtype is None:
        return torch.from_numpy(np.asarray(array, order="C")).to(dtype)
    return torch.from_numpy(np.asarray(array, dtype=numpy_dtype, order="C"))


def _torch_dtype(array: np.ndarray) -> torch.dtype:
    return torch.float32 if array.dtype == np.float32 else torch.float64


def _loss_tensor(result: Any) -> torch.Tensor:
    """The NumPy result's `loss` (a float for mean/sum, the per-pair array for none)."""
    if isinstance(result.loss, np.ndarray):
        return torch.from_numpy(result.loss)
    # A 0-d array through from_numpy: ~7x faster than torch.tensor(float, dtype=...).
    return torch.from_numpy(np.array(result.loss, dtype=result.losses.dtype))


# ------------------------------------------------------------------ sequence_logps


# sequence_logps options that only ask for more forward outputs (sequence_logps_grad has none).
_FORWARD_ONLY = frozenset({"return_entropy", "return_wpo_weights", "return_logit_sums"})


def _sequence_result(result: Any, logps: torch.Tensor, token_logps: torch.Tensor | None,
                     dtype: torch.dtype) -> SequenceLogpsResult:
    """The NumPy result of a log-probs call as tensors, with ``logps`` / ``token_logps`` as
    the caller's autograd produced them (the other fields detached, in ``dtype``)."""
    def tensor_or_none(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else _tensor(array, dtype)

    return SequenceLogpsResult(
        logps=logps,
        counts=torch.from_numpy(result.counts),
        token_accuracy=result.token_accuracy,
        logsumexp=_tensor(result.logsumexp, dtype),
        token_logps=token_logps,
        entropy=tensor_or_none(result.entropy),
        mean_entropy=result.mean_entropy,
        wpo_weights=tensor_or_none(result.wpo_weights),
        logit_sums=tensor_or_none(result.logit_sums),
        mean_logit=result.mean_logit,
    )


class _SequenceLogps(torch.autograd.Function):
    """(logits) -> (logps, token_logps); extras go through `sink` (no autograd)."""

    @staticmethod
    def forward(ctx, logits, logits_array, labels, mask, options, sink):
        result = _np_logps.sequence_logps(logits_array, labels, mask=mask,
                                          return_token_logps=True, **options)
        dtype = _compute_dtype(logits)
        ctx.save_for_backward(logits)
        ctx.labels, ctx.mask = labels, mask
        ctx.grad_options = {k: v for k, v in options.items() if k not in _FORWARD_ONLY}
        # A float32/float64 tensor's array is a view (kept alive by the saved tensor anyway);
        # a half-precision one's is a float32 copy, which is not kept (see backward).
        ctx.logits_view = logits_array if logits.dtype in _NATIVE else None
        ctx.logsumexp = result.logsumexp
        ctx.set_materialize_grads(False)
        sink["result"] = result
        return _tensor(result.logps, dtype), _tensor(result.token_logps, dtype)

    @staticmethod
    @_first_order_only("sequence_logps")
    def backward(ctx, grad_logps, grad_token_logps):
        if grad_logps is None and grad_token_logps is None:
            return None, None, None, None, None, None
        (logits,) = ctx.saved_tensors   # (also torch's check that it was not modified)
        # Half-precision logits are upcast again rather than keeping a float32 copy of the
        # whole batch alive between the forward and the backward.
        logits_array = ctx.logits_view
        if logits_array is None:
            logits_array = _float_array(logits, "logits")
        # The gradient comes from NumPy's allocator, which asks for transparent huge pages on
        # large arrays (torch's does not by default): first-touching a fresh gradient is far
        # cheaper, 52 ms instead of 133 ms for this backward on the 500 MB benchmark batch
        # (THP in madvise mode); a large one also comes zeroed, so that the rows that do not
        # count are never written.
        grad = _np_logps.sequence_logps_grad(
            logits_array, ctx.labels, 0.0 if grad_logps is None else grad_logps.numpy(),
            grad_token_logps=None if grad_token_logps is None else grad_token_logps.numpy(),
            mask=ctx.mask, logsumexp=ctx.logsumexp, **ctx.grad_options)
        return torch.from_numpy(grad).to(logits.dtype), None, None, None, None, None


def sequence_logps(logits: torch.Tensor, labels: Any, *, ignore_index: int = -100,
                   mask: Any = None, average: bool = False, temperature: float = 1.0,
                   return_token_logps: bool = False, return_entropy: bool = False,
                   return_wpo_weights: bool = False, return_logit_sums: bool = False,
                   n_threads: int | None = None) -> SequenceLogpsResult:
    """:func:`dpo_fast.sequence_logps` on tensors, differentiable with respect to ``logits``.

    Parameters are those of :func:`dpo_fast.sequence_logps`; ``logits`` is a CPU tensor
    (float32/float64 used in place, float16/bfloat16 upcast to float32), ``labels`` and
    ``mask`` are CPU tensors (or arrays). As there, the labels must already be shifted:
    ``sequence_logps(logits[:, :-1], input_ids[:, 1:], mask=attention_mask[:, 1:])``.

    The backward is one fused pass per counted row that writes
    ``upstream * (onehot(label) - softmax(logits / T)) / T`` straight into the gradient (zeros
    elsewhere), using the log-sum-exp saved by the forward: no ``(B, T, V)`` temporary besides
    the gradient itself. ``entropy``, ``wpo_weights`` and ``logit_sums`` are returned
    detached (TRL computes WPO's weights under ``no_grad`` too).

    Gradients flow to ``logits`` only: any other argument that requires grad (a float
    ``temperature`` tensor, say) raises ValueError naming it. The backward is not
    differentiable: ``create_graph=True`` raises RuntimeError (no double backward).

    Returns
    -------
    SequenceLogpsResult
        Tensors of the logits' dtype (float32 for half-precision logits); see the class.

    Examples
    --------
    >>> import torch
    >>> import dpo_fast.torch
    >>> logits = torch.randn(2, 5, 11, requires_grad=True)
    >>> input_ids = torch.randint(0, 11, (2, 6))
    >>> out = dpo_fast.torch.sequence_logps(logits, input_ids[:, 1:])
    >>> out.logps.sum().backward()
    >>> logits.grad.shape
    torch.Size([2, 5, 11])
    """
    logits_array = _float_array(logits, "logits")  # checks type, device and dtype
    labels_array = _index_array(labels, "labels", allow_bool=False)
    mask_array = _index_array(mask, "mask", allow_bool=True)
    options = dict(ignore_index=ignore_index, average=average, temperature=temperature,
                   return_entropy=return_entropy, return_wpo_weights=return_wpo_weights,
                   return_logit_sums=return_logit_sums, n_threads=n_threads)
    # After the dtype checks: a labels / mask tensor that requires grad is a float one, and
    # "must be an integer tensor" is the better message for it. Integer and bool tensors
    # cannot require grad, so the common call (tensors, scalar options) skips the walk.
    if (not isinstance(labels, _Tensor) or (mask is not None and not isinstance(mask, _Tensor))
            or type(return_token_logps) not in _SCALARS or _any_non_scalar(options.values())):
        _check_constants("sequence_logps", {"labels": labels, "mask": mask,
                                            "return_token_logps": return_token_logps,
                                            **options})
    dtype = _compute_dtype(logits)
    if torch.is_grad_enabled() and logits.requires_grad:
        sink: dict[str, Any] = {}
        logps, token_logps = _SequenceLogps.apply(logits, logits_array, labels_array,
                                                  mask_array, options, sink)
        result = sink["result"]
    else:
        result = _np_logps.sequence_logps(
            logits_array, labels_array, mask=mask_array,
            return_token_logps=return_token_logps, **options)
        logps = _tensor(result.logps, dtype)
        token_logps = None if result.token_logps is None else _tensor(result.token_logps, dtype)
    return _sequence_result(result, logps, token_logps if return_token_logps else None, dtype)


# ------------------------------------------------------------------ linear_sequence_logps


def _linear_array(tensor: Any, name: str) -> Any:
    """A NumPy view of a CPU float16/float32/float64 tensor, or of a bfloat16 one's bits as
    a BFloat16Array (no copy: the NumPy layer upcasts half precision tile by tile)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    _check_cpu(tensor, name)
    data = tensor.detach() if tensor.requires_grad else tensor
    if data.dtype == torch.bfloat16:
        return _np_linear.BFloat16Array(data.view(torch.int16).numpy().view(np.uint16))
    if data.dtype not in (torch.float16, *_NATIVE):
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, float16 or "
                        f"bfloat16), got {data.dtype}")
    return data.resolve_neg().numpy()


def _gradient(array: np.ndarray | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if array is None or like is None else torch.from_numpy(array).to(like.dtype)


class _LinearSequenceLogps(torch.autograd.Function):
    """(hidden, weight, bias) -> (logps, token_logps); extras go through `sink`."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, arrays, labels, mask, options, sink):
        h, w, b = arrays
        # A frozen lm_head (only hidden needs a gradient): the forward also sums the softmax-
        # weighted weight rows, so that the backward needs no product (two in all, not three).
        ctx.token_grads = None
        if tuple(ctx.needs_input_grad[:3]) == (True, False, False):
            result, ctx.token_grads = _np_linear.linear_sequence_logps_and_token_grads(
                h, w, labels, bias=b, mask=mask, return_token_logps=True, **options)
        else:
            result = _np_linear.linear_sequence_logps(h, w, labels, bias=b, mask=mask,
                                                      return_token_logps=True, **options)
        ctx.save_for_backward(hidden, weight, bias)
        ctx.labels, ctx.mask, ctx.options = labels, mask, options
        ctx.logsumexp = result.logsumexp
        ctx.set_materialize_grads(False)
        sink["result"] = result
        dtype = _compute_dtype(hidden)
        return _tensor(result.logps, dtype), _tensor(result.token_logps, dtype)

    @staticmethod
    @_first_order_only("linear_sequence_logps")
    def backward(ctx, grad_logps, grad_token_logps):
        nothing = (None,) * 8
        if grad_logps is None and grad_token_logps is None:
            return nothing
        hidden, weight, bias = ctx.saved_tensors
        wrt = tuple(name for name, need in zip(("hidden", "weight", "bias"),
                                                ctx.needs_input_grad[:3]) if need)
        options = {k: v for k, v in ctx.options.items() if k not in _FORWARD_ONLY}
        arrays = (_linear_array(hidden, "hidden"), _linear_array(weight, "weight"))
        grad = 0.0 if grad_logps is None else grad_logps.numpy()
        grad_tokens = None if grad_token_logps is None else grad_token_logps.numpy()
        if ctx.token_grads is not None:
            options.pop("n_threads")
            d_hidden = _np_linear.linear_hidden_grad(
                *arrays, ctx.labels, grad, ctx.token_grads,
                bias=None if bias is None else _linear_array(bias, "bias"),
                grad_token_logps=grad_tokens, mask=ctx.mask, **options)
            return (_gradient(d_hidden, hidden), *nothing[1:])
        # Half-precision inputs are converted again rather than kept converted between the
        # forward and the backward.
        d_hidden, d_weight, d_bias = _np_linear.linear_sequence_logps_grad(
            *arrays, ctx.labels, grad, bias=None if bias is None else _linear_array(bias, "bias"),
            grad_token_logps=grad_tokens, mask=ctx.mask, logsumexp=ctx.logsumexp, wrt=wrt,
            **options)
        return (_gradient(d_hidden, hidden), _gradient(d_weight, weight),
                _gradient(d_bias, bias), *nothing[3:])


def linear_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: Any, *,
                          bias: torch.Tensor | None = None, ignore_index: int = -100,
                          mask: Any = None, average: bool = False, temperature: float = 1.0,
                          return_token_logps: bool = False, return_entropy: bool = False,
                          return_wpo_weights: bool = False, return_logit_sums: bool = False,
                          n_threads: int | None = None) -> SequenceLogpsResult:
    """:func:`dpo_fast.linear_sequence_logps` on tensors, differentiable with respect to
    ``hidden``, ``weight`` and ``bias``.

    The fused ``lm_head`` + log-softmax: the logits ``hidden @ weight.T + bias`` are never
    built whole, forward or backward (one tile of at most
    :data:`dpo_fast.linear_logps.TILE_BYTES` at a time). Parameters are those of
    :func:`dpo_fast.linear_sequence_logps`; ``hidden`` ``(B, T, H)`` / ``(N, H)``, ``weight``
    ``(V, H)`` (``lm_head.weight``) and ``bias`` ``(V,)`` (``lm_head.bias``) are CPU tensors:
    float32/float64 used in place, float16 and bfloat16 read in place and upcast to float32
    tile by tile (gradients cast back to the input's dtype). ``labels`` must already be aligned with
    ``hidden``: ``linear_sequence_logps(hidden[:, :-1], lm_head.weight, input_ids[:, 1:])``.

    The backward recomputes each tile of logits, turns it in place into
    ``upstream * (onehot - softmax) / temperature`` and accumulates ``d hidden``,
    ``d weight`` and ``d bias`` with BLAS products (float32 accumulation for float32 inputs,
    float64 for float64); a gradient that is not needed is not computed. With a frozen
    ``lm_head`` (only ``hidden`` requires grad) the forward also sums each position's
    softmax-weighted weight rows (one more product per tile, and ``(counted positions, H)``
    numbers kept for the backward), and the backward only scales them: two products in all
    instead of three. ``entropy``, ``wpo_weights`` and ``logit_sums`` are detached. Every other
    argument is a constant (one that requires grad raises ValueError naming it); no double
    backward (``create_graph=True`` raises RuntimeError).

    Compose it with :func:`preference_loss` for a DPO step from hidden states (chosen rows
    first)::

        out = linear_sequence_logps(hidden, lm_head.weight, labels, mask=mask)
        loss = preference_loss(out.logps[:n], out.logps[n:], ref_chosen, ref_rejected,
                               beta=0.1, loss_type="sigmoid").loss
        loss.backward()      # gradients reach hidden (the model) and lm_head.weight

    Returns
    -------
    SequenceLogpsResult
        Tensors of the computing dtype (float32 for half-precision inputs).

    Examples
    --------
    >>> import torch
    >>> import dpo_fast.torch
    >>> head = torch.nn.Linear(8, 11)
    >>> hidden = torch.randn(2, 5, 8, requires_grad=True)
    >>> labels = torch.randint(0, 11, (2, 5))
    >>> out = dpo_fast.torch.linear_sequence_logps(hidden, head.weight, labels, bias=head.bias)
    >>> out.logps.sum().backward()
    >>> hidden.grad.shape, head.weight.grad.shape, head.bias.grad.shape
    (torch.Size([2, 5, 8]), torch.Size([11, 8]), torch.Size([11]))
    """
    arrays = (_linear_array(hidden, "hidden"), _linear_array(weight, "weight"),
              None if bias is None else _linear_array(bias, "bias"))
    labels_array = _index_array(labels, "labels", allow_bool=False)
    mask_array = _index_array(mask, "mask", allow_bool=True)
    options = dict(ignore_index=ignore_index, average=average, temperature=temperature,
                   return_entropy=return_entropy, return_wpo_weights=return_wpo_weights,
                   return_logit_sums=return_logit_sums, n_threads=n_threads)
    _check_constants("linear_sequence_logps", {
        "labels": labels, "mask": mask, "return_token_logps": return_token_logps, **options})
    dtype = _compute_dtype(hidden)
    differentiable = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and differentiable:
        sink: dict[str, Any] = {}
        logps, token_logps = _LinearSequenceLogps.apply(
            hidden, weight, bias, arrays, labels_array, mask_array, options, sink)
        result = sink["result"]
    else:
        result = _np_linear.linear_sequence_logps(
            *arrays[:2], labels_array, bias=arrays[2], mask=mask_array,
            return_token_logps=return_token_logps, **options)
        logps = _tensor(result.logps, dtype)
        token_logps = None if result.token_logps is None else _tensor(result.token_logps, dtype)
    return _sequence_result(result, logps, token_logps if return_token_logps else None, dtype)


# ------------------------------------------------------------------ preference_loss


class _PreferenceLoss(torch.autograd.Function):
    """(chosen, rejected) -> loss, with the kernel's forward-pass derivatives.

    The derivatives are kept on ctx as plain attributes (they are neither inputs nor outputs:
    no saved-variable bookkeeping is needed), and the backward is at most one multiply per
    side by the upstream gradient."""

    @staticmethod
    def forward(ctx, chosen, rejected, result):
        # `result`: the NumPy call's, made with compute_grad=True before apply (so that
        # nothing but the loss passes through autograd's argument handling).
        grads = ctx.grads = (torch.from_numpy(result.grad_chosen),
                             torch.from_numpy(result.grad_rejected))
        # Half-precision inputs get their gradient in their own dtype.
        ctx.dtypes = (None if chosen.dtype is grads[0].dtype and rejected.dtype is grads[1].dtype
                      else (chosen.dtype, rejected.dtype))
        return _loss_tensor(result)

    @staticmethod
    def backward(ctx, grad_loss):
        # (_first_order_only's check, inline: this is the hot path of every training step.)
        if _grad_enabled():
            _refuse_double_backward("preference_loss")
        grad_chosen, grad_rejected = ctx.grads
        # The upstream gradient: 0-d for mean / sum, per pair for "none". The usual
        # `loss.backward()` passes 1: the derivatives are returned as they are (autograd copies
        # a gradient it does not own before storing it in `.grad`, so the ones on ctx stay
        # intact for a second backward with retain_graph=True).
        if grad_loss.dim() != 0 or grad_loss.item() != 1.0:
            if grad_loss.dtype != grad_chosen.dtype:
                grad_loss = grad_loss.to(grad_chosen.dtype)
            grad_chosen, grad_rejected = grad_chosen * grad_loss, grad_rejected * grad_loss
        if ctx.dtypes is not None:
            grad_chosen = grad_chosen.to(ctx.dtypes[0])
            grad_rejected = grad_rejected.to(ctx.dtypes[1])
        return grad_chosen, grad_rejected, None


def _loss_array(value: Any, name: str) -> np.ndarray | None:
    """One input as a NumPy view: CPU float32/float64 tensors inline (``numpy(force=True)``:
    detached, negative bit resolved, no copy otherwise); the rest through `_float_array`."""
    if type(value) is _Tensor and value.is_cpu and value.dtype in _NATIVE:
        return value.numpy(force=True)
    if value is None and name.startswith("ref_"):
        return None
    return _float_array(value, name)


def preference_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None = None,
                    ref_rejected_logps: torch.Tensor | None = None,
                    **kwargs: Any) -> PreferenceLossResult:
    """:func:`dpo_fast.preference_loss` on tensors; ``loss`` has autograd.

    Every keyword parameter of :func:`dpo_fast.preference_loss` is accepted and passed on
    (``beta``, ``loss_type``, ``label_smoothing``, ``reduction``, ``check_finite``,
    ``n_threads``, and any added later), except ``compute_grad`` (set here) and ``out``.

    The forward pass runs the kernel with ``compute_grad=True``; the backward multiplies those
    derivatives by the upstream gradient (no second pass). Gradients flow to
    ``chosen_logps`` and ``rejected_logps`` only. Every other argument is a constant: the
    reference log-probs (a frozen reference model: compute them under ``torch.no_grad()``),
    ``weights``, ``chosen_lengths``, ``rejected_lengths`` and the other keywords. One that
    requires grad (a tensor, or a list holding one) raises ValueError naming it, instead of
    its gradient being dropped silently: pass it detached. The backward is not
    differentiable: ``create_graph=True`` raises RuntimeError (no double backward, so a
    gradient penalty through this loss has to be computed in plain PyTorch).

    Returns
    -------
    PreferenceLossResult
        ``loss`` (differentiable), ``losses``, ``chosen_rewards``, ``rejected_rewards``
        (detached) and ``metrics``. Tensors have the NumPy API's result dtype: float32 when
        every input is float32/float16/bfloat16, else float64.

    Examples
    --------
    >>> import torch
    >>> import dpo_fast.torch
    >>> chosen = torch.tensor([-2.0, -1.5], requires_grad=True)
    >>> rejected = torch.tensor([-3.0, -2.5], requires_grad=True)
    >>> out = dpo_fast.torch.preference_loss(chosen, rejected, torch.tensor([-2.5, -2.0]),
    ...                                      torch.tensor([-2.5, -2.0]), beta=0.5)
    >>> out.loss.backward()
    >>> round(out.loss.item(), 4), chosen.grad
    (0.4741, tensor([-0.0944, -0.0944]))
    """
    if "compute_grad" in kwargs or "out" in kwargs:
        name = "compute_grad" if "compute_grad" in kwargs else "out"
        raise TypeError(f"dpo_fast.torch.preference_loss does not take {name}= (gradients "
                        "come from autograd)")
    # Every keyword (weights, chosen_lengths, ..., and any added later) is a constant. (The
    # common call -- references that do not require grad, scalar keywords -- skips the walk.)
    if (getattr(ref_chosen_logps, "requires_grad", False)
            or getattr(ref_rejected_logps, "requires_grad", False)
            or _any_non_scalar(kwargs.values())):
        _check_constants("preference_loss", {"ref_chosen_logps": ref_chosen_logps,
                                             "ref_rejected_logps": ref_rejected_logps, **kwargs})
    arrays = (_loss_array(chosen_logps, "chosen_logps"),
              _loss_array(rejected_logps, "rejected_logps"),
              _loss_array(ref_chosen_logps, "ref_chosen_logps"),
              _loss_array(ref_rejected_logps, "ref_rejected_logps"))
    if _grad_enabled() and (chosen_logps.requires_grad or rejected_logps.requires_grad):
        result = _np_preference_loss(*arrays, compute_grad=True, **kwargs)
        loss = _PreferenceLoss.apply(chosen_logps, rejected_logps, result)
    else:
        result = _np_preference_loss(*arrays, **kwargs)
        loss = _loss_tensor(result)
    return PreferenceLossResult(loss, result)


# ------------------------------------------------------------------ ld_dpo_logps


def ld_dpo_logps(chosen_token_logps: torch.Tensor, rejected_token_logps: torch.Tensor,
                 chosen_mask: Any = None, rejected_mask: Any = None, *,
                 ld_alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dpo_fast.ld_dpo_logps` on tensors, differentiable w.r.t. the token log-probs.

    TRL 1.16's arithmetic: ``(logps * shared).sum(-1) + ld_alpha * (logps * tail).sum(-1)``
    with the shared / tail masks of :func:`dpo_fast.ld_dpo.ld_dpo_masks` (constants), values off
    the completion ignored (a NaN there does not reach the sums or the gradient). Token
    log-probs are CPU float tensors (float16/bfloat16 upcast to float32); masks are bool or
    integer tensors (or arrays), None counting every token.

    Returns
    -------
    (chosen_logps, rejected_logps) : tuple of torch.Tensor, shape (B,)
        In the token log-probs' dtype (float32 for half precision), with autograd.
    """
    tokens = []
    for value, name in ((chosen_token_logps, "chosen_token_logps"),
                        (rejected_token_logps, "rejected_token_logps")):
        _float_array(value, name)  # type, device and dtype checks
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, tokens), got shape "
                             f"{tuple(value.shape)}")
        tokens.append(value.to(_compute_dtype(value)))
    alpha = check_finite_real(ld_alpha, "ld_alpha")
    masks = _np_ld_dpo.ld_dpo_masks(
        _index_array(chosen_mask, "chosen_mask", allow_bool=True),
        _index_array(rejected_mask, "rejected_mask", allow_bool=True),
        chosen_shape=tuple(tokens[0].shape), rejected_shape=tuple(tokens[1].shape))
    results = []
    for index, (values, name) in enumerate(((tokens[0], "chosen_token_logps"),
                                            (tokens[1], "rejected_token_logps"))):
        shared, tail = (torch.from_numpy(m) for m in masks[2 * index:2 * index + 2])
        counted = shared | tail
        bad = counted & ~torch.isfinite(values.detach())
        if bool(bad.any()):
            row, position = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name}[{row}, {position}] is {float(values[row, position])!r}: "
                             "token log-probs on the completion must be finite")
        zero = values.new_zeros(())
        results.append(torch.where(shared, values, zero).sum(-1)
                       + alpha * torch.where(tail, values, zero).sum(-1))
    return results[0], results[1]


# ------------------------------------------------------------------ kto_loss


@dataclass(frozen=True)
class KTOLossResult:
    """What :func:`kto_loss` returns: :class:`dpo_fast.KTOLossResult` as tensors.

    ``loss`` carries autograd (to ``logps``); ``losses`` and ``rewards`` are detached
    float64 tensors; ``kl`` and ``metrics`` as in the NumPy result.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    rewards: torch.Tensor
    kl: float
    metrics: dict[str, float]


class _KTOLoss(torch.autograd.Function):
    """(logps) -> loss, with the derivatives the NumPy call computed."""

    @staticmethod
    def forward(ctx, logps, result):
        ctx.grad = torch.from_numpy(result.grad)
        ctx.dtype = logps.dtype
        loss = result.loss
        return torch.from_numpy(loss if isinstance(loss, np.ndarray) else np.array(loss))

    @staticmethod
    def backward(ctx, grad_loss):
        if _grad_enabled():
            _refuse_double_backward("kto_loss")
        grad = ctx.grad * grad_loss.to(ctx.grad.dtype)
        return grad.to(ctx.dtype), None


def kto_loss(logps: torch.Tensor, ref_logps: Any, desirable: Any,
             **kwargs: Any) -> KTOLossResult:
    """:func:`dpo_fast.kto_loss` on tensors; ``loss`` has autograd to ``logps``.

    Every keyword of :func:`dpo_fast.kto_loss` is passed on except ``compute_grad`` (set
    here). ``ref_logps``, the KL completions' log-probs and the other keywords are constants:
    one that requires grad raises ValueError naming it. ``desirable`` is a bool tensor (or
    array). The computation is float64; the gradient comes back in ``logps``' dtype.
    """
    if "compute_grad" in kwargs:
        raise TypeError("dpo_fast.torch.kto_loss does not take compute_grad= (gradients "
                        "come from autograd)")
    _check_constants("kto_loss", {"ref_logps": ref_logps, **kwargs})
    arrays = {key: (_float_array(value, key) if isinstance(value, torch.Tensor) else value)
              for key, value in kwargs.items() if key in ("kl_logps", "ref_kl_logps")}
    labels = _index_array(desirable, "desirable", allow_bool=True)
    policy = _float_array(logps, "logps")
    reference = _float_array(ref_logps, "ref_logps") if isinstance(ref_logps, torch.Tensor) \
        else ref_logps
    call = {**kwargs, **arrays}
    if _grad_enabled() and logps.requires_grad:
        result = _np_kto.kto_loss(policy, reference, labels, compute_grad=True, **call)
        loss = _KTOLoss.apply(logps, result)
    else:
        result = _np_kto.kto_loss(policy, reference, labels, **call)
        loss = torch.from_numpy(np.asarray(result.loss, dtype=np.float64))
    return KTOLossResult(loss=loss, losses=torch.from_numpy(result.losses),
                         rewards=torch.from_numpy(result.rewards), kl=result.kl,
                         metrics=dict(result.metrics))
