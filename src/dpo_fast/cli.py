"""The ``dpo-fast`` command line.

Each subcommand is a :class:`Command`: a name, a one-line help, a function that adds its
options to its subparser and a function that runs it and returns the exit status. A new
subcommand is one more entry in :data:`COMMANDS`. This module imports the package (and, for
``dpo-fast score --scheduler``, :mod:`dpo_fast.dask`); neither imports this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from dpo_fast import __version__, benchmark
from dpo_fast.score import cli as score_cli

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One ``dpo-fast`` subcommand.

    Attributes
    ----------
    name : str
        What the user types after ``dpo-fast``.
    help : str
        One line for ``dpo-fast --help``.
    description : str
        The longer text of ``dpo-fast NAME --help``.
    add_arguments : callable
        ``add_arguments(parser)`` adds the subcommand's options.
    run : callable
        ``run(args, parser) -> int``: does the work, returns the exit status; may call
        ``parser.error`` for options that cannot be honoured (exit status 2).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]


# `dpo-fast info`: what this installation runs with.
def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="output format (default: table)")


def _info() -> dict:
    """What ``dpo-fast info`` reports, as a dict."""
    import os
    import platform

    import numpy

    import dpo_fast
    from dpo_fast import _optional, _threads
    from dpo_fast._kernels import _pairwise

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    # Each optional package is imported (a second or two for torch and dask): an installed
    # release that does not import, e.g. one that does not match its neighbours, is unusable
    # and is reported with its import error, not as a version.
    extras, broken = {}, {}
    for name in _optional.OPTIONAL:
        version, problem = _optional.status(name)
        extras[name] = version if problem is None else None
        if version is not None and problem is not None:
            broken[name] = f"{name} {version} is installed but does not import: {problem}"
    return {
        "version": dpo_fast.__version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": numpy.__version__,
        "openmp": dpo_fast.openmp_enabled(),
        "threads": _threads.available_cpus() if dpo_fast.openmp_enabled() else 1,
        "threads_detail": {
            "affinity": affinity,
            "cgroup_quota": _threads._cgroup_cpu_limit(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "parallel_min_rows": _threads.PARALLEL_MIN_ROWS,
        },
        "simd": dpo_fast.simd_level(),
        "simd_supported": list(_pairwise.supported_simd_levels()),
        "DPO_FAST_SIMD": os.environ.get("DPO_FAST_SIMD"),
        "optional": extras,
        "optional_errors": broken,
    }


def _run_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    info = _info()
    if args.format == "json":
        print(json.dumps(info, indent=1))
        return 0
    detail = info["threads_detail"]
    why = [f"affinity {detail['affinity']}",
           f"cgroup quota {detail['cgroup_quota'] or 'none'}",
           f"OMP_NUM_THREADS {detail['OMP_NUM_THREADS'] or 'unset'}"]
    rows = [
        ("dpo_fast", info["version"]),
        ("python", f"{info['python']} ({info['platform']})"),
        ("numpy", info["numpy"]),
        ("openmp", "yes" if info["openmp"] else "no (serial build)"),
        ("threads", f"{info['threads']} for n_threads=None ({', '.join(why)}); inputs under "
                    f"{detail['parallel_min_rows']} rows use 1"),
        ("simd", f"{info['simd']} (supported: {', '.join(info['simd_supported'])}; "
                 f"DPO_FAST_SIMD {info['DPO_FAST_SIMD'] or 'unset'})"),
        ("optional", ", ".join(f"{k} {v or '-'}" for k, v in info["optional"].items())),
        *(("", problem) for problem in info["optional_errors"].values()),
    ]
    for key, value in rows:
        print(f"{key:<10}{value}")
    return 0


# `dpo-fast score`: on this machine, or on a Dask cluster with --scheduler.
def _run_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    runner = None
    if args.scheduler:
        from dpo_fast import dask as dpo_dask

        def runner(source, *, params, progress, **options):
            return dpo_dask.run_cli(args.scheduler, source, params=params, **options)

    return score_cli.run_from_args(args, parser, runner)


COMMANDS: tuple[Command, ...] = (
    Command(
        name="bench",
        help="benchmark dpo_fast against NumPy, pure Python, PyTorch and memory bandwidth",
        description=(
            "Time dpo_fast against the plain NumPy and pure-Python solutions, PyTorch CPU "
            "(when installed) and a kernel with the same memory traffic (the bandwidth "
            "bound), checking accuracy as it goes. Sections (--section): core (dpo_loss on "
            "lists, preference_loss on arrays, SIMD paths) and small (batches of 2 to 4096, "
            "torch forward + backward) by default; losses (every loss type), logps "
            "(sequence_logps) and score (dpo-fast score) on request. Prints a table of "
            "medians and ratios; --json and --plot save them. Exit status 1 if an accuracy "
            "check fails (speed targets are only reported)."
        ),
        add_arguments=benchmark.add_arguments,
        run=benchmark.run_from_args,
    ),
    Command(
        name="score",
        help="score a preference dataset (Parquet, Arrow IPC, CSV, JSON Lines) of any size",
        description=(
            "Stream INPUT (a file or a directory of files) in record batches through "
            "dpo_fast.preference_loss: print the pairs scored, the loss, TRL's metrics and the "
            "exact margin quantiles; with --out, write the input rows with chosen_reward, "
            "rejected_reward, margin and loss added (atomically). Memory stays bounded "
            "whatever the input size. Errors are one line: exit status 1 for missing or bad "
            "data (the message names file, row and column), 2 for bad options (the message "
            "names the option). --loss-type kto (or apo_zero_unpaired) scores unpaired files "
            "instead (TRL's format: logps, ref_logps, a boolean label): reward and loss per "
            "row, TRL's KTO metrics."
        ),
        add_arguments=score_cli.add_arguments,
        run=_run_score,
    ),
    Command(
        name="info",
        help="show the version, OpenMP, threads and SIMD code path in use",
        description=(
            "Print what this installation of dpo_fast runs with: version, Python and NumPy, "
            "OpenMP build, the threads n_threads=None uses (and why), the SIMD code path and "
            "the optional packages found."
        ),
        add_arguments=_info_arguments,
        run=_run_info,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``dpo-fast`` argument parser, with one subparser per entry of :data:`COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        Parsing sets ``args.command`` to the chosen :class:`Command`.
    """
    parser = argparse.ArgumentParser(
        prog="dpo-fast",
        description="dpo_fast: fast, exact Direct Preference Optimization losses.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    # Required, so that a bare `dpo-fast` is a usage error (exit 2) rather than a silent no-op.
    subparsers.required = True
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help,
                                    description=command.description)
        command.add_arguments(sub)
        sub.set_defaults(command=command, command_parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dpo-fast`` with ``argv`` (default: ``sys.argv[1:]``).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments without the program name.

    Returns
    -------
    int
        Exit status: 0 on success, 1 when the command failed, 2 for bad arguments (argparse
        exits with 2 itself), 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command.run(args, args.command_parser)
    except KeyboardInterrupt:
        print("dpo-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `dpo-fast bench | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
