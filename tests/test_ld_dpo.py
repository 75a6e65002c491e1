"""dpo_fast.ld_dpo_logps (and its torch adapter): LD-DPO sequence log-probs as TRL 1.16 forms
them with ``ld_alpha``, against a plain per-token reference loop and TRL's torch arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import NEEDS_TORCH

from dpo_fast import ld_dpo_logps, preference_loss


def reference(chosen, rejected, chosen_mask, rejected_mask, alpha):
    """Plain loops: count completion positions; the first min(len_c, len_r) are shared."""
    out = []
    for values, masks, others in ((chosen, chosen_mask, rejected_mask),
                                  (rejected, rejected_mask, chosen_mask)):
        sums = []
        for row, mask, other in zip(values, masks, others):
            shared_len = min(sum(1 for m in mask if m), sum(1 for m in other if m))
            position, shared, tail = 0, [], []
            for value, m in zip(row, mask):
                if not m:
                    continue
                position += 1
                (shared if position <= shared_len else tail).append(float(value))
            sums.append(math.fsum(shared) + alpha * math.fsum(tail))
        out.append(np.array(sums))
    return out


def batch(seed, n=5, t_chosen=9, t_rejected=7):
    """Token log-probs with prompt positions (leading zeros of the mask), padding (trailing
    zeros) and NaN off the completion (which must not matter)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in (t_chosen, t_rejected):
        values = rng.uniform(-6.0, 0.0, (n, t))
        mask = np.zeros((n, t), dtype=bool)
        for row in range(n):
            start = rng.integers(0, 3)
            length = rng.integers(0, t - start + 1)
            mask[row, start:start + length] = True
        values[~mask] = np.nan
        out += [values, mask]
    return out[0], out[2], out[1], out[3]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_reference(alpha, seed):
    chosen, rejected, chosen_mask, rejected_mask = batch(seed)
    got = ld_dpo_logps(chosen, rejected, chosen_mask, rejected_mask, ld_alpha=alpha)
    want = reference(chosen, rejected, chosen_mask, rejected_mask, alpha)
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-14)


def test_alpha_one_is_the_plain_sum_and_zero_cuts_to_the_shorter():
    chosen, rejected, chosen_mask, rejected_mask = batch(7)
    plain = ld_dpo_logps(chosen, rejected, chosen_mask, rejected_mask, ld_alpha=1.0)
    for got, values, mask in zip(plain, (chosen, rejected), (chosen_mask, rejected_mask)):
        np.testing.assert_allclose(got, np.where(mask, values, 0.0).sum(1), rtol=1e-14)
    cut = ld_dpo_logps([[-1.0, -2.0, -3.0]], [[-4.0, -5.0, 0.0]], [[1, 1, 1]], [[1, 1, 0]],
                       ld_alpha=0.0)
    assert cut[0].tolist() == [-3.0] and cut[1].tolist() == [-9.0]


def test_no_mask_counts_every_token_and_float32_stays_float32():
    chosen = np.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], dtype=np.float32)
    rejected = np.array([[-0.5, -0.5], [-2.0, -2.0]], dtype=np.float32)
    got_c, got_r = ld_dpo_logps(chosen, rejected, ld_alpha=0.5)
    assert got_c.dtype == got_r.dtype == np.float32
    assert got_c.tolist() == [-4.5, -2.5] and got_r.tolist() == [-1.0, -4.0]


def test_feeds_preference_loss():
    chosen, rejected, chosen_mask, rejected_mask = batch(3)
    policy = ld_dpo_logps(chosen, rejected, chosen_mask, rejected_mask, ld_alpha=0.5)
    ref = ld_dpo_logps(chosen - 0.1, rejected + 0.1, chosen_mask, rejected_mask, ld_alpha=0.5)
    assert math.isfinite(preference_loss(*policy, *ref, beta=0.1).loss)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(chosen_token_logps=np.zeros(3)), ValueError, r"chosen_token_logps must be 2-D"),
    (dict(rejected_token_logps=np.zeros((2, 3), dtype=np.int64)), TypeError,
     r"rejected_token_logps must be float32 or float64"),
    (dict(chosen_mask=np.ones((2, 4))), TypeError, r"chosen_mask must be boolean or integer"),
    (dict(rejected_mask=np.ones((2, 4), dtype=bool)), ValueError,
     r"rejected_mask has shape \(2, 4\) but its token log-probs have shape \(2, 3\)"),
    (dict(rejected_token_logps=np.zeros((3, 3)), rejected_mask=None), ValueError,
     r"2 chosen and 3 rejected"),
    (dict(ld_alpha=math.nan), ValueError, r"ld_alpha must be finite"),
    (dict(ld_alpha="0.5"), TypeError, r"ld_alpha must be a real number"),
])
def test_errors_name_the_argument(kwargs, error, match):
    call = dict(chosen_token_logps=np.zeros((2, 3)), rejected_token_logps=np.zeros((2, 3)),
                chosen_mask=np.ones((2, 3), dtype=bool), rejected_mask=np.ones((2, 3), dtype=bool),
                ld_alpha=0.5)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        ld_dpo_logps(**call)


def test_non_finite_on_the_completion_names_its_index():
    chosen = np.zeros((2, 3))
    chosen[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"chosen_token_logps\[1, 2\] is inf"):
        ld_dpo_logps(chosen, np.zeros((2, 3)), ld_alpha=0.5)
    chosen_mask = np.ones((2, 3), dtype=bool)
    chosen_mask[1, 2] = False  # off the completion: ignored
    assert ld_dpo_logps(chosen, np.zeros((2, 3)), chosen_mask, None, ld_alpha=0.5)[0][1] == 0


def test_inputs_are_not_modified():
    chosen, rejected, chosen_mask, rejected_mask = batch(11)
    copies = [a.copy() for a in (chosen, rejected, chosen_mask, rejected_mask)]
    ld_dpo_logps(chosen, rejected, chosen_mask, rejected_mask, ld_alpha=0.3)
    for before, after in zip(copies, (chosen, rejected, chosen_mask, rejected_mask)):
        np.testing.assert_array_equal(before, after)


# ------------------------------------------------------------------ torch


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_torch_matches_trl_arithmetic_and_differentiates(alpha):
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dft

    chosen, rejected, chosen_mask, rejected_mask = batch(5)
    tensors = [torch.tensor(np.nan_to_num(a), requires_grad=True) for a in (chosen, rejected)]
    got = dft.ld_dpo_logps(tensors[0], tensors[1], torch.from_numpy(chosen_mask),
                           torch.from_numpy(rejected_mask), ld_alpha=alpha)
    # TRL 1.16: comp_pos = cumsum(mask); shared = min(len); masks; shared + alpha * tail
    masks = [torch.from_numpy(m) for m in (chosen_mask, rejected_mask)]
    lengths = [m.sum(1) for m in masks]
    shared_len = torch.minimum(*lengths).unsqueeze(1)
    for index, (values, mask) in enumerate(zip(tensors, masks)):
        position = mask.cumsum(1)
        per_token = values.detach().clone()
        per_token[~mask] = 0.0
        shared = (position > 0) & (position <= shared_len)
        tail = position > shared_len
        want = (per_token * shared).sum(1) + alpha * (per_token * tail).sum(1)
        torch.testing.assert_close(got[index].detach(), want, rtol=1e-14, atol=1e-14)
    (got[0].sum() + 2.0 * got[1].sum()).backward()
    for index, (values, mask) in enumerate(zip(tensors, masks)):
        position = mask.cumsum(1)
        weights = torch.where(mask & (position <= shared_len), 1.0,
                              torch.where(mask, alpha, 0.0)).double()
        torch.testing.assert_close(values.grad, (1.0 + index) * weights)
    numpy_values = ld_dpo_logps(chosen, rejected, chosen_mask, rejected_mask, ld_alpha=alpha)
    for g, w in zip(got, numpy_values):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-14, atol=1e-14)


def test_torch_errors():
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dft

    with pytest.raises(ValueError, match=r"chosen_token_logps must be 2-D"):
        dft.ld_dpo_logps(torch.zeros(3), torch.zeros(2, 3), ld_alpha=0.5)
    bad = torch.zeros(2, 3)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rejected_token_logps\[0, 1\] is nan"):
        dft.ld_dpo_logps(torch.zeros(2, 3), bad, ld_alpha=0.5)
    with pytest.raises(TypeError, match=r"chosen_mask must be"):
        dft.ld_dpo_logps(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), None,
                         ld_alpha=0.5)
