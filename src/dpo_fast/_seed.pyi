from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_Values = Sequence[float] | npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]]

def round4(x: float) -> float: ...
def round4_list(values: npt.NDArray[np.float64]) -> list[float]: ...
def validate_beta(beta: object) -> float: ...
def set_array_path(path: Callable[..., dict[str, Any]]) -> None: ...
def dpo_loss(
    log_probs_chosen_policy: _Values,
    log_probs_rejected_policy: _Values,
    log_probs_chosen_ref: _Values,
    log_probs_rejected_ref: _Values,
    beta: float,
) -> dict[str, Any]: ...
