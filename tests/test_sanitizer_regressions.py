"""Regression tests for what the sanitizer build found (scripts/sanitize.sh: ASan + UBSan).

1. dpo_loss's list fast path read list item arrays after Python code (a number's __float__,
   beta's __float__, an item's __del__) had resized or freed them. ASan/UBSan reported a load
   of a null pointer and a heap-use-after-free in dpo_fast/_seed.pyx; a normal build crashed
   with a segmentation fault or silently read freed memory.
2. dpo_exp (csrc/simd_math.h) shifted a negative int64 left when its argument was NaN (inputs
   with check_finite=False). UBSan: "left shift of negative value"; undefined behaviour in ISO
   C, which only GCC's -fwrapv (in CPython's CFLAGS, so in our release builds) happened to
   define. The NaN must simply propagate.
"""

from __future__ import annotations

import gc
import numbers

import numpy as np
import pytest
from helpers import Guarded
from test_threads_simd import fingerprint

from dpo_fast import dpo_loss, preference_loss, sequence_logps, sequence_logps_grad

N = 8  # dpo_loss's fast path (lists of at most CHUNK_ROWS pairs)
OUTPUTS = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")
NAMES = ("log_probs_chosen_policy", "log_probs_rejected_policy", "log_probs_chosen_ref",
         "log_probs_rejected_ref")


class _Number:
    """A real number whose float() first runs `action` (some Python code)."""

    def __init__(self, action, value=-1.0):
        self.action = action
        self.value = value

    def __float__(self):
        self.action()
        return self.value


numbers.Real.register(_Number)


def _lists():
    return [[-1.0] * N, [-2.0] * N, [-1.5] * N, [-2.0] * N]


@pytest.mark.parametrize(("culprit", "victim"), [(0, 1), (0, 3), (1, 2), (2, 3)])
@pytest.mark.parametrize("position", [0, N - 1])
def test_dpo_loss_later_argument_emptied_by_a_float_conversion(culprit, victim, position):
    """An item of one argument empties a list that is read after it: ValueError, not a read
    of the emptied list through its old length."""
    args = _lists()
    args[culprit][position] = _Number(args[victim].clear)
    with pytest.raises(ValueError, match=f"{NAMES[victim]} changed size during the call"):
        dpo_loss(*args, 0.1)


@pytest.mark.parametrize("victim", range(4))
def test_dpo_loss_argument_emptied_by_beta_float_conversion(victim):
    """beta is converted after the lengths are checked; its __float__ may empty a list."""
    args = _lists()
    with pytest.raises(ValueError, match=f"{NAMES[victim]} changed size during the call"):
        dpo_loss(*args, _Number(args[victim].clear, value=0.1))


@pytest.mark.parametrize("victim", range(4))
def test_dpo_loss_argument_grown_by_beta_float_conversion(victim):
    args = _lists()
    with pytest.raises(ValueError, match=f"{NAMES[victim]} changed size during the call"):
        dpo_loss(*args, _Number(lambda: args[victim].extend([-1.0] * 1000), value=0.1))


def test_dpo_loss_list_emptied_by_del_of_an_item_taken_out_by_its_float():
    """__float__ swaps the item out of its own list (same length, so the re-check after it
    passed) and __del__, run when the fast path dropped its last reference to the item while
    reading the next one, empties the list: ValueError, not a read of the freed item array."""

    class SelfRemoving:
        def __init__(self, owner):
            self.owner = owner

        def __float__(self):
            self.owner[0] = -1.0
            return -1.0

        def __del__(self):
            self.owner.clear()

    numbers.Real.register(SelfRemoving)
    chosen = [-1.0] * N
    chosen[0] = SelfRemoving(chosen)
    with pytest.raises(ValueError, match="log_probs_chosen_policy changed size during the call"):
        dpo_loss(chosen, [-2.0] * N, [-1.5] * N, [-2.0] * N, 0.1)
    gc.collect()


def test_dpo_loss_items_replaced_without_resizing_still_read_correctly():
    """A __float__ that replaces items (new objects, same length) is fine: the result is the
    one for the values read."""
    chosen = [-1.0] * N

    def replace_the_rest():
        chosen[1:] = [-1.0] * (N - 1)

    chosen[0] = _Number(replace_the_rest)
    assert dpo_loss(chosen, [-2.0] * N, [-1.5] * N, [-2.0] * N, 0.1) == dpo_loss(
        [-1.0] * N, [-2.0] * N, [-1.5] * N, [-2.0] * N, 0.1)


NAN_ROWS = [0, 7, 8, 18]  # around SIMD widths; n = 19 leaves a remainder for every width


def _nan_inputs(dtype):
    rng = np.random.default_rng(7)
    arrays = [rng.normal(-5.0, 1.0, 19).astype(dtype) for _ in range(4)]
    for array in arrays:
        array[NAN_ROWS] = np.nan
    return arrays


PER_PAIR_CASES = [
    {"loss_type": "sigmoid"},
    {"loss_type": "robust", "label_smoothing": 0.1},
    {"loss_type": "exo_pair", "label_smoothing": 1e-3},
    {"loss_type": "bco_pair", "bco_delta": 0.3},
    {"loss_type": "dpop"},
    {"loss_type": "nca_pair"},
    {"loss_type": "discopop"},
    {"loss_type": "apo_zero"},
    {"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0, 0.5]},  # the general loop
    {"loss_type": "sigmoid", "f_divergence_type": "forward_kl"},
    {"loss_type": "sigmoid", "f_divergence_type": "js_divergence"},
    {"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence",
     "f_alpha_divergence_coef": 0.5},
    {"loss_type": "sigmoid", "weights": np.linspace(0.5, 1.5, 19)},
    {"loss_type": "ipo", "chosen_lengths": np.arange(1.0, 20.0),
     "rejected_lengths": np.arange(2.0, 21.0)},
    {"loss_type": "sigmoid_norm", "chosen_lengths": np.arange(1.0, 20.0),
     "rejected_lengths": np.arange(2.0, 21.0)},
    {"loss_type": "rpo_sq", "gt_reward_margins": np.linspace(-2.0, 2.0, 19)},
    {"loss_type": "rpo_fwd_kl", "gt_reward_margins": np.linspace(-2.0, 2.0, 19)},
    {"loss_type": "rpo_bwd_kl", "gt_reward_margins": np.linspace(-2.0, 2.0, 19)},
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", PER_PAIR_CASES, ids=lambda k: "-".join(
    str(v) for key, v in k.items() if key in ("loss_type", "f_divergence_type")))
def test_nan_inputs_without_the_finite_check_propagate(simd_levels, kwargs, dtype):
    """NaN rows (check_finite=False) give NaN losses and gradients on every SIMD path, and
    the other rows are unaffected: the same values as without the NaN rows."""
    from dpo_fast._kernels import _pairwise

    arrays = _nan_inputs(dtype)
    keep = np.setdiff1d(np.arange(19), NAN_ROWS)
    clean_kwargs = {key: (value[keep] if isinstance(value, np.ndarray) else value)
                    for key, value in kwargs.items()}
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        out = preference_loss(*arrays, beta=0.1, reduction="none", compute_grad=True,
                              check_finite=False, **kwargs)
        assert np.isnan(out.losses[NAN_ROWS]).all(), level
        assert np.isnan(out.grad_chosen[NAN_ROWS]).all(), level
        clean = preference_loss(*(a[keep] for a in arrays), beta=0.1, reduction="none",
                                compute_grad=True, **clean_kwargs)
        np.testing.assert_array_equal(out.losses[keep], clean.losses, err_msg=level)
        np.testing.assert_array_equal(out.grad_chosen[keep], clean.grad_chosen, err_msg=level)


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


def test_regression_unaligned_views_are_read_as_aligned_copies():
    """Views that are not aligned (np.frombuffer at byte offsets 1..7) as every array argument
    and as out=: the results equal those of aligned copies, bit for bit.

    Under scripts/sanitize.sh this is the regression test of a finding of the fuzzing: the
    kernels dereferenced such pointers directly (float32 / float64 inputs, int64 labels, out=
    arrays), which UBSan reports as 'load of misaligned address ... for type 'const float''
    (undefined behaviour in C: a compiler may use aligned vector loads on them). A normal
    build on x86-64 gives the right numbers either way, so this test only fails there under
    the sanitizers."""
    rng = np.random.default_rng(5)
    keep: list[Guarded] = []

    def unaligned(values, dtype, offset):
        guarded = Guarded(values, dtype, offset)
        keep.append(guarded)
        return guarded.array

    for dtype in (np.float32, np.float64):
        for offset in range(1, 8):
            arrays = [rng.uniform(-50.0, -1.0, 37).astype(dtype) for _ in range(4)]
            lengths = rng.integers(1, 40, 37).astype(np.float64)
            weights = rng.uniform(0.0, 2.0, 37)
            kw = {"loss_type": ["sigmoid", "sft"], "chosen_lengths": lengths,
                  "weights": weights, "compute_grad": True}
            want = preference_loss(*arrays, **kw)
            out = {name: unaligned(np.zeros(37), dtype, offset) for name in OUTPUTS}
            got = preference_loss(*[unaligned(a, dtype, offset) for a in arrays],
                                  **dict(kw, chosen_lengths=unaligned(lengths, np.float64,
                                                                      offset),
                                         weights=unaligned(weights, np.float64, offset)),
                                  out=out)
            assert fingerprint(got) == fingerprint(want)
            plain = preference_loss(*[unaligned(a, dtype, offset) for a in arrays])
            assert fingerprint(plain) == fingerprint(preference_loss(*arrays))
            logits = rng.normal(size=(2, 3, 9)).astype(dtype)
            labels = rng.integers(0, 9, (2, 3))
            mask = rng.random((2, 3)) < 0.8
            want_fwd = sequence_logps(logits, labels, mask=mask, return_entropy=True)
            got_fwd = sequence_logps(unaligned(logits, dtype, offset),
                                     unaligned(labels, np.int64, offset), mask=mask,
                                     return_entropy=True)
            assert got_fwd.logps.tobytes() == want_fwd.logps.tobytes()
            assert got_fwd.entropy.tobytes() == want_fwd.entropy.tobytes()
            want_grad = sequence_logps_grad(logits, labels, 1.0, mask=mask,
                                            logsumexp=want_fwd.logsumexp)
            grad_out = unaligned(np.zeros(logits.shape), dtype, offset)
            got_grad = sequence_logps_grad(
                unaligned(logits, dtype, offset), unaligned(labels, np.int64, offset), 1.0,
                mask=mask, logsumexp=unaligned(want_fwd.logsumexp, np.float64, offset),
                out=grad_out)
            assert got_grad.tobytes() == want_grad.tobytes()
    assert all(g.guards_intact() for g in keep)
