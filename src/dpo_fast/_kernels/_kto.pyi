import numpy as np
import numpy.typing as npt

_Sums = tuple[float | None, float, float, float, float, int]

def fsum(values: npt.NDArray[np.float64]) -> float: ...
def exact_units(values: npt.NDArray[np.float64]) -> int: ...
def fsum_differences(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]
) -> tuple[float | None, bool]: ...
def kto_rows(
    policy: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    desirable: npt.NDArray[np.bool_],
    beta: float,
    kl: float,
    desirable_weight: float,
    undesirable_weight: float,
    compute_grad: bool,
    with_sums: int,
) -> tuple[
    bool,
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64] | None,
    _Sums | None,
]: ...
