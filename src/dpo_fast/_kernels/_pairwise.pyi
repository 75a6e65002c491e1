import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]

CHUNK_ROWS: int
LOSS_SIGMOID: int
SUM_NAMES: tuple[str, ...]

def pairwise_loss(
    chosen: _Float,
    rejected: _Float,
    ref_chosen: _Float | None,
    ref_rejected: _Float | None,
    losses: _Float,
    chosen_rewards: _Float,
    rejected_rewards: _Float,
    grad_chosen: _Float | None,
    grad_rejected: _Float | None,
    *,
    loss_type: int,
    beta: float,
    label_smoothing: float,
    grad_divisor: float,
    n_threads: int,
) -> tuple[float, ...]: ...
def memory_traffic(
    a: _Float, b: _Float, c: _Float, d: _Float, x: _Float, y: _Float, z: _Float, n_threads: int
) -> None: ...
def openmp_enabled() -> bool: ...
def simd_level() -> str: ...
def supported_simd_levels() -> tuple[str, ...]: ...
def set_simd_level(name: str) -> str: ...
