"""Comparative benchmark of dpo_fast: ``dpo-fast bench`` (``python -m dpo_fast bench``,
``python bench/run.py``), and the scripts in the repository's bench/ directory.

Every ratio it prints is computed from timings taken in the same run, the implementations
interleaved so that a noisy machine slows all of them alike. Accuracy is checked as it goes;
a failed check makes the command exit with status 1. Speed targets are printed next to the
measured ratios and never asserted.

Sections (``dpo-fast bench --section NAME,...``; the default is ``core,small``)
-------------------------------------------------------------------------------
``core`` (:mod:`.core`)
    ``dpo_loss`` on lists against NumPy and pure Python; ``preference_loss`` on arrays for
    every N, dtype and thread count against NumPy, PyTorch and the memory-bandwidth bound,
    with accuracy checks; the SIMD code paths.
``small`` (:mod:`.small`)
    small batches (N = 2 ... 4096), where per-call overhead decides; dpo_fast.torch forward +
    backward against plain torch autograd; a small ``sequence_logps``.
``losses`` (:mod:`.losses`)
    every loss type against its NumPy form (``bench/bench_losses.py``).
``logps`` (:mod:`.logps`)
    ``sequence_logps`` against NumPy and PyTorch, time and peak memory
    (``bench/bench_logps.py``).
``fused`` (:mod:`.fused`)
    ``linear_sequence_logps`` (hidden states to log-probs, no logits) against the GEMM alone
    and torch unfused, forward and forward + backward, with peak extra memory
    (``bench/bench_fused.py``).
``score`` (:mod:`.score`)
    ``dpo_fast.score.score_dataset`` on a Parquet file against pandas and an I/O bound
    (``bench/bench_score.py``).

Modules
-------
:mod:`.harness` (timing, machine and ``/proc``, JSON, text formatting), :mod:`.baselines`
(every competitor implementation), the sections above, :mod:`.targets`, :mod:`.report` (the
text report and the plot), :mod:`.runner` (runs the chosen sections), :mod:`.command` (the
command line).
"""

from __future__ import annotations

from .baselines import (
    numpy_array_solution,
    numpy_seed_solution,
    python_seed_solution,
    torch_array_solution,
)
from .command import add_arguments, config_from_args, main, run_from_args
from .core import (
    DEFAULT_REPEATS,
    DEFAULT_SECTIONS,
    DEFAULT_SIZES,
    DTYPES,
    LOSS_REL_LIMIT,
    QUICK_REPEATS,
    QUICK_SIMD_SIZE,
    QUICK_SIZES,
    SCHEMA,
    SECTIONS,
    SEED_MAX_N,
    SIMD_SIZE,
    ULP_LIMITS,
    BenchConfig,
    ulp_distance,
)
from .harness import Timing
from .report import format_report, write_plot
from .runner import run
from .targets import TARGETS

__all__ = [
    "DEFAULT_REPEATS",
    "DEFAULT_SECTIONS",
    "DEFAULT_SIZES",
    "DTYPES",
    "LOSS_REL_LIMIT",
    "QUICK_REPEATS",
    "QUICK_SIMD_SIZE",
    "QUICK_SIZES",
    "SCHEMA",
    "SECTIONS",
    "SEED_MAX_N",
    "SIMD_SIZE",
    "TARGETS",
    "ULP_LIMITS",
    "BenchConfig",
    "Timing",
    "add_arguments",
    "config_from_args",
    "format_report",
    "main",
    "numpy_array_solution",
    "numpy_seed_solution",
    "python_seed_solution",
    "run",
    "run_from_args",
    "torch_array_solution",
    "ulp_distance",
    "write_plot",
]
