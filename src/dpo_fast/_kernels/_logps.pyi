import numpy as np
import numpy.typing as npt

_Float = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]

NOT_ARGMAX: int
ARGMAX: int
NONFINITE: int
LINEAR_STATE: int
STREAM_GRAD_MIN_BYTES: int

def simd_level_id() -> int: ...

def common_call(
    logits: object,
    labels: object,
    ignore_index: object,
    mask: object,
    average: object,
    temperature: object,
    return_token_logps: object,
    return_entropy: object,
    n_threads: object,
    max_elements: int,
) -> tuple[_F64, _I64, float, _F64, _F64 | None, _F64 | None, float | None] | None: ...
def common_grad_call(
    logits: object,
    labels: object,
    grad_logps: object,
    ignore_index: object,
    mask: object,
    average: object,
    temperature: object,
    grad_token_logps: object,
    logsumexp: object,
    n_threads: object,
    out: object,
    max_elements: int,
) -> _Float | None: ...

def select_rows(
    labels: _I64,
    mask: _U8 | None,
    ignore_index: int,
    vocab: int,
    rows: _I64,
    counts: _I64,
) -> tuple[int, int]: ...
def forward(
    logits: _Float,
    labels: _I64,
    rows: _I64,
    inv_temperature: float,
    token_logps: _F64,
    logsumexp: _F64,
    entropy: _F64 | None,
    status: _U8,
    *,
    n_threads: int,
    log_sum_p2: _F64 | None = None,
    logit_sum: _F64 | None = None,
) -> int: ...
def sequence_sums(
    rows: _I64,
    n_t: int,
    token_logps: _F64,
    entropy: _F64 | None,
    status: _U8,
    sums: _F64,
) -> tuple[int, float]: ...
def backward(
    logits: _Float,
    labels: _I64,
    row_weight: _F64,
    logsumexp: _F64 | None,
    inv_temperature: float,
    grad: _Float,
    status: _U8,
    *,
    n_threads: int,
    grad_zeroed: bool = ...,
) -> int: ...
def linear_fold(
    tile: _Float,
    bias: _Float | None,
    v0: int,
    labels: _I64,
    inv_temperature: float,
    state: _F64,
    status: _U8,
    *,
    want_extras: bool,
    n_threads: int,
) -> None: ...
def linear_tile_grad(
    tile: _Float,
    bias: _Float | None,
    v0: int,
    labels: _I64,
    inv_temperature: float,
    row_scale: _F64,
    lse: _F64,
    *,
    n_threads: int,
) -> None: ...
