import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]

CHUNK_ROWS: int
LOSS_FLAGS: dict[str, int]

def loss_registry() -> tuple[tuple[str, int, int, float], ...]: ...
SUM_NAMES: tuple[str, ...]
MAX_TERMS: int
DIVERGENCE_IDS: dict[str, int]
EXO_DEFAULT_LABEL_SMOOTHING: float

def pairwise_loss_f64(
    chosen: npt.NDArray[np.float64],
    rejected: npt.NDArray[np.float64],
    ref_chosen: npt.NDArray[np.float64] | None,
    ref_rejected: npt.NDArray[np.float64] | None,
    losses: npt.NDArray[np.float64],
    chosen_rewards: npt.NDArray[np.float64],
    rejected_rewards: npt.NDArray[np.float64],
    grad_chosen: npt.NDArray[np.float64] | None,
    grad_rejected: npt.NDArray[np.float64] | None,
    loss_type: int,
    beta: float,
    label_smoothing: float,
    discopop_tau: float,
    grad_divisor: float,
    n_threads: int,
) -> tuple[float, ...]: ...
def pairwise_loss_f32(
    chosen: npt.NDArray[np.float32],
    rejected: npt.NDArray[np.float32],
    ref_chosen: npt.NDArray[np.float32] | None,
    ref_rejected: npt.NDArray[np.float32] | None,
    losses: npt.NDArray[np.float32],
    chosen_rewards: npt.NDArray[np.float32],
    rejected_rewards: npt.NDArray[np.float32],
    grad_chosen: npt.NDArray[np.float32] | None,
    grad_rejected: npt.NDArray[np.float32] | None,
    loss_type: int,
    beta: float,
    label_smoothing: float,
    discopop_tau: float,
    grad_divisor: float,
    n_threads: int,
) -> tuple[float, ...]: ...
def general_loss_f64(
    chosen: npt.NDArray[np.float64],
    rejected: npt.NDArray[np.float64],
    ref_chosen: npt.NDArray[np.float64] | None,
    ref_rejected: npt.NDArray[np.float64] | None,
    chosen_lengths: npt.NDArray[np.float64] | None,
    rejected_lengths: npt.NDArray[np.float64] | None,
    weights: npt.NDArray[np.float64] | None,
    losses: npt.NDArray[np.float64],
    chosen_rewards: npt.NDArray[np.float64],
    rejected_rewards: npt.NDArray[np.float64],
    grad_chosen: npt.NDArray[np.float64] | None,
    grad_rejected: npt.NDArray[np.float64] | None,
    terms: tuple[tuple[int, int, float], ...],
    beta: float,
    label_smoothing: float,
    discopop_tau: float,
    simpo_gamma: float,
    sft_value: float,
    divergence: int,
    divergence_coef: float,
    normalized_rewards: bool,
    grad_chosen_offset: float,
    grad_chosen_pair_offset: float,
    grad_divisor: float,
    n_threads: int,
) -> tuple[float, ...]: ...
def general_loss_f32(
    chosen: npt.NDArray[np.float32],
    rejected: npt.NDArray[np.float32],
    ref_chosen: npt.NDArray[np.float32] | None,
    ref_rejected: npt.NDArray[np.float32] | None,
    chosen_lengths: npt.NDArray[np.float64] | None,
    rejected_lengths: npt.NDArray[np.float64] | None,
    weights: npt.NDArray[np.float64] | None,
    losses: npt.NDArray[np.float32],
    chosen_rewards: npt.NDArray[np.float32],
    rejected_rewards: npt.NDArray[np.float32],
    grad_chosen: npt.NDArray[np.float32] | None,
    grad_rejected: npt.NDArray[np.float32] | None,
    terms: tuple[tuple[int, int, float], ...],
    beta: float,
    label_smoothing: float,
    discopop_tau: float,
    simpo_gamma: float,
    sft_value: float,
    divergence: int,
    divergence_coef: float,
    normalized_rewards: bool,
    grad_chosen_offset: float,
    grad_chosen_pair_offset: float,
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
