"""dpo_fast.torch: the PyTorch autograd adapter.

Checked: results equal the NumPy functions' on the same data, gradients equal the NumPy
backward and plain PyTorch, torch.autograd.gradcheck in float64 for both functions, half
precision upcast (and gradients cast back), strided logits, the no-grad path, errors for other
devices and bad arguments, that arguments which are not differentiated but require grad
(weights, lengths, reference log-probs, ...) are refused rather than silently detached, that
double backward (create_graph=True) raises rather than dropping second-order terms, and that
``import dpo_fast`` never imports torch. The torch tests
skip when PyTorch is not installed (.ci/run installs the CPU build).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import NEEDS_TORCH

import dpo_fast
from dpo_fast import sequence_logps

try:
    import torch

    import dpo_fast.torch as dft
except ImportError:  # pragma: no cover - the CI installs torch
    torch = dft = None

needs_torch = pytest.mark.skipif(torch is None, reason=NEEDS_TORCH)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(dpo_fast.__file__)), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_import_dpo_fast_never_imports_torch():
    out = _run_python("import sys, dpo_fast, dpo_fast.logps, dpo_fast.losses; "
                      "print('torch' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_adapter_without_torch_says_how_to_install_it():
    out = _run_python("import sys; sys.modules['torch'] = None\n"
                      "try:\n    import dpo_fast.torch\n"
                      "except ImportError as exc:\n    print(exc)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dpo_fast.torch needs torch")
    assert '"dpo_fast[torch]"' in out.stdout
    if torch is not None:  # installed: the None entry reads as a broken install, quoted
        assert "import of torch halted" in out.stdout


def _batch(dtype=None, b=3, t=6, v=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, 1] = -100
    mask = torch.rand(b, t, generator=gen) > 0.25
    if b > 2:
        mask[2] = False                                      # a sequence with no tokens
    return logits.to(dtype or torch.float64), labels, mask


@needs_torch
def test_docstring_examples():
    import doctest

    result = doctest.testmod(dft, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ sequence_logps


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equals_numpy(dtype, average):
    logits, labels, mask = _batch(getattr(torch, dtype))
    kwargs = dict(mask=mask, average=average, temperature=0.8, return_token_logps=True,
                  return_entropy=True, return_wpo_weights=True, return_logit_sums=True)
    out = dft.sequence_logps(logits.clone().requires_grad_(), labels, **kwargs)
    ref = dpo_fast.sequence_logps(logits.numpy(), labels.numpy(),
                                  **{**kwargs, "mask": mask.numpy()})
    assert isinstance(out, dft.SequenceLogpsResult)
    for name in ("logps", "token_logps", "entropy", "logsumexp", "wpo_weights", "logit_sums"):
        tensor = getattr(out, name)
        assert tensor.dtype == logits.dtype
        expected = getattr(ref, name).astype(dtype)
        assert tensor.detach().numpy().tobytes() == expected.tobytes(), name
    assert out.logps.requires_grad and out.token_logps.requires_grad
    assert not out.entropy.requires_grad
    assert not out.wpo_weights.requires_grad and not out.logit_sums.requires_grad
    assert out.mean_logit == ref.mean_logit
    assert torch.equal(out.counts, torch.from_numpy(ref.counts))
    assert out.token_accuracy == ref.token_accuracy
    assert out.mean_entropy == ref.mean_entropy


@needs_torch
def test_wpo_weights_and_logit_metrics_as_trl_computes_them():
    """TRL 1.16's DPOTrainer in torch: use_weighting's policy_weights and the logits/chosen,
    logits/rejected metrics (mean logit over counted positions and the vocabulary)."""
    n = 2
    logits, labels, mask = _batch(torch.float64, b=2 * n)
    leaf = logits.clone().requires_grad_()
    out = dft.sequence_logps(leaf, labels, mask=mask, return_wpo_weights=True,
                             return_logit_sums=True)
    loss_mask = (labels != -100) & mask
    with torch.no_grad():
        logprobs = torch.log_softmax(logits, dim=-1)
        per_token = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        adjusted = per_token - torch.logsumexp(2 * logprobs, dim=-1)
        weights = (adjusted * loss_mask).sum(-1) / loss_mask.sum(-1).clamp_min(1)
        trl_policy_weights = torch.clamp(torch.exp(weights[:n] + weights[n:]), max=1)
        trl_logits_chosen = logits[:n][loss_mask[:n]].mean()
    ours = torch.clamp(out.wpo_weights[:n] * out.wpo_weights[n:], max=1)
    torch.testing.assert_close(ours, trl_policy_weights, rtol=1e-13, atol=0)
    vocab = logits.shape[-1]
    chosen_mean = out.logit_sums[:n].sum() / (out.counts[:n].sum() * vocab)
    torch.testing.assert_close(chosen_mean, trl_logits_chosen, rtol=1e-13, atol=1e-15)
    # The weights feed the loss without a gradient path (TRL: torch.no_grad()).
    loss = dft.preference_loss(out.logps[:n], out.logps[n:], torch.zeros(n), torch.zeros(n),
                               weights=ours).loss
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_equals_numpy_backward_and_plain_torch(dtype):
    logits, labels, mask = _batch(getattr(torch, dtype))
    w = torch.randn(3, dtype=logits.dtype)
    u = torch.randn(3, 6, dtype=logits.dtype)
    leaf = logits.clone().requires_grad_()
    out = dft.sequence_logps(leaf, labels, mask=mask, temperature=1.3, return_token_logps=True)
    ((out.logps * w).sum() + (out.token_logps * u).sum()).backward()
    expected = dpo_fast.sequence_logps_grad(
        logits.numpy(), labels.numpy(), w.numpy(), mask=mask.numpy(), temperature=1.3,
        grad_token_logps=u.numpy())
    assert leaf.grad.dtype == logits.dtype
    assert leaf.grad.numpy().tobytes() == expected.tobytes()

    plain = logits.double().clone().requires_grad_()
    counted = (labels != -100) & mask
    tokens = torch.log_softmax(plain / 1.3, -1).gather(
        -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * counted
    ((tokens.sum(-1) * w.double()).sum() + (tokens * u.double()).sum()).backward()
    tol = 1e-12 if dtype == "float64" else 1e-6
    torch.testing.assert_close(leaf.grad.double(), plain.grad, rtol=tol, atol=tol)


@needs_torch
@pytest.mark.parametrize("average", [False, True])
def test_gradcheck_sequence_logps(average):
    logits, labels, mask = _batch(b=2, t=4, v=7)
    leaf = logits.clone().requires_grad_()

    def both(x):
        out = dft.sequence_logps(x, labels[:2], mask=mask[:2], average=average,
                                 temperature=0.7, return_token_logps=True)
        return out.logps, out.token_logps

    assert torch.autograd.gradcheck(both, (leaf,))


@needs_torch
def test_only_token_logps_used_and_strided_logits():
    logits, labels, mask = _batch(torch.float32, t=7)
    base = logits.clone().requires_grad_()
    shifted = base[:, :-1]                                   # strided view, read in place
    assert not shifted.is_contiguous()
    out = dft.sequence_logps(shifted, labels[:, 1:], mask=mask[:, 1:],
                             return_token_logps=True)
    out.token_logps.sum().backward()
    contiguous = logits[:, :-1].contiguous().requires_grad_()
    dft.sequence_logps(contiguous, labels[:, 1:], mask=mask[:, 1:],
                       return_token_logps=True).token_logps.sum().backward()
    assert torch.equal(base.grad[:, :-1], contiguous.grad)
    assert (base.grad[:, -1] == 0).all()


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_are_upcast(dtype):
    logits, labels, mask = _batch(getattr(torch, dtype))
    leaf = logits.clone().requires_grad_()
    out = dft.sequence_logps(leaf, labels, mask=mask)
    assert out.logps.dtype == torch.float32
    out.logps.sum().backward()
    assert leaf.grad.dtype == logits.dtype
    upcast = logits.float().requires_grad_()
    reference = dft.sequence_logps(upcast, labels, mask=mask)
    reference.logps.sum().backward()
    assert torch.equal(out.logps, reference.logps)
    assert torch.equal(leaf.grad, upcast.grad.to(logits.dtype))


@needs_torch
def test_no_grad_path_gives_the_same_values():
    logits, labels, mask = _batch(torch.float32)
    with torch.no_grad():
        off = dft.sequence_logps(logits.requires_grad_(), labels, mask=mask,
                                 return_token_logps=True)
    on = dft.sequence_logps(logits, labels, mask=mask, return_token_logps=True)
    assert off.logps.grad_fn is None and on.logps.grad_fn is not None
    assert torch.equal(off.logps, on.logps.detach())
    assert torch.equal(off.token_logps, on.token_logps.detach())


@needs_torch
def test_sequence_logps_errors():
    logits, labels, mask = _batch(torch.float32)
    with pytest.raises(ValueError, match="logits is on device meta.*CPU only.*logits.cpu()"):
        dft.sequence_logps(logits.to("meta"), labels)
    with pytest.raises(ValueError, match="labels is on device meta"):
        dft.sequence_logps(logits, labels.to("meta"))
    with pytest.raises(ValueError, match="mask is on device meta"):
        dft.sequence_logps(logits, labels, mask=mask.to("meta"))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        dft.sequence_logps(logits.numpy(), labels)
    with pytest.raises(TypeError, match="floating-point tensor.*torch.int64"):
        dft.sequence_logps(labels[..., None], labels)
    with pytest.raises(TypeError, match="labels must be an integer tensor, got torch.float32"):
        dft.sequence_logps(logits, labels.float())
    with pytest.raises(TypeError, match="mask must be a bool or integer tensor"):
        dft.sequence_logps(logits, labels, mask=mask.float())
    bad = labels.clone()
    bad[1, 2] = 13
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 13 is out of range"):
        dft.sequence_logps(logits.requires_grad_(), bad)


# ------------------------------------------------------------------ preference_loss


def _pairs(dtype, n=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=gen, dtype=torch.float64) * 3 - 20).to(dtype)
            for _ in range(4)]


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_preference_loss_equals_numpy(dtype, reduction):
    pc, pr, rc, rr = _pairs(getattr(torch, dtype))
    kwargs = dict(beta=0.2, label_smoothing=0.1, reduction=reduction)
    chosen, rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    out = dft.preference_loss(chosen, rejected, rc, rr, **kwargs)
    ref = dpo_fast.preference_loss(pc.numpy(), pr.numpy(), rc.numpy(), rr.numpy(),
                                   compute_grad=True, **kwargs)
    assert isinstance(out, dft.PreferenceLossResult)
    assert out.loss.dtype == pc.dtype and out.loss.requires_grad
    np.testing.assert_array_equal(out.loss.detach().numpy(),
                                  np.asarray(ref.loss, dtype=dtype))
    for name in ("losses", "chosen_rewards", "rejected_rewards"):
        assert getattr(out, name).detach().numpy().tobytes() == getattr(ref, name).tobytes()
    assert out.metrics == ref.metrics
    out.loss.sum().backward()
    assert chosen.grad.numpy().tobytes() == ref.grad_chosen.tobytes()
    assert rejected.grad.numpy().tobytes() == ref.grad_rejected.tobytes()
    if reduction == "none":
        assert out.losses is out.loss


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_reference", [True, False])
def test_gradcheck_preference_loss(reduction, with_reference):
    pc, pr, rc, rr = _pairs(torch.float64)
    refs = (rc, rr) if with_reference else (None, None)
    chosen, rejected = pc.requires_grad_(), pr.requires_grad_()

    def loss(c, r):
        return dft.preference_loss(c, r, *refs, beta=0.3, label_smoothing=0.05,
                                   reduction=reduction).loss

    assert torch.autograd.gradcheck(loss, (chosen, rejected))


@needs_torch
@pytest.mark.parametrize("loss_type", ["rpo_sq", "rpo_fwd_kl", "rpo_bwd_kl",
                                       ["rpo_bwd_kl", "sigmoid"], "alphapo"])
def test_gradcheck_new_types(loss_type):
    """NeMo-Aligner's reward-aware losses (the margins a constant tensor) and AlphaPO: the
    backward of the kernel's derivatives passes gradcheck."""
    pc, pr, rc, rr = _pairs(torch.float64)
    chosen, rejected = pc.requires_grad_(), pr.requires_grad_()
    if loss_type == "alphapo":
        lengths = torch.arange(1.0, len(pc) + 1.0, dtype=torch.float64)
        kw = dict(alphapo_alpha=0.3, chosen_lengths=lengths, rejected_lengths=lengths.flip(0))
        refs = (None, None)
    else:
        kw = dict(gt_reward_margins=torch.linspace(-3.0, 3.0, len(pc), dtype=torch.float64),
                  gt_reward_scale=0.7)
        refs = (rc, rr)

    def loss(c, r):
        return dft.preference_loss(c, r, *refs, beta=0.3, loss_type=loss_type, **kw).loss

    assert torch.autograd.gradcheck(loss, (chosen, rejected))
    margins = _grad_leaf(torch.ones(len(pc), dtype=torch.float64))
    if loss_type != "alphapo":
        with pytest.raises(ValueError, match=_refused("gt_reward_margins", "preference_loss",
                                                      "detach()")):
            dft.preference_loss(chosen, rejected, rc, rr, loss_type=loss_type,
                                gt_reward_margins=margins)


@needs_torch
def test_preference_loss_matches_plain_torch_and_upstream_scaling():
    pc, pr, rc, rr = _pairs(torch.float64)
    chosen, rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    (3.0 * dft.preference_loss(chosen, rejected, rc, rr, beta=0.1).loss).backward()
    c2, r2 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    plain = -torch.nn.functional.logsigmoid(0.1 * ((c2 - rc) - (r2 - rr))).mean()
    (3.0 * plain).backward()
    torch.testing.assert_close(chosen.grad, c2.grad, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(rejected.grad, r2.grad, rtol=1e-14, atol=1e-16)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_preference_loss_gradient_is_not_shared_with_a_retained_graph(reduction):
    # The backward hands out the kernel's derivatives without a multiply when the upstream
    # gradient is 1: autograd must copy them into .grad, so that changing .grad in place
    # (optimizer.zero_grad(set_to_none=False), clipping) cannot reach a second backward.
    pc, pr, rc, rr = _pairs(torch.float64)
    chosen, rejected = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    loss = dft.preference_loss(chosen, rejected, rc, rr, beta=0.1, reduction=reduction).loss
    upstream = torch.ones_like(loss)
    loss.backward(upstream, retain_graph=True)
    first = chosen.grad.clone(), rejected.grad.clone()
    chosen.grad.mul_(100.0)
    rejected.grad.zero_()
    chosen.grad = rejected.grad = None
    loss.backward(upstream)
    assert torch.equal(chosen.grad, first[0]) and torch.equal(rejected.grad, first[1])
    loss2 = dft.preference_loss(chosen, rejected, rc, rr, beta=0.1, reduction=reduction).loss
    chosen.grad = rejected.grad = None
    loss2.backward(torch.full_like(loss2, 0.5))
    assert torch.equal(chosen.grad, first[0] * 0.5) and torch.equal(rejected.grad, first[1] * 0.5)


@needs_torch
def test_preference_loss_half_precision_and_no_grad():
    pc, pr, rc, rr = _pairs(torch.bfloat16)
    chosen = pc.clone().requires_grad_()
    out = dft.preference_loss(chosen, pr, rc, rr, beta=0.1)
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert chosen.grad.dtype == torch.bfloat16
    with torch.no_grad():
        quiet = dft.preference_loss(chosen, pr, rc, rr, beta=0.1)
    assert quiet.loss.grad_fn is None and torch.equal(quiet.loss, out.loss.detach())


@needs_torch
def test_preference_loss_errors_and_keyword_forwarding():
    pc, pr, rc, rr = _pairs(torch.float32)
    with pytest.raises(TypeError, match="compute_grad"):
        dft.preference_loss(pc, pr, rc, rr, compute_grad=True)
    with pytest.raises(TypeError, match="out="):
        dft.preference_loss(pc, pr, rc, rr, out={})
    with pytest.raises(ValueError, match="unknown loss_type 'nope'"):
        dft.preference_loss(pc, pr, rc, rr, loss_type="nope")
    with pytest.raises(TypeError, match="unexpected keyword"):
        dft.preference_loss(pc, pr, rc, rr, betta=0.1)
    with pytest.raises(ValueError, match="ref_chosen_logps requires grad.*detach"):
        dft.preference_loss(pc.requires_grad_(), pr, rc.clone().requires_grad_(), rr)
    with pytest.raises(ValueError, match="rejected_logps is on device meta"):
        dft.preference_loss(pc, pr.to("meta"), rc, rr)
    bad = pc.detach().clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match=r"chosen_logps\[2\] is nan"):
        dft.preference_loss(bad, pr, rc, rr)


@needs_torch
def test_end_to_end_logits_to_loss_matches_plain_torch():
    """sequence_logps -> preference_loss -> backward, against log_softmax/gather/logsigmoid."""
    logits, labels, mask = _batch(torch.float64, b=4, t=5, v=9)
    mask[2] = True
    leaf = logits.clone().requires_grad_()
    logps = dft.sequence_logps(leaf, labels, mask=mask).logps
    ref = logps.detach() - 0.5
    dft.preference_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.5).loss.backward()

    plain = logits.clone().requires_grad_()
    counted = (labels != -100) & mask
    tokens = torch.log_softmax(plain, -1).gather(
        -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * counted
    seq = tokens.sum(-1)
    margin = (seq[:2] - ref[:2]) - (seq[2:] - ref[2:])
    (-torch.nn.functional.logsigmoid(0.5 * margin).mean()).backward()
    torch.testing.assert_close(leaf.grad, plain.grad, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ what autograd cannot reach


def _refused(name, function, fix="detach()"):
    """The one-line ValueError for an argument `name` that requires grad but is a constant."""
    return (rf"^{re.escape(name)} requires grad, but dpo_fast\.torch\.{function} does not "
            rf"differentiate with respect to {re.escape(name)}: pass "
            rf"{re.escape(name)}\.{re.escape(fix)}$")


def _grad_leaf(x):
    return x.detach().clone().requires_grad_()


@needs_torch
@pytest.mark.parametrize("policy_requires_grad", [True, False])
@pytest.mark.parametrize(("name", "make", "refused", "fix"), [
    ("ref_chosen_logps", _grad_leaf, "ref_chosen_logps", "detach()"),
    ("ref_rejected_logps", _grad_leaf, "ref_rejected_logps", "detach()"),
    ("weights", _grad_leaf, "weights", "detach()"),
    ("chosen_lengths", _grad_leaf, "chosen_lengths", "detach()"),
    ("rejected_lengths", _grad_leaf, "rejected_lengths", "detach()"),
    # a list holding a tensor: the NumPy layer would convert it, detached
    ("weights", lambda w: [w[0].item(), _grad_leaf(w[1])] + w[2:].tolist(), "weights[1]",
     "item()"),
    ("label_smoothing", lambda v: torch.tensor(v, requires_grad=True), "label_smoothing",
     "item()"),
])
def test_regression_preference_loss_refuses_constants_that_require_grad(
        name, make, refused, fix, policy_requires_grad):
    """Before: weights / lengths that require grad were silently detached (w.grad None)."""
    pc, pr, rc, rr = _pairs(torch.float32)
    args = {"ref_chosen_logps": rc, "ref_rejected_logps": rr,
            "loss_type": ["sigmoid", "sigmoid_norm"],
            "weights": torch.linspace(0.5, 1.5, len(pc)), "label_smoothing": 0.1,
            "chosen_lengths": torch.full(pc.shape, 3.0),
            "rejected_lengths": torch.full(pc.shape, 4.0)}
    args[name] = make(args[name])
    chosen = pc.requires_grad_() if policy_requires_grad else pc
    with pytest.raises(ValueError, match=_refused(refused, "preference_loss", fix)):
        dft.preference_loss(chosen, pr, **args)
    if name != "label_smoothing":                            # (a tensor: TypeError)
        with torch.no_grad():                                # nothing differentiated: fine
            dft.preference_loss(chosen, pr, **args)


@needs_torch
def test_regression_sequence_logps_refuses_constants_that_require_grad():
    logits, labels, mask = _batch(torch.float32)
    leaf = logits.requires_grad_()
    with pytest.raises(ValueError, match=_refused("temperature", "sequence_logps", "item()")):
        dft.sequence_logps(leaf, labels, temperature=torch.tensor(1.3, requires_grad=True))
    # labels / mask that require grad are float: the dtype error, which says what is wrong
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        dft.sequence_logps(leaf, labels.float().requires_grad_())
    with pytest.raises(TypeError, match="mask must be a bool or integer tensor"):
        dft.sequence_logps(leaf, labels, mask=mask.float().requires_grad_())


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weights_not_requiring_grad_still_work(reduction):
    """The accepted case: gradients to the policy log-probs as before, the weights untouched."""
    pc, pr, rc, rr = _pairs(torch.float64)
    w = torch.rand(len(pc), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    chosen, rejected = _grad_leaf(pc), _grad_leaf(pr)
    out = dft.preference_loss(chosen, rejected, rc, rr, beta=0.1, weights=w,
                              reduction=reduction)
    out.loss.sum().backward()
    c2, r2 = _grad_leaf(pc), _grad_leaf(pr)
    plain = -w * torch.nn.functional.logsigmoid(0.1 * ((c2 - rc) - (r2 - rr)))
    {"mean": plain.mean(), "sum": plain.sum(), "none": plain}[reduction].sum().backward()
    torch.testing.assert_close(chosen.grad, c2.grad, rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(rejected.grad, r2.grad, rtol=1e-13, atol=1e-16)
    assert w.grad is None and not w.requires_grad
    assert torch.autograd.gradcheck(
        lambda c, r: dft.preference_loss(c, r, rc, rr, beta=0.1, weights=w,
                                         reduction=reduction).loss, (chosen, rejected))


def _first_order_calls():
    """(function name, x, f(x) -> scalar) for both functions."""
    pc, pr, rc, rr = _pairs(torch.float64)
    logits, labels, mask = _batch()
    return [
        ("preference_loss", pc,
         lambda x: dft.preference_loss(x, pr, rc, rr, beta=0.1).loss),
        ("sequence_logps", logits,
         lambda x: dft.sequence_logps(x, labels, mask=mask).logps.sum()),
    ]


@needs_torch
@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
@pytest.mark.parametrize("which", [0, 1], ids=["preference_loss", "sequence_logps"])
@pytest.mark.parametrize("how", ["autograd.grad", "backward", "hessian"])
def test_regression_create_graph_raises(which, how):
    """Before: the gradient came back without grad_fn (once_differentiable errs only when the
    upstream gradient requires grad), so a penalty on it added nothing and hessian() gave
    zeros."""
    function, x0, f = _first_order_calls()[which]
    x = _grad_leaf(x0)
    match = (rf"^dpo_fast\.torch\.{function} does not support double backward "
             r"\(create_graph=True\):.*compute a gradient penalty.*in plain PyTorch instead$")
    with pytest.raises(RuntimeError, match=match):
        if how == "autograd.grad":
            (g,) = torch.autograd.grad(f(x), x, create_graph=True)
            (g ** 2).sum().backward()                        # the penalty, never reached
        elif how == "backward":
            f(x).backward(create_graph=True)
        else:
            torch.autograd.functional.hessian(f, x0)
    # the first derivative is unaffected
    (g,) = torch.autograd.grad(f(x), x)
    assert torch.autograd.gradcheck(f, (x,))
    assert g.grad_fn is None and torch.isfinite(g).all()


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


def test_regression_torch_two_dim_logits():
    """Found by the fuzzing: dpo_fast.torch.sequence_logps on (N, V) logits returned logps of
    shape (1,) instead of () (np.ascontiguousarray makes 0-d arrays 1-d), and the backward
    then raised ValueError. Now the NumPy function's shape, and the backward works."""
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dtorch

    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (5,))
    result = dtorch.sequence_logps(logits, labels)
    assert result.logps.shape == sequence_logps(logits.detach().numpy(), labels.numpy()).logps.shape
    result.logps.sum().backward()
    assert logits.grad.shape == logits.shape
