"""Bit-identical results across thread counts and SIMD code paths; build and CPU queries."""

from __future__ import annotations

import os
import platform
import subprocess

import numpy as np
import pytest
from helpers import (
    as_lists,
    assert_same_array,
    assert_same_float,
    random_logps,
    run_python,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import dpo_fast
from dpo_fast import _threads, dpo_loss, preference_loss
from dpo_fast._kernels import _pairwise

OUTPUT_NAMES = ["losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected"]
PARALLEL_N = 100_003  # > 4 * 8192 rows: large enough for the parallel path, not a multiple


def fingerprint(result) -> tuple:
    """Everything a PreferenceLossResult holds, as bytes and float bit patterns."""
    loss = result.loss.tobytes() if isinstance(result.loss, np.ndarray) else result.loss.hex()
    arrays = tuple(None if getattr(result, n) is None else getattr(result, n).tobytes()
                   for n in OUTPUT_NAMES)
    metrics = tuple((k, v.hex()) for k, v in result.metrics.items())
    return loss, arrays, metrics


def assert_same_result(a, b, what=""):
    """Two results identical bit for bit, with a pointer to the first difference."""
    if fingerprint(a) == fingerprint(b):
        return
    if isinstance(a.loss, float):
        assert_same_float(a.loss, b.loss, f"{what} loss")
    for name in OUTPUT_NAMES:
        if getattr(a, name) is not None:
            assert_same_array(getattr(a, name), getattr(b, name), f"{what} {name}")
    for key in a.metrics:
        assert_same_float(a.metrics[key], b.metrics[key], f"{what} {key}")
    raise AssertionError(f"{what}: results differ")


@pytest.fixture(scope="module")
def parallel_inputs():
    rng = np.random.default_rng(2024)
    return random_logps(rng, PARALLEL_N, extremes=True)


# ------------------------------------------------------------------------- threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_ref", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_n_threads_bit_identical(parallel_inputs, dtype, with_ref, reduction):
    """n_threads = 1, 2, 3 and None give the same bits: outputs, loss and every metric."""
    arrays = [a.astype(dtype) for a in parallel_inputs]
    if not with_ref:
        arrays[2:] = [None, None]
    kwargs = {"beta": 0.2, "label_smoothing": 0.1, "compute_grad": True,
              "reduction": reduction}
    single = preference_loss(*arrays, n_threads=1, **kwargs)
    for n_threads in (2, 3, None):
        assert_same_result(preference_loss(*arrays, n_threads=n_threads, **kwargs), single,
                           f"n_threads={n_threads}")


def test_n_threads_bit_identical_repeated(parallel_inputs):
    """Repeated parallel runs (dynamic scheduling) always give the same bits."""
    first = preference_loss(*parallel_inputs, n_threads=2, compute_grad=True)
    for _ in range(5):
        assert_same_result(preference_loss(*parallel_inputs, n_threads=2, compute_grad=True),
                           first, "repeat")


def test_threads_do_not_change_small_inputs():
    """Below the parallel threshold any n_threads gives the serial result."""
    arrays = random_logps(np.random.default_rng(1), 5000)
    single = preference_loss(*arrays, n_threads=1)
    for n_threads in (2, 8):
        assert_same_result(preference_loss(*arrays, n_threads=n_threads), single)


def test_openmp_enabled_is_bool():
    """openmp_enabled() says which build runs, as a bool."""
    assert isinstance(dpo_fast.openmp_enabled(), bool)
    assert dpo_fast.openmp_enabled() is _pairwise.openmp_enabled()


@pytest.mark.skipif(os.environ.get("DPO_FAST_EXPECT_SERIAL") != "1",
                    reason="only when testing the DPO_FAST_NO_OPENMP=1 build")
def test_serial_build_reports_no_openmp():
    """CI's serial build (DPO_FAST_NO_OPENMP=1) must report openmp_enabled() is False."""
    assert dpo_fast.openmp_enabled() is False


def test_available_cpus_at_least_one(monkeypatch):
    """available_cpus() is a positive int."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    count = _threads.available_cpus()
    assert isinstance(count, int) and count >= 1
    if hasattr(os, "sched_getaffinity"):
        assert count <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "cap"), [("1", 1), ("1,4", 1), (" 1 ", 1), ("100000", None),
                                            ("0", None), ("-2", None), ("abc", None),
                                            ("", None)])
def test_available_cpus_respects_omp_num_threads(monkeypatch, value, cap):
    """OMP_NUM_THREADS caps the count; invalid or zero values are ignored."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    unrestricted = _threads.available_cpus()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert _threads.available_cpus() == (unrestricted if cap is None else cap)


def test_n_threads_none_follows_omp_num_threads(monkeypatch, parallel_inputs):
    """With OMP_NUM_THREADS=1, n_threads=None still gives the same bits."""
    expected = preference_loss(*parallel_inputs, n_threads=2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert_same_result(preference_loss(*parallel_inputs), expected)


# ---------------------------------------------------------------------------- SIMD


def test_simd_level_names(simd_levels):
    """The supported levels start at 'scalar' and include the one in use."""
    assert simd_levels[0] == "scalar"
    assert len(simd_levels) == len(set(simd_levels)) >= 2
    assert dpo_fast.simd_level() in simd_levels
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        assert simd_levels[1] == "sse2"
        assert set(simd_levels) <= {"scalar", "sse2", "avx2", "avx512"}
    elif machine in ("aarch64", "arm64"):
        assert simd_levels == ("scalar", "neon")


def test_set_simd_level_switches_and_reports(simd_levels):
    """set_simd_level(name) installs that path and returns its name."""
    for name in simd_levels:
        assert _pairwise.set_simd_level(name) == name
        assert dpo_fast.simd_level() == name


def test_set_simd_level_above_best_gives_best(simd_levels):
    """Asking for a level above what the CPU supports gives the best supported one."""
    best = simd_levels[-1]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert _pairwise.set_simd_level("avx512") == best
        assert dpo_fast.simd_level() == best


@pytest.mark.parametrize("name", ["AVX2", "fast", "", "sse4", "none"])
def test_set_simd_level_rejects_unknown_names(name):
    """Unknown names are a ValueError and leave the current level alone."""
    before = dpo_fast.simd_level()
    with pytest.raises(ValueError, match="unknown SIMD level"):
        _pairwise.set_simd_level(name)
    assert dpo_fast.simd_level() == before


def test_set_simd_level_rejects_non_str():
    """The level name must be a str."""
    with pytest.raises(TypeError):
        _pairwise.set_simd_level(2)  # type: ignore[arg-type]


def run_per_level(levels, call):
    """call() under every SIMD level; returns {level: fingerprint}."""
    out = {}
    for name in levels:
        _pairwise.set_simd_level(name)
        out[name] = call()
    return out


def assert_all_levels_equal(levels, call, what=""):
    results = run_per_level(levels, call)
    reference = results[levels[0]]
    for name in levels[1:]:
        assert_same_result(results[name], reference, f"{what} simd={name} vs {levels[0]}")


SIMD_SIZES = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 255, 256, 257, 1000, 8191, 8192, 8193,
              16_385, 40_001]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIMD_SIZES)
def test_simd_paths_bit_identical(simd_levels, dtype, n):
    """Every SIMD path gives the scalar path's bits: float32/float64, with and without
    gradients and references, with smoothing, on sizes around lanes, blocks and chunks."""
    rng = np.random.default_rng(n)
    arrays = [a.astype(dtype) for a in random_logps(rng, n, extremes=True)]
    if dtype == np.float32:
        arrays = [np.where(np.isfinite(a), a, 0).astype(dtype) for a in arrays]
    for with_ref, compute_grad, eps, reduction in [(True, True, 0.0, "mean"),
                                                   (False, True, 0.2, "sum"),
                                                   (True, False, 0.1, "none"),
                                                   (False, False, 0.0, "mean")]:
        refs = arrays[2:] if with_ref else [None, None]

        def call(refs=refs, compute_grad=compute_grad, eps=eps, reduction=reduction):
            return preference_loss(arrays[0], arrays[1], *refs, beta=0.3,
                                   label_smoothing=eps, compute_grad=compute_grad,
                                   reduction=reduction, n_threads=1)

        assert_all_levels_equal(simd_levels, call, f"n={n} ref={with_ref} grad={compute_grad}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_paths_bit_identical_extreme_z(simd_levels, dtype):
    """Extreme z (|z| to 1e6, the exp clamp, subnormal results, signed zeros)."""
    z = np.concatenate([np.linspace(-800, 800, 3203), [-1e6, -1e5, 745.2, 760.5, 1e6, 0.0,
                                                       -0.0, 5e-324, -7e2, 7.2e2]])
    pc = z.astype(dtype)
    pr = np.zeros_like(pc)
    for eps in (0.0, 0.3):
        def call(eps=eps):
            return preference_loss(pc, pr, beta=1.0, label_smoothing=eps, compute_grad=True,
                                   reduction="none")

        assert_all_levels_equal(simd_levels, call, f"eps={eps}")


def test_simd_paths_bit_identical_parallel(simd_levels, parallel_inputs):
    """Every SIMD path with 2 threads gives the scalar, 1-thread bits."""
    _pairwise.set_simd_level("scalar")
    expected = preference_loss(*parallel_inputs, compute_grad=True, n_threads=1)
    for name in simd_levels:
        _pairwise.set_simd_level(name)
        assert_same_result(preference_loss(*parallel_inputs, compute_grad=True, n_threads=2),
                           expected, name)


@settings(max_examples=40)
@given(
    st.integers(min_value=1, max_value=600),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.floats(min_value=1e-3, max_value=1e3),
    st.sampled_from([0.0, 0.1, 0.45]),
    st.sampled_from([np.float32, np.float64]),
)
def test_simd_paths_bit_identical_hypothesis(n, seed, beta, eps, dtype):
    """Random sizes, betas and smoothing: all SIMD paths agree bit for bit."""
    rng = np.random.default_rng(seed)
    arrays = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 4, n)).astype(dtype)
              for _ in range(4)]

    def call():
        return preference_loss(*arrays, beta=beta, label_smoothing=eps, compute_grad=True)

    levels = _pairwise.supported_simd_levels()
    before = _pairwise.simd_level()
    try:
        assert_all_levels_equal(levels, call)
    finally:
        _pairwise.set_simd_level(before)


@pytest.mark.parametrize("n", [2, 31, 32, 33, 8192])
def test_dpo_loss_fast_path_same_on_every_level(simd_levels, n):
    """dpo_loss's list fast path shares the dispatch: same dict on every SIMD level."""
    columns = as_lists(*random_logps(np.random.default_rng(n), n, extremes=True))
    results = {}
    for name in simd_levels:
        _pairwise.set_simd_level(name)
        results[name] = dpo_loss(*columns, 0.5)
    for name in simd_levels[1:]:
        assert repr(results[name]) == repr(results["scalar"]), name


# ------------------------------------------------------------- DPO_FAST_SIMD (env)


def run_fresh_python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter importing this same dpo_fast build, DPO_FAST_SIMD unset
    unless given."""
    env = dict(os.environ)
    env.pop("DPO_FAST_SIMD", None)
    env.update(env_vars)
    return run_python(code, timeout=120, env=env)


ENV_PROBE = """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dpo_fast
    print(dpo_fast.simd_level())
    for w in caught:
        print("WARNING", w.category.__name__, w.message)
"""


@pytest.mark.parametrize("requested", ["scalar", "SCALAR", " scalar "])
def test_env_forces_scalar(requested):
    """DPO_FAST_SIMD=scalar (any case, surrounding spaces) forces the scalar path."""
    proc = run_fresh_python(ENV_PROBE, DPO_FAST_SIMD=requested)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["scalar"]


def test_env_forces_each_level(simd_levels):
    """Every supported level can be forced through the environment."""
    for name in simd_levels:
        proc = run_fresh_python(ENV_PROBE, DPO_FAST_SIMD=name)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name]


def test_env_unset_gives_best(simd_levels):
    """Without DPO_FAST_SIMD the best supported level is used."""
    proc = run_fresh_python(ENV_PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [simd_levels[-1]]


def test_env_invalid_name_warns(simd_levels):
    """An unknown DPO_FAST_SIMD value warns (RuntimeWarning) and keeps the best level."""
    proc = run_fresh_python(ENV_PROBE, DPO_FAST_SIMD="turbo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == simd_levels[-1]
    assert any(line.startswith("WARNING RuntimeWarning DPO_FAST_SIMD ignored")
               and "turbo" in line for line in lines[1:]), proc.stdout


def test_env_scalar_gives_same_bits():
    """A run forced to scalar through the environment reproduces this process's bits."""
    code = """
        import numpy as np, dpo_fast
        rng = np.random.default_rng(7)
        arrays = [rng.normal(-40, 20, 20_001) for _ in range(4)]
        r = dpo_fast.preference_loss(*arrays, compute_grad=True, label_smoothing=0.1)
        print(dpo_fast.simd_level(), r.loss.hex(), hash(r.losses.tobytes()),
              hash(r.grad_chosen.tobytes()))
    """
    forced = run_fresh_python(code, DPO_FAST_SIMD="scalar", PYTHONHASHSEED="0")
    best = run_fresh_python(code, PYTHONHASHSEED="0")
    assert forced.returncode == 0 and best.returncode == 0, forced.stderr + best.stderr
    forced_fields, best_fields = forced.stdout.split(), best.stdout.split()
    assert forced_fields[0] == "scalar"
    assert forced_fields[1:] == best_fields[1:]


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.

TH = _threads.PARALLEL_MIN_ROWS


@pytest.mark.parametrize("entry", ["preference_loss", "sequence_logps"])
@pytest.mark.parametrize("n_threads", [40_000, 100_000, 2**31 - 1])
def test_regression_huge_n_threads_does_not_kill_the_process(entry, n_threads):
    """Found by the fuzzing: a huge n_threads (validated as 'a positive int') reached OpenMP
    unchanged on parallel-sized inputs, and libgomp ended the process: 'Thread creation
    failed' (40,000), a stack overflow in GOMP_parallel (100,000: a segfault; ASan: stack-
    overflow), 'Out of memory allocating 481036338272 bytes' (2**31 - 1). Now capped
    (_threads.cap_n_threads): the normal result, or ValueError."""
    call = {"preference_loss": "r = preference_loss(np.full(40000, -1.0), np.full(40000, "
                               f"-2.0), n_threads={n_threads}); print(r.loss)",
            "sequence_logps": "r = sequence_logps(np.zeros((2, 300, 500)), np.zeros((2, 300), "
                              f"int), n_threads={n_threads}); print(r.logps.sum())"}[entry]
    proc = run_python(f"""
        import numpy as np
        from dpo_fast import preference_loss, sequence_logps
        try:
            {call}
        except ValueError as exc:
            print("ValueError", exc)
    """)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.strip(), proc.stderr[-500:]


@pytest.mark.parametrize("n_threads", [2**31, 2**63, 10**30])
def test_regression_n_threads_beyond_c_int(n_threads):
    """Found by the fuzzing: n_threads >= 2**31 raised OverflowError (the C int of the
    kernels) on parallel-sized inputs. Now the normal result (capped), or ValueError."""
    try:
        result = preference_loss(np.full(TH, -1.0), np.full(TH, -2.0), n_threads=n_threads)
    except ValueError:
        return
    assert result.loss == preference_loss(np.full(TH, -1.0), np.full(TH, -2.0)).loss
