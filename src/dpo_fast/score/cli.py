"""``dpo-fast score``: its options and how a parsed command line runs.

The loss options come from the explicit table of :mod:`dpo_fast.score.options`. Which engine
runs the command (this machine, or a Dask cluster for ``--scheduler``) is the caller's
choice: :mod:`dpo_fast.cli` passes the runner, so this package never imports
:mod:`dpo_fast.dask`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
from typing import Any, Callable

from dpo_fast.score.errors import ScoreDataError, ScoreUsageError
from dpo_fast.score.options import LOSS_OPTIONS
from dpo_fast.score.run import DEFAULT_BATCH_ROWS, score_dataset
from dpo_fast.score.summary import DEFAULT_QUANTILES, ScoreSummary
from dpo_fast.score.unpaired import KTO_OPTIONS

__all__ = ["EXIT_DATA", "EXIT_USAGE", "Runner", "add_arguments", "example_path", "run_from_args"]

EXIT_DATA = 1  # bad, missing or unwritable data
EXIT_USAGE = 2  # options that cannot be honoured

# runner(source, *, params, progress, **options) -> ScoreSummary: what runs the command.
# ``options`` are score_dataset's keywords (out, columns, ...), ``params`` the loss keywords.
Runner = Callable[..., ScoreSummary]

# The library's names for the command's options, as they appear in its messages.
_LIBRARY_NAMES = {"batch_rows": "--batch-rows", "on_invalid": "--on-invalid",
                  **{option.parameter: option.flag for option in LOSS_OPTIONS + KTO_OPTIONS}}
_NAME_PATTERN = re.compile(r"(?<![\w.=/\\-])(" + "|".join(map(re.escape, _LIBRARY_NAMES))
                           + r")\b")


def _levels_argument(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(not 0.0 <= q <= 1.0 for q in levels):
        raise argparse.ArgumentTypeError(f"levels must be in [0, 1]: {text!r}")
    return levels


def _row_count(text: str) -> int:
    try:
        value = float(text)  # 1e6 is fine
    except ValueError:
        value = math.nan
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(value)


def example_path() -> contextlib.AbstractContextManager[str]:
    """Context manager giving a filesystem path of the synthetic example shipped in the
    package (``dpo-fast score --example``)."""
    from importlib import resources

    resource = resources.files("dpo_fast").joinpath("data", "example_pairs.jsonl")

    @contextlib.contextmanager
    def path():
        with resources.as_file(resource) as real:
            yield os.fspath(real)

    return path()


def _one_line_error(parser: argparse.ArgumentParser):
    """``parser.error`` without the usage block: one line naming the option, exit status 2."""
    def error(message: str):
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n")

    return error


def _metavar(option) -> str:
    if option.choices and len(option.choices) <= 4:
        return "{" + ",".join(option.choices) + "}"
    item = "TYPE" if option.parameter == "loss_type" else option.item.upper()
    return item + (f"[,{item}...]" if "list" in option.kind else "")


def _help(option) -> str:
    text = option.help.replace("{choices}", ", ".join(option.choices or ()))
    if option.default is not None and option.kind != "bool":
        text += f" (default: {option.default})"
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``dpo-fast score``'s options; the loss options are :data:`LOSS_OPTIONS`."""
    # Errors in the options are one line (the option and what is wrong), without the usage.
    parser.error = _one_line_error(parser)
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="Parquet, Arrow IPC/Feather, CSV or JSON Lines file, or a "
                             "directory of them")
    parser.add_argument("--out", metavar="OUTPUT",
                        help="write the input rows with chosen_reward, rejected_reward, "
                             "margin, loss (unpaired data: reward, loss; and gradients with "
                             "--grad) added; format from the extension; written atomically, "
                             "never over the input")
    parser.add_argument("--example", action="store_true",
                        help="score the small synthetic example shipped with dpo_fast")
    parser.add_argument("--columns", action="append", metavar="ROLE=COLUMN,...",
                        help="column names: chosen, rejected, ref_chosen, ref_rejected, "
                             "chosen_length, rejected_length (default: chosen_logps, "
                             "rejected_logps, ref_chosen_logps, ref_rejected_logps, ...); "
                             "unpaired (--loss-type kto): logps, ref_logps, label, kl_logps, "
                             "ref_kl_logps (default: the same names)")
    parser.add_argument("--reference-free", action="store_true",
                        help="score against a zero reference (reference columns not read)")
    parser.add_argument("--input-format", metavar="FORMAT",
                        help="parquet, ipc (feather), csv or jsonl, if the extension does "
                             "not tell")
    parser.add_argument("--output-format", metavar="FORMAT",
                        help="format of --out, if its extension does not tell")
    parser.add_argument("--batch-rows", type=_row_count, default=DEFAULT_BATCH_ROWS,
                        metavar="N", help=f"rows per record batch, the unit of memory "
                                          f"(default {DEFAULT_BATCH_ROWS})")
    parser.add_argument("--on-invalid", choices=("error", "skip"), default="error",
                        help="a row with a null/non-numeric/NaN/inf value or a malformed "
                             "line: stop with an error naming it (default), or skip it and "
                             "report the count")
    parser.add_argument("--quantiles", type=_levels_argument, metavar="Q,Q,...|none",
                        default=DEFAULT_QUANTILES,
                        help="margin quantile levels, exact (default: 0,.01,.05,.25,.5,.75,"
                             ".95,.99,1); paired data only")
    parser.add_argument("--replace-columns", action="store_true",
                        help="replace input columns named like the added ones (default: "
                             "error)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        dest="summary_format", help="summary on stdout (default: table)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on a Dask cluster (distributed scheduler address) through "
                             "dpo_fast.dask; needs dpo_fast[dask]")
    group = parser.add_argument_group(
        "loss parameters", "keyword arguments of dpo_fast.preference_loss; an option not given "
                           "keeps preference_loss's default")
    kto = parser.add_argument_group(
        "unpaired data (--loss-type kto or apo_zero_unpaired)",
        "TRL's unpaired format: one completion a row, columns logps, ref_logps and a boolean "
        "label (true: desirable), optionally kl_logps and ref_kl_logps; --beta, --reduction "
        "and --grad apply too, the other loss parameters are refused")
    for option in KTO_OPTIONS:
        kto.add_argument(option.flag, dest=option.dest, type=option.parse,
                         default=argparse.SUPPRESS, metavar=_metavar(option),
                         help=_help(option))
    for option in LOSS_OPTIONS:
        if option.kind == "bool":
            group.add_argument(option.flag, dest=option.dest,
                               action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=_help(option))
        else:
            group.add_argument(option.flag, dest=option.dest, type=option.parse,
                               default=argparse.SUPPRESS, metavar=_metavar(option),
                               help=_help(option))


def _message(error: Exception) -> str:
    """A library error as the command line says it: parameter names as their options."""
    return _NAME_PATTERN.sub(lambda match: _LIBRARY_NAMES[match.group(1)], str(error))


def _fail(message: str, status: int) -> int:
    print(f"dpo-fast score: error: {message}", file=sys.stderr)
    return status


def _run_here(source: str, *, params: dict[str, Any], progress: bool,
              **options: Any) -> ScoreSummary:
    return score_dataset(source, progress=progress, **options, **params)


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM as an exception in the main thread, so that temporary files are removed."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _json_numbers(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "inf", "-inf" and "nan": JSON has no
    such numbers (Python's own json would write the invalid ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(item) for item in value]
    return value


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  runner: Runner | None = None) -> int:
    """Run ``dpo-fast score`` for parsed options.

    Parameters
    ----------
    args, parser
        The parsed options and their parser (see :func:`add_arguments`).
    runner : callable, optional
        ``runner(source, *, params, progress, **options) -> ScoreSummary``; default
        :func:`~dpo_fast.score.score_dataset` on this machine (:mod:`dpo_fast.cli` passes
        one that runs on a Dask cluster for ``--scheduler``).

    Returns
    -------
    int
        0; :data:`EXIT_DATA` (1) for bad, missing or unwritable data; :data:`EXIT_USAGE` (2)
        for options that cannot be honoured. Errors are one line on stderr.
    """
    if args.example and args.input:
        return _fail("give INPUT or --example, not both", EXIT_USAGE)
    if not args.example and not args.input:
        return _fail("INPUT is required (or --example for the shipped sample)", EXIT_USAGE)
    run = runner or _run_here
    params = {option.parameter: getattr(args, option.dest)
              for option in LOSS_OPTIONS + KTO_OPTIONS if hasattr(args, option.dest)}
    options = dict(out=args.out, columns=args.columns, reference_free=args.reference_free,
                   input_format=args.input_format, output_format=args.output_format,
                   batch_rows=args.batch_rows, on_invalid=args.on_invalid,
                   quantiles=args.quantiles, replace_columns=args.replace_columns)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_terminate_cleanly())
            source = stack.enter_context(example_path()) if args.example else args.input
            summary = run(source, params=params,
                          progress=not args.quiet and sys.stderr.isatty(), **options)
            if args.example:
                summary = dataclasses.replace(
                    summary, input="example (synthetic): " + os.path.basename(source))
    except (ScoreUsageError, ImportError) as exc:
        return _fail(_message(exc), EXIT_USAGE)
    except ScoreDataError as exc:
        return _fail(str(exc), EXIT_DATA)
    except MemoryError:
        return _fail(f"out of memory with --batch-rows {args.batch_rows}; lower it (memory "
                     "grows with the rows of one batch)", EXIT_DATA)
    if args.summary_format == "json":
        json.dump(_json_numbers(summary.to_dict()), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(summary.format_table())
    if summary.skipped:
        print(f"dpo-fast score: skipped {summary.skipped:,} invalid rows "
              f"(first: {summary.first_skipped})", file=sys.stderr)
    return 0
