"""The text report of ``dpo-fast bench`` (every section) and the plot of the core section."""

from __future__ import annotations

from typing import Any

from . import fused, logps, losses, score, small
from .core import SIMD_MIN_SPEEDUP
from .harness import fmt_n, fmt_ratio, fmt_time, table

__all__ = ["BUSY_WARNING_PCT", "format_report", "write_plot"]

# Above this share of the CPUs used by other processes during the run, the report warns.
BUSY_WARNING_PCT = 10.0


def _fmt_usage(usage: dict[str, float] | None, cpus: int) -> str:
    if not usage:
        return "CPU use by other processes unknown"
    text = (f"other processes used {usage['others_pct']:.0f}% of the {cpus} CPUs during the "
            f"run (hypervisor steal {usage['steal_pct']:.0f}%)")
    return text


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if not load else " ".join(f"{x:.2f}" for x in load)


def _repeats_text(config: dict[str, Any]) -> str:
    repeats = config["repeats"]
    floor = min(repeats, config["min_repeats"])
    return str(repeats) if floor == repeats else f"{floor}-{repeats} (fewer for large N)"


def format_report(results: dict[str, Any]) -> str:
    """The human-readable report of a run's results.

    Parameters
    ----------
    results : dict
        What :func:`dpo_fast.benchmark.run` returned (or the JSON it was saved as).

    Returns
    -------
    str
        Machine header, then the list-call, arrays, accuracy, small-batch, SIMD, loss-type,
        log-probs and scoring sections that were run, the targets and the checks' verdict.
    """
    m = results["machine"]
    c = results["config"]
    torch_text = m["torch"] or f"not used ({m['torch_unavailable_reason']})"
    out = [
        f"dpo_fast {m['dpo_fast']} benchmark, {m['date']}",
        f"machine : {m['cpu_model']}, {m['cpus_available']} CPUs available "
        f"(os.cpu_count {m['cpu_count']}), {m['memory_gib']} GiB, {m['platform']}",
        f"build   : SIMD {m['simd_level']} (supported: "
        f"{', '.join(m['simd_levels_supported'])}), OpenMP {'on' if m['openmp'] else 'off'}",
        f"software: Python {m['python']}, NumPy {m['numpy']}, torch {torch_text}",
        f"load    : {_fmt_usage(m.get('cpu_usage_during_run'), m['cpu_count'])}; "
        f"load average {_fmt_load(m.get('load_average'))} at start",
        f"timing  : median per call of {_repeats_text(c)} samples per implementation, "
        f"implementations interleaved; each sample >= {c['min_sample_seconds'] * 1e3:g} ms "
        f"of back-to-back calls",
        f"data    : log-probs ~ -50 +- 5 (seeded normal, seed {c['seed']}), beta {c['beta']}",
    ]
    usage = m.get("cpu_usage_during_run")
    if usage and usage["others_pct"] + usage["steal_pct"] > BUSY_WARNING_PCT:
        out.append("WARNING : the machine was busy: timings (multi-threaded ones most) are "
                   "noisy")
    if m["environment"]:
        out.append("env     : " + ", ".join(f"{k}={v}" for k, v in m["environment"].items()))

    if results["seed"]:
        out += ["", "List call: Python lists in, dict rounded like round(x, 4) out (float64)",
                "  dpo_fast = dpo_fast.dpo_loss; NumPy = a plain NumPy implementation; "
                "pure Py = a math-module loop", ""]
        rows = []
        for row in results["seed"]:
            t = row["times"]
            rows.append([
                fmt_n(row["n"]), fmt_time(t["dpo_fast"]["median"]),
                fmt_time(t["numpy"]["median"]), fmt_time(t["python"]["median"]),
                fmt_ratio(row["ratios"]["x_numpy"]), fmt_ratio(row["ratios"]["x_python"]),
                "yes" if all(row["checks"].values()) else "NO",
            ])
        out += table(["N", "dpo_fast", "NumPy", "pure Py", "x NumPy", "x pure Py",
                       "same dict"], rows, left=0)

    if results["arrays"]:
        out += ["", "Arrays: dpo_fast.preference_loss(..., n_threads=thr, out=preallocated)",
                "  +alloc = the same call allocating its 3 outputs; NumPy = rewards, "
                "np.logaddexp(0, -z), mean (single-threaded);",
                "  torch = -F.logsigmoid(z) with torch.set_num_threads(thr); bound = "
                "memory_traffic, the same 4-in/3-out streams",
                "  with trivial math; x NumPy = NumPy / dpo_fast (x NumPy+a: with +alloc); "
                "% bound = bound / dpo_fast;",
                "  % bound+a = the bound into 3 fresh outputs / dpo_fast +alloc.",
                f"  Below {m['parallel_min_rows']:,} pairs dpo_fast (and the bound) run on 1 "
                "thread whatever thr.", ""]
        rows = []
        for row in results["arrays"]:
            t = row["times"]
            r = row["ratios"]
            rows.append([
                row["dtype"], fmt_n(row["n"]), str(row["threads"]),
                fmt_time(t["dpo_fast"]["median"]), fmt_time(t["dpo_fast_alloc"]["median"]),
                fmt_time(t["numpy"]["median"]),
                fmt_time(t["torch"]["median"]) if "torch" in t else "-",
                fmt_time(t["bound"]["median"]), fmt_ratio(r["x_numpy"]),
                fmt_ratio(r["x_numpy_alloc"]), fmt_ratio(r["x_torch"]),
                f"{r['pct_bound']:.0f}%", f"{r['pct_bound_alloc']:.0f}%",
            ])
        out += table(["dtype", "N", "thr", "dpo_fast", "+alloc", "NumPy", "torch", "bound",
                       "x NumPy", "x NumPy+a", "x torch", "% bound", "% bound+a"], rows, left=1)

    if results["accuracy"]:
        out += ["", "Accuracy: max ulp of dpo_fast's outputs from a float64 NumPy reference "
                "rounded to the dtype;",
                "  relative error of the mean loss; outputs bit-identical across thread "
                "counts", ""]
        rows = []
        for row in results["accuracy"]:
            u = row["max_ulp"]
            rows.append([
                row["dtype"], fmt_n(row["n"]), f"{u['losses']:g}", f"{u['chosen_rewards']:g}",
                f"{u['rejected_rewards']:g}", f"<= {row['ulp_limit']}",
                f"{row['loss_rel_error']:.1e}", "yes" if row["threads_bit_identical"] else "NO",
                "ok" if row["ok"] else "FAILED",
            ])
        out += table(["dtype", "N", "losses", "chosen", "rejected", "limit", "loss rel err",
                       "threads same", "check"], rows, left=1)

    if results.get("small"):  # (JSON of runs before the section existed has none)
        out += small.format_small(results["small"])

    simd = results["simd"]
    if simd:
        out += ["", f"SIMD code paths: preference_loss at N={fmt_n(simd['n'])} "
                f"{simd['dtype']}, {simd['threads']} thread (now using "
                f"{simd['restored_level']})", ""]
        rows = [[r["level"], fmt_time(r["times"]["median"]), fmt_ratio(r["x_scalar"]),
                 "yes" if r["bit_identical_to_scalar"] else "NO"] for r in simd["levels"]]
        out += table(["path", "median", "x scalar", "same bits"], rows)
        if not simd["vectorised_ok"]:
            out.append(f"WARNING: the best SIMD path is < {SIMD_MIN_SPEEDUP:g}x the scalar "
                       "one: the vectoriser may have left it scalar (build with "
                       "DPO_FAST_VEC_REPORT=1 to see)")

    if results.get("losses"):
        out += losses.format_losses(results["losses"], m)
    if results.get("logps"):
        out += logps.format_logps(results["logps"])
    if results.get("fused"):
        out += fused.format_fused(results["fused"])
    if results.get("score"):
        out += score.format_score(results["score"])

    if not (results["seed"] or results["arrays"] or results.get("small")):
        return "\n".join(out + ["", "accuracy checks: " + (
            "all passed" if results["checks_passed"] else "FAILED")])
    out += ["", "Targets (ratios measured in this run; reported, not asserted)", ""]
    rows = []
    for t in results["targets"]:
        threads = t["threads"]
        what = t["description"] + (
            f", {threads} thread{'' if threads == 1 else 's'}" if threads else "")
        if t["measured"] is None:
            measured, verdict = "not measured", "-"
        else:
            measured = (f"{t['measured']:.0f}%" if t["unit"] == "%"
                        else fmt_ratio(t["measured"]))
            verdict = "met" if t["met"] else "below"
        target = f">= {t['minimum']:.3g}{t['unit']}"
        rows.append([what, measured, target, verdict])
    out += table(["target", "measured", "goal", ""], rows)
    out += ["", "accuracy checks: " + ("all passed" if results["checks_passed"] else "FAILED")]
    return "\n".join(out)


def write_plot(results: dict[str, Any], path: str) -> None:
    """Write a log-log plot of median time per call against N, one line per implementation.

    Parameters
    ----------
    results : dict
        What :func:`dpo_fast.benchmark.run` returned (with the core section).
    path : str
        Output file (PNG).

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install "dpo_fast[bench]"``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = []
    if results["seed"]:
        panels.append(("list call (lists -> dict)", None))
    panels += [(f"{dtype} arrays", dtype) for dtype in results["config"]["dtypes"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    # One colour and marker per implementation; solid lines for the most threads, dotted for
    # fewer, so the thread counts of one implementation read as one family.
    looks = {"dpo_fast": ("tab:orange", "o"), "dpo_fast_alloc": ("tab:red", "x"),
             "numpy": ("tab:blue", "s"), "torch": ("tab:purple", "^"),
             "bound": ("tab:gray", ""), "bound_alloc": ("tab:brown", ""),
             "python": ("tab:green", "d")}
    names = {"dpo_fast": "dpo_fast out=", "dpo_fast_alloc": "dpo_fast +alloc",
             "torch": "torch", "bound": "bandwidth bound",
             "bound_alloc": "bandwidth bound +alloc"}
    top_threads = max(results["config"]["threads"])
    for ax, (title, dtype) in zip(axes[0], panels):
        if dtype is None:
            for name, label in (("dpo_fast", "dpo_fast.dpo_loss"), ("numpy", "plain NumPy"),
                                ("python", "pure Python")):
                xs = [row["n"] for row in results["seed"]]
                ys = [row["times"][name]["median"] for row in results["seed"]]
                colour, marker = looks[name]
                ax.plot(xs, ys, color=colour, marker=marker, label=label)
        else:
            rows = [r for r in results["arrays"] if r["dtype"] == dtype]
            series: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
            for row in rows:
                for name, timing in row["times"].items():
                    # NumPy is single-threaded: one line, from the first thread count's rows.
                    if name == "numpy" and row["threads"] != rows[0]["threads"]:
                        continue
                    xs, ys = series.setdefault((name, row["threads"]), ([], []))
                    xs.append(row["n"])
                    ys.append(timing["median"])
            for (name, threads), (xs, ys) in series.items():
                colour, marker = looks.get(name, ("black", "."))
                if name == "numpy":
                    label, style = "plain NumPy", "-"
                else:
                    label = f"{names.get(name, name)} ({threads} thr)"
                    style = "-" if threads == top_threads else ":"
                if name.startswith("bound") and style == "-":
                    style = "--"
                ax.plot(xs, ys, linestyle=style, color=colour, marker=marker, markersize=4,
                        label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (pairs)")
        ax.set_ylabel("median time per call (s)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"dpo_fast {m['dpo_fast']} on {m['cpu_model']} ({m['cpus_available']} CPUs, "
                 f"{m['simd_level']}), {m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

