"""Checks and conversions shared by the public modules before arrays reach the C kernels.

The kernels take raw pointers and may load them with any instruction the type allows, so what
they receive must be C-contiguous *and aligned*. ``np.ascontiguousarray`` alone does not
ensure the second: a contiguous view of a byte buffer at an odd offset (``np.frombuffer(raw,
np.float32, offset=1)``) passes through it unchanged, and dereferencing it in C is undefined
behaviour (UBSan: "load of misaligned address"; a compiler may use aligned vector loads).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_flag(value: Any, name: str) -> bool:
    """A boolean option: True/False (Python or NumPy bools), anything else a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_finite_real(value: Any, name: str) -> float:
    """A finite real scalar parameter as a float (TypeError / ValueError naming it)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def tensor_as_array(value: Any, name: str, adapter: str) -> np.ndarray | None:
    """A torch tensor as a NumPy array (a view), None for anything else.

    A CPU tensor that does not require grad, of a dtype NumPy has, converts like an array.
    For the others ``np.asarray`` would raise torch's own error, which names neither the
    argument nor the way out: here a TypeError names both (``adapter``: the dpo_fast.torch
    function that takes such tensors). torch is not imported: the test is on the type's module.
    """
    if not type(value).__module__.startswith("torch") or not hasattr(value, "requires_grad"):
        return None
    if getattr(value, "is_cpu", True) is False:
        raise TypeError(f"{name} is a torch.Tensor on device {value.device}: move it with "
                        f"{name}.cpu() (dpo_fast runs on the CPU)")
    try:
        return value.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError):
        # requires grad (while grad mode is on: under torch.no_grad() it converts), or a
        # dtype NumPy lacks (bfloat16, float8, quantized, ...)
        if value.requires_grad:
            raise TypeError(f"{name} is a torch.Tensor that requires grad: use {adapter} (it "
                            f"differentiates), or pass {name}.detach()") from None
        raise TypeError(f"{name} is a torch.Tensor of dtype {value.dtype}, which NumPy cannot "
                        f"hold: use {adapter} (it upcasts), or pass {name}.float()") from None


def kernel_array(array: Any, dtype: Any) -> np.ndarray:
    """``array`` as a C-contiguous, aligned array of ``dtype`` (at least 1-D, as
    ``np.ascontiguousarray``), copying only when it is not one already."""
    result = np.ascontiguousarray(array, dtype=dtype)
    return result if result.flags.aligned else result.copy()


def kernel_output(array: np.ndarray) -> np.ndarray:
    """Where a kernel may write for the caller's checked ``out`` array: the array itself, or an
    aligned temporary when it is not aligned (then copy it back with :func:`copy_back`)."""
    return array if array.flags.aligned else np.empty_like(array, order="C")


def copy_back(written: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Copy a kernel's output to the caller's ``out`` array if :func:`kernel_output` staged
    it; return ``target``."""
    if written is not target:
        np.copyto(target, written)
    return target
