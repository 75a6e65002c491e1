"""dpo_fast: fast, exact Direct Preference Optimization losses.

Public API
----------
dpo_loss
    The list drop-in: lists in, a dict of values rounded like round(x, 4) out.
preference_loss
    The array API: the fused loss, rewards, gradients and TRL's metrics in one pass.
sequence_logps, sequence_logps_grad
    Per-sequence log-probabilities from a language model's logits (B, T, V) in one fused pass
    with no B*T*V temporary, and their gradient written straight into one output buffer.
linear_sequence_logps, linear_sequence_logps_grad
    The same from the hidden states and the lm_head (fused linear + log-softmax): the logits
    exist one fixed-size tile at a time; gradients to hidden, weight and bias.
kto_loss
    The KTO losses of unpaired completions (TRL's KTOTrainer), with their gradient.
ld_dpo_logps
    LD-DPO's sequence log-probs (TRL's ``ld_alpha``) from token log-probs.
openmp_enabled, simd_level
    Which build is running: OpenMP threads or serial, and the SIMD code path in use.

Environment
-----------
DPO_FAST_SIMD
    Force a lower SIMD code path at import (``scalar``, ``sse2``/``neon``, ``avx2``,
    ``avx512``); a name above what the CPU supports gives the best supported one. Every path
    gives the same bits, which the tests check.
"""

import os as _os
import warnings as _warnings

from dpo_fast import _entry, _seed
from dpo_fast._kernels import _pairwise
from dpo_fast._seed import dpo_loss
from dpo_fast._version import __version__
from dpo_fast.kto import KTOLossResult, kto_loss
from dpo_fast.ld_dpo import ld_dpo_logps
from dpo_fast.linear_logps import linear_sequence_logps, linear_sequence_logps_grad
from dpo_fast.logps import SequenceLogpsResult, sequence_logps, sequence_logps_grad
from dpo_fast.losses import PreferenceLossResult, preference_loss

__all__ = [
    "PreferenceLossResult",
    "SequenceLogpsResult",
    "__version__",
    "dpo_loss",
    "KTOLossResult",
    "kto_loss",
    "ld_dpo_logps",
    "linear_sequence_logps",
    "linear_sequence_logps_grad",
    "openmp_enabled",
    "preference_loss",
    "sequence_logps",
    "sequence_logps_grad",
    "simd_level",
]


def openmp_enabled() -> bool:
    """Whether this build of the kernels runs OpenMP threads.

    Returns
    -------
    bool
        False for a serial build (no OpenMP found at build time, or ``DPO_FAST_NO_OPENMP=1``);
        ``n_threads`` is then accepted and has no effect.
    """
    return _pairwise.openmp_enabled()


def simd_level() -> str:
    """Name of the instruction set the kernels' runtime dispatch picked on this CPU.

    Returns
    -------
    str
        One of ``"avx512"``, ``"avx2"``, ``"sse2"`` (x86-64 baseline), ``"neon"`` (aarch64
        baseline), ``"baseline"`` (other CPUs) or ``"scalar"`` (vectorisation off, only when
        forced with ``DPO_FAST_SIMD=scalar``).
    """
    return _pairwise.simd_level()


def _apply_simd_env() -> None:
    requested = _os.environ.get("DPO_FAST_SIMD", "").strip().lower()
    if not requested:
        return
    try:
        _pairwise.set_simd_level(requested)
    except ValueError as exc:
        _warnings.warn(f"DPO_FAST_SIMD ignored: {exc}", RuntimeWarning, stacklevel=2)


_apply_simd_env()
# dpo_loss runs everything but short lists through the NumPy entry point; _seed sits below
# _entry (which imports from it), so the public layer hands it the callable.
_seed.set_array_path(_entry.dpo_loss_arrays)
