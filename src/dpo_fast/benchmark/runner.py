"""Run the sections of ``dpo-fast bench`` chosen by a :class:`.core.BenchConfig`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dpo_fast import _optional

from . import core, fused, harness, logps, losses, score, small
from .targets import measured_targets

__all__ = ["run", "score_unavailable", "section_configs"]


def section_configs(config: core.BenchConfig) -> dict[str, Any]:
    """The configurations of the loss-type, log-probs and scoring sections for a run.

    ``--quick`` gives each its quick configuration, otherwise each runs its full one (what its
    script runs by default); the loss types run on the most threads of ``--threads``. The
    core options (``--sizes``, ``--repeats``, ...) do not apply to them; their scripts in
    bench/ take their own options.

    Parameters
    ----------
    config : BenchConfig
        The run's configuration.

    Returns
    -------
    dict
        ``losses`` (:class:`.losses.LossConfig`), ``logps`` (:class:`.logps.LogpsConfig`),
        ``fused`` (:class:`.fused.FusedConfig`),
        ``score`` (:class:`.score.ScoreConfig`).
    """
    threads = max(config.threads)
    if config.quick:
        return {"losses": losses.LossConfig.quick(threads=threads),
                "logps": logps.LogpsConfig.quick(), "fused": fused.FusedConfig.quick(),
                "score": score.ScoreConfig.quick()}
    return {"losses": losses.LossConfig(threads=threads), "logps": logps.LogpsConfig(),
            "fused": fused.FusedConfig(), "score": score.ScoreConfig()}


def score_unavailable() -> str | None:
    """Why the score section cannot run here (pyarrow or pandas missing), or None.

    Returns
    -------
    str or None
        The message naming the missing module and how to install it.
    """
    for module, extra in (("pyarrow", "cli"), ("pandas", "dask")):
        try:
            _optional.require(module, needed_by="the score section", extra=extra)
        except ImportError as exc:
            return str(exc)
    return None


def run(config: core.BenchConfig) -> dict[str, Any]:
    """Run the benchmark: the sections in ``config.sections``, in the order of ``SECTIONS``.

    Parameters
    ----------
    config : BenchConfig
        Sections, sizes, dtypes, thread counts and repeats.

    Returns
    -------
    dict
        JSON-serialisable results: ``schema``, ``machine``, ``config``, ``seed``, ``small``
        (when run), ``arrays``, ``accuracy``, ``simd``, ``losses`` / ``logps`` / ``score``
        (when run), ``targets`` and ``checks_passed``. Times are seconds per call (the
        loss-type and log-probs sections: milliseconds, as their keys say).
    """
    cpu_start = harness.cpu_snapshot()
    torch, torch_reason = harness.load_torch(config.use_torch)
    with harness.frozen_heap():
        results = _run_sections(config, torch, torch_reason)
    results["machine"]["cpu_usage_during_run"] = harness.cpu_usage(cpu_start,
                                                                   harness.cpu_snapshot())
    return results


def _run_sections(config: core.BenchConfig, torch: Any, torch_reason: str | None
                  ) -> dict[str, Any]:
    sections = set(config.sections)
    others = section_configs(config)
    results: dict[str, Any] = {
        "schema": core.SCHEMA,
        "machine": harness.machine_info(torch, torch_reason),
        "config": {**asdict(config), "beta": core.BETA, "seed_max_n": core.SEED_MAX_N,
                   "group_budget_seconds": harness.GROUP_BUDGET_SECONDS,
                   "min_repeats": harness.MIN_REPEATS,
                   "data": "standard_normal * 5 - 50 (seeded numpy default_rng)"},
        "seed": [], "arrays": [], "accuracy": [], "simd": None,
    }
    # The order of the measurements before sections existed: list call, small batches,
    # arrays, SIMD paths.
    if "core" in sections:
        results["seed"] = core.bench_seed(config)
    if "small" in sections:
        harness.progress("small batches")
        results["small"] = small.bench_small(small.SMALL_SIZES, config.repeats,
                                             config.min_sample_seconds, config.seed, torch)
    if "core" in sections:
        results["arrays"], results["accuracy"] = core.bench_arrays(config, torch)
        results["simd"] = core.bench_simd(config)
    if "losses" in sections:
        results["losses"] = losses.run_losses(others["losses"])
    if "logps" in sections:
        results["logps"] = logps.run_logps(others["logps"], torch)
    if "fused" in sections:
        results["fused"] = fused.run_fused(others["fused"], torch)
    if "score" in sections:
        reason = score_unavailable()
        results["score"] = ({"skipped": reason} if reason is not None
                            else score.run_score(others["score"]))
    results["targets"] = measured_targets(results)
    results["checks_passed"] = bool(
        core.core_checks_passed(results)
        and not results.get("losses", {}).get("failures")
        and not results.get("fused", {}).get("failures"))
    return results
