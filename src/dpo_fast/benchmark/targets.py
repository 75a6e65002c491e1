"""The speed targets ``dpo-fast bench`` prints next to its measurements (never asserted).

:data:`TARGETS` are the core and small sections' (computed by :func:`measured_targets` into the
results' ``targets``); the loss-type, log-probs and scoring sections print theirs in their own
tables, from the constants below.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FUSED_TARGET_MEMORY_MB",
    "FUSED_TARGET_TRAIN_X_TORCH",
    "FUSED_TARGET_X_GEMM",
    "FUSED_TARGET_X_TORCH",
    "FUSED_TARGET_X_TRL",
    "LOGPS_TARGET_ERROR",
    "LOGPS_TARGET_MEMORY_SHARE",
    "LOGPS_TARGET_SPEEDUP",
    "LOGPS_TARGET_TRAIN_SPEEDUP",
    "LOSS_TARGET_PCT_BOUND",
    "LOSS_TARGET_SORTED_VS_SIGMOID",
    "LOSS_TARGET_X_NUMPY",
    "SCORE_TARGET_X_IO",
    "SCORE_TARGET_X_PANDAS",
    "TARGETS",
    "measured_targets",
]

TARGETS = (
    # (key, description, kind, size, dtype, minimum)
    ("seed_x_numpy", "2-pair list call vs NumPy", "seed_numpy", 2, "float64", 20.0),
    ("seed_x_python", "2-pair list call vs pure Python", "seed_python", 2, "float64", 5.0),
    ("f64_pct_bound", "N=1e7 float64 vs bandwidth bound", "pct_bound", 10_000_000, "float64",
     80.0),
    # 1 thread: at most 1.5x the 1-thread bound's time (issue 16).
    ("f64_pct_bound_1thr", "N=1e7 float64 vs bandwidth bound", "pct_bound_1thr",
     10_000_000, "float64", 100.0 / 1.5),
    ("f32_pct_bound", "N=1e7 float32 vs bandwidth bound", "pct_bound", 10_000_000, "float32",
     80.0),
    ("f64_x_numpy_alloc", "N=1e7 float64 allocating vs NumPy", "x_numpy_alloc", 10_000_000,
     "float64", 8.0),
    ("f32_x_numpy_alloc", "N=1e7 float32 allocating vs NumPy", "x_numpy_alloc", 10_000_000,
     "float32", 8.0),
    ("f64_x_numpy", "N=1e7 float64 vs NumPy", "x_numpy", 10_000_000, "float64", 12.0),
    ("f32_x_numpy", "N=1e7 float32 vs NumPy", "x_numpy", 10_000_000, "float32", 15.0),
    ("small2_x_numpy", "N=2 float64 vs the NumPy formula", "small_x_numpy", 2, "float64", 3.0),
    ("small64_x_numpy", "N=64 float64 vs the NumPy formula", "small_x_numpy", 64, "float64",
     2.0),
    ("torch8_x_torch", "dpo_fast.torch f+b B=8 vs plain torch", "small_torch", 8, "float64",
     1.5),
    ("torch4096_x_torch", "dpo_fast.torch f+b B=4096 vs plain torch", "small_torch", 4096,
     "float64", 1.5),
    ("logps_x_torch", "sequence_logps 2x16x64 vs torch", "logps", 0, "float32", 1.5),
)


def measured_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's speed targets of the core and small sections, each with the ratio measured
    in this run (or None).

    Parameters
    ----------
    results : dict
        ``seed``, ``arrays``, ``config`` (its ``threads``) and, when run, ``small``.

    Returns
    -------
    list of dict
        One per :data:`TARGETS` row: ``key``, ``description``, ``threads``, ``unit``,
        ``minimum``, ``measured`` and ``met`` (None when not measured).
    """
    seed_by_n = {row["n"]: row for row in results["seed"]}
    small_by_n = {row["n"]: row for row in results.get("small", {"rows": []})["rows"]}
    top_threads = max(results["config"]["threads"])
    array_rows = {(r["dtype"], r["n"], r["threads"]): r for r in results["arrays"]}
    targets = []
    for key, description, kind, n, dtype, minimum in TARGETS:
        measured = None
        threads = None
        if kind.startswith("seed_"):
            row = seed_by_n.get(n)
            if row is not None:
                measured = row["ratios"]["x_numpy" if kind == "seed_numpy" else "x_python"]
        elif kind.startswith("small_"):
            row = small_by_n.get(n)
            if row is not None:
                measured = row["ratios"].get(
                    "x_numpy" if kind == "small_x_numpy" else "torch_x_torch")
        elif kind == "logps":
            logps = results.get("small", {}).get("logps")
            measured = None if logps is None else logps["ratios"]["x_torch"]
        else:
            wanted = 1 if kind.endswith("_1thr") else top_threads
            row = array_rows.get((dtype, n, wanted))
            if row is not None:
                measured = row["ratios"][kind.removesuffix("_1thr")]
                threads = wanted
        targets.append({
            "key": key, "description": description, "threads": threads,
            "unit": "%" if kind.startswith("pct_bound") else "x", "minimum": minimum,
            "measured": measured, "met": None if measured is None else measured >= minimum,
        })
    return targets


# sequence_logps (issues 5, 16): forward x torch, extra memory as a share of the logits,
# largest error of the per-sequence sums, forward + backward x torch autograd.
LOGPS_TARGET_SPEEDUP = 5.0
LOGPS_TARGET_MEMORY_SHARE = 0.01
LOGPS_TARGET_ERROR = 1e-5
LOGPS_TARGET_TRAIN_SPEEDUP = 5.0
# Fused linear + log-softmax (issue 17): forward within 1.15x the GEMM alone and >= 1.6x torch
# unfused, forward + backward >= 1.3x torch unfused autograd, extra memory beyond the inputs
# and gradients <= 64 MB at B8 T512 H1024 V32000.
FUSED_TARGET_X_GEMM = 1.15
FUSED_TARGET_X_TORCH = 1.6
FUSED_TARGET_X_TRL = 2.0  # forward and forward + backward against TRL's chunked head
FUSED_TARGET_TRAIN_X_TORCH = 1.3
FUSED_TARGET_MEMORY_MB = 64.0
# Loss types (issue 16): every per-pair type >= 80% of the same-traffic bound or >= 8x its NumPy
# form at N = 1e6; the batch-sorted types (aot, aot_unpaired) <= 3x sigmoid.
LOSS_TARGET_X_NUMPY = 8.0
LOSS_TARGET_PCT_BOUND = 80.0
LOSS_TARGET_SORTED_VS_SIGMOID = 3.0
# dpo-fast score --out (issue 6): within 1.3x of the I/O bound, >= 2x the pandas script.
SCORE_TARGET_X_IO = 1.3
SCORE_TARGET_X_PANDAS = 2.0
