"""Benchmark of every dpo_fast.preference_loss loss type against NumPy (issue 3, part 2).

Run from a checkout after building (``pip install .`` or ``python setup.py build_ext
--inplace`` with ``PYTHONPATH=src``)::

    python bench/bench_losses.py                       # N = 1e6, both dtypes, ~1 minute
    python bench/bench_losses.py --n 1e5 --repeats 15 --threads 1
    python bench/bench_losses.py --json losses.json

What is compared, per loss type and dtype (float64, and float32 = the float64 data rounded):

``dpo_fast``
    ``dpo_fast.preference_loss(pc, pr, rc, rr, loss_type=T, compute_grad=False,
    n_threads=--threads)``, allocating its outputs on every call; ``chosen_lengths`` /
    ``rejected_lengths`` for the types that need them (sft, sigmoid_norm, simpo); no
    reference log-probs for simpo (it is reference-free).
``NumPy``
    the same formula written in vectorised NumPy the way a competent user would (softplus as
    ``np.logaddexp(0, x)``, the sigmoid as ``1 / (1 + exp(-x))``, ``np.argsort`` / ``np.sort``
    for the AOT losses), computing the same outputs: per-pair losses, both rewards, the mean
    loss and TRL's metrics (means of both rewards, accuracies, margins, means of the policy
    log-probs). NumPy runs in the input dtype on one thread.

Parameters: beta 0.1 (simpo: beta 2.0, simpo_gamma 0.5, TRL's CPOTrainer defaults for SimPO);
label_smoothing 0 except robust (0.1: with 0 it is the sigmoid loss); exo_pair's default
epsilon 1e-3; discopop_tau 0.05.

Columns: median wall time of ``--repeats`` calls of each (after one warm-up call; dpo_fast and
NumPy alternate call by call, so a noisy machine slows both alike); ``x NumPy`` = NumPy time /
dpo_fast time; ``vs sigmoid`` = the dpo_fast time of the type / the dpo_fast time of
``sigmoid`` (the plain DPO kernel) in the same run, float64 then float32. Before timing, every
dpo_fast result is checked against the NumPy one (np.allclose on the per-pair losses and
rewards, the mean loss and every metric); a difference stops the script with exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import _registry
from dpo_fast.benchmark import _cpu_snapshot, _cpu_usage, machine_info

LOSS_TYPES = _registry.LOSS_TYPES  # every registered loss type
DTYPES = ("float64", "float32")
BETA = 0.1
SIMPO_BETA = 2.0
SIMPO_GAMMA = 0.5
ROBUST_EPSILON = 0.1
EXO_EPSILON = 1e-3  # TRL's default, what label_smoothing=0 means for exo_pair
DISCOPOP_TAU = 0.05
# Which lengths a type needs: both, chosen only, none.
LENGTHS = {"sft": ("chosen",), "sigmoid_norm": ("chosen", "rejected"),
           "simpo": ("chosen", "rejected")}
REFERENCE_FREE = {"simpo"}
# Accuracy check: dpo_fast (double arithmetic, rounded once) against NumPy in the input dtype.
TOLERANCES = {"float64": {"rtol": 1e-9, "atol_share": 1e-12, "metric_atol": 1e-12},
              "float32": {"rtol": 2e-5, "atol_share": 1e-6, "metric_atol": 1e-5}}
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


# ------------------------------------------------------------------ data


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 summed log-probs around -60 with log-ratios of a few units, token counts."""
    rng = np.random.default_rng([seed, n])
    rc = rng.normal(-60.0, 8.0, n)
    rr = rng.normal(-65.0, 8.0, n)
    return {
        "pc": rc + rng.normal(0.5, 2.0, n),
        "pr": rr + rng.normal(-0.5, 2.0, n),
        "rc": rc,
        "rr": rr,
        "nc": rng.integers(8, 513, n).astype(np.float64),
        "nr": rng.integers(8, 513, n).astype(np.float64),
    }


def dpo_fast_kwargs(loss_type: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"loss_type": loss_type, "beta": BETA}
    if loss_type == "simpo":
        kwargs.update(beta=SIMPO_BETA, simpo_gamma=SIMPO_GAMMA)
    elif loss_type == "robust":
        kwargs["label_smoothing"] = ROBUST_EPSILON
    elif loss_type == "discopop":
        kwargs["discopop_tau"] = DISCOPOP_TAU
    return kwargs


def dpo_fast_call(loss_type: str, data: dict[str, np.ndarray], n_threads: int
                  ) -> Callable[[], Any]:
    args = [data["pc"], data["pr"]]
    if loss_type not in REFERENCE_FREE:
        args += [data["rc"], data["rr"]]
    kwargs = dpo_fast_kwargs(loss_type)
    for side in LENGTHS.get(loss_type, ()):
        kwargs[f"{side}_lengths"] = data["nc" if side == "chosen" else "nr"]

    def call():
        return dpo_fast.preference_loss(*args, compute_grad=False, n_threads=n_threads,
                                        **kwargs)

    return call


# ------------------------------------------------------------------ NumPy


def softplus(x):
    """log(1 + exp(x)), stable."""
    return np.logaddexp(0.0, x)


def sigmoid(x):
    """1 / (1 + exp(-x)): exact to rounding everywhere; exp overflows to inf for x < -709
    (float64), and 1 / inf = 0 is the right limit."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def numpy_losses(loss_type: str, pc, pr, rc, rr, nc, nr):
    """Per-pair losses and both rewards of one loss type, in the dtype of the inputs."""
    if loss_type == "simpo":
        chosen_avg, rejected_avg = pc / nc, pr / nr
        u = SIMPO_BETA * (chosen_avg - rejected_avg) - SIMPO_GAMMA
        return softplus(-u), SIMPO_BETA * chosen_avg, SIMPO_BETA * rejected_avg
    beta = BETA
    c = pc - rc
    r = pr - rr
    chosen_rewards = beta * c
    rejected_rewards = beta * r
    z = chosen_rewards - rejected_rewards
    if loss_type == "sigmoid":
        losses = softplus(-z)
    elif loss_type == "hinge":
        losses = np.maximum(0.0, 1.0 - z)
    elif loss_type == "ipo":
        losses = np.square(c - r - 0.5 / beta)
    elif loss_type == "exo_pair":
        log_sig_pos, log_sig_neg = -softplus(-z), -softplus(z)
        losses = (np.exp(log_sig_pos) * (log_sig_pos - math.log1p(-EXO_EPSILON))
                  + np.exp(log_sig_neg) * (log_sig_neg - math.log(EXO_EPSILON)))
    elif loss_type == "nca_pair":
        losses = (softplus(-chosen_rewards) + 0.5 * softplus(chosen_rewards)
                  + 0.5 * softplus(rejected_rewards))
    elif loss_type == "robust":
        eps = ROBUST_EPSILON
        losses = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps)
    elif loss_type == "bco_pair":
        losses = softplus(-chosen_rewards) + softplus(rejected_rewards)
    elif loss_type == "sppo_hard":
        losses = np.square(c - 0.5 / beta) + np.square(r + 0.5 / beta)
    elif loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            policy, reference = pc - pr, rc - rr
        else:
            policy, reference = c, r
        order = np.argsort(policy, kind="stable")
        delta = policy[order] - np.sort(reference)
        losses = np.empty_like(delta)
        losses[order] = softplus(-beta * delta)  # sorted position i belongs to pair order[i]
    elif loss_type == "apo_zero":
        losses = 1.0 - sigmoid(chosen_rewards) + sigmoid(rejected_rewards)
    elif loss_type == "apo_down":
        losses = sigmoid(chosen_rewards) + 1.0 - sigmoid(z)
    elif loss_type == "discopop":
        log_m = -softplus(-z / DISCOPOP_TAU)        # log sigmoid(z / tau)
        m = np.exp(log_m)
        losses = (1.0 - m) * softplus(-z) + np.exp(log_m - z)
    elif loss_type == "sft":
        losses = np.full_like(pc, -pc.sum() / nc.sum())
    elif loss_type == "sigmoid_norm":
        losses = softplus(-beta * (c / nc - r / nr))
    else:
        raise ValueError(loss_type)
    return losses, chosen_rewards, rejected_rewards


def numpy_solution(loss_type: str, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Everything dpo_fast returns (gradients aside), in NumPy."""
    pc, pr = data["pc"], data["pr"]
    losses, chosen_rewards, rejected_rewards = numpy_losses(
        loss_type, pc, pr, data["rc"], data["rr"], data["nc"], data["nr"])
    return {
        "loss": float(losses.mean()),
        "losses": losses,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "metrics": {
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "logps/chosen": float(pc.mean()),
            "logps/rejected": float(pr.mean()),
        },
    }


# ------------------------------------------------------------------ checking and timing


def check(loss_type: str, dtype: str, ours: Any, theirs: dict[str, Any]) -> list[str]:
    """Differences between the dpo_fast result and the NumPy one (empty: they agree)."""
    tol = TOLERANCES[dtype]
    problems = []
    for name in ("losses", "chosen_rewards", "rejected_rewards"):
        got, want = getattr(ours, name), theirs[name]
        if got.dtype != np.dtype(dtype):
            problems.append(f"{name} has dtype {got.dtype}, expected {dtype}")
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        atol = tol["atol_share"] * float(np.max(np.abs(want64)))
        if not np.allclose(got64, want64, rtol=tol["rtol"], atol=atol):
            bad = int(np.argmax(np.abs(got64 - want64) - tol["rtol"] * np.abs(want64)))
            problems.append(f"{name}[{bad}]: dpo_fast {got64[bad]!r} vs NumPy {want64[bad]!r}")
    if not math.isclose(ours.loss, theirs["loss"], rel_tol=tol["rtol"], abs_tol=1e-300):
        problems.append(f"loss: dpo_fast {ours.loss!r} vs NumPy {theirs['loss']!r}")
    for key in METRIC_NAMES:
        got, want = ours.metrics.get(key), theirs["metrics"][key]
        if got is None or not math.isclose(got, want, rel_tol=tol["rtol"],
                                           abs_tol=tol["metric_atol"]):
            problems.append(f"metrics[{key!r}]: dpo_fast {got!r} vs NumPy {want!r}")
    return [f"{loss_type} {dtype}: {p}" for p in problems]


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call, the functions alternating call by call after one warm-up each."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def run(n: int, repeats: int, threads: int, types: Sequence[str] = LOSS_TYPES
        ) -> dict[str, Any]:
    data64 = make_data(n)
    rows: dict[str, dict[str, Any]] = {t: {"type": t} for t in types}
    failures: list[str] = []
    for dtype in DTYPES:
        data = {key: value.astype(dtype) for key, value in data64.items()}
        # Check everything before timing anything.
        for loss_type in types:
            ours = dpo_fast_call(loss_type, data, threads)()
            failures += check(loss_type, dtype, ours, numpy_solution(loss_type, data))
        if failures:
            continue
        for loss_type in types:
            samples = time_interleaved({
                "dpo_fast": dpo_fast_call(loss_type, data, threads),
                "numpy": functools.partial(numpy_solution, loss_type, data),
            }, repeats)
            medians = {name: statistics.median(s) for name, s in samples.items()}
            rows[loss_type][dtype] = {
                "dpo_fast_ms": medians["dpo_fast"], "numpy_ms": medians["numpy"],
                "x_numpy": medians["numpy"] / medians["dpo_fast"],
                "samples_ms": samples,
            }
        del data
        gc.collect()
    if not failures and "sigmoid" in types:
        for dtype in DTYPES:
            base = rows["sigmoid"][dtype]["dpo_fast_ms"]
            for row in rows.values():
                row[dtype]["vs_sigmoid"] = row[dtype]["dpo_fast_ms"] / base
    return {"rows": list(rows.values()), "failures": failures}


# ------------------------------------------------------------------ report


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["type", "f64 dpo_fast ms", "f64 NumPy ms", "x NumPy", "f32 dpo_fast ms",
              "f32 NumPy ms", "x NumPy", "vs sigmoid"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        f64, f32 = row["float64"], row["float32"]
        vs = "-"
        if "vs_sigmoid" in f64:
            vs = f"{f64['vs_sigmoid']:.2f} / {f32['vs_sigmoid']:.2f}"
        cells = [row["type"], _ms(f64["dpo_fast_ms"]), _ms(f64["numpy_ms"]),
                 f"{f64['x_numpy']:.1f}x", _ms(f32["dpo_fast_ms"]), _ms(f32["numpy_ms"]),
                 f"{f32['x_numpy']:.1f}x", vs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_n(text: str) -> int:
    value = float(text.replace("_", ""))
    if not (value.is_integer() and value >= 1):
        raise argparse.ArgumentTypeError(f"--n must be a positive integer, got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=parse_n, default=1_000_000,
                        help="number of pairs (1e6 and 1_000_000 both work; default 1e6)")
    parser.add_argument("--repeats", type=int, default=11,
                        help="timed calls per implementation (default 11)")
    parser.add_argument("--threads", type=int, default=2,
                        help="n_threads for dpo_fast (default 2; NumPy is single-threaded)")
    parser.add_argument("--types", default=",".join(LOSS_TYPES),
                        help="comma-separated loss types (default: all 16)")
    parser.add_argument("--json", metavar="PATH", help="save every number")


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in LOSS_TYPES]
    if unknown:
        parser.error(f"unknown loss types {unknown}; known: {', '.join(LOSS_TYPES)}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    info = machine_info()
    start = _cpu_snapshot()
    results = run(args.n, args.repeats, args.threads, types)
    usage = _cpu_usage(start, _cpu_snapshot())
    if results["failures"]:
        print("dpo_fast and NumPy disagree; nothing was timed:", file=sys.stderr)
        for line in results["failures"]:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"dpo_fast {info['dpo_fast']} loss types, N = {args.n:,} pairs, "
          f"median of {args.repeats} calls, dpo_fast n_threads={args.threads}, "
          f"NumPy {info['numpy']} (one thread)")
    print(f"machine: {info['cpu_model']}, {info['cpus_available']} CPUs available, "
          f"SIMD {info['simd_level']}, OpenMP {'on' if info['openmp'] else 'off'}, "
          f"Python {info['python']}")
    if usage is not None:
        print(f"load: other processes used {usage['others_pct']:g}% of the CPUs during the run "
              f"(hypervisor steal {usage['steal_pct']:g}%)")
    print()
    print(format_table(results["rows"]))
    print()
    print("x NumPy = NumPy ms / dpo_fast ms; vs sigmoid = dpo_fast ms of the type / dpo_fast ms "
          "of sigmoid, float64 / float32.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "cpu_usage": usage,
                       "config": {"n": args.n, "repeats": args.repeats,
                                  "threads": args.threads, "beta": BETA,
                                  "simpo_beta": SIMPO_BETA, "simpo_gamma": SIMPO_GAMMA,
                                  "robust_label_smoothing": ROBUST_EPSILON,
                                  "discopop_tau": DISCOPOP_TAU},
                       "rows": results["rows"]}, fh, indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
