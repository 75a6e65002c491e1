"""sequence_logps / sequence_logps_grad refuse bad logits, labels, masks, temperatures and
scalars (and non-finite logits at counted positions) with clear messages; also the module's
surface: its docstring examples run, its SIMD level follows the pairwise kernels', and the
compiled module has a type stub.
"""

from __future__ import annotations

import doctest
import importlib.util
import pathlib

import numpy as np
import pytest
from reference_logps import make_batch

from dpo_fast import logps as logps_module
from dpo_fast import sequence_logps, sequence_logps_grad
from dpo_fast._kernels import _logps, _pairwise

# ------------------------------------------------------------------ validation


def _setup():
    rng = np.random.default_rng(18)
    return make_batch(rng, b=2, t=4, v=6, p_masked=0.0)


def test_rejects_bad_logits():
    _, labels, _ = _setup()
    with pytest.raises(TypeError, match="logits must be float32 or float64, got dtype int64"):
        sequence_logps(np.zeros((2, 4, 6), dtype=np.int64), labels)
    with pytest.raises(TypeError, match="float16.*astype"):
        sequence_logps(np.zeros((2, 4, 6), dtype=np.float16), labels)
    with pytest.raises(ValueError, match=r"shape \(B, T, V\) or \(N, V\)"):
        sequence_logps(np.zeros(6), labels)
    with pytest.raises(ValueError, match=r"shape \(B, T, V\) or \(N, V\)"):
        sequence_logps(np.zeros((1, 2, 4, 6)), labels)
    with pytest.raises(ValueError, match="empty vocabulary"):
        sequence_logps(np.zeros((2, 4, 0)), labels)


def test_rejects_bad_labels():
    logits, labels, _ = _setup()
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        sequence_logps(logits, labels.astype(float))
    with pytest.raises(TypeError, match="labels must be integers, got dtype bool"):
        sequence_logps(logits, labels > 2)
    with pytest.raises(ValueError, match=r"labels has shape \(2, 3\).*must have shape \(2, 4\)"):
        sequence_logps(logits, labels[:, :3])
    bad = labels.copy()
    bad[1, 2] = 6
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 6 is out of range for a "
                                         r"vocabulary of 6"):
        sequence_logps(logits, bad)
    bad[0, 3] = -5
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -5 is out of range"):
        sequence_logps(logits, bad)
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -5"):
        sequence_logps_grad(logits, bad, 1.0)
    with pytest.raises(ValueError, match=r"labels\[1\] = 18446744073709551615"):
        sequence_logps(logits[0], np.array([1, 2**64 - 1, 0, 0], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"labels\[2\] = 9"):
        sequence_logps(logits[0], np.array([1, 2, 9, 0]))


def test_rejects_non_finite_logits_at_counted_positions():
    logits, labels, mask = _setup()
    for value, text in [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")]:
        bad = logits.copy()
        bad[1, 2, 4] = value
        bad[1, 3, 0] = value
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}: logits must be "
                                             "finite"):
            sequence_logps(bad, labels)
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}"):
            sequence_logps(bad.astype(np.float32), labels)
        with pytest.raises(ValueError, match=rf"logits\[1, 2, 4\] is {text}"):
            sequence_logps_grad(bad, labels, 1.0)
        masked = mask.copy()
        masked[1, 2:] = False
        sequence_logps(bad, labels, mask=masked)        # not read: fine
    with pytest.raises(ValueError, match=r"logits\[3, 1\] is nan"):
        x = logits[0].copy()
        x[3, 1] = np.nan
        sequence_logps(x, labels[0])
    with pytest.raises(ValueError, match="overflows double precision"):
        sequence_logps(logits * 1e300, labels, temperature=1e-300)


def test_rejects_bad_mask():
    logits, labels, mask = _setup()
    with pytest.raises(TypeError, match="mask must be boolean or integer.*float64"):
        sequence_logps(logits, labels, mask=mask.astype(float))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) but labels have shape"):
        sequence_logps(logits, labels, mask=mask[:, :3])


@pytest.mark.parametrize("temperature, error", [
    (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (1e-320, ValueError), (10**400, ValueError), ("1", TypeError), (True, TypeError),
    (None, TypeError),
])
def test_rejects_bad_temperature(temperature, error):
    logits, labels, _ = _setup()
    with pytest.raises(error, match="temperature"):
        sequence_logps(logits, labels, temperature=temperature)


def test_rejects_bad_scalars():
    logits, labels, _ = _setup()
    for n_threads in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_threads"):
            sequence_logps(logits, labels, n_threads=n_threads)
    for name in ("average", "return_token_logps", "return_entropy"):
        with pytest.raises(TypeError, match=name):
            sequence_logps(logits, labels, **{name: 1})
    for ignore_index in (1.5, True, None):
        with pytest.raises(TypeError, match="ignore_index must be an integer"):
            sequence_logps(logits, labels, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="ignore_index"):
        sequence_logps(logits, labels, ignore_index=2**70)
    assert sequence_logps(logits, labels, ignore_index=np.int16(-100), n_threads=np.int64(2))


def test_gradient_rejects_bad_arguments():
    logits, labels, _ = _setup()
    with pytest.raises(ValueError, match=r"grad_logps has shape \(3,\).*broadcast to \(2,\)"):
        sequence_logps_grad(logits, labels, np.ones(3))
    with pytest.raises(TypeError, match="grad_logps must hold real numbers"):
        sequence_logps_grad(logits, labels, "x")
    with pytest.raises(ValueError, match="grad_token_logps"):
        sequence_logps_grad(logits, labels, 1.0, grad_token_logps=np.ones((2, 5)))
    with pytest.raises(ValueError, match="logsumexp has shape"):
        sequence_logps_grad(logits, labels, 1.0, logsumexp=np.zeros(2))
    with pytest.raises(TypeError, match="out has dtype float32"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty(logits.shape, np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty((2, 4, 5)))
    with pytest.raises(ValueError, match="C-contiguous"):
        sequence_logps_grad(logits, labels, 1.0, out=np.empty((2, 4, 12))[..., ::2])
    with pytest.raises(ValueError, match="overlaps logits"):
        sequence_logps_grad(logits, labels, 1.0, out=logits)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        sequence_logps_grad(logits, labels, 1.0, out=[0.0])


def test_docstring_examples():
    result = doctest.testmod(logps_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_simd_level_follows_the_pairwise_kernels(simd_levels):
    """DPO_FAST_SIMD / set_simd_level switch these loops too (the level is read per call)."""
    ids = {"scalar": 0, "avx2": 2, "avx512": 3}
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        assert _logps.simd_level_id() == ids.get(level, 1)


def test_compiled_module_has_a_type_stub():
    origin = pathlib.Path(importlib.util.find_spec("dpo_fast._kernels._logps").origin)
    assert origin.suffix in {".so", ".pyd"}, f"not compiled: {origin}"
    assert (origin.parent / "_logps.pyi").is_file()
