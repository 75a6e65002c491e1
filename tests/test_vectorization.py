"""The vectoriser really vectorised the row loop of every SIMD clone.

GCC's vectoriser is fragile: a harmless-looking change to csrc/ (a literal clamp, a select
written another way, one pointer too many for its alias checks) can silently leave a clone
scalar; the results stay right, only 3-8x slower. This test compiles csrc/dispatch.c (baseline
path) and csrc/simd_clone.c once per extra instruction set with the build's own flags (read from
setup.py) and GCC's vectoriser report, and checks that the chunk loop is vectorised with 16-,
32- and 64-byte vectors in the SSE2, AVX2 and AVX-512 paths.
It needs the source tree, GCC and x86-64; elsewhere it is skipped.
"""

import platform
import re
import shutil
import subprocess

import pytest
from helpers import CSRC, setup_constant


def _vectorised_widths(source, flags, tmp_path):
    """Vector widths (bytes) GCC reports for the row loop of chunk_body.h in `source`."""
    row_loop_line = next(
        number for number, line in
        enumerate((CSRC / "chunk_body.h").read_text().splitlines(), start=1)
        if "DPO_FOR_EACH_LOSS(DPO_LOSS_CASE)" in line
    )
    report = subprocess.run(
        ["gcc", *setup_constant("GCC_FLAGS"), *flags, "-fopt-info-vec-optimized", "-I",
         str(CSRC), "-c", str(CSRC / source), "-o", str(tmp_path / "out.o")],
        capture_output=True, text=True, check=True,
    ).stderr
    widths = re.findall(
        rf"chunk_body\.h:{row_loop_line}:\d+: optimized: loop vectorized using (\d+) byte",
        report,
    )
    return widths, report


@pytest.mark.skipif(not (CSRC / "dispatch.c").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
def test_row_loop_vectorised_in_every_clone(tmp_path):
    clone_flags = setup_constant("X86_CLONE_FLAGS")
    cases = [("dispatch.c", [], "16"),
             ("simd_clone.c", ["-DDPO_ISA=avx2", *clone_flags["avx2"]["unix"]], "32"),
             ("simd_clone.c", ["-DDPO_ISA=avx512", *clone_flags["avx512"]["unix"]], "64")]
    for source, flags, width in cases:
        widths, report = _vectorised_widths(source, flags, tmp_path)
        # float64 and float32, each with and without gradients.
        assert widths.count(width) >= 4, (
            f"row loop of {source} {flags} not vectorised with {width}-byte vectors; "
            f"report:\n{report}")
