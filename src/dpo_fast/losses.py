"""preference_loss: the array API over the fused compiled kernel.

The public face of the loss family: ``preference_loss`` and its result type come from the
compiled entry point (dpo_fast._entry), which runs the common call in C and hands every other
call to the validated general path (dpo_fast._general); the tables of loss types, reductions
and f-divergences are the general path's.
"""

from __future__ import annotations

from dpo_fast._entry import PreferenceLossResult, preference_loss
from dpo_fast._general import (
    BATCH_COUPLED_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    LENGTH_LOSS_TYPES,
    LOSS_TYPES,
    REDUCTIONS,
)

__all__ = ["PreferenceLossResult", "preference_loss", "LOSS_TYPES", "REDUCTIONS",
           "BATCH_COUPLED_LOSS_TYPES", "F_DIVERGENCE_TYPES", "LENGTH_LOSS_TYPES"]
