"""The vectoriser really vectorised the row loop of every SIMD clone.

GCC's vectoriser is fragile: a harmless-looking change to csrc/ (a literal clamp, a select
written another way, one pointer too many for its alias checks) can silently leave a clone
scalar; the results stay right, only 3-8x slower. This test compiles csrc/dispatch.c with the
build's own flags (read from setup.py) and GCC's vectoriser report, and checks that the chunk
loop is vectorised with 16-, 32- and 64-byte vectors (baseline SSE2, AVX2, AVX-512 clones).
It needs the source tree, GCC and x86-64; elsewhere it is skipped.
"""

import ast
import pathlib
import platform
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "src" / "dpo_fast" / "_kernels" / "csrc"


def _gcc_flags():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == "GCC_FLAGS" for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("GCC_FLAGS not found in setup.py")


@pytest.mark.skipif(not (CSRC / "dispatch.c").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
def test_row_loop_vectorised_in_every_clone(tmp_path):
    row_loop_line = next(
        number for number, line in
        enumerate((CSRC / "chunk_body.h").read_text().splitlines(), start=1)
        if "DPO_FOR_EACH_LOSS(DPO_LOSS_CASE)" in line
    )
    report = subprocess.run(
        ["gcc", *_gcc_flags(), "-fopt-info-vec-optimized", "-I", str(CSRC), "-c",
         str(CSRC / "dispatch.c"), "-o", str(tmp_path / "dispatch.o")],
        capture_output=True, text=True, check=True,
    ).stderr
    widths = re.findall(
        rf"chunk_body\.h:{row_loop_line}:\d+: optimized: loop vectorized using (\d+) byte",
        report,
    )
    # Per clone: float64 and float32, each with and without gradients.
    for width in ("16", "32", "64"):
        assert widths.count(width) >= 4, (
            f"row loop not vectorised with {width}-byte vectors; report:\n{report}")
