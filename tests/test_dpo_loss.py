"""dpo_fast.dpo_loss: the list drop-in (lists in, rounded dict out)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    as_lists,
    assert_plain_float_list,
    assert_same_float,
    assert_same_float_list,
    random_logps,
    run_python,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import SEED_EXAMPLE, reference_dpo_loss

from dpo_fast import dpo_loss, preference_loss
from dpo_fast._kernels._pairwise import CHUNK_ROWS

# Lengths around the stack/heap buffer switch (32), the SIMD lane and block sizes (8, 256) and
# the fast-path limit / chunk size (8192).
BOUNDARY_LENGTHS = [1, 2, 7, 8, 9, 31, 32, 33, 255, 256, 257, 8191, 8192, 8193, 16385]

logp = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
betas = st.floats(min_value=1e-3, max_value=1e3)


@st.composite
def seed_inputs(draw, max_size=40):
    n = draw(st.integers(min_value=1, max_value=max_size))
    columns = [draw(st.lists(logp, min_size=n, max_size=n)) for _ in range(4)]
    return columns, draw(betas)


def assert_same_result(actual: dict, expected: dict, what: str = "dpo_loss") -> None:
    """Two dpo_loss results are the same dict, number for number, bit for bit."""
    assert type(actual) is dict
    assert list(actual) == ["loss", "chosen_rewards", "rejected_rewards"]
    assert type(actual["loss"]) is float
    assert_same_float(actual["loss"], expected["loss"], f"{what}['loss']")
    for key in ("chosen_rewards", "rejected_rewards"):
        assert_plain_float_list(actual[key], f"{what}[{key!r}]")
        assert_same_float_list(actual[key], expected[key], f"{what}[{key!r}]")


def rounded_from_preference_loss(columns, beta) -> dict:
    """What dpo_loss must return: round(x, 4) of preference_loss's float64 results."""
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    result = preference_loss(*arrays, beta=beta)
    return {
        "loss": round(result.loss, 4),
        "chosen_rewards": [round(v, 4) for v in result.chosen_rewards.tolist()],
        "rejected_rewards": [round(v, 4) for v in result.rejected_rewards.tolist()],
    }


def test_seed_example_exactly():
    """The README's example gives exactly the documented dict."""
    args, expected = SEED_EXAMPLE
    result = dpo_loss(*args)
    assert result == expected
    assert_same_result(result, expected)


@pytest.mark.parametrize("kind", ["list", "tuple", "float64", "float32", "long"])
def test_seed_example_every_input_kind(kind):
    """Lists, tuples, NumPy arrays (float64, float32) and the long-sequence path agree."""
    args, expected = SEED_EXAMPLE
    columns, beta = args[:4], args[4]
    if kind == "tuple":
        columns = [tuple(c) for c in columns]
    elif kind in ("float64", "float32"):
        columns = [np.array(c, dtype=kind) for c in columns]
    elif kind == "long":  # past the fast-path limit: goes through preference_loss
        reps = CHUNK_ROWS // 2 + 1
        columns = [list(c) * reps for c in columns]
        expected = dict(expected, chosen_rewards=[0.25] * 2 * reps,
                        rejected_rewards=[-0.25] * 2 * reps)
    assert_same_result(dpo_loss(*columns, beta), expected)


def test_seed_example_unrounded_values():
    """The README example's unrounded loss is softplus(-0.5) = 0.474076984..."""
    loss, chosen, rejected = reference_dpo_loss(*SEED_EXAMPLE[0])
    assert math.isclose(loss, math.log1p(math.exp(-0.5)), rel_tol=1e-15)
    assert chosen == [0.25, 0.25] and rejected == [-0.25, -0.25]
    assert round(loss, 4) == 0.4741


@pytest.mark.parametrize("n", BOUNDARY_LENGTHS)
def test_paths_agree_at_boundary_lengths(n):
    """List, tuple, ndarray and round(preference_loss) agree exactly around 32 and 8192."""
    rng = np.random.default_rng(n)
    arrays = random_logps(rng, n, extremes=True)
    beta = 0.37
    columns = as_lists(*arrays)
    expected = rounded_from_preference_loss(columns, beta)
    assert_same_result(dpo_loss(*columns, beta), expected, "list")
    assert_same_result(dpo_loss(*[tuple(c) for c in columns], beta), expected, "tuple")
    assert_same_result(dpo_loss(*arrays, beta), expected, "ndarray")
    mixed = [columns[0], tuple(columns[1]), arrays[2], columns[3]]
    assert_same_result(dpo_loss(*mixed, beta), expected, "mixed")


@settings(max_examples=150)
@given(seed_inputs())
def test_list_path_equals_rounded_preference_loss(inputs):
    """dpo_loss(lists) == round(preference_loss(arrays), 4), every number bit for bit."""
    columns, beta = inputs
    expected = rounded_from_preference_loss(columns, beta)
    assert_same_result(dpo_loss(*columns, beta), expected)
    assert_same_result(dpo_loss(*[np.array(c) for c in columns], beta), expected, "ndarray")


@settings(max_examples=150)
@given(seed_inputs())
def test_against_plain_reference(inputs):
    """Rewards are exactly round(reference, 4); the loss is within rounding of it."""
    columns, beta = inputs
    loss, chosen, rejected = reference_dpo_loss(*columns, beta)
    result = dpo_loss(*columns, beta)
    assert_same_float_list(result["chosen_rewards"], [round(v, 4) for v in chosen])
    assert_same_float_list(result["rejected_rewards"], [round(v, 4) for v in rejected])
    # The unrounded loss matches the reference to a few ulps, so the rounded one can differ
    # only when the reference sits within those ulps of a rounding boundary.
    assert abs(result["loss"] - loss) <= 0.5e-4 + 1e-12 * max(1.0, abs(loss))
    if abs(loss * 1e4 - math.floor(loss * 1e4) - 0.5) > 1e-6:
        assert_same_float(result["loss"], round(loss, 4))


@settings(max_examples=60)
@given(seed_inputs(max_size=8))
def test_result_types_and_rounding_bits(inputs):
    """Results are plain floats in plain lists, each equal to round(x, 4) bit for bit."""
    columns, beta = inputs
    result = dpo_loss(*columns, beta)
    unrounded = preference_loss(*[np.array(c) for c in columns], beta=beta)
    assert type(result["loss"]) is float
    assert_same_float(result["loss"], round(unrounded.loss, 4))
    for key in ("chosen_rewards", "rejected_rewards"):
        assert_plain_float_list(result[key], key)
        raw = getattr(unrounded, key).tolist()
        assert_same_float_list(result[key], [round(v, 4) for v in raw], key)


@pytest.mark.parametrize("path", ["list", "ndarray"])
def test_negative_zero_rewards(path):
    """Rewards that round to zero from below are -0.0, as round(x, 4) gives; exact zeros
    keep the sign IEEE arithmetic gives them."""
    pc = [-1.0, -0.0, 0.0, -2.0]
    pr = [0.0, 0.0, -0.0, -2.0]
    rc = [-0.9999, 0.0, 0.0, -2.0]
    rr = [0.0, 0.0, 0.0, -2.00001]
    beta = 0.1
    if path == "ndarray":
        pc, pr, rc, rr = (np.array(c) for c in (pc, pr, rc, rr))
    result = dpo_loss(pc, pr, rc, rr, beta)
    expected_chosen = [round(beta * (a - b), 4) for a, b in zip(pc, rc)]
    expected_rejected = [round(beta * (a - b), 4) for a, b in zip(pr, rr)]
    assert [math.copysign(1.0, v) for v in expected_chosen] == [-1.0, -1.0, 1.0, 1.0]
    assert_same_float_list(result["chosen_rewards"], expected_chosen, "chosen_rewards")
    assert_same_float_list(result["rejected_rewards"], expected_rejected, "rejected_rewards")


def test_zero_margin_gives_ln2():
    """Identical policy and reference: z = 0 and the loss is ln 2 rounded."""
    result = dpo_loss([-5.0, -1.0], [-7.0, -3.0], [-5.0, -1.0], [-7.0, -3.0], 2.0)
    assert result["loss"] == round(math.log(2.0), 4) == 0.6931
    assert_same_float_list(result["chosen_rewards"], [0.0, 0.0])


@pytest.mark.parametrize("n", [8191, 8192, 8193])
def test_long_inputs_all_paths_agree(n):
    """Around the fast-path limit the list, tuple and array paths give identical dicts."""
    rng = np.random.default_rng(1000 + n)
    arrays = random_logps(rng, n)
    columns = as_lists(*arrays)
    by_list = dpo_loss(*columns, 0.05)
    assert_same_result(dpo_loss(*[tuple(c) for c in columns], 0.05), by_list, "tuple")
    assert_same_result(dpo_loss(*arrays, 0.05), by_list, "ndarray")
    assert_same_result(by_list, rounded_from_preference_loss(columns, 0.05), "list")


def test_float32_arrays_are_read_as_their_float64_values():
    """NumPy float32 inputs give the same result as the lists of their exact values."""
    rng = np.random.default_rng(5)
    arrays = [a.astype(np.float32) for a in random_logps(rng, 50)]
    assert_same_result(dpo_loss(*arrays, 0.3), dpo_loss(*as_lists(*arrays), 0.3))


def test_integer_and_numpy_scalar_elements():
    """Python ints and NumPy scalars inside lists are read as their float values."""
    ints = dpo_loss([-2, -1], [-3, -2], [-2, -2], [-2, -2], 1)
    floats = dpo_loss([-2.0, -1.0], [-3.0, -2.0], [-2.0, -2.0], [-2.0, -2.0], 1.0)
    assert_same_result(ints, floats)
    scalars = dpo_loss([np.float64(-2.0), np.float32(-1.0)], [np.int64(-3), -2.0],
                       [-2.0, -2.0], [-2.0, -2.0], np.float64(1.0))
    assert_same_result(scalars, floats)


def test_inputs_unchanged():
    """dpo_loss never modifies its arguments."""
    rng = np.random.default_rng(9)
    arrays = random_logps(rng, 40)
    columns = as_lists(*arrays)
    copies = [list(c) for c in columns]
    array_copies = [a.copy() for a in arrays]
    dpo_loss(*columns, 0.5)
    dpo_loss(*arrays, 0.5)
    assert columns == copies
    for a, c in zip(arrays, array_copies):
        assert a.tobytes() == c.tobytes()


def test_results_are_independent_objects():
    """Each call returns fresh lists (mutating one result does not affect the next)."""
    args = SEED_EXAMPLE[0]
    first = dpo_loss(*args)
    first["chosen_rewards"].append(1.0)
    assert dpo_loss(*args) == SEED_EXAMPLE[1]


@pytest.mark.parametrize(("n", "fast"), [(1, True), (32, True), (33, True), (8192, True),
                                         (8193, False)])
def test_fast_path_routing(n, fast):
    """Lists of up to 8192 pairs never reach the NumPy path; longer ones and arrays do."""
    import dpo_fast._entry
    import dpo_fast._seed

    calls = []
    general = dpo_fast._entry.dpo_loss_arrays

    def spy(*args):
        calls.append(len(args[0]))
        return general(*args)

    dpo_fast._seed.set_array_path(spy)  # what dpo_fast/__init__.py installs, spied on
    try:
        columns = as_lists(*random_logps(np.random.default_rng(n), n))
        dpo_loss(*columns, 0.5)
        assert calls == ([] if fast else [n])
        dpo_loss(*[np.array(c) for c in columns], 0.5)
        assert calls[-1] == n
    finally:
        dpo_fast._seed.set_array_path(general)


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


def test_regression_dpo_loss_float_empties_another_list():
    """Found by the fuzzing (and by the sanitizer run, tests/test_sanitizer_regressions.py):
    dpo_loss's list fast path re-checked only the list it was reading after calling
    __float__, so a __float__ that empties a later argument's list made it read freed memory
    (segfault). Fixed in _seed.pyx: every list's length is checked again before it is read."""
    proc = run_python("""
        import numbers
        from dpo_fast import dpo_loss

        other = [-1.0] * 5

        class Evil:
            def __float__(self):
                other.clear()
                return -1.0

        numbers.Real.register(Evil)
        try:
            print(dpo_loss([Evil()] + [-1.0] * 4, other, [-1.0] * 5, [-1.0] * 5, 0.1))
        except ValueError as exc:
            print("ValueError", exc)
    """, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert "ValueError" in proc.stdout
