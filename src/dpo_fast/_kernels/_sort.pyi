import numpy as np
import numpy.typing as npt

MAX_LENGTH: int

def radix_sort(
    values: npt.NDArray[np.float64], want_order: bool, n_threads: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]: ...
