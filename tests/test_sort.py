"""The radix sort behind aot / aot_unpaired (dpo_fast._kernels._sort) against
numpy.argsort(kind="stable"): the same permutation on ties, signed zeros, NaN, infinities and
subnormals, at lengths around the per-thread chunking, for every thread count."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dpo_fast._kernels._sort import (
    MAX_LENGTH,
    radix_sort,
    scatter,
    scratch_length,
    sorted_differences,
)


def check(values: np.ndarray, n_threads: int) -> None:
    expected = np.argsort(values, kind="stable")
    sorted_values, order = radix_sort(values, True, n_threads)
    np.testing.assert_array_equal(order, expected)
    # -0.0 comes back as +0.0 and every NaN as the quiet NaN; equal as numbers otherwise.
    np.testing.assert_array_equal(sorted_values, values[expected] + 0.0)
    alone, none = radix_sort(values, False, n_threads)
    assert none is None and alone.tobytes() == sorted_values.tobytes()
    assert order.dtype == np.int64 and sorted_values.dtype == np.float64


def make(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, 10.0, n)
    if kind == "ties":
        return np.round(rng.normal(0.0, 3.0, n))
    if kind == "signed zeros":
        return np.where(rng.random(n) < 0.5, -0.0, 0.0)
    if kind == "specials":
        pool = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, -5e-324,
                         np.finfo(np.float64).max, -np.finfo(np.float64).max, 1.0, -1.0])
        return pool[rng.integers(0, pool.size, n)]
    if kind == "constant":
        return np.full(n, -2.5)
    if kind == "sorted":
        return np.sort(rng.normal(size=n))
    return -np.sort(rng.normal(size=n))   # reversed


KINDS = ["normal", "ties", "signed zeros", "specials", "constant", "sorted", "reversed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 16, 17, 255, 256, 257, 1000, 10_000])
def test_small_inputs_match_numpy(kind, n):
    values = make(kind, n, np.random.default_rng(n))
    for n_threads in (1, 2):
        check(values, n_threads)


@pytest.mark.parametrize("kind", KINDS)
def test_threaded_sizes_match_numpy(kind):
    """Lengths around one and two threads (32768 values per thread at least) and one, two
    and three chunks of the passes (65536 values to twice as many each)."""
    rng = np.random.default_rng(7)
    for n in (65535, 65536, 65537, 98305, 131_071, 131_072, 200_003):
        values = make(kind, n, rng)
        for n_threads in (1, 2, 3, 8):
            check(values, n_threads)


def test_same_result_for_every_thread_count():
    values = np.round(np.random.default_rng(3).normal(0, 50, 300_001), 1)
    first = radix_sort(values, True, 1)
    for n_threads in (2, 3, 4):
        again = radix_sort(values, True, n_threads)
        assert again[0].tobytes() == first[0].tobytes()
        assert again[1].tobytes() == first[1].tobytes()


def test_input_is_not_written_and_read_only_input_works():
    values = np.random.default_rng(4).normal(size=70_000)
    values.flags.writeable = False
    copy = values.copy()
    check(values, 2)
    assert values.tobytes() == copy.tobytes()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_threads"):
        radix_sort(np.zeros(3), True, 0)
    with pytest.raises(ValueError):
        radix_sort(np.zeros(4)[::2], True, 1)   # not contiguous: the caller's job
    assert MAX_LENGTH == 2**32 - 1


@given(hnp.arrays(np.float64, st.integers(0, 300),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_property_matches_numpy(values):
    check(values, 1)


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Keys alike in their top 16 bits or more (a few values plus a few ulps), so that the
    top buckets and the buckets below them are large: the sort's recursion."""
    base = rng.choice(np.array([1.0, 1.0 + 2**-30, -3.0, 1e-300]), n)
    return base + base * np.ldexp(rng.integers(0, 2**20, n).astype(np.float64), -52)


@pytest.mark.parametrize("n", [17, 1000, 65_537, 300_000])
def test_clustered_keys_match_numpy(n):
    values = clustered(n, np.random.default_rng(n))
    for n_threads in (1, 2, 3):
        check(values, n_threads)


def one_class(n: int, spread: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct values in one octave whose top mantissa bits are alike (1 + k ulps, k below
    `spread`, shuffled, with a few repeats): a top bucket of about n keys."""
    ulps = rng.permutation(spread)[:n]
    ulps[::7] = ulps[0]
    return 1.0 + np.ldexp(ulps.astype(np.float64), -52)


@pytest.mark.parametrize("n", [4095, 4096, 4097, 16_383, 16_384, 16_385, 70_000])
def test_buckets_around_the_staging_size_match_numpy(n):
    """A top bucket just below, at and above the sizes sorted in the cache-sized buffer
    (DPO_RADIX_STAGED keys; larger ones are sorted in place), alone and next to spread values
    (the planned digit splits the spread class, not this one)."""
    rng = np.random.default_rng(n)
    values = one_class(n, 2**20, rng)
    for n_threads in (1, 2, 3):
        check(values, n_threads)
    mixed = np.concatenate([values, rng.normal(0, 100, 2 * n)])
    rng.shuffle(mixed)
    for n_threads in (1, 2):
        check(mixed, n_threads)


def test_many_ties_and_all_equal_keys_keep_index_order():
    """Few distinct keys over many values (each bucket all ties) and all-equal keys, with
    -0.0 among +0.0 and NaNs of both signs among each other."""
    rng = np.random.default_rng(21)
    n = 150_001
    pool = np.array([0.0, -0.0, 1.5, -1.5, np.nan, -np.nan, np.inf])
    ties = pool[rng.integers(0, pool.size, n)]
    for values in (ties, np.full(n, -0.0), np.full(n, np.nan), np.where(ties == 0, ties, 0.0)):
        first = radix_sort(values, True, 1)
        for n_threads in (1, 2, 4):
            check(values, n_threads)
            again = radix_sort(values, True, n_threads)
            assert again[0].tobytes() == first[0].tobytes()
            assert again[1].tobytes() == first[1].tobytes()


def test_sorted_differences_forms_the_differences():
    """sorted_differences sorts first * scale - second * scale in float64 (float32 inputs
    taken as float64), reports non-finite differences, and orders as numpy."""
    rng = np.random.default_rng(11)
    n = 70_001
    first, second = rng.normal(0, 30, n), rng.normal(0, 30, n)
    first[::97] = second[::97]           # zero differences, some -0.0
    for dtype in (np.float64, np.float32):
        a, b = first.astype(dtype), second.astype(dtype)
        for scale in (1.0, 0.25):
            expected = a.astype(np.float64) * scale - b.astype(np.float64) * scale
            order = np.argsort(expected, kind="stable")
            for n_threads in (1, 2):
                values, positions, finite = sorted_differences(a, b, scale, True, n_threads)
                assert finite and positions.dtype == np.uint32
                np.testing.assert_array_equal(positions, order)
                assert values.tobytes() == (expected[order] + 0.0).tobytes()
                alone, none, _ = sorted_differences(a, b, scale, False, n_threads)
                assert none is None and alone.tobytes() == values.tobytes()
    big = np.array([1.7e308, -1.7e308, 1.0])
    assert not sorted_differences(big, -big, 1.0, False, 1)[2]
    assert sorted_differences(big, -big, 0.25, False, 1)[2]
    assert not sorted_differences(np.array([np.nan, 1.0]), None, 1.0, False, 1)[2]
    with pytest.raises(ValueError, match="one dtype"):
        sorted_differences(first, second.astype(np.float32), 1.0, False, 1)


def test_one_scratch_for_several_sorts():
    """The scratch buffer is working space only: reusing it gives the same sorts, and a
    short or mistyped one is refused."""
    rng = np.random.default_rng(12)
    n = 100_003
    scratch = np.empty(scratch_length(n), dtype=np.uint64)
    for _ in range(2):
        values = rng.normal(0, 5, n)
        for n_threads in (1, 2):
            got = sorted_differences(values, None, 1.0, True, n_threads, scratch)
            fresh = sorted_differences(values, None, 1.0, True, n_threads)
            assert got[0].tobytes() == fresh[0].tobytes()
            assert got[1].tobytes() == fresh[1].tobytes()
    with pytest.raises(ValueError, match="scratch"):
        sorted_differences(values, None, 1.0, True, 1, scratch[:-1])
    with pytest.raises(ValueError, match="scratch"):
        sorted_differences(values, None, 1.0, True, 1, scratch.view(np.float64))


def test_sorted_differences_into_given_arrays():
    """``values`` and ``order`` are written and returned as they are (a caller's kept
    buffers); misfits and overlaps with each other, the scratch or the inputs are refused."""
    rng = np.random.default_rng(14)
    n = 90_001
    first, second = rng.normal(0, 5, n), rng.normal(0, 5, n)
    buffer = np.empty(scratch_length(n) + n + (n + 1) // 2, dtype=np.uint64)
    scratch = buffer[:scratch_length(n)]
    values = buffer[scratch_length(n):scratch_length(n) + n].view(np.float64)
    order = buffer[scratch_length(n) + n:].view(np.uint32)[:n]
    for n_threads in (1, 2):
        values[...], order[...] = np.nan, 7
        got = sorted_differences(first, second, 1.0, True, n_threads, scratch, values, order)
        fresh = sorted_differences(first, second, 1.0, True, n_threads)
        assert got[0] is values and got[1] is order
        assert values.tobytes() == fresh[0].tobytes() and order.tobytes() == fresh[1].tobytes()
        keys_only = sorted_differences(first, second, 1.0, False, n_threads, scratch, values,
                                       order)
        assert keys_only[1] is None and values.tobytes() == fresh[0].tobytes()
    half = (n + 1) // 2
    for bad_values, bad_order in [
            (values[:-1], order), (values, order[:-1]), (values.astype(np.float32), order),
            (values, order.view(np.int32)), (values[::-1], order),
            (scratch[:n].view(np.float64), order), (values, scratch[:half].view(np.uint32)[:n]),
            (first, order), (values, values[:half].view(np.uint32)[:n])]:
        with pytest.raises(ValueError, match="values|order"):
            sorted_differences(first, second, 1.0, True, 1, scratch, bad_values, bad_order)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scatter_puts_values_back_in_pair_order(dtype):
    rng = np.random.default_rng(13)
    n = 70_001
    source = rng.normal(0, 1, n)
    order = rng.permutation(n).astype(np.uint32)
    expected = np.empty(n)
    expected[order] = 0.0 - source * 0.25 / 3.0
    for n_threads in (1, 2):
        out = np.empty(n, dtype=dtype)
        scatter(source, order, out, 0.25, 3.0, True, n_threads)
        assert out.tobytes() == expected.astype(dtype).tobytes()
    with pytest.raises(ValueError, match="out of range"):
        scatter(source[:2], np.array([0, 2], np.uint32), np.empty(2), 1.0, 1.0, False, 1)
