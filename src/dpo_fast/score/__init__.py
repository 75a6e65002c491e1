"""Score preference datasets of any size: ``dpo-fast score`` and :func:`score_dataset`.

Teams store policy and reference log-probs next to their preference pairs (Parquet, Arrow
IPC/Feather, CSV or JSON Lines). This package streams such a file, or a directory of them, in
record batches through :func:`dpo_fast.preference_loss`, optionally writes every input row with
its implicit rewards, margin and loss added, and returns a summary: the loss, TRL's metrics and
the margin distribution.

This is an adapter: it imports the core (``dpo_fast.losses``) and pyarrow, the core never
imports it, and pyarrow / tqdm are imported only when a function here needs them, so
``import dpo_fast`` (and ``dpo-fast bench``) work without them. It never imports
:mod:`dpo_fast.dask` or :mod:`dpo_fast.cli` (they import it).

Modules, one job each
---------------------
* :mod:`~dpo_fast.score.errors`: ``ScoreUsageError``, ``ScoreDataError``, the pyarrow import.
* :mod:`~dpo_fast.score.options`: the explicit table of loss options and their validation.
* :mod:`~dpo_fast.score.columns`: column roles, the ``columns=`` mapping, row validation.
* :mod:`~dpo_fast.score.arrow`: Arrow columns as NumPy values (text parsed as numbers).
* :mod:`~dpo_fast.score.summary`: exact sums, the quantile sketch, partial and final
  summaries (pure NumPy; :mod:`dpo_fast.dask` merges partitions with it).
* :mod:`~dpo_fast.score.batch`: scoring one batch.
* :mod:`~dpo_fast.score.readers`, :mod:`~dpo_fast.score.schema`,
  :mod:`~dpo_fast.score.writers`: files in, the output's schema, files out.
* :mod:`~dpo_fast.score.run`: :func:`score_dataset`.
* :mod:`~dpo_fast.score.unpaired`, :mod:`~dpo_fast.score.unpaired_summary`,
  :mod:`~dpo_fast.score.unpaired_run`: unpaired data (``loss_type="kto"`` or
  ``"apo_zero_unpaired"``, TRL's unpaired format): roles and options, the exact summary, the
  run (the reference point over the whole input).
* :mod:`~dpo_fast.score.cli`: the ``dpo-fast score`` options and their run.

Reading and memory
------------------
A directory is walked (links followed, each real file once; names starting with ``.`` or
``_`` are skipped, as pyarrow.dataset does); each file is then streamed by its format's own
reader: ``ParquetFile.iter_batches`` (about one row group of the columns read in memory),
Arrow IPC record batches (one batch as written in the file: pyarrow and pandas write
64Ki-row batches), pyarrow's streaming CSV reader, and JSON Lines in chunks of whole lines.
(The pyarrow.dataset scanner itself reads ahead without a tight bound when the consumer is
slower than the disk: measured, 277-347 MB of Arrow memory for a 374 MB Parquet file.)
Without ``out`` only the columns scored are read.

Peak memory does not grow with the input. It is about ``WRITE_QUEUE_DEPTH + 3`` batches of
``batch_rows`` rows (the batch being scored, those queued for the writer thread, the one
being written, reused output arrays), plus one or two input row groups (the batches being
written may still point into the previous one), plus the quantile state (an 8 MiB histogram,
a 1 MiB bin table and at most ``QUANTILE_BUDGET`` margins, 32 MiB). Measured with
``bench/bench_score.py`` at the default batch size (2 cores, Parquet with 1Mi-row row
groups, ``--out`` Parquet, VmHWM of the process): 359-391 MiB for 10M rows, 376-384 MiB for
20M rows, 358-380 MiB for 40M rows (three runs each); pyarrow alone reading and writing the
same files peaks at 290, 317 and 314 MiB. Smaller files peak lower (295 MiB for 1.25M rows)
because fewer row groups and batches are in flight at once.

Exactness of the summary
------------------------
* Sums (loss, rewards, margins, log-probs) are accumulated per batch in float64 (NumPy's
  pairwise summation: relative error about ``log2(batch_rows) * 2**-53`` of the sum of
  magnitudes) and the per-batch sums are combined *exactly* (as integers in units of
  ``2**-1074``): the result does not depend on the order in which batches or Dask partitions
  are combined (how the rows are cut into batches moves it by about 1e-16 relative), and
  means are the correctly rounded quotient of that exact total.
* Counts (pairs, accuracies, negative margins) are exact integers.
* Margin quantiles are exact, equal to ``numpy.quantile(margins, q)`` (linear interpolation)
  bit for bit, computed with bounded memory: a histogram of the margins' bit patterns (2**20
  bins) finds the bin holding each needed order statistic, and the values of the bins around
  the running estimate are kept as they stream by. When a needed bin was not kept (the
  distribution drifted along the file, or a bin holds more than ``QUANTILE_BUDGET`` values)
  the input is read once more and only that bin's values are collected (or its histogram
  refined by 20 more bits, at most 3 times). ``ScoreSummary.quantile_passes`` reports how many
  extra passes were made (0 in the usual case).
"""

from dpo_fast.score.batch import ADDED_COLUMNS, GRAD_COLUMNS
from dpo_fast.score.cli import add_arguments, example_path, run_from_args
from dpo_fast.score.columns import ROLES, ColumnRole, resolve_columns
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError
from dpo_fast.score.options import LossOption, effective_parameters, loss_options
from dpo_fast.score.readers import INPUT_FORMATS, OUTPUT_FORMATS, format_of
from dpo_fast.score.run import DEFAULT_BATCH_ROWS, score_dataset
from dpo_fast.score.summary import (
    DEFAULT_QUANTILES,
    QUANTILE_BUDGET,
    PartialSummary,
    ScoreSummary,
)
from dpo_fast.score.unpaired import (
    KTO_OPTIONS,
    UNPAIRED_ADDED_COLUMNS,
    UNPAIRED_GRAD_COLUMNS,
    UNPAIRED_ROLES,
)
from dpo_fast.score.unpaired_summary import UnpairedSummary
from dpo_fast.score.writers import WRITE_QUEUE_DEPTH

__all__ = [
    "ADDED_COLUMNS",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_QUANTILES",
    "GRAD_COLUMNS",
    "INPUT_FORMATS",
    "KTO_OPTIONS",
    "OUTPUT_FORMATS",
    "QUANTILE_BUDGET",
    "ROLES",
    "ColumnRole",
    "LossOption",
    "PartialSummary",
    "ScoreDataError",
    "ScoreSummary",
    "ScoreUsageError",
    "UNPAIRED_ADDED_COLUMNS",
    "UNPAIRED_GRAD_COLUMNS",
    "UNPAIRED_ROLES",
    "UnpairedSummary",
    "WRITE_QUEUE_DEPTH",
    "add_arguments",
    "effective_parameters",
    "example_path",
    "format_of",
    "loss_options",
    "resolve_columns",
    "run_from_args",
    "score_dataset",
]
