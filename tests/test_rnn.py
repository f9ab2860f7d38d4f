"""The packing helpers (``jaxlstm.rnn``) against live ``torch.nn.utils.rnn``.

Every number is judged against PyTorch run on the same data (CPU), or, where PyTorch
has no answer (length 0, ties in batches of more than 16, where its sort is not
stable), against a plain NumPy statement of the contract.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as trnn
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlstm as jl
import jaxlstm.rnn as jrnn

PUBLIC_NAMES = [
    "PackedSequence",
    "pack_sequence",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "unpack_sequence",
    "unpad_sequence",
]

FEATS = [pytest.param((), id="feat()"), pytest.param((2, 3), id="feat(2,3)")]

# (lengths, enforce_sorted). PyTorch's sort is stable for N <= 16 or distinct lengths,
# so every case with ties has N <= 16.
VIEW_CASES = [
    pytest.param([5, 3, 2], True, id="sorted"),
    pytest.param([5, 3, 2], False, id="sorted-unenforced"),
    pytest.param([4, 4, 2, 2, 1], True, id="sorted-ties"),
    pytest.param([2, 5, 3, 1], False, id="unsorted"),
    pytest.param([3, 1, 3, 2, 1, 3], False, id="unsorted-ties"),
    pytest.param([3, 3, 3], False, id="all-equal"),
    pytest.param([4], True, id="single"),
    pytest.param([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1], False, id="16-ties"),
    pytest.param(
        [int(n) for n in np.random.default_rng(7).permutation(np.arange(1, 21))],
        False,
        id="20-distinct",
    ),
]
SEQ_CASES = VIEW_CASES[:-1]  # one compilation per distinct length: spare the 20 of them

# (batch_first, trailing feature shape, padded steps past the longest sequence)
LAYOUTS = [
    pytest.param(False, (), 0, id="time-major-feat()-L=max"),
    pytest.param(True, (2, 3), 2, id="batch-first-feat(2,3)-L=max+2"),
    pytest.param(False, (2,), 2, id="time-major-feat(2)-L=max+2"),
]

SETTINGS = settings(max_examples=15, deadline=None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers


def _np(x):
    """A torch tensor or any array as a NumPy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def _seqs(rng, lengths, feat, dtype=np.float32):
    return [rng.standard_normal((n, *feat)).astype(dtype) for n in lengths]


def _padded(rng, lengths, feat, extra=0, batch_first=False):
    """Random values everywhere, past the lengths too, so packing must ignore them."""
    shape = (max(lengths) + extra, len(lengths), *feat)
    x = rng.standard_normal(shape).astype(np.float32)
    return np.swapaxes(x, 0, 1).copy() if batch_first else x


def _pack_both(x, lengths, *, batch_first=False, enforce_sorted=True):
    """The same padded batch packed by jaxlstm and by PyTorch."""
    jp = jrnn.pack_padded_sequence(
        jnp.asarray(x), lengths, batch_first=batch_first, enforce_sorted=enforce_sorted
    )
    tp = trnn.pack_padded_sequence(
        torch.from_numpy(x),
        torch.as_tensor(lengths),
        batch_first=batch_first,
        enforce_sorted=enforce_sorted,
    )
    return jp, tp


def _np_pad(seqs, batch_first=False, padding_value=0.0):
    """Plain right padding, the reference for the round trips."""
    feat = seqs[0].shape[1:]
    out = np.full((max(len(s) for s in seqs), len(seqs), *feat), padding_value, np.float32)
    for i, s in enumerate(seqs):
        out[: len(s), i] = s
    return np.swapaxes(out, 0, 1) if batch_first else out


def _np_pack(padded, lengths):
    """PyTorch's packed layout from a time-major batch, with a stable sort."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    rows = [padded[t, order[lengths[order] > t]] for t in range(lengths.max())]
    batch_sizes = np.array([len(r) for r in rows])
    return np.concatenate(rows), batch_sizes, order, np.argsort(order)


def assert_packed_equal(jp, tp, *, tol=None):
    """``jp``'s PyTorch view equals PyTorch's ``tp`` (exactly unless ``tol`` is given)."""
    assert isinstance(jp, jl.PackedSequence)
    data, expected = _np(jp.data), _np(tp.data)
    assert data.shape == expected.shape
    assert data.dtype == expected.dtype
    if tol is None:
        np.testing.assert_array_equal(data, expected)
    else:
        np.testing.assert_allclose(data, expected, rtol=tol, atol=tol)
    assert _np(jp.batch_sizes).shape == _np(tp.batch_sizes).shape
    np.testing.assert_array_equal(_np(jp.batch_sizes), _np(tp.batch_sizes))
    for name in ("sorted_indices", "unsorted_indices"):
        got, want = getattr(jp, name), getattr(tp, name)
        if want is None:
            assert got is None, name
        else:
            assert got is not None, name
            np.testing.assert_array_equal(_np(got), _np(want), err_msg=name)


def assert_list_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert _np(g).shape == _np(e).shape
        np.testing.assert_array_equal(_np(g), _np(e))


# ----------------------------------------------------------------------------- surface


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_top_level_reexports(name):
    assert jl.rnn is jrnn
    assert getattr(jl, name) is getattr(jrnn, name)
    assert name in jl.__all__


def test_torch_docstring_examples():
    """The examples of PyTorch's own docstrings, with their printed values."""
    packed = jrnn.pack_sequence([jnp.array([1, 2, 3]), jnp.array([4, 5]), jnp.array([6])])
    np.testing.assert_array_equal(packed.data, [1, 4, 6, 2, 5, 3])
    np.testing.assert_array_equal(packed.batch_sizes, [3, 2, 1])
    assert packed.sorted_indices is None
    assert packed.unsorted_indices is None
    assert_list_equal(jrnn.unpack_sequence(packed), [[1, 2, 3], [4, 5], [6]])

    seq = jnp.array([[1, 2, 0], [3, 0, 0], [4, 5, 6]])
    packed = jrnn.pack_padded_sequence(seq, [2, 1, 3], batch_first=True, enforce_sorted=False)
    np.testing.assert_array_equal(packed.data, [4, 1, 3, 5, 2, 6])
    np.testing.assert_array_equal(packed.batch_sizes, [3, 2, 1])
    np.testing.assert_array_equal(packed.sorted_indices, [2, 0, 1])
    np.testing.assert_array_equal(packed.unsorted_indices, [1, 2, 0])
    padded, lengths = jrnn.pad_packed_sequence(packed, batch_first=True)
    np.testing.assert_array_equal(padded, seq)
    np.testing.assert_array_equal(lengths, [2, 1, 3])


# ----------------------------------------------------------------------------- PyTorch's view


@pytest.mark.parametrize("lengths, enforce_sorted", VIEW_CASES)
@pytest.mark.parametrize("batch_first, feat, extra", LAYOUTS)
def test_pack_padded_sequence_matches_torch(lengths, enforce_sorted, batch_first, feat, extra, rng):
    x = _padded(rng, lengths, feat, extra, batch_first)
    jp, tp = _pack_both(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    assert_packed_equal(jp, tp)


@pytest.mark.parametrize("as_lengths", [list, np.array, jnp.array], ids=["list", "numpy", "jax"])
def test_pack_padded_sequence_lengths_forms(as_lengths, rng):
    lengths = [2, 5, 3, 1]
    x = _padded(rng, lengths, (2,), extra=1)
    jp = jrnn.pack_padded_sequence(jnp.asarray(x), as_lengths(lengths), enforce_sorted=False)
    tp = trnn.pack_padded_sequence(torch.from_numpy(x), lengths, enforce_sorted=False)
    assert_packed_equal(jp, tp)


@pytest.mark.parametrize("lengths, enforce_sorted", SEQ_CASES)
@pytest.mark.parametrize("feat", FEATS)
def test_pack_sequence_matches_torch(lengths, enforce_sorted, feat, rng):
    seqs = _seqs(rng, lengths, feat)
    jp = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=enforce_sorted)
    tp = trnn.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=enforce_sorted)
    assert_packed_equal(jp, tp)


def test_ties_keep_caller_order_in_large_batch(rng):
    """N > 16 with ties, where PyTorch's sort is not stable: the contract is a stable sort."""
    lengths = [int(n) for n in rng.integers(1, 4, size=40)]
    x = _padded(rng, lengths, (2,))
    packed = jrnn.pack_padded_sequence(jnp.asarray(x), lengths, enforce_sorted=False)
    data, batch_sizes, order, inverse = _np_pack(x, lengths)
    np.testing.assert_array_equal(packed.data, data)
    np.testing.assert_array_equal(packed.batch_sizes, batch_sizes)
    np.testing.assert_array_equal(packed.sorted_indices, order)
    np.testing.assert_array_equal(packed.unsorted_indices, inverse)


@pytest.mark.parametrize("lengths, enforce_sorted", VIEW_CASES)
@pytest.mark.parametrize(
    "batch_first, padding_value, total_extra",
    [(False, 0.0, None), (True, -1.5, 0), (False, 2.0, 3), (True, 2.0, 3)],
    ids=["default", "batch-first-pad-1.5-total=max", "pad2-total=max+3", "batch-first-total=max+3"],
)
def test_pad_packed_sequence_matches_torch(
    lengths, enforce_sorted, batch_first, padding_value, total_extra, rng
):
    x = _padded(rng, lengths, (2, 3), batch_first=batch_first)
    jp, tp = _pack_both(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    total_length = None if total_extra is None else max(lengths) + total_extra
    kwargs = dict(batch_first=batch_first, padding_value=padding_value, total_length=total_length)
    padded, out_lengths = jrnn.pad_packed_sequence(jp, **kwargs)
    expected, expected_lengths = trnn.pad_packed_sequence(tp, **kwargs)
    assert padded.shape == tuple(expected.shape)
    np.testing.assert_array_equal(padded, _np(expected))
    np.testing.assert_array_equal(out_lengths, _np(expected_lengths))
    np.testing.assert_array_equal(out_lengths, lengths)


@pytest.mark.parametrize("total_extra", [None, 1, 5], ids=["none", "max+1", "L+2"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_pad_packed_after_padding_longer_than_longest(total_extra, batch_first, jit, rng):
    """Input padded to 7 steps, longest sequence 4: PyTorch pads back to 4 (or total_length).

    Under jit too: packing with concrete lengths fixes the padded length at the longest.
    """
    lengths = [2, 4, 1]
    x = _padded(rng, lengths, (3,), extra=3, batch_first=batch_first)
    jp, tp = _pack_both(x, lengths, batch_first=batch_first, enforce_sorted=False)
    total_length = None if total_extra is None else max(lengths) + total_extra

    def pad(packed):
        return jrnn.pad_packed_sequence(packed, batch_first=batch_first, total_length=total_length)

    padded, out_lengths = (jax.jit(pad) if jit else pad)(jp)
    expected, expected_lengths = trnn.pad_packed_sequence(
        tp, batch_first=batch_first, total_length=total_length
    )
    assert padded.shape == tuple(expected.shape)
    np.testing.assert_array_equal(padded, _np(expected))
    np.testing.assert_array_equal(out_lengths, _np(expected_lengths))


@pytest.mark.parametrize(
    "lengths",
    [[5, 3, 2], [2, 5, 3, 1], [3, 1, 3, 3], [2, 0, 3], [4]],
    ids=["sorted", "unsorted", "ties", "with-empty", "single"],
)
@pytest.mark.parametrize("feat", FEATS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_sequence_matches_torch(lengths, feat, batch_first, padding_side, rng):
    seqs = _seqs(rng, lengths, feat)
    kwargs = dict(batch_first=batch_first, padding_value=-2.5, padding_side=padding_side)
    padded = jrnn.pad_sequence([jnp.asarray(s) for s in seqs], **kwargs)
    expected = trnn.pad_sequence([torch.from_numpy(s) for s in seqs], **kwargs)
    assert padded.shape == tuple(expected.shape)
    np.testing.assert_array_equal(padded, _np(expected))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_sequence_default_padding(padding_side, rng):
    seqs = _seqs(rng, [1, 3, 2], (2,))
    padded = jrnn.pad_sequence([jnp.asarray(s) for s in seqs], padding_side=padding_side)
    expected = trnn.pad_sequence([torch.from_numpy(s) for s in seqs], padding_side=padding_side)
    np.testing.assert_array_equal(padded, _np(expected))


@pytest.mark.parametrize("lengths, enforce_sorted", SEQ_CASES)
@pytest.mark.parametrize("feat", FEATS)
def test_unpack_sequence_matches_torch(lengths, enforce_sorted, feat, rng):
    seqs = _seqs(rng, lengths, feat)
    jp = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=enforce_sorted)
    tp = trnn.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=enforce_sorted)
    assert_list_equal(jrnn.unpack_sequence(jp), trnn.unpack_sequence(tp))
    assert_list_equal(jrnn.unpack_sequence(jp), seqs)


@pytest.mark.parametrize(
    "lengths", [[5, 3, 2], [2, 5, 3, 1], [2, 0, 3]], ids=["sorted", "unsorted", "with-empty"]
)
@pytest.mark.parametrize("feat", FEATS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_unpad_sequence_matches_torch(lengths, feat, batch_first, rng):
    x = _padded(rng, lengths, feat, extra=1, batch_first=batch_first)
    got = jrnn.unpad_sequence(jnp.asarray(x), jnp.asarray(lengths), batch_first=batch_first)
    # PyTorch transposes its argument in place when batch_first=False: give it a copy.
    expected = trnn.unpad_sequence(
        torch.tensor(x), torch.as_tensor(lengths), batch_first=batch_first
    )
    assert_list_equal(got, expected)


# ----------------------------------------------------------------------------- length 0

# (lengths, enforce_sorted); PyTorch refuses length 0, so it runs on the non-empty ones.
ZERO_CASES = [
    pytest.param([3, 0, 2, 0, 1], False, id="unsorted"),
    pytest.param([3, 2, 0, 0], True, id="sorted-enforced"),
    pytest.param([0, 2, 2, 0, 2], False, id="ties"),
]


def _zero_case(rng, lengths, enforce_sorted, feat):
    seqs = _seqs(rng, lengths, feat)
    keep = [i for i, n in enumerate(lengths) if n > 0]
    jp = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=enforce_sorted)
    tp = trnn.pack_sequence(
        [torch.from_numpy(seqs[i]) for i in keep], enforce_sorted=enforce_sorted
    )
    return seqs, keep, jp, tp


@pytest.mark.parametrize("lengths, enforce_sorted", ZERO_CASES)
@pytest.mark.parametrize("feat", FEATS)
def test_zero_length_pack(lengths, enforce_sorted, feat, rng):
    _, keep, jp, tp = _zero_case(rng, lengths, enforce_sorted, feat)
    data = _np(jp.data)
    assert data.shape == tuple(tp.data.shape)
    np.testing.assert_array_equal(data, _np(tp.data))
    np.testing.assert_array_equal(jp.batch_sizes, _np(tp.batch_sizes))
    if enforce_sorted:
        assert jp.sorted_indices is None
        assert jp.unsorted_indices is None
    else:
        empty = [i for i, n in enumerate(lengths) if n == 0]
        order = np.concatenate([np.asarray(keep)[_np(tp.sorted_indices)], empty])
        np.testing.assert_array_equal(jp.sorted_indices, order)
        np.testing.assert_array_equal(jp.unsorted_indices, np.argsort(order))


@pytest.mark.parametrize("lengths, enforce_sorted", ZERO_CASES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_zero_length_pad_packed(lengths, enforce_sorted, batch_first, rng):
    feat = (2,)
    _, keep, jp, tp = _zero_case(rng, lengths, enforce_sorted, feat)
    padded, out_lengths = jrnn.pad_packed_sequence(jp, batch_first=batch_first, padding_value=-7.0)
    torch_padded, _ = trnn.pad_packed_sequence(tp, padding_value=-7.0)
    expected = np.full((max(lengths), len(lengths), *feat), -7.0, np.float32)
    expected[:, keep] = _np(torch_padded)
    np.testing.assert_array_equal(padded, np.swapaxes(expected, 0, 1) if batch_first else expected)
    np.testing.assert_array_equal(out_lengths, lengths)


@pytest.mark.parametrize("lengths, enforce_sorted", ZERO_CASES)
@pytest.mark.parametrize("feat", FEATS)
def test_zero_length_unpack(lengths, enforce_sorted, feat, rng):
    seqs, _, jp, _ = _zero_case(rng, lengths, enforce_sorted, feat)
    unpacked = jrnn.unpack_sequence(jp)
    assert_list_equal(unpacked, seqs)
    for got, n in zip(unpacked, lengths, strict=True):
        assert _np(got).shape == (n, *feat)


# ----------------------------------------------------------------------------- errors

X = np.arange(30, dtype=np.float32).reshape(5, 3, 2)  # (L=5, N=3, 2)
I64 = np.int64

# (call, pytorch_too, error, match): ``call(rnn, asarray)`` runs with jaxlstm and, where
# PyTorch has the same error, with PyTorch too, whose message must match the same pattern:
# the pattern is PyTorch's wording. PyTorch refuses length 0 and does not check lengths
# past the padded length, so those cases are jaxlstm's own.
ERROR_CASES = [
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [2, 5, 3]),
        True,
        ValueError,
        "enforce_sorted",
        id="unsorted-enforced",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), a(np.array([5, 3, 4], I64))),
        True,
        ValueError,
        "enforce_sorted",
        id="unsorted-enforced-array",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_sequence([a(X[:2, 0]), a(X[:3, 0])]),
        True,
        ValueError,
        "enforce_sorted",
        id="pack_sequence-unsorted",
    ),
    pytest.param(
        lambda rnn, a: rnn.pad_packed_sequence(
            rnn.pack_padded_sequence(a(X), [5, 3, 1]), total_length=4
        ),
        True,
        ValueError,
        r"Expected total_length to be at least the length of the longest sequence in "
        r"input, but got total_length=4 and max sequence length being 5",
        id="total_length",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [5, 3]),
        True,
        ValueError,
        r"Expected `?len\(lengths\)`? to be equal to batch_size, but got 2 "
        r"\(batch_size=3\)",
        id="too-few-lengths",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [5, 3, 2, 1]),
        True,
        ValueError,
        r"Expected `?len\(lengths\)`? to be equal to batch_size, but got 4 "
        r"\(batch_size=3\)",
        id="too-many-lengths",
    ),
    pytest.param(  # PyTorch fails in its own index_select here, with no useful message
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [2, 5, 3, 1], enforce_sorted=False),
        False,
        ValueError,
        r"Expected `?len\(lengths\)`? to be equal to batch_size, but got 4 "
        r"\(batch_size=3\)",
        id="too-many-lengths-unsorted",
    ),
    pytest.param(
        lambda rnn, a: rnn.pad_sequence([a(X[0]), a(X[1])], padding_side="middle"),
        True,
        ValueError,
        r"padding_side.*left.*right.*middle",
        id="padding_side",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [5, 3, -1]),
        False,
        ValueError,
        "(?i)length",
        id="negative-enforced",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [-1, 5, 3], enforce_sorted=False),
        False,
        ValueError,
        "(?i)length",
        id="negative-unsorted",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [6, 3, 1]),
        False,
        ValueError,
        "(?i)length",
        id="longer-than-padded-enforced",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(a(X), [1, 6, 3], enforce_sorted=False),
        False,
        ValueError,
        "(?i)length",
        id="longer-than-padded-unsorted",
    ),
    pytest.param(
        lambda rnn, a: rnn.pack_padded_sequence(
            a(np.swapaxes(X, 0, 1).copy()), [6, 3, 1], batch_first=True
        ),
        False,
        ValueError,
        "(?i)length",
        id="longer-than-padded-batch-first",
    ),
    pytest.param(
        lambda rnn, a: rnn.unpad_sequence(a(X), a(np.array([5, 3], I64))),
        False,
        ValueError,
        "(?i)length",
        id="unpad-wrong-number",
    ),
]


@pytest.mark.parametrize("call, pytorch_too, error, match", ERROR_CASES)
def test_errors_in_pytorch_words(call, pytorch_too, error, match):
    with pytest.raises(error, match=match):
        call(jrnn, jnp.asarray)
    if pytorch_too:
        with pytest.raises((RuntimeError, ValueError), match=match):
            call(trnn, torch.from_numpy)


# ----------------------------------------------------------------------------- PyTree and jit


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["enforced", "unsorted"])
def test_tree_leaves_are_arrays(enforce_sorted, rng):
    lengths = [4, 2, 1] if enforce_sorted else [2, 4, 1]
    jp, _ = _pack_both(_padded(rng, lengths, (2,)), lengths, enforce_sorted=enforce_sorted)
    leaves = jax.tree_util.tree_leaves(jp)
    assert leaves
    assert all(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves), leaves


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["enforced", "unsorted"])
def test_jit_identity_keeps_the_view(enforce_sorted, rng):
    lengths = [4, 2, 2, 1] if enforce_sorted else [2, 4, 1, 2]
    jp, tp = _pack_both(_padded(rng, lengths, (2, 3)), lengths, enforce_sorted=enforce_sorted)
    out = jax.jit(lambda p: p)(jp)
    assert_packed_equal(out, tp)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["enforced", "unsorted"])
def test_jit_pad_packed_does_not_retrace(enforce_sorted, rng):
    """New lengths, same padded shape (same longest length): one trace, PyTorch's numbers."""
    if enforce_sorted:
        batches = [[6, 4, 1], [6, 6, 2], [6, 1, 1]]
    else:
        batches = [[2, 6, 4], [5, 1, 6], [6, 6, 6]]
    x = rng.standard_normal((6, 3, 2)).astype(np.float32)
    traces = 0

    @jax.jit
    def pad(packed):
        nonlocal traces
        traces += 1
        return jrnn.pad_packed_sequence(packed, padding_value=-1.0)

    for lengths in batches:
        jp, tp = _pack_both(x, lengths, enforce_sorted=enforce_sorted)
        padded, out_lengths = pad(jp)
        expected, expected_lengths = trnn.pad_packed_sequence(tp, padding_value=-1.0)
        np.testing.assert_array_equal(padded, _np(expected))
        np.testing.assert_array_equal(out_lengths, _np(expected_lengths))
    assert traces == 1


# ----------------------------------------------------------------------------- LSTM on packed

BIDIR_2 = dict(num_layers=2, bidirectional=True, proj_size=0, bias=True)
LSTM_CONFIGS = [  # (configuration, with hx); each costs a compilation or two
    pytest.param(
        dict(num_layers=1, bidirectional=False, proj_size=0, bias=True), False, id="1-layer"
    ),
    pytest.param(BIDIR_2, True, id="2-layer-bidir-hx"),
    pytest.param(
        dict(num_layers=2, bidirectional=True, proj_size=2, bias=False),
        True,
        id="2-layer-bidir-proj-nobias-hx",
    ),
]
INPUT_SIZE, HIDDEN_SIZE = 3, 4


def _torch_lstm(params, cfg, dtype):
    lstm = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, **cfg).to(dtype)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in jl.params_to_torch(params).items()})
    return lstm


def _hx(rng, cfg, n, dtype):
    slots = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    h_out = cfg["proj_size"] or HIDDEN_SIZE
    return (
        rng.standard_normal((slots, n, h_out)).astype(dtype),
        rng.standard_normal((slots, n, HIDDEN_SIZE)).astype(dtype),
    )


def _run_both(jax_lstm, torch_lstm, seqs, enforce_sorted, hx):
    jp = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=enforce_sorted)
    tp = trnn.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=enforce_sorted)
    j_hx = None if hx is None else tuple(jnp.asarray(a) for a in hx)
    t_hx = None if hx is None else tuple(torch.from_numpy(a) for a in hx)
    j_out, j_state = jax_lstm(jp, j_hx)
    with torch.no_grad():
        t_out, t_state = torch_lstm(tp, t_hx)
    return (j_out, j_state), (t_out, t_state)


def _assert_lstm_equal(got, expected, tol):
    (j_out, (j_h, j_c)), (t_out, (t_h, t_c)) = got, expected
    assert_packed_equal(j_out, t_out, tol=tol)
    np.testing.assert_allclose(
        jrnn.pad_packed_sequence(j_out)[0],
        _np(trnn.pad_packed_sequence(t_out)[0]),
        rtol=tol,
        atol=tol,
    )
    for a, b in [(j_h, t_h), (j_c, t_c)]:
        assert a.shape == tuple(b.shape)
        assert a.dtype == _np(b).dtype
        np.testing.assert_allclose(a, _np(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("cfg, use_hx", LSTM_CONFIGS)
@pytest.mark.parametrize(
    "lengths, enforce_sorted",
    [([5, 3, 3, 1], True), ([2, 5, 1, 3], False)],
    ids=["sorted", "unsorted"],
)
def test_lstm_on_packed_matches_torch_float64(cfg, use_hx, lengths, enforce_sorted, rng):
    with jax.enable_x64(True):
        params = jl.init_params(
            jax.random.key(0),
            INPUT_SIZE,
            HIDDEN_SIZE,
            cfg["num_layers"],
            bias=cfg["bias"],
            bidirectional=cfg["bidirectional"],
            proj_size=cfg["proj_size"],
            dtype=jnp.float64,
        )
        torch_lstm = _torch_lstm(params, cfg, torch.float64)
        seqs = _seqs(rng, lengths, (INPUT_SIZE,), np.float64)
        hx = _hx(rng, cfg, len(lengths), np.float64) if use_hx else None
        got, expected = _run_both(
            lambda p, h: jl.lstm(params, p, h), torch_lstm, seqs, enforce_sorted, hx
        )
        _assert_lstm_equal(got, expected, 1e-10)


def test_lstm_module_on_packed_matches_torch_float64(rng):
    lengths = [1, 4, 2, 4]
    with jax.enable_x64(True):
        module = jl.LSTM(
            INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True, key=jax.random.key(3), dtype=jnp.float64
        )
        torch_lstm = _torch_lstm(module.params, BIDIR_2, torch.float64)
        seqs = _seqs(rng, lengths, (INPUT_SIZE,), np.float64)
        hx = _hx(rng, BIDIR_2, len(lengths), np.float64)
        got, expected = _run_both(module, torch_lstm, seqs, False, hx)
        _assert_lstm_equal(got, expected, 1e-10)


def test_lstm_on_packed_matches_torch_float32(rng):
    cfg = dict(num_layers=1, bidirectional=True, proj_size=2, bias=True)
    params = jl.init_params(
        jax.random.key(1), INPUT_SIZE, HIDDEN_SIZE, bidirectional=True, proj_size=2
    )
    torch_lstm = _torch_lstm(params, cfg, torch.float32)
    seqs = _seqs(rng, [3, 6, 1, 6, 2], (INPUT_SIZE,))
    hx = _hx(rng, cfg, 5, np.float32)
    got, expected = _run_both(lambda p, h: jl.lstm(params, p, h), torch_lstm, seqs, False, hx)
    _assert_lstm_equal(got, expected, 1e-5)


def test_lstm_on_packed_with_empty_sequence(rng):
    """Length 0: no rows, state h_0/c_0; the rest as PyTorch on the non-empty sequences."""
    cfg = dict(num_layers=1, bidirectional=True, proj_size=0, bias=True)
    lengths, keep = [3, 0, 4, 2], [0, 2, 3]
    with jax.enable_x64(True):
        params = jl.init_params(
            jax.random.key(2), INPUT_SIZE, HIDDEN_SIZE, bidirectional=True, dtype=jnp.float64
        )
        torch_lstm = _torch_lstm(params, cfg, torch.float64)
        seqs = _seqs(rng, lengths, (INPUT_SIZE,), np.float64)
        h0, c0 = _hx(rng, cfg, len(lengths), np.float64)
        jp = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=False)
        j_out, (j_h, j_c) = jl.lstm(params, jp, (jnp.asarray(h0), jnp.asarray(c0)))
        tp = trnn.pack_sequence([torch.from_numpy(seqs[i]) for i in keep], enforce_sorted=False)
        with torch.no_grad():
            t_out, (t_h, t_c) = torch_lstm(
                tp, (torch.from_numpy(h0[:, keep]), torch.from_numpy(c0[:, keep]))
            )
        np.testing.assert_allclose(j_out.data, _np(t_out.data), rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(j_out.batch_sizes, _np(t_out.batch_sizes))
        np.testing.assert_allclose(j_h[:, keep], _np(t_h), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(j_c[:, keep], _np(t_c), rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(j_h[:, 1], h0[:, 1])
        np.testing.assert_array_equal(j_c[:, 1], c0[:, 1])
        padded, out_lengths = jrnn.pad_packed_sequence(j_out)
        np.testing.assert_array_equal(padded[:, 1], 0.0)
        np.testing.assert_array_equal(out_lengths, lengths)


# ----------------------------------------------------------------------------- properties


@st.composite
def batches(draw, min_length=0, max_batch=5):
    """A list of float32 sequences ``(n_i, *feat)`` with random lengths, trailing shape."""
    lengths = draw(st.lists(st.integers(min_length, 4), min_size=1, max_size=max_batch))
    feat = draw(st.sampled_from([(), (2,), (1, 3)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.standard_normal((n, *feat)).astype(np.float32) for n in lengths]


@SETTINGS
@given(seqs=batches(), batch_first=st.booleans(), sort_first=st.booleans())
def test_roundtrip_pad_pack_pad(seqs, batch_first, sort_first):
    if sort_first:
        seqs = sorted(seqs, key=len, reverse=True)
    lengths = [len(s) for s in seqs]
    padded = jrnn.pad_sequence(
        [jnp.asarray(s) for s in seqs], batch_first=batch_first, padding_value=9.0
    )
    np.testing.assert_array_equal(padded, _np_pad(seqs, batch_first, padding_value=9.0))
    expected = _np_pad(seqs, batch_first)  # packing drops the 9s; unpacking pads with 0
    packed = jrnn.pack_padded_sequence(
        padded, lengths, batch_first=batch_first, enforce_sorted=sort_first
    )
    back, back_lengths = jrnn.pad_packed_sequence(packed, batch_first=batch_first)
    assert back.shape == expected.shape
    np.testing.assert_array_equal(back, expected)
    np.testing.assert_array_equal(back_lengths, lengths)


@SETTINGS
@given(seqs=batches())
def test_roundtrip_pack_unpack(seqs):
    packed = jrnn.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=False)
    assert_list_equal(jrnn.unpack_sequence(packed), seqs)


@SETTINGS
@given(seqs=batches(), batch_first=st.booleans())
def test_roundtrip_pad_unpad(seqs, batch_first):
    padded = jrnn.pad_sequence(
        [jnp.asarray(s) for s in seqs], batch_first=batch_first, padding_value=9.0
    )
    lengths = jnp.array([len(s) for s in seqs])
    assert_list_equal(jrnn.unpad_sequence(padded, lengths, batch_first=batch_first), seqs)


@settings(SETTINGS, max_examples=10)
@given(
    seqs=batches(min_length=1, max_batch=6),
    batch_first=st.booleans(),
    padding_side=st.sampled_from(["left", "right"]),
)
def test_random_batches_match_torch(seqs, batch_first, padding_side):
    j_seqs = [jnp.asarray(s) for s in seqs]
    t_seqs = [torch.from_numpy(s) for s in seqs]
    jp = jrnn.pack_sequence(j_seqs, enforce_sorted=False)
    tp = trnn.pack_sequence(t_seqs, enforce_sorted=False)
    assert_packed_equal(jp, tp)
    padded, out_lengths = jrnn.pad_packed_sequence(jp, batch_first=batch_first)
    expected, expected_lengths = trnn.pad_packed_sequence(tp, batch_first=batch_first)
    np.testing.assert_array_equal(padded, _np(expected))
    np.testing.assert_array_equal(out_lengths, _np(expected_lengths))
    kwargs = dict(batch_first=batch_first, padding_value=-1.0, padding_side=padding_side)
    np.testing.assert_array_equal(
        jrnn.pad_sequence(j_seqs, **kwargs), _np(trnn.pad_sequence(t_seqs, **kwargs))
    )
    assert_list_equal(jrnn.unpack_sequence(jp), trnn.unpack_sequence(tp))


def test_packed_sequence_unpacks_like_torchs_named_tuple():
    """``data, batch_sizes, sorted_indices, unsorted_indices = packed``, as in PyTorch."""
    seqs = [np.arange(6.0).reshape(3, 2), np.arange(2.0).reshape(1, 2), np.ones((2, 2))]
    packed = jl.pack_sequence([jnp.asarray(s) for s in seqs], enforce_sorted=False)
    expected = trnn.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=False)
    for got, want in zip(packed, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want.numpy())
