"""preference_loss(per_pair_outputs=...): a call keeps only the per-pair arrays it asks for.

The loss, the metrics and the gradients are the same bits whichever arrays are kept (the
kernels write the others to a scratch buffer), on every loop (fused, general, the sorted
types, alphapo's reward pass, rpo's margins), every SIMD path and thread count; the arrays
kept are the same bits as a full call's; bad values are refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpo_fast import preference_loss
from dpo_fast._kernels import _pairwise

PER_PAIR = ("losses", "chosen_rewards", "rejected_rewards")
CHOICES = [(), ("losses",), ("chosen_rewards",), ("rejected_rewards", "losses"), PER_PAIR,
           ["chosen_rewards", "rejected_rewards"]]


def _inputs(n, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(-50.0, 5.0, n).astype(dtype) for _ in range(4)]


CALLS = {
    "sigmoid": lambda a: dict(args=a),
    "hinge+ipo list": lambda a: dict(args=a, loss_type=["hinge", "ipo"], loss_weights=[1, 2]),
    "weighted": lambda a: dict(args=a, weights=np.linspace(0, 2, a[0].size)),
    "simpo": lambda a: dict(args=a[:2], loss_type="simpo",
                            chosen_lengths=np.full(a[0].size, 10.0),
                            rejected_lengths=np.full(a[0].size, 12.0)),
    "js divergence": lambda a: dict(args=a, f_divergence_type="js_divergence"),
    "aot": lambda a: dict(args=a, loss_type="aot"),
    "aot_unpaired + sigmoid": lambda a: dict(args=a, loss_type=["aot_unpaired", "sigmoid"]),
    "alphapo": lambda a: dict(args=[x / 100 for x in a[:2]], loss_type="alphapo",
                              alphapo_alpha=0.25, chosen_lengths=np.full(a[0].size, 3.0),
                              rejected_lengths=np.full(a[0].size, 3.0)),
    "rpo_bwd_kl": lambda a: dict(args=a, loss_type="rpo_bwd_kl",
                                 gt_reward_margins=np.linspace(-3, 3, a[0].size)),
}


def _call(name, arrays, **kwargs):
    spec = CALLS[name](arrays)
    args = spec.pop("args")
    return preference_loss(*args, **spec, **kwargs)


def _assert_same_except_dropped(result, full, kept):
    assert result.loss == full.loss
    assert result.metrics == full.metrics
    for key in ("grad_chosen", "grad_rejected"):
        got, want = getattr(result, key), getattr(full, key)
        assert (got is None) == (want is None)
        if got is not None:
            assert got.tobytes() == want.tobytes(), key
    for key in PER_PAIR:
        got = getattr(result, key)
        if key in kept:
            assert got.tobytes() == getattr(full, key).tobytes(), key
        else:
            assert got is None, key


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("kept", CHOICES, ids=str)
def test_same_results_whichever_arrays_are_kept(name, kept, dtype):
    arrays = _inputs(1000 + 37, dtype)
    for grad in (False, True):
        full = _call(name, arrays, compute_grad=grad)
        _assert_same_except_dropped(_call(name, arrays, compute_grad=grad,
                                          per_pair_outputs=kept), full, kept)


def test_every_simd_path_and_thread_count(simd_levels):
    arrays = _inputs(70_001)
    results = []
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        for threads in (1, 2, 3):
            results.append(preference_loss(*arrays, compute_grad=True, n_threads=threads,
                                           per_pair_outputs=()))
    full = preference_loss(*arrays, compute_grad=True)
    for result in results:
        _assert_same_except_dropped(result, full, ())


def test_a_loss_sum_that_overflows_still_has_its_mean():
    """Inputs near DBL_MAX: the loss sum overflows although every loss and the mean are
    finite; the mean is then taken from the per-pair losses, which the call did not keep."""
    big = np.finfo(np.float64).max / 2
    arrays = [np.array([-big, -big, -1.0]), np.array([big, big, -2.0]),
              np.zeros(3), np.zeros(3)]
    full = preference_loss(*arrays, beta=1.0, loss_type="hinge")
    dropped = preference_loss(*arrays, beta=1.0, loss_type="hinge", per_pair_outputs=())
    assert np.isfinite(full.loss)
    assert dropped.loss == full.loss and dropped.losses is None


def test_out_arrays_with_kept_outputs():
    arrays = _inputs(513)
    losses = np.empty(513)
    result = preference_loss(*arrays, out={"losses": losses}, per_pair_outputs=("losses",))
    assert result.losses is losses and result.chosen_rewards is None
    assert losses.tobytes() == preference_loss(*arrays).losses.tobytes()


def test_refusals():
    arrays = _inputs(8)
    with pytest.raises(TypeError, match=r"per_pair_outputs must be None or a collection.*"
                                        r"\('losses',\)"):
        preference_loss(*arrays, per_pair_outputs="losses")
    with pytest.raises(TypeError, match="per_pair_outputs"):
        preference_loss(*arrays, per_pair_outputs=3)
    with pytest.raises(ValueError, match="per_pair_outputs has unknown name 'loss'"):
        preference_loss(*arrays, per_pair_outputs=("loss",))
    with pytest.raises(ValueError, match="reduction='none' returns the per-pair losses"):
        preference_loss(*arrays, reduction="none", per_pair_outputs=("chosen_rewards",))
    with pytest.raises(ValueError, match=r"out\['chosen_rewards'\] was given but "
                                         "per_pair_outputs leaves"):
        preference_loss(*arrays, out={"chosen_rewards": np.empty(8)},
                        per_pair_outputs=("losses",))


def test_reduction_none_keeps_the_losses():
    arrays = _inputs(100)
    result = preference_loss(*arrays, reduction="none", per_pair_outputs=("losses",))
    assert result.loss is result.losses and result.chosen_rewards is None
