"""The vectoriser report of the log-softmax rows of logps_simd.c: GCC vectorises the row
loops in every clone, the row exp is bitwise dpo_exp, and the float gradient's exp is
within its stated bound (small C programs compiled with the build's flags).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest
from helpers import CSRC, setup_constant

# ------------------------------------------------------------------ vectoriser report


def _loop_lines():
    """Line numbers (in logps_row.h) of the loops that must be vectorised: the `for` line
    just above each marker statement."""
    lines = (CSRC / "logps_row.h").read_text().splitlines()
    markers = {
        "max and NaN check": "key_max = (key > key_max)",
        "exp map": "ebuf[i] = LOGPS_EXP((double)xb[i] * inv_t - m);",
        "exp map with the extras": "const double xd = (double)xb[i];",
        "float exp map": "ebuf[i] = (double)dpo_logps_expf((float)xb[i] - m_f);",
        "float exp map with the extras": "float d_f = (float)xb[i] - m_f;",
        "gradient": "out[i] = (LOGPS_T)(-(c * LOGPS_EXP(",
        "gradient in float": "out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((d > 0.0f)",
        "gradient in float, z - lse in double":
            "out[i] = (LOGPS_T)(-(c_f * dpo_logps_expf((float)(",
    }
    found = {}
    for name, marker in markers.items():
        index = next(i for i, line in enumerate(lines) if marker in line)
        while not lines[index].lstrip().startswith("for ("):
            index -= 1
        found[name] = index + 1
    return found


EXP_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "logps_math.h"
/* dpo_logps_exp against dpo_exp: the same bits on [-708, 0], 0 below, NaN through. */
int main(void)
{
    long bad = 0, n = 0;
    unsigned long long state = 88172645463325252ULL;
    for (long i = 0; i <= 2000000; i++, n++) {
        double d;
        if (i % 2) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            d = -708.0 * (double)(state >> 11) / 9007199254740992.0;
        } else {
            d = -708.0 * (double)i / 2000000.0;
        }
        if (memcmp(&(double){dpo_logps_exp(d)}, &(double){dpo_exp(d)}, 8) != 0 && bad++ < 5)
            printf("differs at %.17g: %.17g vs %.17g\n", d, dpo_logps_exp(d), dpo_exp(d));
    }
    double below[] = {-708.0000001, -745.0, -1e4, -1e300, -INFINITY};
    for (int i = 0; i < 5; i++, n++)
        if (dpo_logps_exp(below[i]) != 0.0 && bad++ < 5)
            printf("not 0 at %g\n", below[i]);
    if (!isnan(dpo_logps_exp(NAN)) || dpo_logps_exp(-0.0) != 1.0)
        bad++;
    printf("%ld of %ld differ\n", bad, n);
    return bad != 0;
}
"""


EXPF_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include "logps_math.h"
/* dpo_logps_expf against exp in double: the largest error in float ulps over [-87, 0] (a grid
 * of step 2^-24 on [-1, 0], of step 3.1e-5 below), the mean relative error, 0 below -87, NaN
 * through. */
int main(void)
{
    double worst = 0.0, mean = 0.0;
    long n = 0, bad = 0;
    for (float d = -0.0f; d >= -87.0f; n++) {
        if (d > -1.0f)
            d = -(float)n * 0x1p-24f;
        double ref = exp((double)d);
        double got = (double)dpo_logps_expf(d);
        double ulp = (double)nextafterf((float)ref, INFINITY) - (double)(float)ref;
        double err = fabs(got - ref) / ulp;
        worst = err > worst ? err : worst;
        mean += (got - ref) / ref;
        d = (d > -1.0f) ? -(float)(n + 1) * 0x1p-24f : d - 3.1e-5f;
    }
    float below[] = {-87.0001f, -88.0f, -104.0f, -1e30f, -INFINITY};
    for (int i = 0; i < 5; i++)
        bad += dpo_logps_expf(below[i]) != 0.0f;
    bad += !isnan(dpo_logps_expf(NAN)) || dpo_logps_expf(-0.0f) != 1.0f;
    printf("%ld %.4f %.3g %ld\n", n, worst, mean / (double)n, bad);
    return 0;
}
"""


@pytest.mark.skipif(not (CSRC / "logps_math.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_float_gradient_exp_is_within_its_stated_bound(tmp_path):
    """dpo_logps_expf (float32 logits' gradient): within 1.05 float ulps of exp over [-87, 0]
    with no bias (mean relative error below 1e-9), exactly 0 below and 1 at 0, on every
    level this machine runs."""
    (tmp_path / "check.c").write_text(EXPF_CHECK)
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    x86 = platform.machine() in ("x86_64", "AMD64")
    results = set()
    for level in level_flags:
        flags = level_flags[level]["unix"]
        if not x86 and level in setup_constant("X86_LEVELS"):
            continue
        exe = tmp_path / "check"
        subprocess.run(["gcc", *setup_constant("GCC_FLAGS"), *flags, "-I", str(CSRC),
                        str(tmp_path / "check.c"), "-o", str(exe), "-lm"], check=True)
        if flags and not _cpu_runs(flags):
            continue
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
        count, worst, mean, bad = out.split()
        assert int(count) > 19_000_000 and float(worst) <= 1.05, out
        assert abs(float(mean)) < 1e-9 and int(bad) == 0, out
        results.add(out)
    assert len(results) == 1  # the same numbers on every level


@pytest.mark.skipif(not (CSRC / "logps_math.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_row_exp_is_bitwise_dpo_exp(tmp_path):
    """The row loops' exp (no upper clamp, one 2^k factor) is dpo_exp wherever the result is
    a normal number, compiled with the build's flags for the baseline and every clone."""
    (tmp_path / "check.c").write_text(EXP_CHECK)
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    x86 = platform.machine() in ("x86_64", "AMD64")
    flag_sets = [level_flags[level]["unix"] for level in level_flags
                 if x86 or level not in setup_constant("X86_LEVELS")]
    for flags in flag_sets:
        exe = tmp_path / "check"
        subprocess.run(["gcc", *setup_constant("GCC_FLAGS"), *flags, "-I", str(CSRC),
                        str(tmp_path / "check.c"), "-o", str(exe), "-lm"], check=True)
        if flags and not _cpu_runs(flags):
            continue
        out = subprocess.run([str(exe)], capture_output=True, text=True)
        assert out.returncode == 0, f"{flags}: {out.stdout}"


def _cpu_runs(flags):
    """Whether this CPU can run code compiled with the clone flags (-mavx2, -mavx512...)."""
    try:
        cpu_flags = next(line for line in open("/proc/cpuinfo")
                         if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return all(flag[2:] in cpu_flags for flag in flags if flag.startswith("-m"))


@pytest.mark.skipif(not (CSRC / "logps_row.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
def test_row_loops_vectorised_in_every_clone(tmp_path):
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    cases = [("logps_simd.c", [f"-DDPO_ISA={level}", *level_flags[level]["unix"]], width)
             for level, width in (("baseline", "16"), ("avx2", "32"), ("avx512", "64"))]
    loops = _loop_lines()
    for source, flags, width in cases:
        report = subprocess.run(
            ["gcc", *setup_constant("GCC_FLAGS"), *flags, "-fopt-info-vec-optimized", "-I",
             str(CSRC), "-c", str(CSRC / source), "-o", str(tmp_path / "out.o")],
            capture_output=True, text=True, check=True,
        ).stderr
        for name, line in loops.items():
            widths = re.findall(
                rf"logps_row\.h:{line}:\d+: optimized: loop vectorized using (\d+) byte", report)
            # float32 and float64 each, except the baseline max over float64 (SSE2 has no
            # 64-bit integer compare) and the float exp's loops (float32 only); the scalar
            # path must stay scalar.
            expected = 1 if ((name == "max and NaN check" and width == "16")
                             or name.startswith(("gradient in float", "float exp"))) else 2
            assert widths.count(width) >= expected, (
                f"{name} loop (logps_row.h:{line}) of {source} {flags} not vectorised with "
                f"{width}-byte vectors; report:\n{report}")
