"""The command line of ``dpo-fast bench`` (and ``python bench/run.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Callable

from dpo_fast import _optional, _threads

from . import runner
from .core import (
    DEFAULT_REPEATS,
    DEFAULT_SECTIONS,
    DEFAULT_SIZES,
    DTYPES,
    MIN_SAMPLE_SECONDS,
    QUICK_MIN_SAMPLE_SECONDS,
    QUICK_REPEATS,
    QUICK_SIMD_SIZE,
    QUICK_SIZES,
    SECTIONS,
    SIMD_SIZE,
    BenchConfig,
    default_threads,
)
from .harness import MIN_REPEATS, parse_count, unwritable_reason, write_json
from .report import format_report, write_plot

__all__ = ["add_arguments", "config_from_args", "main", "run_from_args"]


def _comma_list(convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [convert(part) for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return tuple(dict.fromkeys(items))  # drop repeats, keep order
    return parse


def _dtype_name(text: str) -> str:
    name = text.strip().lower()
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from {DTYPES}")
    return name


def _section_name(text: str) -> str:
    name = text.strip().lower()
    if name not in SECTIONS:
        raise argparse.ArgumentTypeError(f"unknown section {text!r}; choose from "
                                         f"{', '.join(SECTIONS)}")
    return name


def _thread_count(text: str) -> int:
    if text.strip().lower() == "all":
        return _threads.available_cpus()
    return parse_count(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (``dpo-fast bench`` and bench/run.py).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser (or subcommand parser) to extend.
    """
    parser.add_argument("--sizes", type=_comma_list(parse_count), metavar="N,N,...",
                        help="numbers of pairs (default: 2,16,1e3,1e5,1e6,1e7; "
                             "--quick: 2,16,1e3,1e4)")
    parser.add_argument("--dtypes", type=_comma_list(_dtype_name), metavar="DTYPE,...",
                        help="float32 and/or float64 (default: both)")
    parser.add_argument("--threads", type=_comma_list(_thread_count), metavar="K,K,...",
                        help="n_threads values; 'all' = the CPUs available "
                             f"(default: 1,all = {','.join(map(str, default_threads()))})")
    parser.add_argument("--repeats", type=parse_count, metavar="R",
                        help=f"timing samples per implementation (default {DEFAULT_REPEATS}, "
                             f"--quick {QUICK_REPEATS}; at least {MIN_REPEATS} are kept when "
                             "large N cuts them)")
    parser.add_argument("--section", dest="sections", type=_comma_list(_section_name),
                        metavar="NAME,...",
                        help=f"sections to run, among {','.join(SECTIONS)} (default: "
                             f"{','.join(DEFAULT_SECTIONS)}, the recorded table)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke configuration: sizes 2,16,1e3,1e4, 3 repeats (and "
                             "every other section's quick one)")
    parser.add_argument("--no-torch", dest="use_torch", action="store_false",
                        help="skip PyTorch even when it is installed")
    parser.add_argument("--no-simd", dest="simd", action="store_false",
                        help="skip the SIMD code path section")
    parser.add_argument("--seed", type=int, default=0, help="random data seed (default 0)")
    parser.add_argument("--json", metavar="PATH", help="write all raw numbers as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a log-log PNG of time vs N (needs matplotlib)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The configuration for parsed options (``--quick`` first, explicit ones win).

    Parameters
    ----------
    args : argparse.Namespace
        Options added by :func:`add_arguments`.

    Returns
    -------
    BenchConfig
        What to run; the sections in their fixed order.
    """
    quick = args.quick
    return BenchConfig(
        sizes=tuple(args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)),
        dtypes=tuple(args.dtypes or DTYPES),
        threads=tuple(args.threads or default_threads()),
        repeats=args.repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS),
        simd_size=0 if not args.simd else (QUICK_SIMD_SIZE if quick else SIMD_SIZE),
        min_sample_seconds=QUICK_MIN_SAMPLE_SECONDS if quick else MIN_SAMPLE_SECONDS,
        use_torch=args.use_torch,
        seed=args.seed,
        quick=quick,
        sections=tuple(name for name in SECTIONS if name in (args.sections or DEFAULT_SECTIONS)),
    )


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the benchmark for parsed options: print the report, write JSON / PNG.

    Parameters
    ----------
    args : argparse.Namespace
        Options added by :func:`add_arguments`.
    parser : argparse.ArgumentParser
        Used to report unusable options (exit code 2).

    Returns
    -------
    int
        0, or 1 when an accuracy check failed (never because of a speed target).
    """
    # Checked before minutes of measuring, not after.
    if args.plot:
        try:
            _optional.require("matplotlib", needed_by="--plot", extra="bench")
        except ImportError as exc:
            parser.error(str(exc))
    config = config_from_args(args)
    if "score" in config.sections:
        reason = runner.score_unavailable()
        if reason is not None:
            parser.error(reason)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        reason = unwritable_reason(path) if path else None
        if reason is not None:
            parser.error(f"{option} {path}: {reason}")
    results = runner.run(config)
    print(format_report(results), flush=True)
    if args.json:
        write_json(results, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        if results["arrays"] or results["seed"]:
            write_plot(results, args.plot)
            print(f"wrote {args.plot}")
        else:
            print("no plot: --plot draws the core section, which did not run")
    return 0 if results["checks_passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/run.py`` (``dpo-fast bench`` takes the same options).

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
        prog="dpo-fast bench",
        description="Benchmark dpo_fast against NumPy, pure Python, PyTorch and the memory "
                    "bandwidth bound.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args, parser)
