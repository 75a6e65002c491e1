"""The loss-type section of ``dpo-fast bench``: every ``preference_loss`` loss type against
the same formula in NumPy (``python bench/bench_losses.py`` runs it alone).

What is compared, per loss type and dtype (float64, and float32 = the float64 data rounded):

``dpo_fast``
    ``dpo_fast.preference_loss(pc, pr, rc, rr, loss_type=T, compute_grad=False,
    n_threads=threads)``, allocating its outputs on every call; ``chosen_lengths`` /
    ``rejected_lengths`` for the types that need them (sft, sigmoid_norm, simpo); no
    reference log-probs for simpo (it is reference-free).
``NumPy``
    the same formula written in vectorised NumPy the way a competent user would
    (:func:`.baselines.numpy_loss_type_solution`: softplus as ``np.logaddexp(0, x)``, the
    sigmoid as ``1 / (1 + exp(-x))``, ``np.argsort`` / ``np.sort`` for the AOT losses),
    computing the same outputs: per-pair losses, both rewards, the mean loss and TRL's
    metrics. NumPy runs in the input dtype on one thread.

Parameters: :data:`.baselines.LOSS_PARAMS` (beta 0.1; simpo beta 2.0, simpo_gamma 0.5;
label_smoothing 0 except robust 0.1 and exo_pair 1e-3 (the EXO paper's); discopop_tau 0.05;
dpop_lambda 50; bco_delta 0; alphapo: simpo's beta and gamma, alphapo_alpha 0.25).

Columns: median wall time of ``repeats`` calls of each (after one warm-up call; dpo_fast and
NumPy alternate call by call, :func:`.harness.time_interleaved`); ``x NumPy`` = NumPy time /
dpo_fast time; ``% bound`` = the time of the same-traffic kernel (the 4 inputs read, 3 fresh
outputs first-touched and written, :data:`.baselines.bandwidth_bound`) / the dpo_fast time;
``vs sigmoid`` = the dpo_fast time of the type / the dpo_fast time of ``sigmoid`` in the same
run, float64 then float32. Before timing, every dpo_fast result is
checked against the NumPy one (np.allclose on the per-pair losses and rewards, the mean loss
and every metric); a difference is a failed check (nothing is timed; exit status 1).
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import _registry, _threads

from . import harness
from .baselines import LOSS_PARAMS, bandwidth_bound, numpy_loss_type_solution
from .targets import (
    LOSS_TARGET_PCT_BOUND,
    LOSS_TARGET_SORTED_VS_SIGMOID,
    LOSS_TARGET_X_NUMPY,
)

__all__ = [
    "LOSS_TYPES",
    "LossConfig",
    "add_arguments",
    "check",
    "dpo_fast_call",
    "format_losses",
    "format_table",
    "main",
    "make_data",
    "run_from_args",
    "run_losses",
]

LOSS_TYPES = _registry.LOSS_TYPES  # every registered loss type
DTYPES = ("float64", "float32")
# Which lengths a type needs: both, chosen only, none.
LENGTHS = {name: tuple(key.removesuffix("_lengths") for key in needed)
           for name, needed in _registry.NEEDS_LENGTHS.items()}
REFERENCE_FREE = _registry.REFERENCE_FREE_TYPES
# Accuracy check: dpo_fast (double arithmetic, rounded once) against NumPy in the input dtype.
TOLERANCES = {"float64": {"rtol": 1e-9, "atol_share": 1e-12, "metric_atol": 1e-12},
              "float32": {"rtol": 2e-5, "atol_share": 1e-6, "metric_atol": 1e-5}}
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


@dataclass
class LossConfig:
    """What the loss-type section measures.

    Attributes
    ----------
    n : int
        Number of pairs.
    repeats : int
        Timed calls per implementation.
    threads : int
        ``n_threads`` of dpo_fast (NumPy is single-threaded).
    types : tuple of str
        Loss types, in the report's order.
    seed : int
        Seed of the random data.
    """

    n: int = 1_000_000
    repeats: int = 11
    threads: int = 2
    types: tuple[str, ...] = LOSS_TYPES
    seed: int = 0

    @classmethod
    def quick(cls, threads: int = 2) -> LossConfig:
        """The smoke configuration: N = 1e4, 3 calls each (about a second)."""
        return cls(n=10_000, repeats=3, threads=threads)


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 summed log-probs around -60 with log-ratios of a few units, token counts.

    Parameters
    ----------
    n : int
        Number of pairs.
    seed : int, default 0
        Seed (the stream also depends on n).

    Returns
    -------
    dict of str to numpy.ndarray
        ``pc``, ``pr``, ``rc``, ``rr`` (log-probs), ``nc``, ``nr`` (token counts) and ``gt``
        (ground-truth reward margins, for the rpo_* types).
    """
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
        "gt": rng.normal(0.0, 2.0, n),
    }


def _dpo_fast_kwargs(loss_type: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"loss_type": loss_type, "beta": LOSS_PARAMS["beta"]}
    if loss_type in ("simpo", "alphapo"):
        kwargs.update(beta=LOSS_PARAMS["simpo_beta"], simpo_gamma=LOSS_PARAMS["simpo_gamma"])
        if loss_type == "alphapo":
            kwargs["alphapo_alpha"] = LOSS_PARAMS["alphapo_alpha"]
    elif loss_type == "robust":
        kwargs["label_smoothing"] = LOSS_PARAMS["robust_label_smoothing"]
    elif loss_type == "discopop":
        kwargs["discopop_tau"] = LOSS_PARAMS["discopop_tau"]
    elif loss_type == "exo_pair":
        kwargs["label_smoothing"] = LOSS_PARAMS["exo_epsilon"]
    return kwargs


def dpo_fast_call(loss_type: str, data: dict[str, np.ndarray], n_threads: int
                  ) -> Callable[[], Any]:
    """The timed dpo_fast call of one loss type.

    Parameters
    ----------
    loss_type : str
        A registered loss type.
    data : dict of str to numpy.ndarray
        What :func:`make_data` returned (in the dtype measured).
    n_threads : int
        dpo_fast's ``n_threads``.

    Returns
    -------
    callable
        No arguments; returns the ``preference_loss`` result.
    """
    args = [data["pc"], data["pr"]]
    if loss_type not in REFERENCE_FREE:
        args += [data["rc"], data["rr"]]
    kwargs = _dpo_fast_kwargs(loss_type)
    for side in LENGTHS.get(loss_type, ()):
        kwargs[f"{side}_lengths"] = data["nc" if side == "chosen" else "nr"]
    if loss_type in _registry.GT_REWARD_LOSS_TYPES:
        kwargs["gt_reward_margins"] = data["gt"]

    def call():
        return dpo_fast.preference_loss(*args, compute_grad=False, n_threads=n_threads,
                                        **kwargs)

    return call


def check(loss_type: str, dtype: str, ours: Any, theirs: dict[str, Any]) -> list[str]:
    """Differences between the dpo_fast result and the NumPy one.

    Parameters
    ----------
    loss_type, dtype : str
        What was computed (for the messages).
    ours : PreferenceLossResult
        dpo_fast's result.
    theirs : dict
        :func:`.baselines.numpy_loss_type_solution`'s result.

    Returns
    -------
    list of str
        One message per difference (empty: they agree).
    """
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


def run_losses(config: LossConfig) -> dict[str, Any]:
    """Check, then time, every loss type of ``config`` in both dtypes.

    Parameters
    ----------
    config : LossConfig
        N, repeats, threads, types.

    Returns
    -------
    dict
        ``config`` (with the loss parameters), ``rows`` (one per type: per dtype the medians
        ``dpo_fast_ms``, ``numpy_ms``, ``x_numpy``, ``vs_sigmoid`` and ``samples_ms``) and
        ``failures`` (disagreements; when there are any, nothing was timed).
    """
    data64 = make_data(config.n, config.seed)
    rows: dict[str, dict[str, Any]] = {t: {"type": t} for t in config.types}
    failures: list[str] = []
    for dtype in DTYPES:
        data = {key: value.astype(dtype) for key, value in data64.items()}
        # Check everything before timing anything.
        for loss_type in config.types:
            ours = dpo_fast_call(loss_type, data, config.threads)()
            failures += check(loss_type, dtype, ours, numpy_loss_type_solution(loss_type, data))
        if failures:
            continue
        # The same-traffic bound of an allocating call: 4 input streams read, 3 fresh outputs
        # first-touched and written (what every per-pair type must at least cost).
        def bound_call(data=data, dtype=dtype):
            outputs = [np.empty(config.n, dtype=dtype) for _ in range(3)]
            bandwidth_bound(data["pc"], data["pr"], data["rc"], data["rr"], *outputs,
                            _threads.resolve_n_threads(config.threads, config.n))
        bound_ms = statistics.median(
            harness.time_interleaved({"bound": bound_call}, config.repeats)["bound"])
        for loss_type in config.types:
            harness.progress(f"loss type {loss_type} {dtype}")
            samples = harness.time_interleaved({
                "dpo_fast": dpo_fast_call(loss_type, data, config.threads),
                "numpy": functools.partial(numpy_loss_type_solution, loss_type, data),
            }, config.repeats)
            medians = {name: statistics.median(s) for name, s in samples.items()}
            rows[loss_type][dtype] = {
                "dpo_fast_ms": medians["dpo_fast"], "numpy_ms": medians["numpy"],
                "x_numpy": medians["numpy"] / medians["dpo_fast"],
                "bound_ms": bound_ms, "pct_bound": 100.0 * bound_ms / medians["dpo_fast"],
                "samples_ms": samples,
            }
        del data
        gc.collect()
    if not failures and "sigmoid" in config.types:
        for dtype in DTYPES:
            base = rows["sigmoid"][dtype]["dpo_fast_ms"]
            for row in rows.values():
                row[dtype]["vs_sigmoid"] = row[dtype]["dpo_fast_ms"] / base
    settings = {**asdict(config), "beta": LOSS_PARAMS["beta"],
                "simpo_beta": LOSS_PARAMS["simpo_beta"],
                "simpo_gamma": LOSS_PARAMS["simpo_gamma"],
                "robust_label_smoothing": LOSS_PARAMS["robust_label_smoothing"],
                "discopop_tau": LOSS_PARAMS["discopop_tau"]}
    return {"config": settings, "rows": list(rows.values()) if not failures else [],
            "failures": failures}


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of the section (as recorded in bench/README.md).

    Parameters
    ----------
    rows : sequence of dict
        ``run_losses(...)["rows"]``.

    Returns
    -------
    str
        The table.
    """
    header = ["type", "f64 dpo_fast ms", "f64 NumPy ms", "x NumPy", "% bound",
              "f32 dpo_fast ms", "f32 NumPy ms", "x NumPy", "% bound", "vs sigmoid"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        f64, f32 = row["float64"], row["float32"]
        vs = "-"
        if "vs_sigmoid" in f64:
            vs = f"{f64['vs_sigmoid']:.2f} / {f32['vs_sigmoid']:.2f}"
        cells = [row["type"], _ms(f64["dpo_fast_ms"]), _ms(f64["numpy_ms"]),
                 f"{f64['x_numpy']:.1f}x", f"{f64['pct_bound']:.0f}%", _ms(f32["dpo_fast_ms"]),
                 _ms(f32["numpy_ms"]), f"{f32['x_numpy']:.1f}x", f"{f32['pct_bound']:.0f}%",
                 vs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_losses(section: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """The report lines of the section.

    Parameters
    ----------
    section : dict
        What :func:`run_losses` returned.
    machine : dict
        :func:`.harness.machine_info` (versions for the title line).

    Returns
    -------
    list of str
        Title, table and legend; or the disagreements.
    """
    c = section["config"]
    if section["failures"]:
        return ["", "Loss types: dpo_fast and NumPy disagree; nothing was timed:"] + [
            "  " + line for line in section["failures"]]
    return ["", f"Loss types: N = {c['n']:,} pairs, median of {c['repeats']} calls, dpo_fast "
            f"n_threads={c['threads']}, NumPy {machine['numpy']} (one thread)", "",
            format_table(section["rows"]), "",
            "x NumPy = NumPy ms / dpo_fast ms; % bound = the same-traffic kernel's ms "
            "(4 inputs read, 3 fresh outputs written) / dpo_fast ms;",
            "vs sigmoid = dpo_fast ms of the type / dpo_fast ms of sigmoid, float64 / float32.",
            f"targets: every per-pair type >= {LOSS_TARGET_PCT_BOUND:g}% of the bound or >= "
            f"{LOSS_TARGET_X_NUMPY:g}x NumPy; the sorted types (aot, aot_unpaired) <= "
            f"{LOSS_TARGET_SORTED_VS_SIGMOID:g}x sigmoid (reported, not asserted)."]


# ------------------------------------------------------------------ bench/bench_losses.py


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python bench/bench_losses.py``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser to extend.
    """
    parser.add_argument("--n", type=harness.parse_count, default=LossConfig.n,
                        help="number of pairs (1e6 and 1_000_000 both work; default 1e6)")
    parser.add_argument("--repeats", type=int, default=LossConfig.repeats,
                        help="timed calls per implementation (default 11)")
    parser.add_argument("--threads", type=int, default=LossConfig.threads,
                        help="n_threads for dpo_fast (default 2; NumPy is single-threaded)")
    parser.add_argument("--types", default=",".join(LOSS_TYPES),
                        help="comma-separated loss types (default: all 16)")
    parser.add_argument("--json", metavar="PATH", help="save every number")


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the section alone for parsed options (the script's output and JSON).

    Parameters
    ----------
    args : argparse.Namespace
        Options added by :func:`add_arguments`.
    parser : argparse.ArgumentParser
        Used to report unusable options (exit status 2).

    Returns
    -------
    int
        0, or 1 when dpo_fast and NumPy disagree.
    """
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in LOSS_TYPES]
    if unknown:
        parser.error(f"unknown loss types {unknown}; known: {', '.join(LOSS_TYPES)}")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    info = harness.machine_info()
    start = harness.cpu_snapshot()
    section = run_losses(LossConfig(n=args.n, repeats=args.repeats, threads=args.threads,
                                    types=tuple(types)))
    usage = harness.cpu_usage(start, harness.cpu_snapshot())
    if section["failures"]:
        print("dpo_fast and NumPy disagree; nothing was timed:", file=sys.stderr)
        for line in section["failures"]:
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
    print(format_table(section["rows"]))
    print()
    print("x NumPy = NumPy ms / dpo_fast ms; vs sigmoid = dpo_fast ms of the type / dpo_fast ms "
          "of sigmoid, float64 / float32.")
    if args.json:
        config = {key: section["config"][key] for key in (
            "n", "repeats", "threads", "beta", "simpo_beta", "simpo_gamma",
            "robust_label_smoothing", "discopop_tau")}
        harness.write_json({"machine": info, "cpu_usage": usage, "config": config,
                            "rows": section["rows"]}, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/bench_losses.py``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(
        description="Benchmark of every dpo_fast.preference_loss loss type against NumPy.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), parser)
