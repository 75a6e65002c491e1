"""The small-batch section of ``dpo-fast bench``: what one call costs at the sizes training and
evaluation code uses (8-512 pairs), where a per-call overhead, not the kernel, decides.

Baselines are what a user would write by hand, timed interleaved with dpo_fast in the same
run (:mod:`.harness`): the three-line NumPy formula (on arrays; on Python lists, after the
``np.asarray`` that formula needs), and the same formula in plain torch
autograd (forward and backward) against ``dpo_fast.torch.preference_loss``; for the log-probs,
torch's ``log_softmax`` + ``gather`` + sum on a (2, 16, 64) float32 batch, and the same with
an attention mask, forward and backward, against ``dpo_fast.torch.sequence_logps``; for
``kto_loss`` (unpaired completions, the reference point from a KL batch of the same size), the
same in NumPy (:func:`.baselines.numpy_kto_formula`), up to 100,000 completions.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import dpo_fast

from . import harness
from .baselines import (
    numpy_array_solution,
    numpy_kto_formula,
    torch_formula_step,
    torch_logps_sum,
)
from .harness import fmt_ratio, fmt_time, table

__all__ = ["LOGPS_SHAPE", "SMALL_SIZES", "bench_small", "format_small"]

SMALL_SIZES = (2, 8, 64, 512, 4096)
# kto_loss also at a scoring-sized batch: its rows and exact sums are one compiled pass.
KTO_EXTRA_SIZES = (100_000,)
LOGPS_SHAPE = (2, 16, 64)
BETA = 0.1


def _dpo_fast_torch_step(tensors: list[Any], beta: float) -> None:
    import dpo_fast.torch as dft

    chosen, rejected, ref_chosen, ref_rejected = tensors
    chosen.grad = rejected.grad = None
    dft.preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta).loss.backward()


def _dpo_fast_torch_logps_step(logits: Any, labels: Any, mask: Any) -> None:
    import dpo_fast.torch as dft

    logits.grad = None
    dft.sequence_logps(logits, labels, mask=mask).logps.sum().backward()


def _torch_logps_step(torch: Any, logits: Any, labels: Any, mask: Any) -> None:
    logits.grad = None
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (token_logps * mask).sum(-1).sum().backward()


def _numpy_on_lists(lists: list[list[float]]) -> None:
    numpy_array_solution(*(np.asarray(values) for values in lists), BETA)


def bench_small(sizes: tuple[int, ...], repeats: int, min_seconds: float, seed: int,
                torch: Any) -> dict[str, Any]:
    """Time the small-batch section: one row per size, and the log-probs row.

    Parameters
    ----------
    sizes : tuple of int
        Numbers of pairs (:data:`SMALL_SIZES` in ``dpo-fast bench``).
    repeats : int
        Samples per implementation.
    min_seconds : float
        Minimum duration of one sample.
    seed : int
        Seed of the random data.
    torch : module or None
        torch, or None to skip the torch rows.

    Returns
    -------
    dict
        JSON-serialisable: ``rows`` (``n``, ``times`` by implementation, ``ratios``) and
        ``logps`` (or None without torch).
    """
    rng = np.random.default_rng(seed)
    # One thread for torch, as dpo_fast runs these sizes: its intra-op pool only adds
    # hand-over costs at these sizes (and milliseconds when another process holds the cores).
    single = None if torch is None else functools.partial(torch.set_num_threads, 1)
    rows = []
    for n in sizes:
        arrays = [rng.standard_normal(n) * 5.0 - 50.0 for _ in range(4)]
        lists = [array.tolist() for array in arrays]
        entries = {
            "dpo_fast": harness.Entry(functools.partial(
                dpo_fast.preference_loss, *arrays, beta=BETA)),
            "dpo_fast_grad": harness.Entry(functools.partial(
                dpo_fast.preference_loss, *arrays, beta=BETA, compute_grad=True)),
            "numpy": harness.Entry(functools.partial(numpy_array_solution, *arrays, BETA)),
            "dpo_fast_lists": harness.Entry(functools.partial(
                dpo_fast.preference_loss, *lists, beta=BETA)),
            "numpy_lists": harness.Entry(functools.partial(_numpy_on_lists, lists)),
        }
        if torch is not None:
            tensors = [torch.from_numpy(a.copy()) for a in arrays]
            for tensor in tensors[:2]:
                tensor.requires_grad_(True)
            entries["dpo_fast_torch"] = harness.Entry(
                functools.partial(_dpo_fast_torch_step, tensors, BETA), single)
            entries["torch"] = harness.Entry(
                functools.partial(torch_formula_step, torch, tensors, BETA), single)
        times = harness.measure_group(entries, repeats, min_seconds)
        median = {name: timing.median for name, timing in times.items()}
        ratios = {"x_numpy": median["numpy"] / median["dpo_fast"],
                  "lists_x_numpy": median["numpy_lists"] / median["dpo_fast_lists"]}
        if torch is not None:
            ratios["torch_x_torch"] = median["torch"] / median["dpo_fast_torch"]
        rows.append({"n": n, "times": {name: t.to_json() for name, t in times.items()},
                     "ratios": ratios})
    logps = None
    if torch is not None:
        batch, length, vocab = LOGPS_SHAPE
        logits = rng.standard_normal(LOGPS_SHAPE).astype(np.float32)
        labels = rng.integers(0, vocab, (batch, length))
        logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)
        times = harness.measure_group({
            "dpo_fast": harness.Entry(functools.partial(dpo_fast.sequence_logps, logits,
                                                        labels)),
            "torch": harness.Entry(functools.partial(torch_logps_sum, torch, logits_tensor,
                                                     labels_tensor), single),
        }, repeats, min_seconds)
        logps = {"shape": list(LOGPS_SHAPE), "dtype": "float32",
                 "times": {name: t.to_json() for name, t in times.items()},
                 "ratios": {"x_torch": times["torch"].median / times["dpo_fast"].median}}
        # Forward + backward through dpo_fast.torch, with the shifted attention mask a
        # training step passes, against the same in plain torch autograd.
        trainable = logits_tensor.clone().requires_grad_(True)
        attention = torch.from_numpy(rng.random((batch, length + 1)) < 0.9)
        mask = attention[:, 1:]
        step_times = harness.measure_group({
            "dpo_fast": harness.Entry(functools.partial(
                _dpo_fast_torch_logps_step, trainable, labels_tensor, mask), single),
            "torch": harness.Entry(functools.partial(
                _torch_logps_step, torch, trainable, labels_tensor, mask), single),
        }, repeats, min_seconds)
        logps["step_times"] = {name: t.to_json() for name, t in step_times.items()}
        logps["ratios"]["step_x_torch"] = (step_times["torch"].median
                                           / step_times["dpo_fast"].median)
    return {"rows": rows, "logps": logps, "kto": _bench_kto(sizes, repeats, min_seconds, rng)}


def _bench_kto(sizes: tuple[int, ...], repeats: int, min_seconds: float,
               rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for n in tuple(sizes) + KTO_EXTRA_SIZES:
        ref = rng.standard_normal(n) * 5.0 - 50.0
        logps = ref + rng.standard_normal(n)
        desirable = rng.random(n) < 0.5
        ref_kl = rng.standard_normal(n) * 5.0 - 50.0
        kl_logps = ref_kl + rng.standard_normal(n) + 0.1
        inputs = (logps, ref, desirable)
        times = harness.measure_group({
            "dpo_fast": harness.Entry(functools.partial(
                dpo_fast.kto_loss, *inputs, beta=BETA, kl_logps=kl_logps,
                ref_kl_logps=ref_kl)),
            "numpy": harness.Entry(functools.partial(
                numpy_kto_formula, *inputs, kl_logps, ref_kl, BETA)),
        }, repeats, min_seconds)
        ours = dpo_fast.kto_loss(*inputs, beta=BETA, kl_logps=kl_logps, ref_kl_logps=ref_kl)
        theirs = numpy_kto_formula(*inputs, kl_logps, ref_kl, BETA)
        rows.append({"n": n, "times": {name: t.to_json() for name, t in times.items()},
                     "ratios": {"x_numpy": times["numpy"].median / times["dpo_fast"].median},
                     "loss_rel_diff": abs(ours.loss - theirs[0]) / abs(theirs[0])})
    return rows


def format_small(section: dict[str, Any]) -> list[str]:
    """The report lines of the section.

    Parameters
    ----------
    section : dict
        What :func:`bench_small` returned.

    Returns
    -------
    list of str
        A blank line, the title, the table and the log-probs line.
    """
    headers = ["N", "preference_loss", "+ grad", "NumPy formula", "x NumPy", "on lists",
               "x NumPy", "dpo_fast.torch f+b", "torch f+b", "x torch"]
    lines = ["", "Small batches (float64, 1 thread; on lists: Python lists in, the NumPy formula "
             "after np.asarray; torch: forward + backward)"]
    body = []
    for row in section["rows"]:
        times = {name: t["median"] for name, t in row["times"].items()}
        body.append([
            str(row["n"]), fmt_time(times["dpo_fast"]), fmt_time(times["dpo_fast_grad"]),
            fmt_time(times["numpy"]), fmt_ratio(row["ratios"]["x_numpy"]),
            fmt_time(times["dpo_fast_lists"]), fmt_ratio(row["ratios"]["lists_x_numpy"]),
            fmt_time(times.get("dpo_fast_torch")), fmt_time(times.get("torch")),
            fmt_ratio(row["ratios"].get("torch_x_torch")),
        ])
    lines += table(headers, body)
    logps = section["logps"]
    if logps is not None:
        shape = "x".join(str(d) for d in logps["shape"])
        lines.append(
            f"sequence_logps {shape} {logps['dtype']}: "
            f"{fmt_time(logps['times']['dpo_fast']['median'])} vs torch log_softmax + gather "
            f"{fmt_time(logps['times']['torch']['median'])} "
            f"({fmt_ratio(logps['ratios']['x_torch'])}); with a mask, forward + backward "
            f"through dpo_fast.torch {fmt_time(logps['step_times']['dpo_fast']['median'])} vs "
            f"torch autograd {fmt_time(logps['step_times']['torch']['median'])} "
            f"({fmt_ratio(logps['ratios']['step_x_torch'])})")
    kto = section.get("kto")
    if kto:
        lines += ["", "kto_loss (float64; the reference point from a KL batch of N; the NumPy "
                  "formula: TRL's, with its per-side sums)"]
        lines += table(["N", "kto_loss", "NumPy formula", "x NumPy", "loss rel diff"], [
            [str(row["n"]), fmt_time(row["times"]["dpo_fast"]["median"]),
             fmt_time(row["times"]["numpy"]["median"]), fmt_ratio(row["ratios"]["x_numpy"]),
             f"{row['loss_rel_diff']:.1e}"] for row in kto])
    return lines
