"""Coverage-guided fuzzing of dpo_fast's public entry points with atheris (libFuzzer).

What it fuzzes
--------------
Each input chooses one of ``dpo_fast.dpo_loss``, ``dpo_fast.preference_loss``,
``dpo_fast.sequence_logps`` and ``dpo_fast.sequence_logps_grad`` and builds every argument
from the fuzzer's bytes with ``atheris.FuzzedDataProvider``: lists, tuples and NumPy arrays of
float16/32/64, integer, uint64, bool, object and complex dtypes; sizes 0..40 and, rarely, the
chunk and parallel thresholds (8192, 32768 rows; 65536 logits); values straight from the raw
bytes (NaN, inf, subnormals, -0.0, huge values); reversed, strided, read-only, 2-D and
non-aligned layouts (``np.frombuffer(bytearray, dtype, count, offset=1..7)``); odd objects
(None, str, bool, huge ints, ragged lists, and numbers whose ``__float__`` raises or resizes
the list being read); every keyword of ``preference_loss`` (loss types and lists of them,
f-divergences, lengths, weights, reductions, gradients, ``check_finite``, ``n_threads``,
preallocated and aliasing ``out`` arrays); labels, masks, temperatures, upstream gradients,
``logsumexp`` and ``out`` of the log-prob functions.

Invariant
---------
Per input, the call either returns or raises ``ValueError`` / ``TypeError``; any other
exception (SystemError, OverflowError, IndexError, KeyError, ...) is re-raised, so libFuzzer
reports it and saves the input as ``crash-<sha1>``. The only exception allowed through is
:class:`PlantedError`, raised by the ``__float__`` of an object this harness planted. When the
call returns:

* the caller's inputs (lists by item identity, arrays by the bytes of their whole buffer,
  guard bytes included) are unchanged, and so are the guard bytes around ``out`` views;
* no output holds NaN when every input value is finite (``preference_loss``: with
  ``check_finite=True`` only; a non-finite input must then be refused);
* ``preference_loss`` with ``check_finite=True`` does not return for non-finite inputs;
  shapes, dtypes and ``out`` arrays match the documentation;
* ``dpo_loss`` with finite, moderate inputs (``|x| <= 1e3``, ``1e-3 <= beta <= 1e3``)
  equals a plain-Python float64 reference (rewards ``beta * (p - r)``, loss the mean of
  ``softplus(-beta * ((pc - rc) - (pr - rr)))``), each value rounded with ``round(x, 4)``;
  a loss within a few ulps of a rounding tie may round either way;
* ``sequence_logps``: log-probs are <= 0, counts match the labels, mask and
  ``ignore_index``, the accuracy is in [0, 1].

Running
-------
atheris is optional (not a dependency of dpo_fast): ``pip install atheris`` (and mpmath, for
the test suite's tests/reference.py, whose float64 ``softplus`` the dpo_loss check uses: both
are in the ``test`` extra). Then, from the repository root, with dpo_fast importable
(installed, or ``PYTHONPATH=src`` on a built tree)::

    mkdir -p /tmp/dpo_corpus
    python scripts/fuzz_atheris.py -max_total_time=600 /tmp/dpo_corpus
    python scripts/fuzz_atheris.py -runs=20000 -seed=1          # a short, reproducible run
    python scripts/fuzz_atheris.py crash-<sha1>                  # replay a saved finding

Any libFuzzer flag works (``-jobs``, ``-workers``, ``-max_len``, ``-dict``, ...). A one-line
summary (executions; returned / ValueError / TypeError counts) is printed at exit.

Coverage guidance is on the Python layers only (``dpo_fast.losses``, ``dpo_fast.logps``,
``dpo_fast._arrays`` and the rest of the package's Python modules, instrumented at import by
``atheris.instrument_imports``). The compiled kernels (Cython and C) are not built with
libFuzzer instrumentation; they are checked for memory and undefined-behaviour errors by the
sanitizer run, ``scripts/sanitize.sh``.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import decimal
import fractions
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# The float64 reference of the test suite (tests/reference.py: written independently of the
# package), so that one softplus serves the tests and this harness.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from reference import softplus  # noqa: E402

try:
    import atheris
except ImportError:  # atheris is optional
    sys.exit("fuzz_atheris.py needs atheris: pip install atheris")

with atheris.instrument_imports(include=["dpo_fast"]):
    import dpo_fast
    import dpo_fast._arrays  # noqa: F401  (instrumented for coverage)
    import dpo_fast.logps  # noqa: F401
    import dpo_fast.losses

warnings.simplefilter("ignore")  # NumPy's overflow warnings; NaN is checked directly

# ---------------------------------------------------------------------- counting and summary

STATS: collections.Counter = collections.Counter()
_SUMMARY_PRINTED = False


def print_summary(*_unused: Any) -> None:
    """Print the one-line summary of the run (once)."""
    global _SUMMARY_PRINTED
    if _SUMMARY_PRINTED:
        return
    _SUMMARY_PRINTED = True
    per_entry = ", ".join(f"{name} {STATS['entry:' + name]}" for name in ENTRY_NAMES)
    print(f"fuzz_atheris summary: {STATS['executions']} executions, "
          f"{STATS['returned']} returned, {STATS['ValueError']} ValueError, "
          f"{STATS['TypeError']} TypeError, {STATS['PlantedError']} PlantedError "
          f"({per_entry})", flush=True)


# libFuzzer leaves the process with exit() and atheris then ends it with _exit(), so Python's
# atexit handlers never run: the summary is also registered with the C library's on_exit
# (glibc), from the first execution (exit handlers run last-registered first).
_ON_EXIT_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)
_ON_EXIT_CALLBACK = _ON_EXIT_TYPE(print_summary)
atexit.register(print_summary)


def _register_c_exit_handler() -> None:
    try:
        ctypes.CDLL(None).on_exit(_ON_EXIT_CALLBACK, None)
    except (AttributeError, OSError):  # not glibc: Python's atexit only
        pass


# ---------------------------------------------------------------------- planted objects


class PlantedError(Exception):
    """Raised by the ``__float__`` of :class:`RaisingReal`: may pass through the API."""


class RaisingReal:
    """Registered as ``numbers.Real``; its ``__float__`` raises :class:`PlantedError`."""

    def __float__(self) -> float:
        raise PlantedError("__float__ of a planted object")

    def __repr__(self) -> str:
        return "RaisingReal()"


class ShrinkingReal:
    """Registered as ``numbers.Real``; its ``__float__`` empties the list it sits in (or
    appends to it), then returns 0.5: the list changes size while the API reads it."""

    def __init__(self) -> None:
        self.target: list | None = None
        self.grow = False

    def __float__(self) -> float:
        if self.target is not None:
            if self.grow:
                self.target.extend([1.0] * 100)
            else:
                self.target.clear()
        return 0.5

    def __repr__(self) -> str:
        return "ShrinkingReal()"


numbers.Real.register(RaisingReal)
numbers.Real.register(ShrinkingReal)


class Case:
    """What one input planted, which decides the checks that apply."""

    def __init__(self) -> None:
        self.planted_raise = False
        self.mutating = False


# ---------------------------------------------------------------------- value generation

ENTRY_NAMES = ("dpo_loss", "preference_loss", "sequence_logps", "sequence_logps_grad")
SPECIAL_FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                  -1.7976931348623157e308, 3.4028234663852886e38, 1.401298464324817e-45,
                  65504.0, 1e-300, 1e300, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf]
BIG_SIZES = [8191, 8192, 8193, 32767, 32768, 32769]
FLOAT_DTYPES = [np.float64, np.float32, np.float16]
INPUT_DTYPES = [np.float64, np.float64, np.float32, np.float32, np.float16, np.int64,
                np.int32, np.uint64, np.uint8, np.bool_, np.object_, np.complex128,
                np.longdouble]


def rare(fdp: atheris.FuzzedDataProvider, odds: int) -> bool:
    """True once in ``odds`` (never when the bytes have run out, which read as zeros: the
    usual, valid choices come first so that short inputs still make valid calls)."""
    return fdp.ConsumeIntInRange(0, odds - 1) == odds - 1


def consume_size(fdp: atheris.FuzzedDataProvider) -> int:
    """A batch size: 1..40 nearly always, sometimes 0 or one of the chunk / parallel
    thresholds."""
    if rare(fdp, 64):
        return fdp.PickValueInList(BIG_SIZES)
    return (fdp.ConsumeIntInRange(0, 40) + 1) % 41


def consume_values(fdp: atheris.FuzzedDataProvider, n: int, dtype: Any = np.float64
                   ) -> np.ndarray:
    """``n`` values of ``dtype`` from the bytes: moderate, arbitrary (NaN/inf), finite,
    raw bit patterns or special values. Large sizes repeat a base of at most 64 values."""
    base_n = min(n, 64)
    kind = np.dtype(dtype).kind
    mode = fdp.ConsumeIntInRange(0, 4)
    if kind == "O":
        return consume_objects(fdp, n)
    if mode == 3 or kind in "iub" and mode != 0:
        itemsize = np.dtype(dtype).itemsize
        raw = fdp.ConsumeBytes(base_n * itemsize).ljust(base_n * itemsize, b"\0")
        if kind == "b":
            base = np.frombuffer(raw, np.uint8) % 2 == 1
        else:
            base = np.frombuffer(raw, dtype).copy()
    else:
        if mode == 0:
            floats = [fdp.ConsumeFloatInRange(-1e3, 1e3) for _ in range(base_n)]
        elif mode == 1:
            floats = [fdp.ConsumeFloat() for _ in range(base_n)]
        elif mode == 2:
            floats = [fdp.ConsumeRegularFloat() for _ in range(base_n)]
        else:
            floats = [fdp.PickValueInList(SPECIAL_FLOATS) for _ in range(base_n)]
        with np.errstate(all="ignore"):
            values = np.array(floats, dtype=np.float64)
            if kind in "iu":
                values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
                info = np.iinfo(dtype)
                values = np.clip(np.round(values), info.min, info.max)
            base = values.astype(dtype)
    return np.resize(base, n) if n != base_n else base


def consume_odd_object(fdp: atheris.FuzzedDataProvider, case: Case) -> Any:
    """One object that is not a plain float, for lists and object arrays."""
    choice = fdp.ConsumeIntInRange(0, 17)
    if choice == 16:
        case.planted_raise = True
        return RaisingReal()
    if choice == 17:
        case.mutating = True
        return ShrinkingReal()
    return [None, "1.0", b"x", True, False, np.bool_(True), 10**400, -(10**400), 2**64,
            2**63, np.float32(2.5), np.int64(3), np.uint64(2**64 - 1), complex(1, 2),
            fractions.Fraction(1, 3), decimal.Decimal("1.5")][choice]


def consume_objects(fdp: atheris.FuzzedDataProvider, n: int) -> np.ndarray:
    """An object array of floats and ints (no planted objects: see consume_odd_object)."""
    array = np.empty(n, dtype=object)
    for index in range(min(n, 64)):
        array[index] = fdp.PickValueInList([1.5, -2, 10**400, 2**63, None, "x", True,
                                            np.float64(0.25), fractions.Fraction(1, 4)])
    for index in range(64, n):
        array[index] = 0.5
    return array


def lay_out(fdp: atheris.FuzzedDataProvider, values: np.ndarray) -> np.ndarray:
    """``values`` (1-D or more) in a fuzzed memory layout: contiguous, reversed, strided
    (guard values in the gaps), non-aligned (inside a bytearray), read-only or Fortran."""
    layout = fdp.ConsumeIntInRange(0, 7)
    if layout <= 2 or values.ndim == 0 or values.size == 0:
        return values
    if layout == 3:  # reversed: a negative-stride view with the same values
        return np.ascontiguousarray(values[::-1])[::-1]
    if layout == 4 and values.ndim == 1:  # strided, with guards in between
        step = fdp.ConsumeIntInRange(2, 5)
        buffer = np.full(values.size * step, 7, dtype=values.dtype)
        view = buffer[::step]
        view[...] = values
        return view
    if layout == 5 and values.dtype != object:  # not aligned: offset 1..7 in a bytearray
        offset = fdp.ConsumeIntInRange(1, 7)
        raw = bytearray(b"\xa5") * (offset + values.nbytes + 8)
        view = np.frombuffer(raw, values.dtype, values.size, offset).reshape(values.shape)
        view[...] = values
        return view
    if layout == 6:
        values = values.copy()
        values.flags.writeable = False
        return values
    return np.asfortranarray(values)


def make_input(fdp: atheris.FuzzedDataProvider, n: int, case: Case) -> Any:
    """A log-prob argument of ``n`` pairs: mostly a float array or a list of floats;
    sometimes a tuple, a list with an odd item, a ragged or 2-D value, a scalar or None."""
    kind = fdp.ConsumeIntInRange(0, 9) if not rare(fdp, 8) else fdp.ConsumeIntInRange(10, 15)
    if kind <= 5 or kind == 10:
        dtype = fdp.PickValueInList(INPUT_DTYPES) if kind == 10 else \
            fdp.PickValueInList(FLOAT_DTYPES)
        return lay_out(fdp, consume_values(fdp, n, dtype))
    values = consume_values(fdp, n)
    if kind <= 9 or kind == 11:
        items: list = values.tolist()
        if kind == 9 and items:  # Python ints where the values are integral
            items = [int(item) if math.isfinite(item) and item == int(item) else item
                     for item in items]
        if kind == 11 and items:
            items[fdp.ConsumeIntInRange(0, len(items) - 1)] = consume_odd_object(fdp, case)
        for item in items:
            if isinstance(item, ShrinkingReal):
                item.target = items
                item.grow = fdp.ConsumeBool()
        return tuple(items) if kind == 8 else items
    if kind == 15 and n:
        ragged: list = values.tolist()
        ragged[fdp.ConsumeIntInRange(0, n - 1)] = [1.0, 2.0]
        return ragged
    if kind == 12:
        return lay_out(fdp, values.reshape(1, n) if fdp.ConsumeBool() else values.reshape(n, 1))
    if kind == 13:
        return float(values[0]) if n else 0.0
    if kind == 14:
        return None
    return consume_odd_object(fdp, case) if fdp.ConsumeBool() else None


def consume_real(fdp: atheris.FuzzedDataProvider, case: Case, default: float, low: float,
                 high: float) -> Any:
    """A scalar parameter: often the default, else in [low, high], arbitrary, or odd."""
    choice = fdp.ConsumeIntInRange(0, 15)
    if choice <= 7:
        return default
    if choice <= 12:
        return fdp.ConsumeFloatInRange(low, high)
    if choice == 13:
        return fdp.ConsumeFloat()
    if choice == 14:
        return fdp.PickValueInList(SPECIAL_FLOATS + [1, 0, -1, np.float32(0.25), np.int64(2)])
    return consume_odd_object(fdp, case)


def consume_flag(fdp: atheris.FuzzedDataProvider, default: bool = False) -> Any:
    """A boolean option: mostly True/False, sometimes np.bool_, 1, None or a string."""
    if rare(fdp, 32):
        return fdp.PickValueInList([np.bool_(True), np.bool_(False), 1, None, "yes"])
    return default if fdp.ConsumeBool() else not default


def consume_n_threads(fdp: atheris.FuzzedDataProvider) -> Any:
    """``n_threads``: mostly None, 1 or 2; sometimes invalid or huge."""
    if rare(fdp, 32):
        return fdp.PickValueInList([0, -1, True, 1.5, 2**40, "2", np.int64(2)])
    return fdp.PickValueInList([None, 1, 2, 3])


# ---------------------------------------------------------------------- snapshots and checks


def _root(array: np.ndarray) -> Any:
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def snapshot(value: Any) -> Any:
    """Something to compare after a call to tell whether ``value`` (or the buffer under it,
    guard bytes included) was changed."""
    if isinstance(value, np.ndarray):
        root = _root(value)
        if isinstance(root, np.ndarray):
            if root.dtype.hasobject:
                return ("objects", [id(item) for item in root.ravel(order="K")])
            return ("array", root.tobytes(order="A"))
        return ("buffer", bytes(memoryview(root).cast("B")))
    if isinstance(value, (list, tuple)):
        return ("items", len(value), [id(item) for item in value], list(value))
    return ("id", id(value))


class InvariantError(AssertionError):
    """An invariant broken by a call that returned."""


def check_unchanged(named_inputs: dict[str, Any], before: dict[str, Any], case: Case) -> None:
    """Raise InvariantError if an input (or the buffer under it) changed during the call."""
    for name, value in named_inputs.items():
        if case.mutating and isinstance(value, list):
            continue  # the harness's own ShrinkingReal resized it
        if snapshot(value)[:3] != before[name][:3]:
            raise InvariantError(f"input {name} was changed by the call")


def finite_values(value: Any) -> np.ndarray | None:
    """``value`` as float64 values if it is a real-number array or list of plain numbers
    (None when it is not, or cannot be converted without calling user code)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiub" or value.dtype.itemsize > 8 and value.dtype.kind == "f":
            return None
        return np.asarray(value, dtype=np.float64).ravel()
    if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(
            value, (bool, np.bool_)):
        try:
            return np.array([float(value)])
        except OverflowError:
            return None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(item, (float, int, np.floating, np.integer))
                   and not isinstance(item, (bool, np.bool_)) for item in value):
            return None
        try:
            return np.array([float(item) for item in value], dtype=np.float64)
        except OverflowError:
            return None
    return None


def all_finite(*values: Any) -> bool | None:
    """True/False whether every value of every argument is finite; None if unknown."""
    for value in values:
        if value is None:
            continue
        converted = finite_values(value)
        if converted is None:
            return None
        if not np.isfinite(converted).all():
            return False
    return True


def has_nan(*outputs: Any) -> bool:
    """Whether any float, array or dict of them among ``outputs`` holds NaN."""
    for output in outputs:
        if output is None:
            continue
        if isinstance(output, dict):
            if has_nan(*output.values()):
                return True
        elif isinstance(output, (list, tuple)):
            if has_nan(*output):
                return True
        elif isinstance(output, np.ndarray):
            if output.dtype.kind in "fc" and np.isnan(output).any():
                return True
        elif isinstance(output, float) and math.isnan(output):
            return True
    return False


class GuardedOut:
    """An ``out`` array as a view at byte ``offset`` inside a bytearray with guard bytes."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, offset: int) -> None:
        dtype = np.dtype(dtype)
        self.start = 16 + offset
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self.raw = bytearray(b"\x5a") * (self.start + self.nbytes + 16)
        count = int(np.prod(shape))
        self.array = np.frombuffer(self.raw, dtype, count, self.start).reshape(shape)

    def guards_intact(self) -> bool:
        return (self.raw[:self.start] == b"\x5a" * self.start
                and self.raw[self.start + self.nbytes:] == b"\x5a" * 16)


def make_out_array(fdp: atheris.FuzzedDataProvider, shape: tuple[int, ...], dtype: Any,
                   guards: list[GuardedOut]) -> Any:
    """An ``out`` array: mostly valid (fresh or non-aligned), sometimes of the wrong dtype or
    shape, read-only, not C-contiguous, or not an array."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice <= 3:
        return np.full(shape, 3.0, dtype=dtype)
    if choice <= 5 and not np.dtype(dtype).hasobject:
        guarded = GuardedOut(shape, dtype, fdp.ConsumeIntInRange(0, 7))
        guards.append(guarded)
        return guarded.array
    if choice == 6:
        other = np.float32 if np.dtype(dtype) == np.float64 else np.float64
        return np.zeros(shape, dtype=other)
    if choice == 7:
        return np.zeros((*shape, 2), dtype=dtype)[..., 0]  # strided
    if choice == 8:
        array = np.zeros(shape, dtype=dtype)
        array.flags.writeable = False
        return array
    return [0.0] * (shape[0] if shape else 1)


# ---------------------------------------------------------------------- the calls


def invoke(function: Callable[..., Any], case: Case, *args: Any, counted: bool = True,
           **kwargs: Any) -> tuple[bool, Any]:
    """Call ``function``: (True, result) if it returns, (False, None) for an allowed error.
    Anything else propagates (a finding). ``counted=False``: a helper call, not counted in
    the summary."""
    try:
        return True, function(*args, **kwargs)
    except (ValueError, TypeError, PlantedError) as exc:
        if isinstance(exc, PlantedError) and not case.planted_raise:
            raise
        name = next(kind.__name__ for kind in (ValueError, TypeError, PlantedError)
                    if isinstance(exc, kind))
        if counted:
            STATS[name] += 1
    return False, None


def near_rounding_tie(value: float) -> bool:
    """Whether ``value`` is within a few ulps (times a batch's summation error) of a tie of
    ``round(x, 4)``, where the compiled sum may round the other way."""
    scaled = abs(value) * 1e4
    return abs(scaled - math.floor(scaled) - 0.5) <= 1e-9 * max(1.0, scaled)


def check_dpo_reference(args: Sequence[Any], beta: Any, result: dict[str, Any]) -> None:
    """Compare dpo_loss's result with the plain-Python float64 reference when every input is
    finite and moderate; skip otherwise."""
    if not (isinstance(beta, (float, int)) and not isinstance(beta, bool)
            and 1e-3 <= beta <= 1e3):
        return
    columns = [finite_values(value) for value in args]
    if any(column is None or column.ndim != 1 for column in columns):
        return
    n = len(columns[0])
    if n == 0 or any(len(column) != n for column in columns):
        return
    if not all(np.all(np.abs(column) <= 1e3) for column in columns):
        return
    beta = float(beta)
    pc, pr, rc, rr = (column.tolist() for column in columns)
    chosen = [round(beta * (p - r), 4) for p, r in zip(pc, rc)]
    rejected = [round(beta * (p - r), 4) for p, r in zip(pr, rr)]
    total = 0.0
    for index in range(n):
        total += softplus(-(beta * ((pc[index] - rc[index]) - (pr[index] - rr[index]))))
    loss = total / n
    if result["chosen_rewards"] != chosen or result["rejected_rewards"] != rejected:
        raise InvariantError(f"dpo_loss rewards differ from the reference: {result} vs "
                      f"{chosen}, {rejected}")
    if result["loss"] != round(loss, 4) and not (
            near_rounding_tie(loss) and abs(result["loss"] - round(loss, 4)) <= 1.5e-4):
        raise InvariantError(f"dpo_loss loss {result['loss']!r} differs from the reference "
                      f"{round(loss, 4)!r} (unrounded {loss!r})")


def fuzz_dpo_loss(fdp: atheris.FuzzedDataProvider, case: Case) -> None:
    """dpo_loss: the list fast path and the array path, checked against the reference."""
    n = consume_size(fdp)
    args = [make_input(fdp, consume_size(fdp) if rare(fdp, 32) else n, case)
            for _ in range(4)]
    beta = consume_real(fdp, case, 0.1, 1e-3, 1e3)
    names = ("chosen_policy", "rejected_policy", "chosen_ref", "rejected_ref")
    named = dict(zip(names, args))
    finite = all_finite(*args)  # before the call: a ShrinkingReal may empty a list
    before = {name: snapshot(value) for name, value in named.items()}
    returned, result = invoke(dpo_fast.dpo_loss, case, *args, beta)
    if not returned:
        return
    STATS["returned"] += 1
    check_unchanged(named, before, case)
    if finite is False:
        raise InvariantError("dpo_loss returned for a non-finite input")
    if finite and has_nan(result):
        raise InvariantError(f"dpo_loss gave NaN for finite inputs: {result}")
    if not case.mutating:
        check_dpo_reference(args, beta, result)


def consume_loss_type(fdp: atheris.FuzzedDataProvider, case: Case) -> tuple[Any, Any]:
    """``loss_type`` and ``loss_weights``."""
    types = list(dpo_fast.losses.LOSS_TYPES)
    choice = fdp.ConsumeIntInRange(0, 15)
    if choice <= 9:
        loss_type: Any = fdp.PickValueInList(types) if choice else "sigmoid"
    elif choice <= 13:
        count = fdp.ConsumeIntInRange(1, 4)
        loss_type = [fdp.PickValueInList(types) for _ in range(count)]
        if choice == 13:
            loss_type = tuple(loss_type)
    else:
        loss_type = fdp.PickValueInList(["unknown", "", None, 1, [], ["sigmoid", 2],
                                         "SIGMOID", ["sigmoid", "sigmoid"]])
    weights_choice = fdp.ConsumeIntInRange(0, 7)
    if weights_choice <= 3:
        return loss_type, None
    count = len(loss_type) if isinstance(loss_type, (list, tuple)) else 1
    if weights_choice == 7:
        count = fdp.ConsumeIntInRange(0, 3)
    weights: Any = [consume_real(fdp, case, 1.0, -10.0, 10.0) for _ in range(count)]
    if weights_choice == 6:
        weights = fdp.PickValueInList([np.array(weights, dtype=object), "1", 1.0, {1.0},
                                       np.array([float(len(weights))])])
    return loss_type, weights


def consume_per_pair(fdp: atheris.FuzzedDataProvider, n: int, case: Case, low: float) -> Any:
    """Lengths (``low=1``) or weights (``low=0``): mostly valid, sometimes not."""
    choice = fdp.ConsumeIntInRange(0, 7)
    if choice <= 1:
        return None
    size = consume_size(fdp) if rare(fdp, 32) else n
    if choice <= 4:
        values = np.array([fdp.ConsumeIntInRange(int(low), 512) for _ in range(min(size, 64))],
                          dtype=fdp.PickValueInList([np.float64, np.int64, np.float32]))
        values = np.resize(values, size)
        return lay_out(fdp, values) if choice <= 3 else values.tolist()
    if choice == 5:
        return lay_out(fdp, consume_values(fdp, size, fdp.PickValueInList(INPUT_DTYPES)))
    return make_input(fdp, size, case)


def fuzz_preference_loss(fdp: atheris.FuzzedDataProvider, case: Case) -> None:
    """preference_loss with every keyword."""
    n = consume_size(fdp)
    sizes = [consume_size(fdp) if rare(fdp, 32) else n for _ in range(4)]
    chosen, rejected = (make_input(fdp, size, case) for size in sizes[:2])
    refs = fdp.ConsumeIntInRange(0, 7)
    ref_chosen = make_input(fdp, sizes[2], case) if refs <= 4 or refs == 6 else None
    ref_rejected = make_input(fdp, sizes[3], case) if refs <= 5 else None
    loss_type, loss_weights = consume_loss_type(fdp, case)
    kwargs: dict[str, Any] = {
        "beta": consume_real(fdp, case, 0.1, 1e-3, 1e3),
        "loss_type": loss_type,
        "loss_weights": loss_weights,
        "label_smoothing": consume_real(fdp, case, 0.0, 0.0, 0.5),
        "discopop_tau": consume_real(fdp, case, 0.05, 1e-3, 10.0),
        "simpo_gamma": consume_real(fdp, case, 0.5, -10.0, 10.0),
        "f_divergence_type": fdp.PickValueInList(
            ["reverse_kl"] * 4 + list(dpo_fast.losses.F_DIVERGENCE_TYPES) + ["kl", None]),
        "f_alpha_divergence_coef": consume_real(fdp, case, 1.0, -3.0, 3.0),
        "chosen_lengths": consume_per_pair(fdp, n, case, 1.0),
        "rejected_lengths": consume_per_pair(fdp, n, case, 1.0),
        "weights": consume_per_pair(fdp, n, case, 0.0) if fdp.ConsumeBool() else None,
        "reduction": fdp.PickValueInList(["mean", "mean", "sum", "none", "max", None]),
        "compute_grad": consume_flag(fdp, False),
        "check_finite": consume_flag(fdp, True),
        "n_threads": consume_n_threads(fdp),
    }
    inputs = (chosen, rejected, ref_chosen, ref_rejected)
    # The result dtype the documentation promises, when every input is an array.
    present = [value for value in inputs if value is not None]
    dtype = np.float64
    if all(isinstance(value, np.ndarray) for value in present) and all(
            value.dtype.kind == "f" and value.dtype.itemsize <= 4 for value in present):
        dtype = np.float32
    guards: list[GuardedOut] = []
    out = None
    if rare(fdp, 4):
        out_choice = fdp.ConsumeIntInRange(0, 9)
        keys = list(dpo_fast.losses.OUTPUT_NAMES)
        if out_choice <= 6:
            out = {key: make_out_array(fdp, (n,), dtype, guards)
                   for key in keys if fdp.ConsumeBool()}
        elif out_choice == 7 and isinstance(chosen, np.ndarray):
            out = {fdp.PickValueInList(keys): chosen}  # aliases an input
        elif out_choice == 8:
            shared = np.zeros(n, dtype=dtype)
            out = {"losses": shared, "chosen_rewards": shared[::-1]}  # outputs overlap
        else:
            out = fdp.PickValueInList([{"loss": np.zeros(n)}, [np.zeros(n)], "losses"])
        kwargs["out"] = out

    named = {"chosen_logps": chosen, "rejected_logps": rejected,
             "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    for key in ("chosen_lengths", "rejected_lengths", "weights", "loss_weights"):
        named[key] = kwargs[key]
    finite = all_finite(*inputs)
    before = {name: snapshot(value) for name, value in named.items()}
    returned, result = invoke(dpo_fast.preference_loss, case, *inputs, **kwargs)
    if not returned:
        return
    STATS["returned"] += 1
    check_unchanged(named, before, case)
    for guarded in guards:
        if not guarded.guards_intact():
            raise InvariantError("preference_loss wrote outside an out array")
    check_finite = bool(kwargs["check_finite"])  # a bool: anything else was refused
    if check_finite and finite is False:
        raise InvariantError("preference_loss returned for a non-finite input with "
                             "check_finite=True")
    outputs = (result.loss, result.losses, result.chosen_rewards, result.rejected_rewards,
               result.grad_chosen, result.grad_rejected, result.metrics)
    if check_finite and finite and has_nan(*outputs):
        raise InvariantError(f"preference_loss gave NaN for finite inputs: {result}")
    check_preference_result(result, kwargs, out, present, dtype)


def check_preference_result(result: Any, kwargs: dict[str, Any], out: Any,
                            present: Sequence[Any], dtype: Any) -> None:
    """Shapes, dtypes, gradients, the reduced loss and the ``out`` arrays as documented."""
    n = len(result.losses)
    arrays = {"losses": result.losses, "chosen_rewards": result.chosen_rewards,
              "rejected_rewards": result.rejected_rewards, "grad_chosen": result.grad_chosen,
              "grad_rejected": result.grad_rejected}
    with_grad = bool(kwargs["compute_grad"])
    for key, array in arrays.items():
        if key.startswith("grad") and not with_grad:
            if array is not None:
                raise InvariantError(f"{key} returned without compute_grad")
            continue
        if not isinstance(array, np.ndarray) or array.shape != (n,):
            raise InvariantError(f"{key} is not an array of shape ({n},)")
        if all(isinstance(value, np.ndarray) for value in present) and array.dtype != dtype:
            raise InvariantError(f"{key} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if kwargs["reduction"] == "none":
        if result.loss is not result.losses:
            raise InvariantError("reduction='none' loss is not the losses array")
    elif not isinstance(result.loss, float):
        raise InvariantError(f"reduced loss is a {type(result.loss).__name__}, not a float")
    if isinstance(out, dict):
        for key, array in out.items():
            if not np.array_equal(array, arrays[key], equal_nan=True):
                raise InvariantError(f"out[{key!r}] does not hold the returned values")


# ---------------------------------------------------------------------- sequence_logps


def consume_logits(fdp: atheris.FuzzedDataProvider, case: Case) -> tuple[Any, tuple[int, ...]]:
    """Logits and the labels' shape: (B, T, V) or (N, V), sometimes big enough for threads,
    sometimes of a refused dtype or rank; in a fuzzed layout."""
    ndim = fdp.PickValueInList([1, 4]) if rare(fdp, 32) else fdp.PickValueInList([3, 2])
    if rare(fdp, 64):  # past PARALLEL_MIN_ELEMENTS (65536 logits)
        dims = [2, 4, 8192 + fdp.ConsumeIntInRange(0, 3)]
    else:
        dims = [(fdp.ConsumeIntInRange(0, 3) + 1) % 4, (fdp.ConsumeIntInRange(0, 5) + 1) % 6,
                0 if rare(fdp, 32) else fdp.ConsumeIntInRange(1, 40)]
    shape = tuple(dims[3 - ndim:]) if ndim <= 3 else (1, *dims)
    dtype = fdp.PickValueInList([np.float32, np.float64])
    if rare(fdp, 16):
        dtype = fdp.PickValueInList([np.float16, np.int64, np.object_, np.complex64,
                                     np.longdouble])
    values = consume_values(fdp, int(np.prod(shape)), dtype).reshape(shape)
    choice = fdp.ConsumeIntInRange(0, 11)
    if choice == 9 and len(shape) >= 2:  # strided vocabulary axis
        wide = np.zeros((*shape[:-1], shape[-1] * 2), dtype=values.dtype)
        wide[..., ::2] = values
        logits: Any = wide[..., ::2]
    elif choice == 10 and len(shape) >= 2:  # strided position axis
        wide = np.zeros((*shape[:-2], shape[-2] * 2, shape[-1]), dtype=values.dtype)
        wide[..., ::2, :] = values
        logits = wide[..., ::2, :]
    elif choice == 11 and values.size <= 256:
        logits = values.tolist()
    else:
        logits = lay_out(fdp, values)
    return logits, shape[:-1]


def consume_labels(fdp: atheris.FuzzedDataProvider, token_shape: tuple[int, ...], vocab: int,
                   ignore_index: Any) -> Any:
    """Labels: mostly in [0, V) with some ignore_index; sometimes out of range, of another
    dtype or shape."""
    if rare(fdp, 32):
        token_shape = fdp.PickValueInList([(), (1,), (*token_shape, 1), (0,)])
    size = int(np.prod(token_shape))
    ignored = ignore_index if type(ignore_index) is int and -100 <= ignore_index < 2**31 \
        else -100
    choice = fdp.ConsumeIntInRange(0, 9)
    dtype = fdp.PickValueInList([np.int64, np.int32, np.uint64, np.uint8, np.int8])
    if rare(fdp, 32):
        dtype = fdp.PickValueInList([np.bool_, np.float64, np.object_])
    if choice <= 6:
        base = [fdp.ConsumeIntInRange(0, max(vocab, 1) - 1) if not rare(fdp, 8) else ignored
                for _ in range(min(size, 64))]
        if base and rare(fdp, 16):  # out of range
            base[fdp.ConsumeIntInRange(0, len(base) - 1)] = fdp.PickValueInList(
                [-1, vocab, 2**31 - 1, -(2**31)])
        with np.errstate(all="ignore"):
            labels = np.resize(np.array(base, dtype=np.int64), size)
            labels = labels.astype(dtype) if dtype != np.int64 else labels
    else:
        labels = consume_values(fdp, size, dtype)
    labels = labels.reshape(token_shape)
    return labels.tolist() if rare(fdp, 16) else lay_out(fdp, labels)


def consume_logps_options(fdp: atheris.FuzzedDataProvider, case: Case,
                          token_shape: tuple[int, ...]) -> dict[str, Any]:
    """The keywords shared by sequence_logps and sequence_logps_grad."""
    ignore_index: Any = -100
    if rare(fdp, 4):
        ignore_index = fdp.PickValueInList([-1, 0, 1, np.int64(-100), np.uint64(3), -(2**63)])
    if rare(fdp, 32):
        ignore_index = fdp.PickValueInList([2**63, -(2**63) - 1, True, 1.5, None])
    mask: Any = None
    mask_choice = fdp.ConsumeIntInRange(0, 7)
    if mask_choice >= 4:
        shape = token_shape if mask_choice != 7 else (*token_shape, 1)
        dtype = fdp.PickValueInList([np.bool_, np.bool_, np.int64, np.uint8, np.float64])
        mask = lay_out(fdp, consume_values(fdp, int(np.prod(shape)), dtype).reshape(shape))
    return {"ignore_index": ignore_index, "mask": mask,
            "average": consume_flag(fdp, False),
            "temperature": consume_real(fdp, case, 1.0, 1e-3, 1e3),
            "n_threads": consume_n_threads(fdp)}


def expected_counts(labels: Any, mask: Any, ignore_index: Any) -> np.ndarray | None:
    """Counted positions per sequence from plain Python comparisons (None when the labels
    are too large or not a plain integer array)."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.size > 512:
        return None
    counted = np.array([int(label) != ignore_index for label in labels.ravel()], dtype=bool)
    if mask is not None:
        counted &= np.asarray(mask).ravel() != 0
    counted = counted.reshape(labels.shape)
    return counted.sum(axis=-1) if labels.ndim >= 1 else None


def fuzz_sequence_logps(fdp: atheris.FuzzedDataProvider, case: Case) -> None:
    """sequence_logps with every keyword."""
    logits, token_shape = consume_logits(fdp, case)
    vocab = int(np.shape(logits)[-1]) if np.ndim(logits) else 0
    options = consume_logps_options(fdp, case, token_shape)
    labels = consume_labels(fdp, token_shape, vocab, options["ignore_index"])
    options["return_token_logps"] = consume_flag(fdp, False)
    options["return_entropy"] = consume_flag(fdp, False)
    named = {"logits": logits, "labels": labels, "mask": options["mask"]}
    finite = all_finite(logits)
    before = {name: snapshot(value) for name, value in named.items()}
    returned, result = invoke(dpo_fast.sequence_logps, case, logits, labels, **options)
    if not returned:
        return
    STATS["returned"] += 1
    check_unchanged(named, before, case)
    outputs = (result.logps, result.token_logps, result.logsumexp, result.entropy,
               result.mean_entropy, result.token_accuracy)
    if finite and has_nan(*outputs):
        raise InvariantError(f"sequence_logps gave NaN for finite logits: {result}")
    if finite:
        if np.any(result.logps > 0) or (result.token_logps is not None
                                        and np.any(result.token_logps > 0)):
            raise InvariantError(f"sequence_logps gave a log-probability > 0: {result}")
    if not 0.0 <= result.token_accuracy <= 1.0:
        raise InvariantError(f"token_accuracy {result.token_accuracy!r} is not in [0, 1]")
    if result.logps.shape != token_shape[:-1] or result.logsumexp.shape != token_shape:
        raise InvariantError(f"sequence_logps result shapes {result.logps.shape}, "
                      f"{result.logsumexp.shape} for labels of shape {token_shape}")
    counts = expected_counts(labels, options["mask"], options["ignore_index"])
    if counts is not None and not np.array_equal(counts, result.counts):
        raise InvariantError(f"counts {result.counts} differ from the expected {counts}")


def consume_upstream(fdp: atheris.FuzzedDataProvider, case: Case, shape: tuple[int, ...]
                     ) -> Any:
    """An upstream gradient for ``shape``: a scalar, an array of the shape or broadcastable
    to it, or something wrong."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice <= 2:
        return consume_real(fdp, case, 1.0, -10.0, 10.0)
    if choice <= 6:
        dtype = fdp.PickValueInList([np.float64, np.float32, np.int64, np.float16])
        return lay_out(fdp, consume_values(fdp, int(np.prod(shape)), dtype).reshape(shape))
    if choice == 7:
        return np.full((1,) * len(shape), fdp.ConsumeFloatInRange(-10.0, 10.0))
    if choice == 8:
        return consume_values(fdp, int(np.prod(shape)),
                              fdp.PickValueInList(INPUT_DTYPES)).reshape(shape)
    return fdp.PickValueInList([None, "1", np.zeros((*shape, 2)), np.zeros((7,)), [1.0, 2.0],
                                complex(1, 1)])


def fuzz_sequence_logps_grad(fdp: atheris.FuzzedDataProvider, case: Case) -> None:
    """sequence_logps_grad with every keyword, logsumexp from the forward call or fuzzed."""
    logits, token_shape = consume_logits(fdp, case)
    vocab = int(np.shape(logits)[-1]) if np.ndim(logits) else 0
    options = consume_logps_options(fdp, case, token_shape)
    labels = consume_labels(fdp, token_shape, vocab, options["ignore_index"])
    grad_logps = consume_upstream(fdp, case, token_shape[:-1])
    grad_token_logps = consume_upstream(fdp, case, token_shape) if fdp.ConsumeBool() else None
    lse_choice = fdp.ConsumeIntInRange(0, 7)
    logsumexp: Any = None
    lse_from_forward = False
    if lse_choice >= 3:
        forward_options = {key: options[key] for key in
                           ("ignore_index", "mask", "temperature", "n_threads")}
        returned, forward = invoke(dpo_fast.sequence_logps, case, logits, labels,
                                   counted=False, **forward_options)
        if returned and lse_choice <= 5:
            logsumexp, lse_from_forward = forward.logsumexp, True
        elif lse_choice == 6:
            logsumexp = consume_values(fdp, int(np.prod(token_shape)),
                                       fdp.PickValueInList(INPUT_DTYPES)).reshape(token_shape)
        else:
            logsumexp = fdp.PickValueInList([np.zeros(3), "lse", np.zeros(token_shape, bool)])
    guards: list[GuardedOut] = []
    out: Any = None
    out_choice = fdp.ConsumeIntInRange(0, 7)
    logits_shape = tuple(np.shape(logits))
    logits_dtype = getattr(logits, "dtype", np.float64)
    if out_choice >= 4:
        out = make_out_array(fdp, logits_shape, logits_dtype, guards)
        if out_choice == 7 and isinstance(logits, np.ndarray):
            out = logits  # aliases an input
    named = {"logits": logits, "labels": labels, "mask": options["mask"],
             "grad_logps": grad_logps, "grad_token_logps": grad_token_logps,
             "logsumexp": logsumexp}
    finite = all_finite(logits, grad_logps, grad_token_logps)
    before = {name: snapshot(value) for name, value in named.items()}
    returned, grad = invoke(dpo_fast.sequence_logps_grad, case, logits, labels, grad_logps,
                            grad_token_logps=grad_token_logps, logsumexp=logsumexp, out=out,
                            **options)
    if not returned:
        return
    STATS["returned"] += 1
    if out is logits and logits.size:
        raise InvariantError("sequence_logps_grad accepted out aliasing the logits")
    check_unchanged(named, before, case)
    for guarded in guards:
        if not guarded.guards_intact():
            raise InvariantError("sequence_logps_grad wrote outside the out array")
    if finite and (logsumexp is None or lse_from_forward) and has_nan(grad):
        raise InvariantError("sequence_logps_grad gave NaN for finite inputs")
    if not isinstance(grad, np.ndarray) or grad.shape != logits_shape:
        raise InvariantError(f"gradient of shape {np.shape(grad)} for logits of shape "
                             f"{logits_shape}")
    if out is not None and not np.array_equal(out, grad, equal_nan=True):
        raise InvariantError("out does not hold the returned gradient")


# ---------------------------------------------------------------------- the fuzz target

ENTRY_POINTS = (fuzz_dpo_loss, fuzz_preference_loss, fuzz_sequence_logps,
                fuzz_sequence_logps_grad)


def TestOneInput(data: bytes) -> None:  # noqa: N802 (libFuzzer's name)
    """One fuzz case: pick an entry point, build its arguments from ``data``, check the
    invariant. A finding propagates (after the summary is printed)."""
    if STATS["executions"] == 0:
        _register_c_exit_handler()
    STATS["executions"] += 1
    fdp = atheris.FuzzedDataProvider(data)
    index = fdp.ConsumeIntInRange(0, len(ENTRY_POINTS) - 1)
    STATS["entry:" + ENTRY_NAMES[index]] += 1
    try:
        ENTRY_POINTS[index](fdp, Case())
    except BaseException:
        print_summary()
        raise


def main(argv: list[str]) -> None:
    """Run libFuzzer with ``argv`` (libFuzzer's flags and corpus directories)."""
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
