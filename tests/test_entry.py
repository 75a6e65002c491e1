"""The compiled entry point (issue 13): the common call runs in C, everything else goes to the
validated general path, and both give the same bits.

The general path (dpo_fast._general.run) is the reference here: it is the code every call
took before the entry point existed, and its results are checked against the plain float64
references of the other test modules.
"""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from helpers import NEEDS_TORCH

import dpo_fast
from dpo_fast import _entry, _general, _registry
from dpo_fast.losses import PreferenceLossResult, preference_loss

PLAIN = sorted(_general.PLAIN_TYPES)
_RUN = _general.run  # the general path itself (the tests' spy wraps the module attribute)
OUTPUTS = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")


def _data(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 5 - 50).astype(dtype) for _ in range(4)]


def _general_result(arrays, **kwargs):
    """What the general path gives for the same call, as a PreferenceLossResult."""
    options = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, discopop_tau=0.05,
                   reduction="mean", compute_grad=False, check_finite=True, n_threads=None,
                   out=None)
    options.update(kwargs)
    loss, outputs, means = _RUN(arrays, _general.PREFERENCE_ARG_NAMES, **options)
    names = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected")
    order = (1, 2, 3, 4, 5, 6)  # SUM_NAMES positions of the metrics above
    metrics = {name: means[position] for name, position in zip(names, order)}
    return PreferenceLossResult(loss, outputs["losses"], outputs["chosen_rewards"],
                                outputs["rejected_rewards"], outputs.get("grad_chosen"),
                                outputs.get("grad_rejected"), metrics)


def _assert_same_bits(actual, expected):
    for key in OUTPUTS:
        a, e = getattr(actual, key), getattr(expected, key)
        if e is None:
            assert a is None, key
            continue
        assert a.dtype == e.dtype and a.shape == e.shape, key
        assert a.tobytes() == e.tobytes(), key
    if isinstance(expected.loss, np.ndarray):
        assert actual.loss is actual.losses
    else:
        assert type(actual.loss) is float
        assert np.float64(actual.loss).tobytes() == np.float64(expected.loss).tobytes()
    assert list(actual.metrics) == ["rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                    "rewards/margins", "logps/chosen", "logps/rejected"]
    for name, value in expected.metrics.items():
        assert type(actual.metrics[name]) is float
        assert np.float64(actual.metrics[name]).tobytes() == np.float64(value).tobytes(), name


@pytest.fixture
def general_spy(monkeypatch):
    """Counts the calls that reach the general path."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return _RUN(*args, **kwargs)

    monkeypatch.setattr(_general, "run", spy)
    return calls


@pytest.mark.parametrize("loss_type", PLAIN)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1023, 8193, 40_000])
def test_fast_path_gives_the_general_paths_bits(loss_type, dtype, n, general_spy):
    arrays = _data(n, dtype, seed=n)
    smoothing = 0.1 if loss_type in _general.SMOOTHING_LIMITS else 0.0
    for reduction in ("mean", "sum", "none"):
        for grad in (False, True):
            for refs in (arrays, arrays[:2] + [None, None]):
                got = preference_loss(*refs, beta=0.3, loss_type=loss_type,
                                      label_smoothing=smoothing, reduction=reduction,
                                      compute_grad=grad)
                assert not general_spy, "the common call left the compiled path"
                want = _general_result(refs, beta=0.3, loss_type=loss_type,
                                       label_smoothing=smoothing, reduction=reduction,
                                       compute_grad=grad)
                general_spy.clear()
                _assert_same_bits(got, want)


@pytest.mark.parametrize("loss_type", PLAIN)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_take_the_fast_path_with_the_general_paths_bits(loss_type, dtype,
                                                                general_spy):
    """Per-pair weights (float64, finite, >= 0; zeros included) stay on the compiled path."""
    n = 1500
    arrays = _data(n, dtype, seed=3)
    weights = np.random.default_rng(4).uniform(0.0, 2.0, n)
    weights[::5] = 0.0
    weights.flags.writeable = False
    smoothing = 0.1 if loss_type in _general.SMOOTHING_LIMITS else 0.0
    for reduction in ("mean", "sum", "none"):
        for grad in (False, True):
            got = preference_loss(*arrays, beta=0.3, loss_type=loss_type, weights=weights,
                                  label_smoothing=smoothing, reduction=reduction,
                                  compute_grad=grad)
            assert not general_spy, "a weighted call left the compiled path"
            _assert_same_bits(got, _general_result(
                arrays, beta=0.3, loss_type=loss_type, weights=weights,
                label_smoothing=smoothing, reduction=reduction, compute_grad=grad))


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm", "simpo", "orpo"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lengths_take_the_fast_path_with_the_general_paths_bits(loss_type, dtype,
                                                                general_spy):
    """A length-normalised type with both lengths (and weights, simpo's gamma and smoothing)
    stays on the compiled path."""
    n = 1500
    arrays = _data(n, dtype, seed=5)
    if _registry.LOSS_REGISTRY[loss_type].reference_free:
        arrays = arrays[:2] + [None, None]
    rng = np.random.default_rng(6)
    lengths = dict(chosen_lengths=rng.integers(1, 300, n).astype(np.float64),
                   rejected_lengths=rng.uniform(1.0, 50.0, n))
    smoothing = 0.1 if loss_type in _general.SMOOTHING_LIMITS else 0.0
    for weights in (None, rng.uniform(0.0, 2.0, n)):
        for reduction in ("mean", "sum", "none"):
            for grad in (False, True):
                options = dict(beta=0.3, loss_type=loss_type, weights=weights,
                               label_smoothing=smoothing, reduction=reduction,
                               compute_grad=grad, simpo_gamma=0.7, **lengths)
                got = preference_loss(*arrays, **options)
                assert not general_spy, "a call with lengths left the compiled path"
                _assert_same_bits(got, _general_result(arrays, **options))
    out = {key: np.empty(n, dtype) for key in OUTPUTS}
    got = preference_loss(*arrays, out=out, compute_grad=True, reduction="none",
                          loss_type=loss_type, **lengths)
    assert not general_spy and got.losses is out["losses"]
    _assert_same_bits(got, _general_result(arrays, compute_grad=True, reduction="none",
                                           loss_type=loss_type, **lengths))
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(*arrays, loss_type=loss_type, **lengths,
                        out={"losses": lengths["rejected_lengths"].view(dtype)[:n]})


@pytest.mark.parametrize(("label", "kwargs", "message"), [
    ("one length", dict(loss_type="ipo", chosen_lengths=np.ones(6)), None),
    # (float64, float32, int64 and int32 lengths stay: test_fused_cases.py)
    ("float16 lengths", dict(loss_type="ipo", chosen_lengths=np.ones(6, np.float16),
                             rejected_lengths=np.ones(6, np.float16)), None),
    ("uint32 lengths", dict(loss_type="sigmoid_norm", chosen_lengths=np.ones(6, np.uint32),
                            rejected_lengths=np.ones(6, np.uint32)), None),
    ("strided int64 lengths", dict(loss_type="sigmoid_norm",
                                   chosen_lengths=np.ones(12, np.int64)[::2],
                                   rejected_lengths=np.ones(6, np.int64)), None),
    ("int64 length below 1", dict(loss_type="sft", chosen_lengths=np.array([1, 2, 0, 4, 5, 6])),
     r"chosen_lengths\[2\] is 0"),
    ("lengths for a plain type", dict(loss_type="sigmoid", chosen_lengths=np.ones(6),
                                      rejected_lengths=np.ones(6)), None),
    ("length below 1", dict(loss_type="sigmoid_norm", chosen_lengths=np.full(6, 0.5),
                            rejected_lengths=np.ones(6)), r"chosen_lengths\[0\] is 0.5"),
    ("nan length", dict(loss_type="sigmoid_norm", chosen_lengths=np.ones(6),
                        rejected_lengths=np.array([1, 1, 1, np.nan, 1, 1])),
     r"rejected_lengths\[3\] is nan"),
    ("references for simpo", dict(loss_type="simpo", chosen_lengths=np.ones(6),
                                  rejected_lengths=np.ones(6)), "reference-free"),
])
def test_other_lengths_take_the_general_path(label, kwargs, message, general_spy):
    arrays = _data(6, np.float64)
    if message is None:
        preference_loss(*arrays, **kwargs)
    else:
        with pytest.raises(ValueError, match=message):
            preference_loss(*arrays, **kwargs)
    assert len(general_spy) == 1, label


def test_long_lengths_and_weights_are_checked_as_short_ones(general_spy):
    """Above 4096 pairs the fast path checks lengths and weights with NumPy's reductions:
    good ones stay on it, a bad value anywhere is handed over (and named)."""
    n = 5000
    arrays = _data(n, np.float64)
    lengths = np.full(n, 3.0)
    preference_loss(*arrays, loss_type="ipo", chosen_lengths=lengths, rejected_lengths=lengths,
                    weights=np.ones(n))
    assert not general_spy
    for key, value, message in (("weights", np.nan, r"weights\[4500\] is nan"),
                                ("weights", np.inf, r"weights\[4500\] is inf"),
                                ("chosen_lengths", 0.5, r"chosen_lengths\[4500\] is 0.5")):
        options = dict(chosen_lengths=lengths.copy(), rejected_lengths=lengths,
                       weights=np.ones(n))
        options[key][4500] = value
        with pytest.raises(ValueError, match=message):
            preference_loss(*arrays, loss_type="ipo", **options)


@pytest.mark.parametrize("n", [6, 5000, 100_003])
@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm", "simpo", "orpo"])
def test_bad_lengths_are_caught_by_the_kernel(loss_type, n, general_spy):
    """The fused loop checks the lengths itself (a count outside [1, inf) makes the loss sum
    NaN): every bad value, anywhere, either side, either dtype, with or without check_finite,
    goes to the general path, which names it as before."""
    bad_values = (0.5, float(np.nextafter(1.0, 0.0)), 0.0, -0.0, -3.0, np.inf, np.nan)
    for dtype in (np.float64, np.float32):
        arrays = _data(n, dtype, seed=8)
        if _registry.LOSS_REGISTRY[loss_type].reference_free:
            arrays = arrays[:2] + [None, None]
        for k, value in enumerate(bad_values):
            side = ("chosen_lengths", "rejected_lengths")[k % 2]
            index = (0, n // 2, n - 1)[k % 3]
            lengths = {"chosen_lengths": np.full(n, 7.0), "rejected_lengths": np.full(n, 2.0)}
            lengths[side][index] = value
            for check in (True, False):
                general_spy.clear()
                with pytest.raises(ValueError, match=rf"{side}\[{index}\] is {value!r}"):
                    preference_loss(*arrays, loss_type=loss_type, check_finite=check,
                                    **lengths)
                assert len(general_spy) == 1


@pytest.mark.parametrize("alpha", [0.0, 0.25, -1.0, 1e-300])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_alphapo_takes_the_fast_path_with_the_general_paths_bits(alpha, dtype, general_spy):
    """alphapo (its own fused loop for alpha != 0) runs from the compiled path, with the
    general path's bits: ordinary rows, rows whose rewards overflow (the general path then
    takes the means), weights, every reduction; a bad length or alpha is handed over."""
    n = 3000
    rng = np.random.default_rng(9)
    arrays = [(rng.normal(-40.0, 6.0, n)).astype(dtype), rng.normal(-45.0, 6.0, n).astype(dtype),
              None, None]
    lengths = dict(chosen_lengths=rng.integers(1, 60, n).astype(np.float64),
                   rejected_lengths=rng.integers(1, 60, n).astype(np.float64))
    for extreme in (False, True):
        if extreme:  # b = -alpha a beyond 700: logarithm forms, maybe non-finite sums
            arrays[0][::97] = dtype(-3e4)
        for weights in (None, rng.uniform(0.0, 2.0, n)):
            for reduction, grad in (("mean", False), ("sum", True), ("none", True)):
                options = dict(beta=2.0, loss_type="alphapo", alphapo_alpha=alpha,
                               weights=weights, label_smoothing=0.1, reduction=reduction,
                               compute_grad=grad, simpo_gamma=0.7, **lengths)
                general_spy.clear()
                got = preference_loss(*arrays, **options)
                if not extreme:
                    assert not general_spy, "alphapo left the compiled path"
                _assert_same_bits(got, _general_result(arrays, **options))
    bad = dict(lengths, rejected_lengths=lengths["rejected_lengths"].copy())
    bad["rejected_lengths"][n - 5] = 0.5
    with pytest.raises(ValueError, match=rf"rejected_lengths\[{n - 5}\] is 0.5"):
        preference_loss(*arrays[:2], loss_type="alphapo", alphapo_alpha=alpha, **bad)
    for value in (np.nan, np.inf, 1e301, 5e-301):
        with pytest.raises(ValueError, match="alphapo_alpha"):
            preference_loss(*arrays[:2], loss_type="alphapo", alphapo_alpha=value, **lengths)


@pytest.mark.parametrize("n", [6, 5000, 100_003])
def test_orpo_log_probs_at_or_above_0_are_caught_by_the_kernel(n, general_spy):
    """orpo's fused case checks its log-probs are below 0 (the loss sum carries a NaN where
    one is not), so a bad one anywhere goes to the general path and is named as before; a
    NaN among them is the finiteness check's."""
    for dtype in (np.float64, np.float32):
        pc, pr = (np.full(n, -3.0, dtype) for _ in range(2))
        lengths = dict(chosen_lengths=np.full(n, 2.0), rejected_lengths=np.full(n, 5.0))
        general_spy.clear()
        preference_loss(pc, pr, loss_type="orpo", **lengths)
        assert not general_spy
        for k, value in enumerate((0.0, -0.0, 1e-300, 2.0, np.inf)):
            side, index = ("chosen_logps", "rejected_logps")[k % 2], (0, n // 2, n - 1)[k % 3]
            arrays = [pc.copy(), pr.copy()]
            arrays[k % 2][index] = value
            shown = repr(float(dtype(value)))
            for check in (True, False):
                general_spy.clear()
                with pytest.raises(ValueError, match=rf"{side}\[{index}\] is {shown}: "
                                                     "loss_type='orpo' needs log-probs"):
                    preference_loss(*arrays, loss_type="orpo", check_finite=check, **lengths)
                assert len(general_spy) == 1
        arrays = [pc.copy(), pr.copy()]
        arrays[1][n - 1] = np.nan
        with pytest.raises(ValueError, match=rf"rejected_logps\[{n - 1}\] is nan: inputs"):
            preference_loss(*arrays, loss_type="orpo", **lengths)


def test_bad_weights_raise_the_general_paths_errors():
    arrays = _data(6, np.float64)
    for value, message in ((np.nan, r"weights\[4\] is nan"), (-1.0, r"weights\[4\] is -1.0"),
                           (np.inf, r"weights\[4\] is inf")):
        weights = np.ones(6)
        weights[4] = value
        with pytest.raises(ValueError, match=message):
            preference_loss(*arrays, weights=weights)
    with pytest.raises(ValueError, match="length mismatch"):
        preference_loss(*arrays, weights=np.ones(5))
    weights = np.ones(6)
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(*arrays, weights=weights, out={"losses": weights})


def test_a_nan_weight_is_refused_before_the_kernel_writes_out(general_spy):
    """A NaN weight followed by ordinary ones (the short arrays' check loop once let the next
    value replace the NaN) is refused on the fast path: the general path names it and the
    caller's out= arrays are not written."""
    arrays = _data(6, np.float64)
    for index in (0, 2, 5):
        weights = np.ones(6)
        weights[index] = np.nan
        out = {name: np.full(6, 7.0) for name in ("losses", "chosen_rewards",
                                                  "rejected_rewards")}
        with pytest.raises(ValueError, match=rf"weights\[{index}\] is nan"):
            preference_loss(*arrays, weights=weights, out=out)
        for name, array in out.items():
            assert (array == 7.0).all(), name
    assert len(general_spy) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_and_read_only_inputs_take_the_fast_path(dtype, general_spy):
    arrays = _data(200, dtype)
    strided = [a[::2] for a in arrays]
    read_only = [a[:100].copy() for a in arrays]
    for a in read_only:
        a.flags.writeable = False
    for inputs in (strided, read_only, [strided[0], read_only[1], strided[2], read_only[3]]):
        before = [a.copy() for a in inputs]
        got = preference_loss(*inputs, beta=0.2, compute_grad=True)
        assert not general_spy
        _assert_same_bits(got, _general_result([np.ascontiguousarray(a) for a in inputs],
                                               beta=0.2, compute_grad=True))
        for a, b in zip(inputs, before):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_out_arrays_are_written_on_the_fast_path(dtype, general_spy):
    arrays = _data(50, dtype)
    out = {key: np.full(50, 7.0, dtype) for key in OUTPUTS}
    got = preference_loss(*arrays, compute_grad=True, out=out, reduction="none")
    assert not general_spy
    for key in OUTPUTS:
        assert getattr(got, key) is out[key]
    assert got.loss is out["losses"]
    _assert_same_bits(got, _general_result(arrays, compute_grad=True, reduction="none"))
    # Some keys given, the others allocated.
    partial = {"chosen_rewards": np.empty(50, dtype)}
    got = preference_loss(*arrays, out=partial)
    assert not general_spy and got.chosen_rewards is partial["chosen_rewards"]


def _unaligned(n, dtype):
    raw = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    return np.frombuffer(raw.data, dtype, n, offset=1)


@pytest.mark.parametrize(("label", "make_call"), [
    ("list with an int", lambda a: ((a[0].tolist()[:-1] + [-3], a[1].tolist()), {})),
    ("list next to float32", lambda a: ((a[0].tolist(), a[1].astype(np.float32)), {})),
    ("list of NumPy floats", lambda a: ((list(a[0]), a[1]), {})),
    ("float16", lambda a: ((a[0].astype(np.float16), a[1].astype(np.float16)), {})),
    ("int64", lambda a: ((a[0].astype(np.int64), a[1].astype(np.int64)), {})),
    ("mixed dtypes", lambda a: ((a[0], a[1].astype(np.float32)), {})),
    ("big-endian", lambda a: ((a[0].astype(">f8"), a[1]), {})),
    ("subclass", lambda a: ((a[0].view(np.matrix)[0].A1.view(np.recarray), a[1]), {})),
    # (int and NumPy float64 scalars stay: test_int_and_numpy_scalars_stay_on_the_fast_path)
    ("numpy float32 beta", lambda a: ((a[0], a[1]), {"beta": np.float32(0.1)})),
    ("Fraction beta", lambda a: ((a[0], a[1]), {"beta": fractions.Fraction(1, 10)})),
    ("loss list", lambda a: ((a[0], a[1]), {"loss_type": ["sigmoid"]})),
    ("sorted type", lambda a: ((a[0], a[1]), {"loss_type": "aot"})),
    # (float32 weights stay: test_fused_cases.py)
    ("int64 weights", lambda a: ((a[0], a[1]), {"weights": np.ones(a[0].size, np.int64)})),
    ("weights list of ints", lambda a: ((a[0], a[1]), {"weights": [1] * a[0].size})),
    ("strided weights", lambda a: ((a[0], a[1]), {"weights": np.ones(2 * a[0].size)[::2]})),
    ("f-divergence", lambda a: ((a[0], a[1]), {"f_divergence_type": "js_divergence"})),
    ("numpy bool", lambda a: ((a[0], a[1]), {"compute_grad": np.bool_(True)})),
    ("n_threads numpy int", lambda a: ((a[0], a[1]), {"n_threads": np.int64(1)})),
    ("unaligned out", lambda a: ((a[0], a[1]), {"out": {"losses": _unaligned(a[0].size,
                                                                               np.float64)}})),
    ("out mapping", lambda a: ((a[0], a[1]), {"out": _Mapping(losses=np.empty(a[0].size))})),
])
def test_unusual_calls_take_the_general_path_with_the_same_results(label, make_call,
                                                                   general_spy):
    arrays = _data(8, np.float64)
    args, kwargs = make_call(arrays)
    got = preference_loss(*args, **kwargs)
    assert len(general_spy) == 1, label
    assert isinstance(got, PreferenceLossResult)


@pytest.mark.parametrize("n", [1, 64, 20_000])
@pytest.mark.parametrize("sequence", [list, tuple])
def test_lists_of_floats_take_the_fast_path(sequence, n, general_spy):
    """Lists and tuples of Python floats (lengths and margins: or of ints) run compiled, with
    the bits of the float64 arrays NumPy makes of them, which is what the general path
    computes with; the caller's lists are left as they were."""
    arrays = _data(n, np.float64)
    given = [sequence(a.tolist()) for a in arrays]
    copies = [list(g) for g in given]
    lengths = np.arange(1, n + 1)
    cases = [
        ("sigmoid", given, {}),
        ("ipo", given[:2] + [None, None], {}),
        ("hinge", given, {"weights": sequence(np.linspace(0.5, 2.0, n).tolist())}),
        ("simpo", given[:2] + [None, None],
         {"chosen_lengths": sequence(lengths.tolist()),
          "rejected_lengths": sequence((lengths * 0.5 + 1).tolist())}),
        ("rpo_sq", given, {"gt_reward_margins": sequence((lengths % 7 - 3).tolist())}),
    ]
    for loss_type, inputs, side in cases:
        for grad in (False, True):
            got = preference_loss(*inputs, loss_type=loss_type, compute_grad=grad, **side)
            assert not general_spy, loss_type
            as_arrays = [None if x is None else np.asarray(x) for x in inputs]
            side_arrays = {key: np.asarray(value) for key, value in side.items()}
            _assert_same_bits(got, _general_result(as_arrays, loss_type=loss_type,
                                                   compute_grad=grad, **side_arrays))
    assert [list(g) for g in given] == copies and all(type(g) is sequence for g in given)


def test_lists_the_fast_path_leaves_get_the_general_paths_errors(general_spy):
    """A list the fast path does not read (bools, NaN, nesting, an int beyond int64) reaches
    the general path as it was given, which names the argument and the index."""
    a, b, c, d = (x.tolist() for x in _data(6, np.float64))
    cases = [
        ((a, b[:3] + [True] + b[4:], c, d), {}, TypeError, r"rejected_logps\[3\] must be a real"),
        ((a, b[:2] + [float("nan")] + b[3:], c, d), {}, ValueError,
         r"^rejected_logps\[2\] is nan"),
        ((a, [[x] for x in b], c, d), {}, ValueError, "rejected_logps must be 1-D"),
        ((a, b, c), {}, ValueError, "ref_chosen_logps was given but ref_rejected_logps"),
        ((a, b[:5], c, d), {}, ValueError, "length mismatch"),
        ((a, b), {"loss_type": "simpo", "chosen_lengths": [2**70] * 6,
                  "rejected_lengths": [3] * 6}, ValueError,
         r"chosen_lengths\[0\] = 1180591620717411303424 does not fit in int64"),
    ]
    for args, kwargs, error, message in cases:
        general_spy.clear()
        with pytest.raises(error, match=message):
            preference_loss(*args, **kwargs)
        assert len(general_spy) == 1


@pytest.mark.parametrize(("loss_type", "kwargs"), [
    ("sigmoid", {"beta": 1, "label_smoothing": 0}),
    ("sigmoid", {"beta": np.float64(0.25), "label_smoothing": np.float64(0.1)}),
    ("robust", {"beta": 2, "label_smoothing": np.float64(0.2)}),
    ("discopop", {"discopop_tau": 1}),
    ("dpop", {"dpop_lambda": 3}),
    ("bco_pair", {"bco_delta": -1}),
    ("simpo", {"simpo_gamma": 0, "beta": 2}),
    ("alphapo", {"alphapo_alpha": 1, "simpo_gamma": np.float64(0.5)}),
    ("rpo_sq", {"gt_reward_scale": 2}),
    ("sigmoid", {"f_alpha_divergence_coef": 1}),
])
def test_int_and_numpy_scalars_stay_on_the_fast_path(loss_type, kwargs, general_spy):
    """``label_smoothing=0``, ``beta=1`` or a NumPy float64 parameter is float(value) to the
    general path too: the compiled path takes them, with the bits of the float call."""
    n = 50
    arrays = _data(n, np.float64)
    extra = {}
    if loss_type in ("simpo", "alphapo"):
        arrays = arrays[:2]
        lengths = np.arange(1, n + 1)
        extra = {"chosen_lengths": lengths, "rejected_lengths": lengths[::-1].copy()}
    if loss_type == "rpo_sq":
        extra = {"gt_reward_margins": np.linspace(-2.0, 2.0, n)}
    got = preference_loss(*arrays, loss_type=loss_type, compute_grad=True, **kwargs, **extra)
    assert not general_spy, kwargs
    as_floats = {key: float(value) for key, value in kwargs.items()}
    _assert_same_bits(got, preference_loss(*arrays, loss_type=loss_type, compute_grad=True,
                                           **as_floats, **extra))


@pytest.mark.parametrize("wanted", [(), ("losses",), ["chosen_rewards", "rejected_rewards"],
                                    ("rejected_rewards", "losses", "losses")])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [3, 40_000])
def test_per_pair_outputs_stay_on_the_fast_path(wanted, reduction, n, general_spy):
    """A call that leaves per-pair outputs out (``per_pair_outputs``, a tuple or list of
    names) runs compiled too, the left-out arrays not made (the kernels write them to
    scratch): the general path's bits for what it returns, None for the rest; with out= for a
    wanted output; what the general path refuses (no losses with reduction='none', an out=
    array for an output left out, an unknown name) still reaches it and is named."""
    arrays = _data(n, np.float64)
    if reduction == "none" and "losses" not in wanted:
        with pytest.raises(ValueError, match="include 'losses'"):
            preference_loss(*arrays, reduction=reduction, per_pair_outputs=wanted)
        return
    for grad in (False, True):
        got = preference_loss(*arrays, reduction=reduction, compute_grad=grad,
                              per_pair_outputs=wanted, n_threads=2)
        assert not general_spy, wanted
        expected = _general_result(arrays, reduction=reduction, compute_grad=grad,
                                   per_pair_outputs=wanted)
        _assert_same_bits(got, expected)
        for key in ("losses", "chosen_rewards", "rejected_rewards"):
            assert (getattr(got, key) is None) == (key not in wanted), key
    if wanted:
        key = wanted[0]
        out = {key: np.empty(n)}
        got = preference_loss(*arrays, reduction=reduction, per_pair_outputs=wanted, out=out)
        assert not general_spy and getattr(got, key) is out[key]
    left_out = [key for key in ("losses", "chosen_rewards", "rejected_rewards")
                if key not in wanted]
    if left_out:
        with pytest.raises(ValueError, match="per_pair_outputs leaves"):
            preference_loss(*arrays, reduction=reduction, per_pair_outputs=wanted,
                            out={left_out[0]: np.empty(n)})
    with pytest.raises(ValueError, match="unknown name 'loss'"):
        preference_loss(*arrays, per_pair_outputs=(*wanted, "loss"))
    with pytest.raises(TypeError, match="per_pair_outputs must be None or a collection"):
        preference_loss(*arrays, per_pair_outputs="losses")


def test_cpu_tensors_take_the_fast_path_as_their_views(general_spy):
    """CPU torch tensors that do not require grad (log-probs, lengths, weights) run compiled,
    read as the NumPy views the general path takes: the arrays' bits; a tensor that requires
    grad is still the general path's TypeError naming the argument. dpo_fast.torch's call with
    length and weight tensors (which it passes on as they are) stays compiled too."""
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    n = 40
    for dtype in (np.float64, np.float32):
        arrays = _data(n, dtype)
        lengths = np.arange(1, n + 1)
        weights = np.linspace(0.0, 2.0, n)
        tensors = [torch.from_numpy(a) for a in arrays]
        for kwargs in ({}, {"loss_type": "sigmoid_norm", "chosen_lengths": lengths,
                            "rejected_lengths": lengths[::-1].copy(), "weights": weights}):
            as_tensors = {key: torch.from_numpy(value) for key, value in kwargs.items()
                          if isinstance(value, np.ndarray)}
            got = preference_loss(*tensors, compute_grad=True, **{**kwargs, **as_tensors})
            assert not general_spy
            _assert_same_bits(got, preference_loss(*arrays, compute_grad=True, **kwargs))
    leaf = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match="rejected_logps is a torch.Tensor that requires grad"):
        preference_loss(tensors[0].double(), leaf)
    # dpo_fast.torch passes lengths and weights on as the tensors it was given
    import dpo_fast.torch as dft
    arrays = _data(n, np.float64)
    lengths = torch.arange(1, n + 1)
    chosen = torch.from_numpy(arrays[0].copy()).requires_grad_(True)
    got = dft.preference_loss(chosen, *(torch.from_numpy(a) for a in arrays[1:]),
                              loss_type="sigmoid_norm", chosen_lengths=lengths,
                              rejected_lengths=lengths.flip(0), weights=torch.ones(n))
    got.loss.backward()
    assert not general_spy
    expected = preference_loss(*arrays, loss_type="sigmoid_norm", compute_grad=True,
                               chosen_lengths=lengths.numpy(),
                               rejected_lengths=lengths.flip(0).numpy(), weights=np.ones(n))
    assert chosen.grad.numpy().tobytes() == expected.grad_chosen.tobytes()
    assert got.loss.item() == expected.loss


class _Mapping(dict):
    """A dict subclass: not exactly dict, so the general path checks it."""


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"beta": 0.0}, ValueError, "beta must be finite and in"),
    ({"beta": True}, TypeError, "beta must be a real number"),
    ({"label_smoothing": False}, TypeError, "label_smoothing must be a real number"),
    ({"loss_type": "dpop", "dpop_lambda": 10**400}, ValueError, "dpop_lambda must be finite"),
    ({"loss_type": "nope"}, ValueError, "unknown loss_type 'nope'"),
    ({"label_smoothing": 0.7}, ValueError, "label_smoothing must be in"),
    ({"loss_type": "hinge", "label_smoothing": 0.1}, ValueError, "not used by"),
    ({"discopop_tau": 0.0}, ValueError, "discopop_tau must be"),
    ({"simpo_gamma": float("nan")}, ValueError, "simpo_gamma must be finite"),
    ({"f_alpha_divergence_coef": 1e301}, ValueError, "f_alpha_divergence_coef must be"),
    ({"reduction": "max"}, ValueError, "unknown reduction 'max'"),
    ({"compute_grad": 1}, TypeError, "compute_grad must be True or False"),
    ({"check_finite": None}, TypeError, "check_finite must be True or False"),
    ({"n_threads": 0}, ValueError, "n_threads must be None or a positive integer"),
    ({"out": {"losses": np.empty(3)}}, ValueError, r"out\['losses'\] has shape \(3,\)"),
    ({"out": {"grad_chosen": np.empty(4)}}, ValueError, "compute_grad=False"),
    ({"out": {"nope": np.empty(4)}}, ValueError, "unknown key 'nope'"),
    ({"out": {"losses": None}}, TypeError, "must be a numpy.ndarray"),
])
def test_bad_options_raise_the_general_paths_errors(kwargs, error, message):
    arrays = _data(4, np.float64)
    with pytest.raises(error, match=message):
        preference_loss(*arrays, **kwargs)


def test_bad_inputs_raise_the_general_paths_errors():
    a, b, c, d = _data(4, np.float64)
    bad = b.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match=r"^rejected_logps\[2\] is nan"):
        preference_loss(a, bad, c, d)
    with pytest.raises(ValueError, match="length mismatch"):
        preference_loss(a, b[:3])
    with pytest.raises(ValueError, match="is empty"):
        preference_loss(a[:0], b[:0])
    with pytest.raises(ValueError, match="ref_chosen_logps was given but ref_rejected_logps"):
        preference_loss(a, b, c)
    with pytest.raises(ValueError, match=r"out\['losses'\] overlaps"):
        preference_loss(a, b, out={"losses": a})
    shared = np.empty(4)
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(a, b, out={"losses": shared, "chosen_rewards": shared})
    # check_finite=False: NaN stays in its row, the means as the general path takes them
    got = preference_loss(a, bad, c, d, check_finite=False)
    _assert_same_bits(got, _general_result([a, bad, c, d], check_finite=False))


def test_sums_overflowing_finite_inputs_go_the_slow_way():
    big = np.array([1.7e308, 1.7e308])
    small = np.array([-1.7e308, -1.7e308])
    got = preference_loss(big, small, beta=1e-300)
    want = _general_result([big, small, None, None], beta=1e-300)
    _assert_same_bits(got, want)
    assert np.isfinite(got.metrics["logps/chosen"])


def test_result_pickles_and_prints():
    import pickle

    result = preference_loss(*_data(3, np.float64), compute_grad=True)
    copy = pickle.loads(pickle.dumps(result))
    _assert_same_bits(copy, result)
    assert repr(result).startswith("PreferenceLossResult(loss=")
    with pytest.raises(TypeError, match="metrics must be a dict"):
        PreferenceLossResult(0.0, None, None, None, None, None, None)


def test_dpo_loss_with_arrays_takes_the_compiled_path(general_spy):
    arrays = _data(5, np.float64)
    lists = [a.tolist() for a in arrays]
    assert dpo_fast.dpo_loss(*arrays, 0.5) == dpo_fast.dpo_loss(*lists, 0.5)
    assert not general_spy
    # lists longer than its list reader takes: compiled too
    long_arrays = _data(20_000, np.float64, seed=3)
    long_lists = [a.tolist() for a in long_arrays]
    assert dpo_fast.dpo_loss(*long_lists, 0.5) == dpo_fast.dpo_loss(*long_arrays, 0.5)
    assert not general_spy
    # float32 arrays: the general path (dpo_loss is float64 throughout), same numbers
    single = [a.astype(np.float32) for a in arrays]
    assert dpo_fast.dpo_loss(*single, 0.5) == dpo_fast.dpo_loss(
        *[a.astype(np.float64).tolist() for a in single], 0.5)
    assert len(general_spy) == 1


def test_torch_tensors_convert_or_name_the_argument():
    torch = pytest.importorskip("torch")
    a, b = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -3.0])
    assert preference_loss(a, b).loss == preference_loss(a.numpy(), b.numpy()).loss
    with pytest.raises(TypeError, match=r"^rejected_logps is a torch\.Tensor that requires "
                       r"grad: use dpo_fast\.torch\.preference_loss"):
        preference_loss(a, b.clone().requires_grad_())
    with torch.no_grad():  # nothing is differentiated: it converts
        preference_loss(a, b.clone().requires_grad_())
    with pytest.raises(TypeError, match=r"^chosen_logps is a torch\.Tensor of dtype "
                       r"torch\.bfloat16, which NumPy cannot hold"):
        preference_loss(a.to(torch.bfloat16), b)
    with pytest.raises(TypeError, match=r"^log_probs_chosen_policy is a torch\.Tensor that "
                       "requires grad"):
        dpo_fast.dpo_loss(a.clone().requires_grad_(), [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], 0.1)
    logits = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^logits is a torch\.Tensor of dtype torch\.bfloat16"):
        dpo_fast.sequence_logps(logits, np.zeros((1, 2), np.int64))


def test_entry_module_keeps_its_helpers_private():
    assert set(_entry.__all__) == {"PreferenceLossResult", "preference_loss", "dpo_loss_arrays"}


# ------------------------------------------------------------------- sequence_logps's common call

def _logps_fields(result):
    return [result.logps, result.counts, result.token_accuracy, result.logsumexp,
            result.token_logps, result.entropy, result.mean_entropy]


def _assert_same_logps(actual, expected):
    for a, e in zip(_logps_fields(actual), _logps_fields(expected)):
        if e is None:
            assert a is None
        elif isinstance(e, np.ndarray):
            assert a.dtype == e.dtype and a.shape == e.shape
            assert a.tobytes() == e.tobytes()
        else:
            assert type(a) is float and np.float64(a).tobytes() == np.float64(e).tobytes()


@pytest.fixture
def logps_general_spy(monkeypatch):
    from dpo_fast import logps

    calls = []
    prepare = logps._prepare

    def spy(*args, **kwargs):
        calls.append(1)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(logps, "_prepare", spy)
    return calls


@pytest.mark.parametrize("shape", [(2, 16, 64), (1, 1, 1), (3, 5, 7), (9, 33), (0, 4, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_logps_common_call_gives_the_general_paths_bits(shape, dtype,
                                                                  logps_general_spy):
    rng = np.random.default_rng(sum(shape))
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels.reshape(-1)[::3] = -100
    views = [logits]
    if len(shape) == 3 and shape[1] > 1:
        views.append(logits[:, :-1])  # strided over T, read in place
    for view in views:
        token_labels = np.ascontiguousarray(labels[tuple(slice(0, n) for n in view.shape[:-1])])
        for options in ({}, {"average": True}, {"temperature": 0.7},
                        {"return_token_logps": True, "return_entropy": True},
                        {"ignore_index": -100, "n_threads": 2}):
            logps_general_spy.clear()
            got = dpo_fast.sequence_logps(view, token_labels, **options)
            # (Empty logits have zero strides in NumPy 2: the general path takes them.)
            assert not logps_general_spy or view.size == 0, options
            _assert_same_logps(got, _general_logps(view, token_labels, **options))


def _general_logps(logits, labels, **options):
    """sequence_logps through its general path (the common call declined)."""
    from dpo_fast import logps

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logps._logps, "common_call", lambda *args: None)
        return dpo_fast.sequence_logps(logits, labels, **options)


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 1, 5), (17, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_logps_masks_take_the_common_call(shape, dtype, logps_general_spy):
    """A mask -- bool or any integer dtype, contiguous or a strided slice of an attention mask
    -- runs compiled with the general path's bits: a position counts where the mask is non-zero
    and the label is not ignore_index; a label out of range where the mask is 0 is not read."""
    rng = np.random.default_rng(sum(shape))
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels.reshape(-1)[::4] = -100
    wide = rng.integers(0, 3, shape[:-2] + (shape[-2] + 1,))  # an attention mask, one longer
    wide.reshape(-1)[:2] = 0
    masks = {
        "bool": wide[..., 1:] != 0,
        "bool slice": (wide != 0)[..., 1:],
        "int64 slice": wide[..., 1:],
        "uint8": wide[..., 1:].astype(np.uint8),
        "int32 of 2s": (wide[..., 1:] * 2).astype(np.int32),
        "uint16 Fortran": np.asfortranarray(wide[..., 1:].astype(np.uint16)),
        "zeros": np.zeros(shape[:-1], bool),
    }
    hidden = labels.copy()
    hidden[masks["bool"] == 0] = shape[-1] + 5  # out of range where nothing reads it
    for name, mask in masks.items():
        for token_labels in (labels, hidden):
            for options in ({}, {"average": True},
                            {"return_token_logps": True, "return_entropy": True}):
                logps_general_spy.clear()
                got = dpo_fast.sequence_logps(logits, token_labels, mask=mask, **options)
                assert not logps_general_spy, (name, options)
                _assert_same_logps(got, _general_logps(logits, token_labels, mask=mask,
                                                       **options))
    # What the common call does not read reaches the general path, which names it.
    logps_general_spy.clear()
    with pytest.raises(ValueError, match="mask has shape"):
        dpo_fast.sequence_logps(logits, labels, mask=masks["bool"][..., 1:])
    with pytest.raises(TypeError, match="mask must be boolean or integer"):
        dpo_fast.sequence_logps(logits, labels, mask=masks["bool"].astype(np.float32))
    assert len(logps_general_spy) == 2
    logps_general_spy.clear()
    listed = dpo_fast.sequence_logps(logits, labels, mask=masks["bool"].tolist())
    assert len(logps_general_spy) == 1
    _assert_same_logps(listed, _general_logps(logits, labels, mask=masks["bool"]))


def test_sequence_logps_common_call_hands_errors_over(logps_general_spy):
    logits = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 4 is out of range"):
        dpo_fast.sequence_logps(logits, np.array([[0, 1, 2], [3, 0, 4]]))
    bad = logits.copy()
    bad[1, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"logits\[1, 1, 2\] is nan"):
        dpo_fast.sequence_logps(bad, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        dpo_fast.sequence_logps(logits, np.zeros((2, 3), np.int64), temperature=0.0)
    with pytest.raises(TypeError, match="average must be True or False"):
        dpo_fast.sequence_logps(logits, np.zeros((2, 3), np.int64), average=1)
    assert len(logps_general_spy) == 3  # (average=1 is refused before the inputs are read)


def _general_grad(*args, **options):
    """sequence_logps_grad through its general path (the common call declined)."""
    from dpo_fast import logps

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logps._logps, "common_grad_call", lambda *args: None)
        return dpo_fast.sequence_logps_grad(*args, **options)


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 1, 5), (17, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_logps_grad_common_call_gives_the_general_paths_bits(shape, dtype,
                                                                       logps_general_spy):
    """The backward dpo_fast.torch runs (upstream per sequence as an array or a float, a mask,
    the forward's logsumexp or none, average, a temperature) is one compiled step with the
    general path's bits."""
    rng = np.random.default_rng(sum(shape) + 1)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels.reshape(-1)[::5] = -100
    seq_shape = shape[:-2]
    wide = rng.integers(0, 2, shape[:-2] + (shape[-2] + 1,)) != 0
    wide.reshape(-1)[1] = True
    upstreams = [1.0, -0.25, rng.standard_normal(seq_shape),
                 rng.standard_normal(seq_shape).astype(np.float32)]
    if seq_shape:
        upstreams.append(rng.standard_normal(seq_shape[0] * 2)[::2])  # strided
    for mask in (None, wide[..., 1:]):
        for options in ({}, {"average": True}, {"temperature": 0.7}):
            forward = dpo_fast.sequence_logps(logits, labels, mask=mask, **options)
            for upstream in upstreams:
                for lse in (None, forward.logsumexp):
                    logps_general_spy.clear()
                    got = dpo_fast.sequence_logps_grad(logits, labels, upstream, mask=mask,
                                                       logsumexp=lse, **options)
                    assert not logps_general_spy, options
                    want = _general_grad(logits, labels, upstream, mask=mask, logsumexp=lse,
                                         **options)
                    assert got.dtype == want.dtype and got.shape == want.shape == shape
                    assert got.tobytes() == want.tobytes(), (options, upstream, lse is None)


def test_sequence_logps_grad_common_call_hands_errors_over(logps_general_spy):
    """What is wrong reaches the general path, which names it."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 3, 4))
    labels = np.array([[0, 1, 2], [3, 0, -100]])
    lse = dpo_fast.sequence_logps(logits, labels).logsumexp
    cases = [
        ((logits, labels, np.array([1.0, np.inf])), {}, r"grad_logps\[1\] is inf"),
        ((logits, labels, 1.0), {"logsumexp": np.where(labels == 3, np.nan, lse)},
         r"logsumexp\[1, 0\] is nan"),
        ((np.where(labels[..., None] == 2, np.nan, logits), labels, 1.0), {},
         r"logits\[0, 2, 0\] is nan"),
        ((logits, np.array([[0, 1, 2], [4, 0, -100]]), 1.0), {}, r"labels\[1, 0\] = 4"),
    ]
    for args, options, message in cases:
        logps_general_spy.clear()
        with pytest.raises(ValueError, match=message):
            dpo_fast.sequence_logps_grad(*args, **options)
        assert len(logps_general_spy) == 1, message


# --------------------------------------------------------------------------- the kernel boundary

def test_loss_config_picks_the_loop_in_one_place():
    from dpo_fast._kernels import _pairwise

    ids = _registry.KERNEL_IDS
    loops = {
        ((ids["sigmoid"], 0, 1.0),): "plain",
        ((ids["hinge"], 0, 1.0),): "plain",
        ((ids["ipo"], 1, 1.0),): "normalized",
        ((ids["sigmoid_norm"], 1, 1.0),): "normalized",
        ((ids["sigmoid"], 0, 2.0),): "general",
        ((ids["sigmoid"], 0, 1.0), (ids["hinge"], 0, 1.0)): "general",
        ((ids["sft"], 0, 1.0),): "plain",  # (with the general loop's bits)
        ((ids["rpo_sq"], 0, 1.0),): "plain",
        ((ids["rpo_fwd_kl"], 0, 1.0),): "general",
        ((ids["sft"], 0, 1.0), (ids["sigmoid"], 0, 1.0)): "general",
        (): "general",
    }
    for terms, loop in loops.items():
        assert _pairwise.LossConfig(terms, beta=0.1).loop == loop, terms
    sigmoid = ((ids["sigmoid"], 0, 1.0),)
    assert _pairwise.LossConfig(sigmoid, beta=0.1, weighted=True).loop == "plain"
    assert _pairwise.LossConfig(sigmoid, beta=0.1, divergence=2).loop == "general"
    assert _pairwise.LossConfig(sigmoid, beta=0.1, grad_chosen_offset=1.0).loop == "general"
    sft = ((ids["sft"], 0, 1.0),)
    assert _pairwise.LossConfig(sft, beta=0.1, grad_chosen_offset=1.0).loop == "plain"
    normalized = ((ids["simpo"], 1, 1.0),)
    assert _pairwise.LossConfig(normalized, beta=0.1, weighted=True).loop == "normalized"
    with pytest.raises(ValueError, match="no kernel case"):
        _pairwise.LossConfig(((ids["aot"], 0, 1.0),), beta=0.1)
    with pytest.raises(ValueError, match="no normalised kernel case"):
        _pairwise.LossConfig(((ids["hinge"], 1, 1.0),), beta=0.1)


def test_kernel_run_refuses_what_it_cannot_read():
    from dpo_fast._kernels import _pairwise

    config = _pairwise.LossConfig(((_registry.KERNEL_IDS["sigmoid"], 0, 1.0),), beta=0.1)
    a = np.zeros(4)
    outputs = {key: np.empty(4) for key in OUTPUTS[:3]}
    assert len(_pairwise.run(config, a, a + 1, None, None, None, None, None, outputs, 1)) == 7
    for bad, match in [
        ((a[::2], a[:2], None, None), "chosen must be a C-contiguous"),
        ((a, a.astype(np.float32), None, None), "rejected must be"),
        ((a, a, a, None), "both reference arrays"),
        ((a[:0], a[:0], None, None), "empty input"),
        ((a.astype(np.int64), a, None, None), "float32 or float64"),
    ]:
        with pytest.raises(ValueError, match=match):
            _pairwise.run(config, *bad, None, None, None, outputs, 1)
    read_only = dict(outputs, losses=np.zeros(4))
    read_only["losses"].flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _pairwise.run(config, a, a, None, None, None, None, None, read_only, 1)
    weighted = _pairwise.LossConfig(((_registry.KERNEL_IDS["sigmoid"], 0, 1.0),), beta=0.1,
                                    weighted=True)
    with pytest.raises(ValueError, match="needs the pair weights"):
        _pairwise.run(weighted, a, a, None, None, None, None, None, outputs, 1)
