"""Smoke test of the benchmark (the dpo_fast.benchmark package) in --quick mode: every section
of ``dpo-fast bench`` in its quickest configuration, the JSON round trip, the options, the
baselines and the scripts in bench/.

Only the structure of the results and the accuracy checks are tested: timings are never
asserted (they are the benchmark's output, and a noisy machine would make them flaky).
"""

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import sys

import numpy as np
import pytest
from helpers import NEEDS_MATPLOTLIB, NEEDS_TORCH, ROOT, run_python

import dpo_fast
from dpo_fast import _registry, benchmark
from dpo_fast.benchmark import baselines, command, harness, runner, small, targets

SEED_EXAMPLE = ([-2.0, -1.5], [-3.0, -2.5], [-2.5, -2.0], [-2.5, -2.0], 0.5)
SEED_RESULT = {"loss": 0.4741, "chosen_rewards": [0.25, 0.25],
               "rejected_rewards": [-0.25, -0.25]}
TIMING_KEYS = {"median", "min", "n_samples", "loops", "samples"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run, in-process, with its JSON and printed report."""
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        status = benchmark.main(["--quick", "--json", str(path)])
    with open(path) as fh:
        results = json.load(fh)
    return status, results, report.getvalue()


def _check_timing(timing, samples):
    assert set(timing) == TIMING_KEYS
    assert timing["n_samples"] == len(timing["samples"]) == samples
    assert timing["loops"] >= 1
    assert 0 < timing["min"] <= timing["median"]
    assert all(math.isfinite(s) and s > 0 for s in timing["samples"])


def test_quick_run_passes_its_checks(quick_run):
    status, results, report = quick_run
    assert status == 0
    assert results["checks_passed"] is True
    assert "accuracy checks: all passed" in report
    for heading in ("List call", "Arrays", "Accuracy", "SIMD code paths", "Targets"):
        assert heading in report


def test_quick_run_config_and_machine(quick_run):
    _, results, _ = quick_run
    assert results["schema"] == benchmark.SCHEMA
    config = results["config"]
    assert config["quick"] is True
    assert tuple(config["sizes"]) == benchmark.QUICK_SIZES
    assert config["repeats"] == benchmark.QUICK_REPEATS
    assert tuple(config["dtypes"]) == benchmark.DTYPES
    machine = results["machine"]
    assert machine["dpo_fast"] == dpo_fast.__version__
    assert machine["numpy"] == np.__version__
    assert machine["simd_level"] == dpo_fast.simd_level()
    assert machine["openmp"] == dpo_fast.openmp_enabled()
    assert machine["cpus_available"] >= 1
    assert config["threads"][0] == 1


def test_quick_run_seed_section(quick_run):
    _, results, _ = quick_run
    seed_sizes = [n for n in benchmark.QUICK_SIZES if n <= benchmark.SEED_MAX_N]
    assert [row["n"] for row in results["seed"]] == seed_sizes
    for row in results["seed"]:
        assert set(row["times"]) == {"dpo_fast", "numpy", "python"}
        for timing in row["times"].values():
            _check_timing(timing, benchmark.QUICK_REPEATS)
        assert row["checks"] == {"equals_numpy_dict": True, "equals_python_dict": True}
        assert row["ratios"]["x_numpy"] > 0 and row["ratios"]["x_python"] > 0


def test_quick_run_array_section(quick_run):
    _, results, _ = quick_run
    config = results["config"]
    has_torch = results["machine"]["torch"] is not None
    rows = results["arrays"]
    assert len(rows) == len(config["sizes"]) * len(config["dtypes"]) * len(config["threads"])
    expected = {"numpy", "dpo_fast", "dpo_fast_alloc", "bound", "bound_alloc"} | (
        {"torch"} if has_torch else set())
    for row in rows:
        assert set(row["times"]) == expected
        for timing in row["times"].values():
            _check_timing(timing, benchmark.QUICK_REPEATS)
        assert row["threads_used"] <= row["threads"]
        ratios = row["ratios"]
        assert ratios["x_numpy"] > 0 and ratios["x_numpy_alloc"] > 0 and ratios["pct_bound"] > 0
        assert ratios["pct_bound_alloc"] > 0
        assert (ratios["x_torch"] is not None) == has_torch


def test_quick_run_accuracy_section(quick_run):
    _, results, _ = quick_run
    config = results["config"]
    assert len(results["accuracy"]) == len(config["sizes"]) * len(config["dtypes"])
    for row in results["accuracy"]:
        assert row["ok"] is True
        assert row["threads_bit_identical"] is True
        assert row["ulp_limit"] == benchmark.ULP_LIMITS[row["dtype"]]
        assert max(row["max_ulp"].values()) <= row["ulp_limit"]
        assert row["loss_rel_error"] <= benchmark.LOSS_REL_LIMIT
    float32 = [row for row in results["accuracy"] if row["dtype"] == "float32"]
    assert float32 and all(max(row["max_ulp"].values()) <= 2 for row in float32)


def test_quick_run_simd_section(quick_run):
    _, results, _ = quick_run
    simd = results["simd"]
    assert simd["n"] == benchmark.QUICK_SIMD_SIZE
    levels = [row["level"] for row in simd["levels"]]
    assert levels == list(dpo_fast._kernels._pairwise.supported_simd_levels())
    assert simd["all_bit_identical"] is True
    # The benchmark switched paths; it must leave the one that was in use.
    assert simd["restored_level"] == dpo_fast.simd_level()
    for row in simd["levels"]:
        _check_timing(row["times"], benchmark.QUICK_REPEATS)


def test_quick_run_targets_reported_not_asserted(quick_run):
    _, results, _ = quick_run
    targets = {t["key"]: t for t in results["targets"]}
    assert set(targets) == {t[0] for t in benchmark.TARGETS}
    # --quick measures N = 2 but not N = 1e7.
    assert targets["seed_x_numpy"]["measured"] > 0
    assert targets["f64_pct_bound"]["measured"] is None
    assert targets["f64_pct_bound"]["met"] is None


def test_plot_from_results(quick_run, tmp_path):
    pytest.importorskip("matplotlib", reason=NEEDS_MATPLOTLIB)
    _, results, _ = quick_run
    path = tmp_path / "plot.png"
    benchmark.write_plot(results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_fast(monkeypatch, capsys):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(runner, "run", lambda config: pytest.fail("ran without matplotlib"))
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--quick", "--plot", "unused.png"])
    assert info.value.code == 2
    assert "needs matplotlib" in capsys.readouterr().err


def _unwritable_output_cases(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "target.json")
    return {
        "missing directory": (str(tmp_path / "missing" / "dir" / "x.json"), "does not exist"),
        "parent is a file": (str(tmp_path / "a_file" / "x.json"), "is not a directory"),
        "path is a directory": (str(tmp_path / "a_dir"), "is a directory"),
        "link into a missing directory": (str(tmp_path / "dangling"), "does not exist"),
    }


@pytest.mark.parametrize("case", ["missing directory", "parent is a file", "path is a directory",
                                  "link into a missing directory"])
@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_unwritable_output_path_fails_before_measuring(monkeypatch, capsys, tmp_path, option,
                                                       case):
    if option == "--plot":  # the matplotlib check comes first; the path is what is tested
        monkeypatch.setattr(command._optional, "require", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run", lambda config: pytest.fail("measured before failing"))
    path, reason = _unwritable_output_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--quick", option, path])
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dpo-fast bench: error: {option} {path}: "), err
    assert reason in last and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_dpo_fast_bench_json_into_a_missing_directory_fails_fast(monkeypatch, capsys, tmp_path):
    from dpo_fast import cli

    monkeypatch.setattr(runner, "run", lambda config: pytest.fail("measured before failing"))
    path = str(tmp_path / "missing" / "dir" / "x.json")
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--json", path])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (f"dpo-fast bench: error: --json {path}: directory "
                         f"{tmp_path / 'missing' / 'dir'} does not exist")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("where", ["directory", "file"])
def test_output_without_write_permission_fails_before_measuring(monkeypatch, capsys, tmp_path,
                                                                where):
    monkeypatch.setattr(runner, "run", lambda config: pytest.fail("measured before failing"))
    if os.geteuid() == 0:
        # Permission bits do not bind root (CI runs as root): let os.access read them as they
        # would bind another user, so the check itself is still exercised.
        def access_by_mode(path, mode):
            bits = os.stat(path).st_mode
            return not (mode & os.W_OK and not bits & 0o222)
        monkeypatch.setattr(harness.os, "access", access_by_mode)
    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "x.json"
    if where == "file":
        path.write_text("")
        path.chmod(0o444)
    else:
        locked.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as info:
            benchmark.main(["--quick", "--json", str(path)])
    finally:
        locked.chmod(0o755)
    assert info.value.code == 2
    assert "not writable" in capsys.readouterr().err


def test_writable_outputs_pass_the_check(monkeypatch, tmp_path):
    # A new file in an existing directory, or an existing file: the check lets them through
    # (and creates nothing before the run).
    (tmp_path / "old.json").write_text("{}")
    for path in (tmp_path / "new.json", tmp_path / "old.json"):
        monkeypatch.setattr(runner, "run", lambda config: (_ for _ in ()).throw(
            RuntimeError("reached the run")))
        with pytest.raises(RuntimeError, match="reached the run"):
            benchmark.main(["--quick", "--json", str(path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_baselines_give_the_seed_example():
    assert benchmark.numpy_seed_solution(*SEED_EXAMPLE) == SEED_RESULT
    assert benchmark.python_seed_solution(*SEED_EXAMPLE) == SEED_RESULT
    assert dpo_fast.dpo_loss(*SEED_EXAMPLE) == SEED_RESULT
    arrays = [np.array(a) for a in SEED_EXAMPLE[:4]]
    loss, losses, chosen, rejected = benchmark.numpy_array_solution(*arrays, 0.5)
    assert round(loss, 4) == 0.4741
    np.testing.assert_allclose(chosen, [0.25, 0.25])
    np.testing.assert_allclose(rejected, [-0.25, -0.25])


def test_torch_baseline_matches_numpy():
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        arrays = [(rng.standard_normal(100) * 5 - 50).astype(dtype) for _ in range(4)]
        loss, losses, chosen, rejected = benchmark.torch_array_solution(
            *[torch.from_numpy(a) for a in arrays], 0.1)
        ref_loss, ref_losses, *_ = benchmark.numpy_array_solution(*arrays, 0.1)
        assert losses.numpy().dtype == np.dtype(dtype)
        np.testing.assert_allclose(losses.numpy(), ref_losses, rtol=1e-5)
        assert loss == pytest.approx(ref_loss, rel=1e-5)


def test_ulp_distance():
    x = np.array([1.0, -2.5, 0.0, 1e300], dtype=np.float64)
    assert benchmark.ulp_distance(x, x.copy()) == 0
    assert benchmark.ulp_distance(np.nextafter(x, np.inf), x) == 1
    assert benchmark.ulp_distance(np.array([0.0]), np.array([-0.0])) == 0
    tiny = np.array([5e-324])
    assert benchmark.ulp_distance(tiny, -tiny) == 2
    # Opposite signs far apart: no int64 overflow, a huge finite distance.
    assert 1e18 < benchmark.ulp_distance(np.array([1e300]), np.array([-1e300])) < math.inf
    f = np.array([1.0, -3.0], dtype=np.float32)
    assert benchmark.ulp_distance(np.nextafter(f, np.float32(np.inf)), f) == 1
    assert benchmark.ulp_distance(np.array([np.nan]), np.array([1.0])) == math.inf
    with pytest.raises(ValueError):
        benchmark.ulp_distance(f, f.astype(np.float64))


def _parse(argv):
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return benchmark.config_from_args(parser.parse_args(argv))


def test_options_quick_defaults_and_overrides():
    config = _parse(["--quick"])
    assert config.sizes == benchmark.QUICK_SIZES and config.repeats == benchmark.QUICK_REPEATS
    config = _parse(["--quick", "--sizes", "1e3,16,1_000", "--repeats", "7", "--threads", "1",
                     "--dtypes", "float64", "--no-torch", "--no-simd"])
    assert config.sizes == (1000, 16)  # repeats dropped, order kept
    assert (config.repeats, config.threads, config.dtypes) == (7, (1,), ("float64",))
    assert config.use_torch is False and config.simd_size == 0
    full = _parse([])
    assert full.sizes == benchmark.DEFAULT_SIZES and full.repeats == benchmark.DEFAULT_REPEATS
    assert full.simd_size == benchmark.SIMD_SIZE


@pytest.mark.parametrize("argv", [["--sizes", "0"], ["--sizes", "1.5"], ["--sizes", "x"],
                                  ["--sizes", ","], ["--dtypes", "float16"],
                                  ["--threads", "-1"], ["--repeats", "0"]])
def test_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2


def test_small_batch_section_measures_and_reports():
    """dpo-fast bench's small-batch section: one row per size with its ratios, in the report
    and in the targets (issue 13)."""
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
    section = small.bench_small((2, 8), 1, 1e-4, 0, torch)
    assert [row["n"] for row in section["rows"]] == [2, 8]
    for row in section["rows"]:
        assert row["ratios"]["x_numpy"] > 0 and row["ratios"]["lists_x_numpy"] > 0
        assert ("torch_x_torch" in row["ratios"]) == (torch is not None)
    assert (section["logps"] is None) == (torch is None)
    if torch is not None:
        assert section["logps"]["ratios"]["step_x_torch"] > 0
    lines = small.format_small(section)
    assert lines[1].startswith("Small batches")
    assert any(line.startswith("2 ") for line in lines)
    measured = targets.measured_targets({"seed": [], "arrays": [], "small": section,
                                         "config": {"threads": [1]}})
    found = {t["key"]: t for t in measured if t["key"].startswith(("small", "torch", "logps"))}
    assert found["small2_x_numpy"]["measured"] == section["rows"][0]["ratios"]["x_numpy"]
    assert found["small64_x_numpy"]["measured"] is None  # not measured in this run


# ------------------------------------------------------------------ --section


def _run_section(tmp_path, name, *extra):
    path = tmp_path / f"{name}.json"
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        status = benchmark.main(["--quick", "--section", name, "--json", str(path), *extra])
    with open(path) as fh:
        return status, json.load(fh), report.getvalue()


def test_default_sections_are_the_recorded_table():
    assert _parse([]).sections == benchmark.DEFAULT_SECTIONS == ("core", "small")
    assert _parse(["--section", "score,core"]).sections == ("core", "score")  # fixed order
    assert set(benchmark.SECTIONS) == {"core", "small", "losses", "logps", "fused", "score"}


def test_quick_run_has_the_default_sections(quick_run):
    _, results, report = quick_run
    assert tuple(results["config"]["sections"]) == benchmark.DEFAULT_SECTIONS
    assert "small" in results and "Small batches" in report
    for key in ("losses", "logps", "fused", "score"):
        assert key not in results


def test_section_small_alone(tmp_path):
    status, results, report = _run_section(tmp_path, "small", "--no-torch")
    assert status == 0 and results["checks_passed"] is True
    assert results["seed"] == results["arrays"] == results["accuracy"] == []
    assert results["simd"] is None
    assert [row["n"] for row in results["small"]["rows"]] == list(small.SMALL_SIZES)
    assert "Small batches" in report and "List call" not in report
    assert {t["key"]: t for t in results["targets"]}["small2_x_numpy"]["measured"] > 0


def test_section_losses_quick(tmp_path):
    status, results, report = _run_section(tmp_path, "losses", "--no-torch")
    assert status == 0 and results["checks_passed"] is True
    section = results["losses"]
    assert section["failures"] == []
    assert section["config"]["n"] == 10_000
    assert [row["type"] for row in section["rows"]] == list(_registry.LOSS_TYPES)
    for row in section["rows"]:
        for dtype in ("float64", "float32"):
            cell = row[dtype]
            assert cell["dpo_fast_ms"] > 0 and cell["numpy_ms"] > 0 and cell["vs_sigmoid"] > 0
            assert len(cell["samples_ms"]["dpo_fast"]) == section["config"]["repeats"]
    assert "| sigmoid |" in report and "Targets" not in report


def test_section_losses_disagreement_fails_the_run(monkeypatch, tmp_path):
    from dpo_fast.benchmark import losses

    monkeypatch.setattr(losses, "check", lambda loss_type, dtype, ours, theirs: [
        f"{loss_type} {dtype}: planted"])
    status, results, report = _run_section(tmp_path, "losses", "--no-torch")
    assert status == 1 and results["checks_passed"] is False
    assert results["losses"]["rows"] == []
    assert "nothing was timed" in report and "accuracy checks: FAILED" in report


# The log-probs section sets glibc's malloc thresholds for its whole process (fixed ones, so
# that its memory measurements are reproducible): it runs in a child process here, so that the
# later tests of this process (tests/test_leaks.py's RSS bounds) see glibc's own settings.


def _run_in_child(code, tmp_path):
    proc = run_python(code, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_section_logps_quick(tmp_path):
    path = tmp_path / "logps.json"
    report = _run_in_child(f"""
        import sys
        from dpo_fast import benchmark
        sys.exit(benchmark.main(["--quick", "--section", "logps", "--json", {str(path)!r}]))
    """, tmp_path)
    results = json.loads(path.read_text())
    section = results["logps"]
    names = [(row["pass_"], row["name"]) for row in section["rows"]]
    assert names[:3] == [("forward", "dpo_fast"), ("forward", "dpo_fast 1thr"),
                         ("forward", "numpy")]
    if results["machine"]["torch"] is not None:
        assert ("forward+backward", "dpo_fast.torch") in names
    ours = section["rows"][0]
    # float32 logits: the float exp keeps a sequence's sum within ~3e-9 a token (64 here;
    # reference_logps.FLOAT32_TOL)
    assert ours["shape"] == "tiny" and ours["seq_err"] < 1e-6
    assert "shape tiny" in report


def test_section_fused_quick(tmp_path):
    """The fused section (issue 17) on its tiny shape: rows, errors, memory columns, report."""
    path = tmp_path / "fused.json"
    report = _run_in_child(f"""
        import sys
        from dpo_fast import benchmark
        sys.exit(benchmark.main(["--quick", "--section", "fused", "--json", {str(path)!r}]))
    """, tmp_path)
    section = json.loads(path.read_text())["fused"]
    names = [(row["pass_"], row["name"]) for row in section["rows"]]
    assert ("forward", "dpo_fast fused") in names
    assert next(r for r in section["rows"] if r["name"] == "dpo_fast fused")["seq_err"] < 1e-3
    if json.loads(path.read_text())["machine"]["torch"] is not None:
        assert ("forward", "GEMM alone") in names
        for pass_ in ("forward+backward", "f+b frozen head"):
            train = next(r for r in section["rows"]
                         if (r["pass_"], r["name"]) == (pass_, "dpo_fast.torch fused"))
            assert max(train["grad_rel_diff"].values()) < 1e-5
        assert "targets: forward" in report
    assert "shape tiny" in report and "Fused linear + log-softmax" in report
    assert section["failures"] == [] and "memory check: every fused row" in report


def test_fused_table_compares_with_trl_when_it_ran():
    """TRL's chunked head is an optional baseline: its rows give an "x TRL" column and the
    two TRL targets; without them the table leaves both out."""
    from dpo_fast.benchmark import fused

    def row(pass_, name, ms):
        return {"shape": "s", "pass_": pass_, "name": name, "median_ms": ms,
                "peak_rss_mb": 1.0, "beyond_grads_mb": None, "seq_err": None}

    rows = [row("forward", "GEMM alone", 10.0), row("forward", "torch unfused", 12.0),
            row("forward", "TRL chunked", 30.0), row("forward", "dpo_fast fused", 10.0),
            row("forward+backward", "torch unfused", 40.0),
            row("forward+backward", "TRL chunked", 90.0),
            row("forward+backward", "dpo_fast.torch fused", 45.0)]
    shapes = {"s": (1, 2, 3, 4)}
    table = fused.format_table(rows, shapes)
    assert "forward x TRL 3.00 (target >= 2)" in table
    assert "forward+backward x TRL 2.00 (target >= 2)" in table
    without = fused.format_table([r for r in rows if r["name"] != "TRL chunked"], shapes)
    assert "x TRL" not in without.split("targets:")[1]


def test_fused_memory_check_names_the_row():
    from dpo_fast.benchmark import fused

    rows = [{"shape": "big", "pass_": "forward+backward", "name": "dpo_fast.torch fused",
             "peak_rss_mb": 300.0, "beyond_grads_mb": 80.0},
            {"shape": "big", "pass_": "forward", "name": "torch unfused",
             "peak_rss_mb": 999.0, "beyond_grads_mb": None}]
    assert fused.memory_failures(rows) == [
        "fused big forward+backward: 80 MB extra memory > 64 MB"]


def test_section_score_quick(tmp_path):
    if runner.score_unavailable() is not None:
        pytest.skip(runner.score_unavailable())
    status, results, report = _run_section(tmp_path, "score")
    assert status == 0
    section = results["score"]
    assert section["rows"] == 20_000 and "memory_check" not in section
    assert set(section["programs"]) == {"dpo-fast", "pandas", "io-bound"}
    assert max(section["agreement"].values()) < 1e-9
    assert "dpo-fast time / I/O bound time" in report


def test_section_score_without_pyarrow_fails_fast(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setattr(runner, "run", lambda config: pytest.fail("ran without pyarrow"))
    with pytest.raises(SystemExit) as info:
        benchmark.main(["--quick", "--section", "score"])
    assert info.value.code == 2
    assert "needs pyarrow" in capsys.readouterr().err


def test_unknown_section_exits_2():
    with pytest.raises(SystemExit) as info:
        _parse(["--section", "core,bogus"])
    assert info.value.code == 2


def test_json_round_trip_reformats_the_same_report(quick_run):
    _, results, report = quick_run
    again = benchmark.format_report(json.loads(json.dumps(results)))
    assert report.startswith(again)


# ------------------------------------------------------------------ the scripts in bench/


def _script(name):
    path = ROOT / "bench" / name
    if not path.is_file():
        pytest.skip("needs the source tree (bench/)")
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_scripts_are_thin():
    for name in ("run.py", "bench_losses.py", "bench_logps.py", "bench_score.py"):
        path = ROOT / "bench" / name
        if not path.is_file():
            pytest.skip("needs the source tree (bench/)")
        code = [line for line in path.read_text().split('"""')[-1].splitlines() if line.strip()]
        assert len(code) <= 5, name


def test_bench_losses_script(tmp_path, capsys):
    path = tmp_path / "losses.json"
    assert _script("bench_losses.py").main(["--n", "1e3", "--repeats", "1", "--types",
                                            "sigmoid,aot", "--json", str(path)]) == 0
    assert "| aot |" in capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert set(saved) == {"machine", "cpu_usage", "config", "rows"}
    assert saved["config"]["n"] == 1000 and [r["type"] for r in saved["rows"]] == ["sigmoid",
                                                                                   "aot"]


def test_float32_rows_script(capsys):
    """bench/float32_rows.py (the float32-arithmetic accuracy experiment) runs and reports
    both data sets and both variants."""
    assert _script("float32_rows.py").main(["--n", "2000"]) == 0
    out = capsys.readouterr().out
    assert out.count("all float32") == 2 and out.count("z in double") == 2


def test_bench_logps_script(tmp_path):
    """bench/bench_logps.py end to end on the tiny shape (numbers not checked, only that every
    row is there and accurate)."""
    path = tmp_path / "logps.json"
    script = ROOT / "bench" / "bench_logps.py"
    if not script.is_file():
        pytest.skip("needs the source tree (bench/)")
    out = _run_in_child(f"""
        import runpy, sys
        sys.argv = ["bench_logps.py", "--shapes", "tiny", "--repeats", "1",
                    "--json", {str(path)!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
    """, tmp_path)
    for name in ("dpo_fast ", "dpo_fast 1thr", "numpy"):
        assert f"forward           {name}" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("forward ")]
    dpo_row = next(r for r in rows if r[1] == "dpo_fast" and r[2].replace(".", "").isdigit())
    assert float(dpo_row[-2]) < 1e-6                     # seq err against float64
    assert set(json.loads(path.read_text())) == {"machine", "rows"}


def test_bench_score_script(tmp_path, capsys):
    if runner.score_unavailable() is not None:
        pytest.skip(runner.score_unavailable())
    path = tmp_path / "score.json"
    assert _script("bench_score.py").main(["--rows", "3000", "--repeats", "1",
                                           "--no-memory-check", "--json", str(path)]) == 0
    assert "summary vs pandas" in capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["rows"] == 3000 and set(saved["programs"]) == {"dpo-fast", "pandas",
                                                                "io-bound"}


def test_parse_count():
    assert harness.parse_count("1e7") == harness.parse_count("10_000_000") == 10**7
    for bad in ("0", "1.5", "x", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            harness.parse_count(bad)


def test_loss_type_baselines_cover_every_type():
    # (log-probs below 0, as orpo needs; token counts from 8; gt margins for the rpo types)
    data = {key: np.abs(np.random.default_rng(0).normal(size=8)) + 8 if key[0] == "n"
            else -np.abs(np.random.default_rng(0).normal(size=8)) - 0.1
            for key in ("pc", "pr", "rc", "rr", "nc", "nr", "gt")}
    for name in _registry.LOSS_TYPES:
        result = baselines.numpy_loss_type_solution(name, data)
        assert result["losses"].shape == (8,) and math.isfinite(result["loss"])
    with pytest.raises(ValueError):
        baselines.numpy_losses("bogus", *data.values())
