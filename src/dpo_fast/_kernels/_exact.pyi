import numpy as np
import numpy.typing as npt

def fsum(values: npt.NDArray[np.float64]) -> float: ...
def fsum_split(
    values: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]
) -> tuple[float, float]: ...
