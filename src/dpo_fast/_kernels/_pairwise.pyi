import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]

CHUNK_ROWS: int
LOSS_FLAGS: dict[str, int]

def loss_registry() -> tuple[tuple[str, int, int, float], ...]: ...
SUM_NAMES: tuple[str, ...]
MAX_TERMS: int
DIVERGENCE_IDS: dict[str, int]

class LossConfig:
    loop: str
    needs_lengths: bool
    weighted: bool
    needs_gt_rewards: bool
    shaped_rewards: bool
    def __init__(
        self,
        terms: tuple[tuple[int, int, float], ...],
        *,
        beta: float,
        label_smoothing: float = 0.0,
        discopop_tau: float = 0.05,
        simpo_gamma: float = 0.0,
        sft_value: float = 0.0,
        dpop_lambda: float = 0.0,
        bco_delta: float = 0.0,
        alphapo_alpha: float = 0.0,
        gt_reward_scale: float = 1.0,
        divergence: int = 0,
        divergence_coef: float = 0.0,
        normalized_rewards: bool = False,
        grad_chosen_offset: float = 0.0,
        grad_chosen_pair_offset: float = 0.0,
        grad_divisor: float = 1.0,
        weighted: bool = False,
    ) -> None: ...

def run(
    config: LossConfig,
    chosen: _Float,
    rejected: _Float,
    ref_chosen: _Float | None,
    ref_rejected: _Float | None,
    chosen_lengths: npt.NDArray[np.float64] | None,
    rejected_lengths: npt.NDArray[np.float64] | None,
    weights: npt.NDArray[np.float64] | None,
    outputs: dict[str, _Float],
    n_threads: int,
    gt_reward_margins: npt.NDArray[np.float64] | None = None,
) -> tuple[float, ...]: ...

def memory_traffic(
    a: _Float, b: _Float, c: _Float, d: _Float, x: _Float, y: _Float, z: _Float, n_threads: int
) -> None: ...
def exact_count_sum_of(
    counts: _Float | npt.NDArray[np.int64] | npt.NDArray[np.int32],
) -> float: ...
def openmp_enabled() -> bool: ...
def simd_level() -> str: ...
def supported_simd_levels() -> tuple[str, ...]: ...
def set_simd_level(name: str) -> str: ...

MATH_FUNCTIONS: tuple[str, ...]

def math_values(name: str, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
