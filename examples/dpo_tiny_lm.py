"""DPO on a tiny causal language model, on the CPU, with dpo_fast.torch.

Everything is made here: a small decoder-only transformer with random weights (nothing is
downloaded), a synthetic preference set, and a frozen copy of the model as the reference. Each
step runs the policy on the chosen and rejected sequences, turns the logits into one
log-probability per sequence with ``dpo_fast.torch.sequence_logps`` (fused, no log_softmax
copy of the logits), and feeds those to ``dpo_fast.torch.preference_loss``; autograd does the
rest and ``torch.optim.AdamW`` steps. The loss starts at log(2) (policy == reference) and goes
down.

With ``--fused`` the logits are never built: ``dpo_fast.torch.linear_sequence_logps`` takes
the model's last hidden states and its ``lm_head`` (weight and bias) and computes the same
log-probabilities tile by tile, forward and backward (gradients reach the head and, through the
hidden states, the whole model). The run prints the memory the logits would take and what the
fused path allocated at most (its NumPy buffers, measured with tracemalloc).

The synthetic task: after a prompt of random tokens, the chosen response repeats the prompt in
ascending order; the rejected response is random tokens. Sequences are right-padded.

    python examples/dpo_tiny_lm.py --steps 20
    python examples/dpo_tiny_lm.py --steps 5 --compare    # also check against plain PyTorch
    python examples/dpo_tiny_lm.py --steps 5 --compare --fused --vocab 32000
"""

from __future__ import annotations

import argparse
import copy
import sys
import tracemalloc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import dpo_fast.torch as dft

PAD = 0           # padding token (never a real token)
IGNORE = -100     # label of positions that are not scored (the prompt)


class TinyCausalLM(nn.Module):
    """Token + position embeddings, pre-norm transformer blocks with a causal mask, LM head."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 2, layers: int = 2,
                 max_len: int = 32):
        super().__init__()
        self.token = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input of the LM head (B, T, dim). Right padding needs no key mask: with the
        causal mask, real tokens never attend to the pads after them."""
        length = input_ids.shape[1]
        hidden = self.token(input_ids) + self.position(torch.arange(length))
        causal = nn.Transformer.generate_square_subsequent_mask(length)
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.norm(hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V); position t scores token t + 1."""
        return self.head(self.hidden_states(input_ids))


@dataclass
class PreferenceBatch:
    """Chosen sequences first, then rejected ones, as one batch of 2 * n_pairs rows."""

    input_ids: torch.Tensor       # (2n, T) prompt + response, right-padded with PAD
    attention_mask: torch.Tensor  # (2n, T) bool, False at padding
    labels: torch.Tensor          # (2n, T - 1) the next token, IGNORE on prompt positions

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def make_preference_data(n_pairs: int = 16, vocab: int = 64, seed: int = 0) -> PreferenceBatch:
    """Synthetic pairs: chosen = the prompt sorted ascending, rejected = random tokens."""
    gen = torch.Generator().manual_seed(seed)
    rows, prompt_lengths = [], []
    for _ in range(n_pairs):
        prompt_len = int(torch.randint(3, 7, (1,), generator=gen))
        prompt = torch.randint(1, vocab, (prompt_len,), generator=gen)
        chosen = torch.sort(prompt).values
        rejected = torch.randint(1, vocab, (prompt_len,), generator=gen)
        rows.append((prompt, chosen, rejected))
        prompt_lengths.append(prompt_len)
    sequences = ([torch.cat([p, c]) for p, c, _ in rows]
                 + [torch.cat([p, r]) for p, _, r in rows])
    prompts = prompt_lengths + prompt_lengths
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        input_ids[i, :len(seq)] = seq
        attention_mask[i, :len(seq)] = True
    # Shift: position t predicts token t + 1. Score only response tokens (and no padding:
    # those positions are dropped by the mask passed along with the labels).
    labels = input_ids[:, 1:].clone()
    for i, prompt_len in enumerate(prompts):
        labels[i, :prompt_len - 1] = IGNORE
    return PreferenceBatch(input_ids, attention_mask, labels)


def model_logps(model: nn.Module, batch: PreferenceBatch, fused: bool = False
                ) -> dft.SequenceLogpsResult:
    """Per-sequence log-probs of the batch's labels: from the logits, or (``fused``) from the
    hidden states and the LM head, the logits never built."""
    mask = batch.attention_mask[:, 1:]
    if fused:
        hidden = model.hidden_states(batch.input_ids)
        return dft.linear_sequence_logps(hidden[:, :-1], model.head.weight, batch.labels,
                                         bias=model.head.bias, mask=mask)
    logits = model(batch.input_ids)
    return dft.sequence_logps(logits[:, :-1], batch.labels, mask=mask)


def policy_and_reference_logps(policy: nn.Module, reference: nn.Module,
                               batch: PreferenceBatch, fused: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(policy logps with autograd, reference logps, token accuracy) per sequence."""
    out = model_logps(policy, batch, fused)
    with torch.no_grad():
        ref = model_logps(reference, batch, fused)
    return out.logps, ref.logps, out.token_accuracy


def dpo_loss_dpo_fast(policy: nn.Module, reference: nn.Module, batch: PreferenceBatch,
                      beta: float = 0.1, fused: bool = False) -> dft.PreferenceLossResult:
    """The DPO loss of a batch through dpo_fast.torch (what train() optimises)."""
    logps, ref_logps, _ = policy_and_reference_logps(policy, reference, batch, fused)
    n = batch.n_pairs
    return dft.preference_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta=beta)


def dpo_loss_torch(policy: nn.Module, reference: nn.Module, batch: PreferenceBatch,
                   beta: float = 0.1) -> torch.Tensor:
    """The same loss in plain PyTorch (log_softmax + gather, -logsigmoid), for comparison."""
    def sequence_logps(model):
        logits = model(batch.input_ids)[:, :-1]
        counted = (batch.labels != IGNORE) & batch.attention_mask[:, 1:]
        tokens = torch.log_softmax(logits, dim=-1).gather(
            -1, batch.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (tokens * counted).sum(dim=-1)

    logps = sequence_logps(policy)
    with torch.no_grad():
        ref = sequence_logps(reference)
    n = batch.n_pairs
    margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
    return -F.logsigmoid(beta * margin).mean()


def compare_with_torch(policy: nn.Module, reference: nn.Module, batch: PreferenceBatch,
                       beta: float = 0.1, fused: bool = False) -> tuple[float, float]:
    """(|loss difference|, largest |parameter gradient difference|) between the dpo_fast and
    the plain-PyTorch computation of one step. Leaves the gradients cleared."""
    policy.zero_grad(set_to_none=True)
    ours = dpo_loss_dpo_fast(policy, reference, batch, beta, fused).loss
    ours.backward()
    ours_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad(set_to_none=True)
    theirs = dpo_loss_torch(policy, reference, batch, beta)
    theirs.backward()
    grad_diff = max(float((a - p.grad).abs().max())
                    for a, p in zip(ours_grads, policy.parameters()))
    policy.zero_grad(set_to_none=True)
    return abs(ours.item() - theirs.item()), grad_diff


def memory_report(batch: PreferenceBatch, vocab: int, peak_bytes: int) -> str:
    """One line: the logits the unfused step builds, and what the fused step allocated."""
    rows, length = batch.labels.shape
    logits = 2 * rows * length * vocab * 4  # policy + reference logits, float32
    return (f"memory: the unfused step builds {logits / 2**20:.1f} MiB of logits (policy and "
            f"reference, plus as much again for their gradient); the fused step's largest "
            f"NumPy allocations at once: {peak_bytes / 2**20:.1f} MiB")


def build(seed: int = 0, vocab: int = 64, n_pairs: int = 16):
    """(policy, frozen reference copy, preference batch), all seeded."""
    torch.manual_seed(seed)
    policy = TinyCausalLM(vocab=vocab)
    reference = copy.deepcopy(policy).eval()
    reference.requires_grad_(False)
    return policy, reference, make_preference_data(n_pairs, vocab, seed)


def train(steps: int = 20, seed: int = 0, lr: float = 3e-3, beta: float = 0.1,
          compare: bool = False, log=print, fused: bool = False, vocab: int = 64
          ) -> list[float]:
    """Run `steps` full-batch DPO steps; return the loss before each step."""
    policy, reference, batch = build(seed, vocab)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    if compare:
        loss_diff, grad_diff = compare_with_torch(policy, reference, batch, beta, fused)
        log(f"vs plain PyTorch: |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}")
    losses = []
    for step in range(steps):
        if fused and step == 0:
            tracemalloc.start()
        out = dpo_loss_dpo_fast(policy, reference, batch, beta, fused)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if fused and step == 0:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            log(memory_report(batch, vocab, peak))
        optimizer.step()
        losses.append(out.loss.item())
        m = out.metrics
        log(f"step {step:3d}  loss {out.loss.item():.4f}  reward acc "
            f"{m['rewards/accuracies']:.2f}  margin {m['rewards/margins']:+.4f}")
    if len(losses) > 1:
        log(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--compare", action="store_true",
                        help="first compare loss and gradients with plain PyTorch")
    parser.add_argument("--fused", action="store_true",
                        help="log-probs from the hidden states and the LM head "
                             "(dpo_fast.torch.linear_sequence_logps): no logits built")
    parser.add_argument("--vocab", type=int, default=64,
                        help="vocabulary size (default 64; try 32000 with --fused)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.vocab < 8:
        parser.error("--vocab must be >= 8")
    train(args.steps, args.seed, args.lr, args.beta, args.compare, fused=args.fused,
          vocab=args.vocab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
