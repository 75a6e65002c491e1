from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

class PreferenceLossResult:
    __match_args__: ClassVar[tuple[str, ...]]
    @property
    def loss(self) -> float | np.ndarray: ...
    @property
    def losses(self) -> np.ndarray | None: ...
    @property
    def chosen_rewards(self) -> np.ndarray | None: ...
    @property
    def rejected_rewards(self) -> np.ndarray | None: ...
    @property
    def grad_chosen(self) -> np.ndarray | None: ...
    @property
    def grad_rejected(self) -> np.ndarray | None: ...
    @property
    def metrics(self) -> dict[str, float]: ...
    def __init__(
        self,
        loss: float | np.ndarray,
        losses: np.ndarray | None,
        chosen_rewards: np.ndarray | None,
        rejected_rewards: np.ndarray | None,
        grad_chosen: np.ndarray | None,
        grad_rejected: np.ndarray | None,
        metrics: dict[str, float],
    ) -> None: ...

def preference_loss(
    chosen_logps: Any,
    rejected_logps: Any,
    ref_chosen_logps: Any = None,
    ref_rejected_logps: Any = None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
    simpo_gamma: float = 0.5,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    chosen_lengths: Any = None,
    rejected_lengths: Any = None,
    weights: Any = None,
    reduction: str = "mean",
    compute_grad: bool = False,
    check_finite: bool = True,
    n_threads: int | None = None,
    out: Mapping[str, np.ndarray] | None = None,
    dpop_lambda: float = 50.0,
    bco_delta: float = 0.0,
    alphapo_alpha: float = 0.0,
    gt_reward_margins: Any = None,
    gt_reward_scale: float = 1.0,
    per_pair_outputs: Collection[str] | None = None,
) -> PreferenceLossResult: ...
def dpo_loss_arrays(
    chosen_policy: Any, rejected_policy: Any, chosen_ref: Any, rejected_ref: Any, beta: Any
) -> dict[str, Any]: ...
