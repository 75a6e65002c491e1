"""The aarch64 build of the kernels, checked on an x86-64 machine (issue 19).

1. Bit identity: scripts/aarch64_check.py's reduced grid. The kernels and the harness
   (scripts/aarch64/harness.c) are compiled for x86-64 and, with Debian's aarch64 cross
   compiler, for aarch64 (setup.py's flags, every kernel source once per level), and run on
   every loss type and modifier, float32 and float64, with and without gradients, sizes
   around the vector widths and the chunk size, overflow fix-up rows, sequence_logps rows and
   their gradient, the 2-pair rounding of dpo_loss and the radix sort of aot. The aarch64
   build runs under qemu-aarch64-static at its two levels (neon, scalar); every output must
   have x86-64's sse2 bits. The full grid (every x86-64 level, more sizes) is
   `python3 scripts/aarch64_check.py`.
2. Vectorisation: the cross compiler's vectoriser report on the row loops that
   tests/test_vectorization.py (pairwise) and tests/test_logps_vectorisation.py (log-softmax rows)
   check on x86-64, with 16-byte NEON vectors: `neon` is not a scalar path under a SIMD name.

Skipped without the cross compiler, its C library headers or qemu (the script installs them:
apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static), unless
DPO_FAST_REQUIRE_AARCH64=1 (CI) makes that a failure. About 1.5 minutes on 2 idle cores (2.5
on a busy machine), mostly compiling; each kernel instance is compiled once, for both checks.
"""

import importlib.util
import os
import pathlib
import platform
import re
import shutil
import subprocess

import pytest
from helpers import CSRC, ROOT

CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
SCRIPT = ROOT / "scripts" / "aarch64_check.py"
HARNESS = ROOT / "scripts" / "aarch64" / "harness.c"


def _cross_compiles_math():
    """Whether the cross compiler finds <math.h> (its headers elsewhere than Debian's path)."""
    result = subprocess.run([CROSS_CC, "-fsyntax-only", "-x", "c", "-"],
                            input="#include <math.h>\n", capture_output=True, text=True)
    return result.returncode == 0


def _missing():
    """(why the checks cannot run here, whether for want of the tools), or (None, False)."""
    if not all(path.exists() for path in (CSRC / "pairwise_simd.c", SCRIPT, HARNESS)):
        return "needs the source tree", False
    if platform.machine() not in ("x86_64", "AMD64"):
        return "compares against an x86-64 host", False
    tools = [tool for tool in (CROSS_CC, QEMU) if shutil.which(tool) is None]
    if not tools and not (pathlib.Path("/usr/aarch64-linux-gnu/include/math.h").exists()
                          or _cross_compiles_math()):
        tools = ["the cross C library's headers"]
    if tools:
        return (f"needs {' and '.join(tools)}: apt-get install gcc-aarch64-linux-gnu "
                f"libc6-dev-arm64-cross qemu-user-static (or python3 "
                f"scripts/aarch64_check.py --install-only)"), True
    return None, False


@pytest.fixture(scope="module", autouse=True)
def _tools():
    reason, tools = _missing()
    if reason is not None:
        # CI (DPO_FAST_REQUIRE_AARCH64=1, .ci/run) installed the tools: their absence there is
        # a failure, not a skip. Without the source tree (a wheel's tests) it still skips.
        if tools and os.environ.get("DPO_FAST_REQUIRE_AARCH64") == "1":
            pytest.fail(f"DPO_FAST_REQUIRE_AARCH64=1 but the aarch64 check {reason}")
        pytest.skip(reason)


def _script():
    spec = importlib.util.spec_from_file_location("aarch64_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aarch64_run():
    """The reduced grid's check: (whether every run matched, its log lines, the cross
    compiler's vectoriser reports {(source, level): report} of the aarch64 kernel instances
    it built, compiled with setup.py's flags plus -fopt-info-vec-optimized)."""
    lines, reports = [], {}
    ok = _script().check(quick=True, x86_levels=["scalar", "baseline"], log=lines.append,
                         vec_reports=reports)
    return ok, lines, reports


def test_aarch64_kernels_bit_identical_to_x86_64_reduced_grid(aarch64_run):
    ok, lines, _ = aarch64_run
    assert ok, "\n".join(lines)
    # Both aarch64 levels ran and matched (neon is the aarch64 baseline's name).
    assert any(line.lstrip().startswith("aarch64 neon") for line in lines), "\n".join(lines)
    assert any(line.lstrip().startswith("aarch64 scalar") for line in lines), "\n".join(lines)


# ------------------------------------------------------------------ vectoriser report


def _pairwise_loops():
    import test_vectorization  # its LOOPS: the row loops and how many each line hosts

    return [pytest.param(header, text, offset, count, id=f"{header}:{text.strip()[:40]}")
            for header, text, offset, count in test_vectorization.LOOPS]


@pytest.mark.parametrize("header, text, offset, count", _pairwise_loops())
def test_aarch64_pairwise_row_loops_vectorised(aarch64_run, header, text, offset, count):
    import test_vectorization

    line = test_vectorization._line_of(header, text, offset)
    report = aarch64_run[2]["pairwise_simd.c", "baseline"]  # the NEON instance
    widths = re.findall(
        rf"{re.escape(header)}:{line}:\d+: optimized: loop vectorized using (\d+) byte",
        report)
    assert widths.count("16") >= count(), (
        f"{count()} loops at {header}:{line} (aarch64 neon), {widths.count('16')} vectorised "
        f"with 16-byte vectors; report:\n{report}")


def test_aarch64_logps_row_loops_vectorised(aarch64_run):
    from test_logps_vectorisation import _loop_lines

    report = aarch64_run[2]["logps_simd.c", "baseline"]
    for name, line in _loop_lines().items():
        widths = re.findall(
            rf"logps_row\.h:{line}:\d+: optimized: loop vectorized using (\d+) byte", report)
        # float32 and float64 each (NEON has the 64-bit integer compare the float64 max needs,
        # which SSE2 lacks).
        assert widths.count("16") >= 2, (
            f"{name} loop (logps_row.h:{line}) of the aarch64 neon instance not vectorised "
            f"with 16-byte vectors; report:\n{report}")


def test_aarch64_scalar_level_not_vectorised(aarch64_run):
    """The scalar level's instance (vectorisation off, simd.h) has no vectorised loop in the
    cross build either: the levels compared above really are two code paths."""
    report = aarch64_run[2]["pairwise_simd.c", "scalar"]
    assert "loop vectorized" not in report, report
