"""The fused section of ``dpo-fast bench``: log-probs from hidden states (issue 17),
``dpo_fast.linear_sequence_logps`` against the GEMM alone and plain PyTorch, time and extra
peak memory (``python bench/bench_fused.py`` runs it alone; see bench/README-fused.md).

What is compared, per shape (hidden ``(B, T, H)`` ~ N(0, 1), an ``lm_head`` weight ``(V, H)``
~ N(0, 1/H), float32, labels uniform in [0, V), every position counted):

forward (per-sequence sums of the label log-probs)
    ``GEMM alone``             ``hidden @ weight.T`` (torch.mm, no grad): the floor
    ``torch unfused``          linear + ``log_softmax`` + ``gather``, masked sum (no grad)
    ``TRL chunked``            TRL's ``ChunkedLogProbFunction`` (trl/kernels/chunked_logprob.py:
                               4096-token tiles, TRL's trainer's vocabulary chunk of 32768, the
                               log-probs only; on the CPU its tiles are folded by torch ops),
                               when ``trl`` is installed (no grad)
    ``GEMM + sequence_logps``  torch.mm, then dpo_fast.sequence_logps on the logits
    ``dpo_fast fused``         dpo_fast.linear_sequence_logps(hidden, weight, labels)
forward + backward of sum(logps), hidden and weight leaves that require grad
    ``torch unfused``          the torch form above, ``.sum().backward()``
    ``TRL chunked``            the TRL form above, ``.sum().backward()``
    ``dpo_fast.torch fused``   dpo_fast.torch.linear_sequence_logps(...).logps.sum().backward()
f+b frozen head: torch unfused and dpo_fast with a frozen weight (only hidden requires grad)

Columns: median wall time of ``repeats`` calls after one warm-up call; extra peak RSS of one
call (as in the logps section: VmHWM after minus VmRSS before, glibc's mmap threshold at
128 KiB) and, for forward + backward, that peak minus the gradients' own bytes (``beyond
grads``: what the issue's memory target counts); the largest absolute error of the
per-sequence sums against a float64 reference (the float32 inputs projected in float64, tile
by tile); the ratio to the GEMM alone, to torch unfused and to TRL (TRL is optional: without
it those rows and ratios are left out).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import dpo_fast
from dpo_fast import linear_logps

from . import harness
from .logps import malloc_mode, measure_memory
from .targets import (
    FUSED_TARGET_MEMORY_MB,
    FUSED_TARGET_TRAIN_X_TORCH,
    FUSED_TARGET_X_GEMM,
    FUSED_TARGET_X_TORCH,
    FUSED_TARGET_X_TRL,
)

__all__ = ["QUICK_SHAPES", "SHAPES", "FusedConfig", "add_arguments", "bench_shape",
           "format_fused", "format_table", "main", "make_data", "memory_failures", "run_fused",
           "run_from_args"]

# The forward + backward pass with a frozen lm_head (only hidden requires grad).
FROZEN_PASS = "f+b frozen head"
# (B, T, H, V): the issue's two shapes (N = B*T tokens).
SHAPES = {"issue": (2, 512, 512, 32000), "big": (8, 512, 1024, 32000)}
QUICK_SHAPES = {"tiny": (2, 64, 64, 1024)}


@dataclass
class FusedConfig:
    """What the fused section measures: ``shapes`` ``{label: (B, T, H, V)}``, ``repeats``
    timed calls per row."""

    shapes: dict[str, tuple[int, int, int, int]] = field(default_factory=lambda: dict(SHAPES))
    repeats: int = 3

    @classmethod
    def quick(cls) -> FusedConfig:
        """The smoke configuration: one tiny shape, 3 calls per row."""
        return cls(shapes=dict(QUICK_SHAPES), repeats=3)


def make_data(shape: tuple[int, int, int, int], seed: int = 0):
    """``(hidden, weight, labels)``: float32 hidden ~ N(0, 1), weight ~ N(0, 1/H), labels
    uniform."""
    rng = np.random.default_rng(seed)
    b, t, h, v = shape
    hidden = rng.standard_normal((b, t, h), dtype=np.float32)
    weight = rng.standard_normal((v, h), dtype=np.float32)
    weight *= np.float32(1.0 / np.sqrt(h))
    labels = rng.integers(0, v, size=(b, t))
    return hidden, weight, labels


def reference_logps(hidden: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sequence sums in float64 (the float32 inputs projected in float64, 256 tokens at a
    time)."""
    b, t, h = hidden.shape
    flat = hidden.reshape(-1, h).astype(np.float64)
    w = weight.astype(np.float64)
    tokens = np.empty(b * t)
    flat_labels = labels.reshape(-1)
    for r0 in range(0, b * t, 256):
        logits = flat[r0:r0 + 256] @ w.T
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        tokens[r0:r0 + 256] = logits[np.arange(logits.shape[0]), flat_labels[r0:r0 + 256]] - lse
    return tokens.reshape(b, t).sum(axis=1)


def _torch_unfused(torch: Any, hidden, weight, labels):
    logits = hidden @ weight.T
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)


# TRL's trainer calls ChunkedLogProbFunction with this vocabulary chunk
# (trl/trainer/utils.py, _CHUNKED_LOGPROB_CHUNK_SIZE, TRL 1.16).
TRL_VOCAB_CHUNK = 32768


def load_trl_chunked() -> Any:
    """TRL's ``ChunkedLogProbFunction``, or None when TRL is not installed (it is optional)."""
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    except Exception:  # noqa: BLE001 - missing or broken: that baseline is left out
        return None
    return ChunkedLogProbFunction


def _trl_chunked(function: Any, hidden, weight, labels):
    """Per-sequence sums through TRL's fused head, called as its trainer does (no bias,
    temperature 1, no softcapping, logit scale 1), asking for the log-probs only."""
    b, t, h = hidden.shape
    logps = function.apply(hidden.reshape(-1, h), weight, None, labels.reshape(-1), 1.0,
                           TRL_VOCAB_CHUNK, None, 1.0, ())[0]
    return logps.view(b, t).sum(-1)


def _measure(rows, label, pass_, impls, repeats, ref, grad_bytes=0):
    """Time ``impls`` ({name: (fn, sums or None, traced)}) interleaved call by call (a busy
    machine slows them alike), then one memory call each."""
    harness.progress(f"fused {label} {pass_}: {', '.join(impls)}")
    samples = harness.time_interleaved({name: fn for name, (fn, _, _) in impls.items()},
                                       repeats)
    for name, (fn, sums, traced) in impls.items():
        rss, tr = measure_memory(fn, traced)
        err = None if sums is None else float(np.abs(np.asarray(sums, np.float64) - ref).max())
        rows.append({"shape": label, "pass_": pass_, "name": name,
                     "median_ms": statistics.median(samples[name]),
                     "samples_ms": samples[name], "peak_rss_mb": rss, "traced_mb": tr,
                     "beyond_grads_mb": None if rss is None or not grad_bytes
                     else rss - grad_bytes / 2**20, "seq_err": err})


def bench_shape(label: str, shape: tuple[int, int, int, int], repeats: int,
                torch: Any) -> list[dict[str, Any]]:
    """Every implementation on one shape (torch: the module, required for the baselines)."""
    hidden, weight, labels = make_data(shape)
    ref = reference_logps(hidden, weight, labels)
    b, t, h, v = shape
    rows: list[dict[str, Any]] = []

    def fused():
        return linear_logps.linear_sequence_logps(hidden, weight, labels)

    forward = {"dpo_fast fused": (fused, fused().logps, True)}
    if torch is None:
        _measure(rows, label, "forward", forward, repeats, ref)
        return rows
    import dpo_fast.torch as dft

    t_hidden, t_weight = torch.from_numpy(hidden), torch.from_numpy(weight)
    t_labels = torch.from_numpy(labels)
    flat_hidden = t_hidden.reshape(-1, h)

    def gemm():
        with torch.no_grad():
            return torch.mm(flat_hidden, t_weight.T)

    def unfused():
        with torch.no_grad():
            return _torch_unfused(torch, t_hidden, t_weight, t_labels)

    def gemm_then_fold():
        with torch.no_grad():
            logits = torch.mm(flat_hidden, t_weight.T).reshape(b, t, v)
        return dpo_fast.sequence_logps(logits.numpy(), labels).logps

    trl_function = load_trl_chunked()

    def trl_chunked():
        with torch.no_grad():
            return _trl_chunked(trl_function, t_hidden, t_weight, t_labels)

    trl_forward = {} if trl_function is None else {
        "TRL chunked": (trl_chunked, trl_chunked().numpy(), False)}
    forward = {"GEMM alone": (gemm, None, False),
               "torch unfused": (unfused, unfused().numpy(), False),
               **trl_forward,
               "GEMM + sequence_logps": (gemm_then_fold, gemm_then_fold(), False),
               **forward}
    _measure(rows, label, "forward", forward, repeats, ref)

    leaf_h = t_hidden.clone().requires_grad_(True)
    leaf_w = t_weight.clone().requires_grad_(True)

    def train_unfused():
        _torch_unfused(torch, leaf_h, leaf_w, t_labels).sum().backward()
        grads = (leaf_h.grad, leaf_w.grad)
        leaf_h.grad = leaf_w.grad = None
        return grads

    def train_fused():
        dft.linear_sequence_logps(leaf_h, leaf_w, t_labels).logps.sum().backward()
        grads = (leaf_h.grad, leaf_w.grad)
        leaf_h.grad = leaf_w.grad = None
        return grads

    def train_trl():
        _trl_chunked(trl_function, leaf_h, leaf_w, t_labels).sum().backward()
        grads = (leaf_h.grad, leaf_w.grad)
        leaf_h.grad = leaf_w.grad = None
        return grads

    # Both gradients agree to float32 rounding: checked once, not timed.
    theirs, ours = train_unfused(), train_fused()
    diffs = [float((a - c).abs().max() / c.abs().max()) for a, c in zip(ours, theirs)]
    del theirs, ours
    trl_train = {} if trl_function is None else {"TRL chunked": (train_trl, None, False)}
    _measure(rows, label, "forward+backward", {
        "torch unfused": (train_unfused, None, False), **trl_train,
        "dpo_fast.torch fused": (train_fused, None, False)}, repeats, ref,
        grad_bytes=(leaf_h.numel() + leaf_w.numel()) * 4)
    rows[-1]["grad_rel_diff"] = {"hidden": diffs[0], "weight": diffs[1]}

    # A frozen lm_head (LoRA-style training): only hidden requires grad.
    def frozen_unfused():
        _torch_unfused(torch, leaf_h, t_weight, t_labels).sum().backward()
        grad, leaf_h.grad = leaf_h.grad, None
        return grad

    def frozen_fused():
        dft.linear_sequence_logps(leaf_h, t_weight, t_labels).logps.sum().backward()
        grad, leaf_h.grad = leaf_h.grad, None
        return grad

    theirs, ours = frozen_unfused(), frozen_fused()
    diff = float((ours - theirs).abs().max() / theirs.abs().max())
    del theirs, ours
    _measure(rows, label, FROZEN_PASS, {
        "torch unfused": (frozen_unfused, None, False),
        "dpo_fast.torch fused": (frozen_fused, None, False)}, repeats, ref,
        grad_bytes=leaf_h.numel() * 4)
    rows[-1]["grad_rel_diff"] = {"hidden": diff}
    return rows


def run_fused(config: FusedConfig, torch: Any) -> dict[str, Any]:
    """Run the section: ``config``, ``glibc_malloc_thresholds_set`` and ``rows``. As the
    logps section, it fixes glibc's malloc thresholds for the rest of the process."""
    fixed = malloc_mode("timing")
    rows: list[dict[str, Any]] = []
    for name, shape in config.shapes.items():
        rows += bench_shape(name, shape, config.repeats, torch)
    return {"config": asdict(config), "glibc_malloc_thresholds_set": fixed,
            "tile_bytes": linear_logps.TILE_BYTES, "vocab_tile": linear_logps.VOCAB_TILE,
            "rows": rows, "failures": memory_failures(rows)}


def memory_failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The fused rows whose extra memory (forward: peak RSS; forward + backward: beyond the
    gradients) exceeds FUSED_TARGET_MEMORY_MB: the bound holds whatever the shape, so a
    failure fails the run (``dpo-fast bench`` exits 1)."""
    failures = []
    for r in rows:
        if r["name"] not in ("dpo_fast fused", "dpo_fast.torch fused"):
            continue
        extra = r["peak_rss_mb"] if r["pass_"] == "forward" else r["beyond_grads_mb"]
        if extra is not None and extra > FUSED_TARGET_MEMORY_MB:
            failures.append(f"fused {r['shape']} {r['pass_']}: {extra:.0f} MB extra memory "
                            f"> {FUSED_TARGET_MEMORY_MB:g} MB")
    return failures


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], shapes: dict[str, Sequence[int]]) -> str:
    """The section's tables, one per shape, each with its targets line."""
    lines = []
    for label, shape in shapes.items():
        selected = [r for r in rows if r["shape"] == label]
        if not selected:
            continue
        b, t, h, v = shape
        lines.append(f"\nshape {label}: B={b} T={t} (N={b * t}) H={h} V={v} float32 "
                     f"(logits {b * t * v * 4 / 2**20:.0f} MB)")
        lines.append(f"{'pass':<17} {'implementation':<22} {'median ms':>10} {'x GEMM':>7} "
                     f"{'x torch':>8} {'x TRL':>7} {'peak RSS MB':>12} {'beyond grads':>13} "
                     f"{'seq err':>9}")
        find = {(r["pass_"], r["name"]): r for r in selected}
        for r in selected:
            gemm = find.get(("forward", "GEMM alone"))
            base = find.get((r["pass_"], "torch unfused"))
            trl = find.get((r["pass_"], "TRL chunked"))
            x_gemm = r["median_ms"] / gemm["median_ms"] if gemm else None
            x_torch = base["median_ms"] / r["median_ms"] if base else None
            x_trl = trl["median_ms"] / r["median_ms"] if trl else None
            lines.append(
                f"{r['pass_']:<17} {r['name']:<22} {r['median_ms']:>10.1f} "
                f"{_fmt(x_gemm, '7.2f'):>7} {_fmt(x_torch, '8.2f'):>8} {_fmt(x_trl, '7.2f'):>7} "
                f"{_fmt(r['peak_rss_mb'], '12.1f'):>12} "
                f"{_fmt(r['beyond_grads_mb'], '13.1f'):>13} {_fmt(r['seq_err'], '9.1e'):>9}")
        fwd = find.get(("forward", "dpo_fast fused"))
        gemm = find.get(("forward", "GEMM alone"))
        torch_fwd = find.get(("forward", "torch unfused"))
        trl_fwd = find.get(("forward", "TRL chunked"))
        train = find.get(("forward+backward", "dpo_fast.torch fused"))
        torch_train = find.get(("forward+backward", "torch unfused"))
        trl_train = find.get(("forward+backward", "TRL chunked"))
        checks = []
        if fwd and gemm:
            checks.append(f"forward {fwd['median_ms'] / gemm['median_ms']:.2f}x the GEMM "
                          f"(target <= {FUSED_TARGET_X_GEMM:g})")
        if fwd and torch_fwd:
            checks.append(f"forward x torch {torch_fwd['median_ms'] / fwd['median_ms']:.2f} "
                          f"(target >= {FUSED_TARGET_X_TORCH:g})")
        if fwd and trl_fwd:
            checks.append(f"forward x TRL {trl_fwd['median_ms'] / fwd['median_ms']:.2f} "
                          f"(target >= {FUSED_TARGET_X_TRL:g})")
        if train and torch_train:
            checks.append(f"forward+backward x torch "
                          f"{torch_train['median_ms'] / train['median_ms']:.2f} (target >= "
                          f"{FUSED_TARGET_TRAIN_X_TORCH:g})")
        if train and trl_train:
            checks.append(f"forward+backward x TRL "
                          f"{trl_train['median_ms'] / train['median_ms']:.2f} (target >= "
                          f"{FUSED_TARGET_X_TRL:g})")
        if train and train["beyond_grads_mb"] is not None:
            checks.append(f"extra memory beyond grads {train['beyond_grads_mb']:.0f} MB "
                          f"(target <= {FUSED_TARGET_MEMORY_MB:g} at B8 T512 H1024 V32000)")
        if train and "grad_rel_diff" in train:
            d = train["grad_rel_diff"]
            checks.append(f"grads vs torch: hidden {d['hidden']:.1e}, weight "
                          f"{d['weight']:.1e} (relative)")
        frozen = find.get((FROZEN_PASS, "dpo_fast.torch fused"))
        torch_frozen = find.get((FROZEN_PASS, "torch unfused"))
        if frozen and torch_frozen:
            checks.append(f"frozen head: forward+backward x torch "
                          f"{torch_frozen['median_ms'] / frozen['median_ms']:.2f} (no target), "
                          f"grad vs torch {frozen['grad_rel_diff']['hidden']:.1e}")
        if checks:
            lines.append("targets: " + "; ".join(checks))
    return "\n".join(lines)


def format_fused(section: dict[str, Any]) -> list[str]:
    """The report lines of the section in ``dpo-fast bench``."""
    c = section["config"]
    failures = section.get("failures", [])
    return (["", f"Fused linear + log-softmax: linear_sequence_logps vs the GEMM and torch, "
             f"median of {c['repeats']} calls per row (tiles of {section['tile_bytes'] >> 20} "
             f"MiB, {section['vocab_tile']} vocabulary columns)"]
            + format_table(section["rows"], c["shapes"]).splitlines()
            + [f"memory check FAILED: {f}" for f in failures]
            + ([] if failures else [f"memory check: every fused row within "
                                    f"{FUSED_TARGET_MEMORY_MB:g} MB extra"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python bench/bench_fused.py``."""
    parser.add_argument("--shapes", default="issue,big",
                        help="comma-separated among: " + ", ".join([*SHAPES, *QUICK_SHAPES]))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row")
    parser.add_argument("--json", metavar="PATH", help="save every number")


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the section alone for parsed options (the script's output and JSON)."""
    known = {**SHAPES, **QUICK_SHAPES}
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or args.repeats < 1:
        parser.error(f"unknown shapes {unknown}" if unknown else "--repeats must be >= 1")
    config = FusedConfig(shapes={name: known[name] for name in names}, repeats=args.repeats)
    torch = harness.load_torch(True)[0]
    section = run_fused(config, torch)
    info = harness.machine_info(torch)
    print("machine: " + ", ".join(f"{k} {info[k]}" for k in (
        "python", "numpy", "dpo_fast", "simd_level", "openmp", "cpu_count", "cpu_model")))
    print("\n".join(format_fused(section)))
    if args.json:
        harness.write_json({"machine": info, **section}, args.json)
    return 1 if section["failures"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/bench_fused.py``."""
    parser = argparse.ArgumentParser(
        description="Benchmark of dpo_fast.linear_sequence_logps against the GEMM alone and "
                    "PyTorch CPU.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), parser)
