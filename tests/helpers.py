"""Comparison, data and process helpers shared by the tests. (The loss modifiers' reference is
in reference_modifiers.py, sequence_logps' in reference_logps.py, the fuzzing's support in
fuzz_support.py.)"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def float_bits(x: float) -> int:
    """The IEEE-754 bit pattern of a double (tells -0.0 from 0.0, and every NaN apart)."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def same_float(a: float, b: float) -> bool:
    """a and b are the same double bit for bit (any NaN equals any NaN)."""
    if math.isnan(a) and math.isnan(b):
        return True
    return float_bits(a) == float_bits(b)


def assert_same_float(actual: float, expected: float, what: str = "value") -> None:
    """Bitwise equality of two doubles with a readable message."""
    assert same_float(actual, expected), (
        f"{what}: {actual!r} ({float(actual).hex()}) != {expected!r} ({float(expected).hex()})")


def assert_same_float_list(actual: Sequence[float], expected: Sequence[float],
                           what: str = "list") -> None:
    """Two sequences of doubles are equal bit for bit, element by element."""
    assert len(actual) == len(expected), f"{what}: length {len(actual)} != {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_same_float(a, e, f"{what}[{i}]")


def assert_plain_float_list(values: object, what: str = "list") -> None:
    """values is a plain list of plain Python floats (not numpy scalars)."""
    assert type(values) is list, f"{what} is a {type(values).__name__}, not a list"
    for i, v in enumerate(values):
        assert type(v) is float, f"{what}[{i}] is a {type(v).__name__}, not a float"


def assert_same_array(actual: np.ndarray, expected: np.ndarray, what: str = "array") -> None:
    """Same dtype, same shape and the same bytes."""
    assert isinstance(actual, np.ndarray), f"{what} is not an ndarray"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.tobytes() != expected.tobytes():
        differ = [i for i in range(actual.size)
                  if actual[i].tobytes() != expected[i].tobytes()]
        first = differ[:5]
        raise AssertionError(
            f"{what}: arrays differ bitwise at {len(differ)} indices, first {first}: "
            f"{actual[first].tolist()} vs {expected[first].tolist()}")


def _ordered(values: np.ndarray) -> list[int]:
    """Map floats to integers so that adjacent floats differ by 1 (-0.0 and 0.0 both 0)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.float64:
        ints = values.view(np.int64).tolist()
        top = 1 << 63
    elif values.dtype == np.float32:
        ints = values.view(np.int32).tolist()
        top = 1 << 31
    else:
        raise TypeError(f"unsupported dtype {values.dtype}")
    return [i if i >= 0 else -(i + top) for i in ints]


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable floats between a and b, element-wise (same dtype)."""
    a = np.atleast_1d(np.asarray(a))
    b = np.atleast_1d(np.asarray(b, dtype=a.dtype))
    return np.array([abs(x - y) for x, y in zip(_ordered(a), _ordered(b))], dtype=object)


def max_ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The largest ulp distance between a and b (0 for empty input)."""
    distances = ulp_distance(a, b)
    return int(max(distances)) if len(distances) else 0


def as_lists(*arrays: Iterable[float]) -> list[list[float]]:
    """Each array as a plain list of Python floats."""
    return [[float(v) for v in a] for a in arrays]


def random_logps(rng: np.random.Generator, n: int, *, scale: float = 30.0,
                 extremes: bool = False) -> list[np.ndarray]:
    """Four float64 arrays of plausible log-probs (negative, spread out); with extremes=True
    some rows are replaced by huge, tiny, subnormal and zero values and large |z|."""
    arrays = [-np.abs(rng.normal(scale * 2, scale, n)) for _ in range(4)]
    if extremes and n:
        specials = np.array([0.0, -0.0, 5e-324, -1e-310, 1e-300, -7e2, 7e2, -7.5e2, 7.5e2,
                             -1e6, 1e6, -3.0e4, 2.5e-5, -1e30, 1e30])
        for a in arrays:
            idx = rng.integers(0, n, size=max(1, n // 10))
            a[idx] = rng.choice(specials, size=idx.size)
    return arrays


# ---- results without NaN (the fuzzing's invariant, and its regression tests') ----
_RESULT_ARRAYS = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                  "grad_rejected")


def assert_no_nan(values, what):
    """No NaN in values (an array or a scalar), with the first positions in the message."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(array))
    assert bad.size == 0, f"{what}: NaN at {bad[:5].tolist()} (finite inputs)"


def _both_infinities(values) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.any(values == math.inf) and np.any(values == -math.inf))


def result_no_nan(result, what=""):
    """No NaN anywhere in a PreferenceLossResult. The one documented exception: a mean (or
    sum) over per-pair values holding both +inf and -inf (robust's loss can be -inf) has no
    value and is NaN."""
    for name in _RESULT_ARRAYS:
        value = getattr(result, name)
        if value is not None:
            assert_no_nan(value, f"{what} {name}")
    if not _both_infinities(result.losses):
        assert_no_nan(np.asarray(result.loss, dtype=np.float64), f"{what} loss")
    with np.errstate(invalid="ignore"):
        per_pair = {"rewards/chosen": result.chosen_rewards,
                    "rewards/rejected": result.rejected_rewards,
                    "rewards/margins": np.asarray(result.chosen_rewards, np.float64)
                    - np.asarray(result.rejected_rewards, np.float64)}
    for key, value in result.metrics.items():
        if key in per_pair and _both_infinities(per_pair[key]):
            continue
        assert not math.isnan(value), f"{what} metrics[{key}] is NaN"


def no_nan_or_value_error(loss_fn: Callable[..., Any], *args, **kwargs) -> None:
    """``loss_fn(*args, **kwargs)`` (preference_loss) raises ValueError or returns a result
    without NaN (warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = loss_fn(*args, **kwargs)
    except ValueError:
        return
    result_no_nan(result)


class Guarded:
    """A 1-D view of ``n`` items of ``dtype`` at byte ``offset`` inside a bytearray with
    guard bytes before and after: after a call, the guards must be intact (no write out of
    bounds) and, for an input, the whole buffer unchanged."""

    PATTERN = 0xA5

    def __init__(self, values, dtype, offset=0, guard=64):
        values = np.asarray(values, dtype=dtype)
        itemsize = np.dtype(dtype).itemsize
        self.start = guard + offset
        self.nbytes = values.size * itemsize
        self.raw = bytearray([self.PATTERN]) * (self.start + self.nbytes + guard)
        self.array = np.frombuffer(self.raw, dtype=dtype, count=values.size,
                                   offset=self.start).reshape(values.shape)
        self.array[...] = values

    def guards_intact(self) -> bool:
        head = self.raw[:self.start]
        tail = self.raw[self.start + self.nbytes:]
        return head.count(self.PATTERN) == len(head) and tail.count(self.PATTERN) == len(tail)


# ---- a fresh interpreter (for crashes, and for what happens at import) ----
def run_python(code: str, timeout: float = 300.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a new interpreter importing the dpo_fast the tests import.

    ``env`` (default: this process's environment) gets the package's parent directory put
    first on PYTHONPATH.
    """
    env = dict(os.environ if env is None else env)
    origin = importlib.util.find_spec("dpo_fast").origin
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(origin)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


# ---- the source tree (tests that read csrc/ or setup.py skip without it) ----
ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "src" / "dpo_fast" / "_kernels" / "csrc"


def setup_constant(name: str):
    """A literal module-level constant of setup.py (e.g. GCC_FLAGS), read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in setup.py")


# Why a test that needs an optional package skips, and how to get it (one text per package).
NEEDS_TORCH = 'needs torch: pip install "dpo_fast[torch]" (or a CPU build of torch)'
NEEDS_MATPLOTLIB = 'needs matplotlib: pip install "dpo_fast[bench]"'
