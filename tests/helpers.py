"""Comparison and data helpers shared by the tests (no dpo_fast internals)."""

from __future__ import annotations

import ast
import math
import pathlib
import struct
from collections.abc import Iterable, Sequence

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
