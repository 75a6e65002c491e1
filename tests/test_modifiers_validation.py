"""Validation of the loss-modifier arguments: every refused lengths, weights, loss_type,
loss_weights, f-divergence and label_smoothing argument raises the promised error naming
it, calls on the edge of the rules work, and integer lengths equal float ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpo_fast import preference_loss

# ------------------------------------------------------------------------ validation

PC = np.array([-10.0, -11.0, -12.5, -9.0, -14.0])
PR = np.array([-12.0, -10.0, -13.0, -11.0, -15.0])
RC = np.array([-11.0, -11.5, -12.0, -10.0, -13.0])
RR = np.array([-11.5, -10.5, -12.5, -10.0, -14.5])
LENGTHS = np.array([10.0, 12.0, 7.0, 3.0, 20.0])


def call(refs=True, **kw):
    return preference_loss(PC, PR, *((RC, RR) if refs else ()), **kw)


def both(*words):
    """A regex matching text that contains every word, in any order."""
    return "(?s)" + "".join(f"(?=.*{w})" for w in words)


def with_bad(value, index=3, base=LENGTHS):
    array = base.copy()
    array[index] = value
    return array


CL, RL = dict(chosen_lengths=LENGTHS), dict(rejected_lengths=LENGTHS)
BAD_CALLS = [
    # lengths missing
    ("sigmoid_norm-no-chosen", dict(loss_type="sigmoid_norm", **RL), ValueError,
     both("chosen_lengths", "sigmoid_norm")),
    ("sigmoid_norm-no-rejected", dict(loss_type="sigmoid_norm", **CL), ValueError,
     both("rejected_lengths", "sigmoid_norm")),
    ("simpo-no-chosen", dict(refs=False, loss_type="simpo", **RL), ValueError,
     both("chosen_lengths", "simpo")),
    ("simpo-no-rejected", dict(refs=False, loss_type="simpo", **CL), ValueError,
     both("rejected_lengths", "simpo")),
    ("sft-no-lengths", dict(loss_type="sft", **RL), ValueError, both("chosen_lengths", "sft")),
    ("rpo-no-lengths", dict(loss_type=["sigmoid", "sft"]), ValueError,
     both("chosen_lengths", "sft")),
    ("list-no-rejected", dict(loss_type=["ipo", "sigmoid_norm"], **CL), ValueError,
     both("rejected_lengths", "sigmoid_norm")),
    # lengths and weights: shape, values, dtype
    ("chosen_lengths-2d", dict(loss_type="sft", chosen_lengths=LENGTHS[:, None]), ValueError,
     "chosen_lengths"),
    ("rejected_lengths-2d", dict(loss_type="sigmoid_norm", **CL,
                                 rejected_lengths=LENGTHS[None, :]), ValueError,
     "rejected_lengths"),
    ("weights-2d", dict(weights=np.ones((5, 1))), ValueError, "weights"),
    ("chosen_lengths-short", dict(loss_type="sft", chosen_lengths=LENGTHS[:4]), ValueError,
     "chosen_lengths"),
    ("rejected_lengths-long", dict(loss_type="simpo", refs=False, **CL,
                                   rejected_lengths=np.ones(6)), ValueError,
     "rejected_lengths"),
    ("weights-short", dict(weights=np.ones(4)), ValueError, "weights"),
    ("weights-scalar", dict(weights=np.float64(1.0)), ValueError, "weights"),
    *[(f"chosen_lengths-{v}", dict(loss_type="sigmoid_norm", chosen_lengths=with_bad(v), **RL),
       ValueError, r"chosen_lengths\[3\]") for v in (0.0, -2.0, math.nan, math.inf)],
    *[(f"rejected_lengths-{v}", dict(loss_type="simpo", refs=False, rejected_lengths=with_bad(v),
                                     **CL), ValueError, r"rejected_lengths\[3\]")
      for v in (0.0, -1.0, math.nan, -math.inf)],
    *[(f"weights-{v}", dict(weights=with_bad(v, base=np.ones(5))), ValueError,
       r"weights\[3\]") for v in (-0.5, math.nan, math.inf)],
    ("chosen_lengths-str", dict(loss_type="sft", chosen_lengths=np.array(["1"] * 5)), TypeError,
     "chosen_lengths"),
    ("rejected_lengths-object", dict(loss_type="sigmoid_norm", **CL,
                                     rejected_lengths=np.array(["a", 1, 2, 3, 4], object)),
     TypeError, "rejected_lengths"),
    ("weights-str", dict(weights=np.array(["a"] * 5)), TypeError, "weights"),
    # simpo is reference-free
    ("simpo-refs", dict(loss_type="simpo", **CL, **RL), ValueError, "simpo"),
    ("simpo-list-refs", dict(loss_type=["simpo", "sft"], **CL, **RL), ValueError, "simpo"),
    # loss types and loss weights
    ("unknown-type", dict(loss_type="dpo"), ValueError, "loss_type"),
    ("unknown-in-list", dict(loss_type=["sigmoid", "nope"]), ValueError, "loss_type"),
    ("empty-list", dict(loss_type=[]), ValueError, "loss_type"),
    ("duplicate", dict(loss_type=("sigmoid", "hinge", "sigmoid")), ValueError, "loss_type"),
    ("loss_weights-short", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]),
     ValueError, "loss_weights"),
    ("loss_weights-long", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 2.0, 3.0]),
     ValueError, "loss_weights"),
    ("loss_weights-nan", dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0, math.nan]),
     ValueError, "loss_weights"),
    ("loss_weights-inf", dict(loss_type=["sigmoid", "hinge"], loss_weights=[math.inf, 1.0]),
     ValueError, "loss_weights"),
    ("loss_weights-str", dict(loss_type=["sigmoid", "hinge"], loss_weights=["a", 1.0]),
     TypeError, "loss_weights"),
    ("loss_weights-none-item", dict(loss_type=["sigmoid", "hinge"], loss_weights=[None, 1.0]),
     TypeError, "loss_weights"),
    ("loss_weights-scalar", dict(loss_type=["sigmoid", "hinge"], loss_weights=1.0), TypeError,
     "loss_weights"),
    # f-divergences
    ("f_divergence-unknown", dict(f_divergence_type="kl"), ValueError, "f_divergence_type"),
    *[(f"f_divergence-{t}", dict(loss_type=t, **CL, **RL, refs=t != "simpo",
                                 f_divergence_type="forward_kl"), ValueError,
       "f_divergence_type")
      for t in ("nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot",
                "aot_unpaired", "simpo")],
    ("f_divergence-alpha-aot", dict(loss_type="aot", f_divergence_type="alpha_divergence",
                                    f_alpha_divergence_coef=0.5), ValueError,
     "f_divergence_type"),
    ("f_divergence-list", dict(loss_type=["sigmoid", "aot"], f_divergence_type="js_divergence"),
     ValueError, "f_divergence_type"),
    *[(f"alpha-{v}", dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=v),
       ValueError, "f_alpha_divergence_coef") for v in (math.nan, math.inf, -math.inf)],
    *[(f"alpha-{v!r}", dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=v),
       TypeError, "f_alpha_divergence_coef") for v in ("0.5", None)],
    # label smoothing in lists and for the new types
    ("smoothing-unused-list", dict(loss_type=["ipo", "sigmoid_norm"], **CL, **RL,
                                   label_smoothing=0.1), ValueError, "label_smoothing"),
    ("smoothing-out-of-sigmoid-range", dict(loss_type=["sigmoid", "exo_pair"],
                                            label_smoothing=0.7), ValueError,
     "label_smoothing"),
    ("smoothing-sigmoid_norm", dict(loss_type="sigmoid_norm", **CL, **RL, label_smoothing=0.1),
     ValueError, "label_smoothing"),
    ("smoothing-sft", dict(loss_type="sft", **CL, label_smoothing=0.1), ValueError,
     "label_smoothing"),
    ("smoothing-aot", dict(loss_type="aot", label_smoothing=0.5), ValueError,
     "label_smoothing"),
    ("smoothing-aot_unpaired", dict(loss_type="aot_unpaired", label_smoothing=-0.1),
     ValueError, "label_smoothing"),
    ("smoothing-simpo", dict(loss_type="simpo", refs=False, **CL, **RL, label_smoothing=0.5),
     ValueError, "label_smoothing"),
    ("discopop_tau", dict(loss_type=["discopop", "sft"], **CL, discopop_tau=0.0), ValueError,
     "discopop_tau"),
]


@pytest.mark.parametrize(("kw", "error", "match"), [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_validation_errors(kw, error, match):
    """Every refused argument raises the promised error, naming the argument."""
    with pytest.raises(error, match=match):
        call(**kw)


ACCEPTED = {
    "sft-without-rejected_lengths": dict(loss_type="sft", **CL),
    "rpo-forward_kl": dict(loss_type=["sigmoid", "sft"], **CL, f_divergence_type="forward_kl"),
    "nca_pair-explicit-reverse_kl": dict(loss_type="nca_pair", f_divergence_type="reverse_kl"),
    "zero-weights": dict(loss_type="sigmoid", weights=np.zeros(5)),
    "integer-weights": dict(loss_type="sigmoid", weights=np.array([0, 1, 2, 3, 4])),
    "integer-lengths": dict(loss_type="sigmoid_norm", chosen_lengths=np.array([10, 12, 7, 3, 20]),
                            **RL),
    "smoothing-in-list": dict(loss_type=["sigmoid", "exo_pair"], label_smoothing=0.2),
    "simpo-gamma-0": dict(loss_type="simpo", refs=False, **CL, **RL, simpo_gamma=0.0),
}


@pytest.mark.parametrize("kw", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted_calls(kw):
    """Calls on the edge of the rules that must work."""
    result = call(**kw)
    assert math.isfinite(result.loss)


def test_integer_lengths_equal_float_lengths():
    as_int = call(loss_type="sigmoid_norm", chosen_lengths=LENGTHS.astype(np.int64),
                  rejected_lengths=LENGTHS.astype(np.int32), compute_grad=True)
    as_float = call(loss_type="sigmoid_norm", **CL, **RL, compute_grad=True)
    assert as_int.loss == as_float.loss
    assert as_int.grad_chosen.tobytes() == as_float.grad_chosen.tobytes()
