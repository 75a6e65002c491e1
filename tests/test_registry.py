"""The loss-type registry (csrc/pair_losses.h, read by dpo_fast._registry) and everything that
must know every registered type: this module fails when a type is registered and any of them
is left out.

The expected facts below are written from the papers and TRL 1.16, independently of the
registry, so that a wrong flag in a registry row is caught too.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import ROOT

import dpo_fast
from dpo_fast import _registry, losses

BOTH = ("chosen_lengths", "rejected_lengths")
# name: (plain, sorted, normalised case, required lengths, optional lengths, f-divergence,
#        batch-coupled, reference-free, smoothing upper bound)
EXPECTED = {
    "sigmoid": (True, False, False, (), False, True, False, False, 0.5),
    "hinge": (True, False, False, (), False, True, False, False, 0.0),
    "ipo": (True, False, True, (), True, True, False, False, 0.0),
    "exo_pair": (True, False, False, (), False, True, False, False, 1.0),
    "nca_pair": (True, False, False, (), False, False, False, False, 0.0),
    "robust": (True, False, False, (), False, True, False, False, 0.5),
    "bco_pair": (True, False, False, (), False, False, False, False, 0.0),
    "sppo_hard": (True, False, False, (), False, False, False, False, 0.0),
    "aot": (False, True, False, (), False, False, True, False, 0.5),
    "aot_unpaired": (False, True, False, (), False, False, True, False, 0.5),
    "apo_zero": (True, False, False, (), False, False, False, False, 0.0),
    "apo_down": (True, False, False, (), False, False, False, False, 0.0),
    "discopop": (True, False, False, (), False, True, False, False, 0.0),
    "sft": (False, False, False, ("chosen_lengths",), False, False, True, False, 0.0),
    "sigmoid_norm": (False, False, True, BOTH, False, True, False, False, 0.0),
    "simpo": (False, False, True, BOTH, False, False, False, True, 0.5),
    "dpop": (True, False, False, (), False, False, False, False, 0.0),
    "orpo": (False, False, True, BOTH, False, False, False, True, 0.0),
    "alphapo": (False, False, True, BOTH, False, False, False, True, 0.5),
    "rpo_sq": (False, False, False, (), False, False, False, False, 0.0),
    "rpo_fwd_kl": (False, False, False, (), False, False, False, False, 0.0),
    "rpo_bwd_kl": (False, False, False, (), False, False, False, False, 0.0),
}
# NeMo-Aligner's reward-aware losses: they read gt_reward_margins.
GT_REWARDS = {"rpo_sq", "rpo_fwd_kl", "rpo_bwd_kl"}


def test_registry_rows_have_the_expected_facts():
    assert list(_registry.LOSS_REGISTRY) == list(EXPECTED), (
        "a loss type was registered (or reordered): add its facts to EXPECTED")
    for name, entry in _registry.LOSS_REGISTRY.items():
        got = (entry.plain, entry.sorted, entry.normalized, entry.needs_lengths,
               entry.optional_lengths, entry.divergence, entry.batch_coupled,
               entry.reference_free, entry.smoothing_max)
        assert got == EXPECTED[name], name
        assert entry.smoothing_positive == (name == "exo_pair")
        assert entry.gt_rewards == (name in GT_REWARDS)
        assert entry.normalized_rewards == entry.reference_free  # simpo's reward form
    ids = [entry.kernel_id for entry in _registry.LOSS_REGISTRY.values()]
    assert ids == list(range(len(ids)))


def test_public_sets_come_from_the_registry():
    assert losses.LOSS_TYPES == _registry.LOSS_TYPES
    assert losses.BATCH_COUPLED_LOSS_TYPES == {
        name for name, facts in EXPECTED.items() if facts[6]}
    assert losses.LENGTH_LOSS_TYPES == {
        name for name, facts in EXPECTED.items() if facts[3] or facts[4]}


def _source_file(*parts):
    path = ROOT.joinpath(*parts)
    if not path.is_file():
        pytest.skip("needs the source tree")
    return path


def test_readme_table_lists_every_type_in_registry_order():
    text = _source_file("README.md").read_text()
    table = text[text.index("| `loss_type` | per-pair loss |"):]
    table = table[:table.index("\n\n")]
    names = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)[1:]  # (header first)
    assert names == list(_registry.LOSS_TYPES)


@pytest.mark.parametrize("name", _registry.LOSS_TYPES)
def test_preference_loss_docstring_names_every_type(name):
    assert f'``"{name}"``' in dpo_fast.preference_loss.__doc__


@pytest.mark.parametrize("name", _registry.LOSS_TYPES)
def test_every_type_has_a_reference_formula(name):
    """The plain float64 reference (tests/reference_modifiers.py's ref_losses) knows the type and
    agrees."""
    from reference_modifiers import ref_losses

    rng = np.random.default_rng(3)
    pc, pr, rc, rr = (rng.normal(-20, 4, 9) for _ in range(4))
    lengths = dict(chosen_lengths=rng.integers(1, 50, 9).astype(float),
                   rejected_lengths=rng.integers(1, 50, 9).astype(float))
    refs = (None, None) if _registry.LOSS_REGISTRY[name].reference_free else (rc, rr)
    if _registry.LOSS_REGISTRY[name].smoothing_positive:
        lengths["label_smoothing"] = 1e-3
    if _registry.LOSS_REGISTRY[name].gt_rewards:
        lengths["gt_reward_margins"] = rng.normal(0.0, 2.0, 9)
    expected = ref_losses(pc, pr, *refs, beta=0.3, loss_type=name, **lengths)
    got = dpo_fast.preference_loss(pc, pr, *refs, beta=0.3, loss_type=name, reduction="none",
                                   **lengths).losses
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


def test_benchmarks_cover_every_type():
    from dpo_fast.benchmark import losses as bench_losses

    assert tuple(bench_losses.LossConfig().types) == _registry.LOSS_TYPES


def test_tests_enumerate_the_registry():
    """The suites that run every loss type take the list from the registry."""
    from fuzz_support import LOSS_TYPES as fuzz_types
    from test_loss_family import FAMILY
    from test_torch_parity import ALL_TYPES

    assert tuple(fuzz_types) == _registry.LOSS_TYPES
    assert tuple(ALL_TYPES) == _registry.LOSS_TYPES
    assert set(FAMILY) == _registry.PLAIN_TYPES
