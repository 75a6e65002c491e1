import numpy as np
import numpy.typing as npt

MAX_LENGTH: int

def scratch_length(n: int) -> int: ...
def sorted_differences(
    first: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    second: npt.NDArray[np.float32] | npt.NDArray[np.float64] | None,
    scale: float,
    want_order: bool,
    n_threads: int,
    scratch: npt.NDArray[np.uint64] | None = None,
    values: npt.NDArray[np.float64] | None = None,
    order: npt.NDArray[np.uint32] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint32] | None, bool]: ...

def radix_sort(
    values: npt.NDArray[np.float64], want_order: bool, n_threads: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]: ...
def scatter(
    source: npt.NDArray[np.float64],
    order: npt.NDArray[np.uint32],
    out: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    scale: float,
    divisor: float,
    negate: bool,
    n_threads: int,
) -> None: ...
