"""The vectoriser really vectorised the row loop of every SIMD clone.

GCC's vectoriser is fragile: a harmless-looking change to csrc/ (a literal clamp, a select
written another way, one pointer too many for its alias checks) can silently leave a clone
scalar; the results stay right, only 3-8x slower. This test compiles csrc/dispatch.c (baseline
path) and csrc/simd_clone.c once per extra instruction set with the build's own flags (read from
setup.py) and GCC's vectoriser report, and checks that every row loop (LOOPS) is vectorised
with 16-, 32- and 64-byte vectors in the SSE2, AVX2 and AVX-512 paths.
It needs the source tree, GCC and x86-64; elsewhere it is skipped.
"""

import functools
import os
import platform
import re
import shutil
import subprocess
import tempfile

import pytest
from helpers import CSRC, setup_constant

# The loops that must vectorise: (header, a text on the line GCC reports them at, lines
# after it). The plain and length-normalised row loops of chunk_body.h; the
# prepare, per-term and finish passes of general_body.h.
LOOPS = [
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE\n", 1),
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE_NORMALIZED", 1),
    ("general_body.h", "DPO_GEN_PREPARE_CASE(1, 1)", 0),
    ("general_body.h", "#define DPO_EACH_X DPO_GEN_TERM_CASE", 1),
    ("general_body.h", "/* 3. finish */", 2),
]


def _line_of(header, text, offset):
    """The line holding ``text`` (a trailing newline: the whole rest of the line), + offset."""
    lines = (CSRC / header).read_text().splitlines()
    whole = text.endswith("\n")
    return next(number for number, line in enumerate(lines, start=1)
                if (line.strip() == text.strip() if whole else text in line)) + offset


CLONES = [("dispatch.c", "baseline", "16"), ("simd_clone.c", "avx2", "32"),
          ("simd_clone.c", "avx512", "64")]


@functools.cache
def _report(source, isa):
    """GCC's vectoriser report for one translation unit (compiled once per test session)."""
    flags = [] if isa == "baseline" else [f"-DDPO_ISA={isa}",
                                          *setup_constant("X86_CLONE_FLAGS")[isa]["unix"]]
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run(
            ["gcc", *setup_constant("GCC_FLAGS"), *flags, "-fopt-info-vec-optimized", "-I",
             str(CSRC), "-c", str(CSRC / source), "-o", os.path.join(tmp, "out.o")],
            capture_output=True, text=True, check=True,
        ).stderr


@pytest.mark.skipif(not (CSRC / "dispatch.c").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
@pytest.mark.parametrize("source, isa, width", CLONES)
@pytest.mark.parametrize("header, text, offset", LOOPS)
def test_row_loop_vectorised_in_every_clone(header, text, offset, source, isa, width):
    line = _line_of(header, text, offset)
    report = _report(source, isa)
    widths = re.findall(
        rf"{re.escape(header)}:{line}:\d+: optimized: loop vectorized using (\d+) byte",
        report,
    )
    # float64 and float32 at least (the row loops: each with and without gradients).
    assert widths.count(width) >= 2, (
        f"loop at {header}:{line} of {source} ({isa}) not vectorised with {width}-byte "
        f"vectors; report:\n{report}")
