"""The vectoriser really vectorised every row loop of every SIMD level.

GCC's vectoriser is fragile: a harmless-looking change to csrc/ (a literal clamp, a select
written another way, one pointer too many for its alias checks) can silently leave a loop
scalar; the results stay right, only 3-8x slower. This test compiles csrc/pairwise_simd.c once
per vectorised SIMD level (baseline, avx2, avx512) with the build's own flags (read from
setup.py) and GCC's vectoriser report, and checks that each row loop (LOOPS) is vectorised
with 16-, 32- and 64-byte vectors in the SSE2, AVX2 and AVX-512 instances. The loops are
macro-expanded once per loss type, so GCC reports many at one source line: the count of
vectorised loops there must reach the count of loops (from the registry in pair_losses.h),
so that no single loss type's loop can stay scalar unnoticed. Those lines host row loops only.
It needs the source tree, GCC and x86-64; elsewhere it is skipped.
(tests/test_logps_vectorisation.py checks the log-softmax rows of logps_simd.c the same way;
tests/test_aarch64.py checks the same LOOPS, and those rows, in the aarch64 cross compiler's
report of the NEON instance.)
"""

import functools
import os
import platform
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import CSRC, setup_constant


@functools.cache
def _kinds():
    """{KIND: number of loss types} of pair_losses.h's DPO_LOSS_REGISTRY."""
    kinds = re.findall(r"X\((\w+), DPO_LOSS_\w+,", (CSRC / "pair_losses.h").read_text())
    return {kind: kinds.count(kind) for kind in set(kinds)}


def _plain():  # the fused loop's raw cases: float64 and float32, with and without gradients
    return 4 * (_kinds().get("PAIR", 0) + _kinds().get("PAIR_NORM", 0))


def _normalized():  # its normalised cases, likewise
    return 4 * (_kinds().get("PAIR_NORM", 0) + _kinds().get("NORM", 0))


def _terms():  # the general loop's per-term loops (one function serves float64 and float32)
    return _kinds().get("PAIR", 0) + _kinds().get("PAIR_NORM", 0) + _kinds().get("NORM", 0)


def _gt_terms():  # its per-term loops of the types that read gt_reward_margins (rpo_*)
    return _kinds().get("PAIR_GT", 0) + _kinds().get("GT_TERM", 0)


def _fused_general(kind):  # the fused loop's cases of sft (CONST) and rpo_sq (PAIR_GT)
    return lambda: 4 * _kinds().get(kind, 0)


# The loops that must vectorise: (header, a text on the line GCC reports them at, lines after
# it, how many loops are reported there). The plain, length-normalised, batch-constant and
# ground-truth-margin row loops of chunk_body.h; the prepare (3 divergences x 2 types per
# variant pair), per-term and finish passes of general_body.h.
LOOPS = [
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE\n", 1, _plain),
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE_NORMALIZED", 1, _normalized),
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE_CONST", 1, _fused_general("CONST")),
    ("chunk_body.h", "#define DPO_EACH_X DPO_LOSS_CASE_GT", 1, _fused_general("PAIR_GT")),
    ("general_body.h", "DPO_GEN_PREPARE_CASE(0, 0)", 0, lambda: 6),
    ("general_body.h", "DPO_GEN_PREPARE_CASE(0, 1)", 0, lambda: 6),
    ("general_body.h", "DPO_GEN_PREPARE_CASE(1, 0)", 0, lambda: 6),
    ("general_body.h", "DPO_GEN_PREPARE_CASE(1, 1)", 0, lambda: 6),
    ("general_body.h", "#define DPO_EACH_X DPO_GEN_TERM_CASE", 1, _terms),
    ("general_body.h", "#define DPO_EACH_X DPO_GEN_GT_TERM_CASE", 1, _gt_terms),
    ("general_body.h", "/* 3. finish */", 2, lambda: 2),
    # KTO's rows (kto_loss, dpo-fast score --loss-type kto): with and without the gradient.
    ("kto_rows.h", "for (ptrdiff_t i = 0; i < count; i++) {", 0, lambda: 2),
]


def _line_of(header, text, offset):
    """The line holding ``text`` (a trailing newline: the whole rest of the line), + offset."""
    lines = (CSRC / header).read_text().splitlines()
    whole = text.endswith("\n")
    return next(number for number, line in enumerate(lines, start=1)
                if (line.strip() == text.strip() if whole else text in line)) + offset


LEVELS = [("baseline", "16"), ("avx2", "32"), ("avx512", "64")]


def _compile_report(level, tmp):
    """GCC's vectoriser report for one level's instance."""
    flags = [f"-DDPO_ISA={level}", *setup_constant("SIMD_LEVEL_FLAGS")[level]["unix"]]
    return subprocess.run(
        ["gcc", *setup_constant("GCC_FLAGS"), *flags, "-fopt-info-vec-optimized", "-I",
         str(CSRC), "-c", str(CSRC / "pairwise_simd.c"), "-o", os.path.join(tmp, f"{level}.o")],
        capture_output=True, text=True, check=True,
    ).stderr


@functools.cache
def _report(level):
    """One level's report. The first call compiles every level's instance, on every core at
    once: pytest runs on one, and these three compiles are most of this module's time."""
    return _reports()[level]


@functools.cache
def _reports():
    with tempfile.TemporaryDirectory() as tmp, \
            ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {level: pool.submit(_compile_report, level, tmp) for level, _ in LEVELS}
        return {level: future.result() for level, future in futures.items()}


@pytest.mark.skipif(not (CSRC / "pairwise_simd.c").exists(), reason="needs the source tree")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones only")
@pytest.mark.parametrize("level, width", LEVELS)
@pytest.mark.parametrize("header, text, offset, count", LOOPS)
def test_each_row_loop_vectorised_at_every_level(header, text, offset, count, level, width):
    line = _line_of(header, text, offset)
    report = _report(level)
    widths = re.findall(
        rf"{re.escape(header)}:{line}:\d+: optimized: loop vectorized using (\d+) byte",
        report,
    )
    vectorised = widths.count(width)
    if header == "chunk_body.h" and width == "64":
        # The fused loop's inner loop runs over the 8 lanes: one AVX-512 vector of doubles,
        # whose float32 cases load 8 floats, a 32-byte vector (half the loops).
        assert vectorised >= count() // 2, (vectorised, report)
        vectorised += widths.count("32")
    assert vectorised >= count(), (
        f"{count()} loops at {header}:{line} ({level}), {vectorised} vectorised with "
        f"{width}-byte vectors; report:\n{report}")


@pytest.mark.skipif(not (CSRC / "pair_losses.h").exists(), reason="needs the source tree")
def test_the_registry_has_every_kind_of_case():
    """The counts above come from the registry: make sure it parsed."""
    assert _plain() > 0 and _normalized() > 0 and _terms() > 0
