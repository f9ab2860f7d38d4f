"""The ``jl.LSTM`` / ``jl.LSTMCell`` facades against ``torch.nn.LSTM`` / ``torch.nn.LSTMCell``.

Constructor defaults, attributes and ``repr`` as PyTorch's; a missing ``key`` refused
with the fix; ``state_dict()`` with PyTorch's names, order and shapes; ``load_state_dict``
in place from a PyTorch state dict (tensors), giving PyTorch's outputs; the round trip
through PyTorch; and every call form (time-major, ``batch_first``, ``lengths=``, ``PackedSequence``,
unbatched) against live PyTorch on the same weights.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as torch_rnn

import jaxlstm as jl

LSTM_OPTIONS = (
    "input_size",
    "hidden_size",
    "num_layers",
    "bias",
    "batch_first",
    "dropout",
    "bidirectional",
    "proj_size",
)
CONFIGS = [
    pytest.param((5, 3), {}, id="defaults"),
    pytest.param((4, 6, 2), {"bidirectional": True}, id="2-layers-bidir"),
    pytest.param((3, 4, 3), {"proj_size": 2, "bias": False}, id="3-layers-proj-nobias"),
    pytest.param(
        (3, 4, 2),
        {
            "bias": False,
            "batch_first": True,
            "dropout": 0.25,
            "bidirectional": True,
            "proj_size": 3,
        },
        id="everything",
    ),
]
CELL_CONFIGS = [
    pytest.param((5, 3), {}, id="bias"),
    pytest.param((2, 7), {"bias": False}, id="nobias"),
]
TOL = 1e-5  # float32


def t(a):
    return torch.from_numpy(np.array(a))


def assert_matches(actual, expected, what="value"):
    """jaxlstm's array against PyTorch's tensor: same shape, same numbers."""
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape, what
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=TOL, atol=TOL, err_msg=what)


def assert_state_dicts_equal(actual, expected):
    """Same names in the same order, same values (numpy or torch)."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        value = value.numpy() if isinstance(value, torch.Tensor) else value
        assert actual[name].dtype == value.dtype, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize("args, kwargs", CONFIGS)
def test_attributes_as_torch(args, kwargs):
    lstm, reference = (
        jl.LSTM(*args, **kwargs, key=jax.random.key(0)),
        torch.nn.LSTM(*args, **kwargs),
    )
    for name in LSTM_OPTIONS:
        assert getattr(lstm, name) == getattr(reference, name), name
        assert type(getattr(lstm, name)) is type(getattr(reference, name)), name


def test_defaults():
    lstm = jl.LSTM(5, 3, key=jax.random.key(0))
    assert (lstm.num_layers, lstm.bias, lstm.batch_first, lstm.dropout) == (1, True, False, 0.0)
    assert (lstm.bidirectional, lstm.proj_size) == (False, 0)
    cell = jl.LSTMCell(5, 3, key=jax.random.key(0))
    assert (cell.input_size, cell.hidden_size, cell.bias) == (5, 3, True)
    for module in (lstm, cell):
        assert {leaf.dtype for leaf in jax.tree.leaves(module)} == {jnp.dtype(jnp.float32)}
    with pytest.raises(AttributeError, match="no_such_option"):
        _ = lstm.no_such_option


@pytest.mark.parametrize("args, kwargs", CELL_CONFIGS)
def test_cell_attributes_as_torch(args, kwargs):
    cell, reference = (
        jl.LSTMCell(*args, **kwargs, key=jax.random.key(0)),
        torch.nn.LSTMCell(*args, **kwargs),
    )
    for name in ("input_size", "hidden_size", "bias"):
        assert getattr(cell, name) == getattr(reference, name), name


@pytest.mark.parametrize("args, kwargs", CONFIGS)
def test_repr_as_torch(args, kwargs):
    assert repr(jl.LSTM(*args, **kwargs, key=jax.random.key(0))) == repr(
        torch.nn.LSTM(*args, **kwargs)
    )


@pytest.mark.parametrize("args, kwargs", CELL_CONFIGS)
def test_cell_repr_as_torch(args, kwargs):
    assert repr(jl.LSTMCell(*args, **kwargs, key=jax.random.key(0))) == repr(
        torch.nn.LSTMCell(*args, **kwargs)
    )


@pytest.mark.parametrize(
    "make",
    [lambda **kw: jl.LSTM(4, 3, 2, **kw), lambda **kw: jl.LSTMCell(4, 3, **kw)],
    ids=["LSTM", "LSTMCell"],
)
def test_key_is_required_and_decides_the_weights(make):
    """No ``key`` is our ``TypeError`` with the fix (no hidden default: two same-shaped
    layers would start identical); the same key gives the same weights, another key others."""
    facade = type(make(key=jax.random.key(0))).__name__
    fix = f"jl.{facade}(4, 3, key=jax.random.key(0))"
    for missing in ({}, {"key": None}):
        with pytest.raises(
            TypeError, match=re.escape(f"{facade} needs a key for its initial weights: {fix}")
        ):
            make(**missing)
    first = make(key=jax.random.key(0)).state_dict()
    assert_state_dicts_equal(first, make(key=jax.random.key(0)).state_dict())
    other = make(key=jax.random.key(1)).state_dict()
    assert all(not np.array_equal(first[name], other[name]) for name in first)


# ------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("args, kwargs", CONFIGS)
def test_state_dict_names_and_shapes_as_torch(args, kwargs):
    state_dict = jl.LSTM(*args, **kwargs, key=jax.random.key(0)).state_dict()
    expected = torch.nn.LSTM(*args, **kwargs).state_dict()
    assert list(state_dict) == list(expected)  # names, in PyTorch's order
    for name, tensor in expected.items():
        assert isinstance(state_dict[name], np.ndarray), name
        assert state_dict[name].shape == tuple(tensor.shape), name
        assert state_dict[name].dtype == np.float32, name
        # PyTorch's init: U(-1/sqrt(H), 1/sqrt(H)), hidden_size = args[1].
        assert np.abs(state_dict[name]).max() <= 1 / np.sqrt(args[1]), name


@pytest.mark.parametrize("args, kwargs", CELL_CONFIGS)
def test_cell_state_dict_names_and_shapes_as_torch(args, kwargs):
    state_dict = jl.LSTMCell(*args, **kwargs, key=jax.random.key(0)).state_dict()
    expected = torch.nn.LSTMCell(*args, **kwargs).state_dict()
    assert list(state_dict) == list(expected)
    for name, tensor in expected.items():
        assert state_dict[name].shape == tuple(tensor.shape), name


@pytest.mark.usefixtures("x64")
def test_state_dict_keeps_the_dtype():
    lstm = jl.LSTM(3, 4, 2, dtype=jnp.float64, key=jax.random.key(0))
    assert {v.dtype for v in lstm.state_dict().values()} == {np.dtype(np.float64)}
    # Loading casts to the module's dtype, as PyTorch's copy_ does.
    float32 = jl.LSTM(3, 4, 2, key=jax.random.key(1))
    float32.load_state_dict(lstm.state_dict())
    assert {v.dtype for v in float32.state_dict().values()} == {np.dtype(np.float32)}
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(float32.state_dict()[name], value.astype(np.float32))


@pytest.mark.parametrize("args, kwargs", CONFIGS)
def test_load_state_dict_from_torch_in_place(args, kwargs):
    reference = torch.nn.LSTM(*args, **kwargs)
    lstm = jl.LSTM(*args, **kwargs, key=jax.random.key(5))
    params_before = lstm.params
    result = lstm.load_state_dict(reference.state_dict())  # torch tensors
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert lstm.params is not params_before
    assert_state_dicts_equal(lstm.state_dict(), reference.state_dict())


@pytest.mark.parametrize("args, kwargs", CELL_CONFIGS)
def test_cell_load_state_dict_from_torch_in_place(args, kwargs):
    reference = torch.nn.LSTMCell(*args, **kwargs)
    cell = jl.LSTMCell(*args, **kwargs, key=jax.random.key(5))
    result = cell.load_state_dict(reference.state_dict())
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert_state_dicts_equal(cell.state_dict(), reference.state_dict())


@pytest.mark.parametrize("args, kwargs", CONFIGS)
def test_round_trip_through_torch(args, kwargs):
    lstm = jl.LSTM(*args, **kwargs, key=jax.random.key(6))
    reference = torch.nn.LSTM(*args, **kwargs)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    back = jl.LSTM(*args, **kwargs, key=jax.random.key(7))
    back.load_state_dict(reference.state_dict())
    assert jax.tree.structure(back) == jax.tree.structure(lstm)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(lstm), strict=True):
        np.testing.assert_array_equal(got, want)
    # The functional route gives the same params.
    from_torch = jl.params_from_torch(reference.state_dict())
    assert jax.tree.structure(from_torch) == jax.tree.structure(lstm.params)
    for got, want in zip(jax.tree.leaves(from_torch), jax.tree.leaves(lstm), strict=True):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ calls against PyTorch

CALL_ARGS, CALL_KWARGS = (3, 4, 2), {"bidirectional": True, "proj_size": 2}
SEQ_LEN, BATCH = 5, 3
LENGTHS = [2, 5, 3]  # unsorted; PyTorch refuses 0


@pytest.fixture(scope="module")
def twins():
    """A ``torch.nn.LSTM`` and a ``jl.LSTM`` that loaded its state dict, per ``batch_first``."""
    pairs = {}
    for batch_first in (False, True):
        torch.manual_seed(0)
        reference = torch.nn.LSTM(*CALL_ARGS, **CALL_KWARGS, batch_first=batch_first)
        lstm = jl.LSTM(*CALL_ARGS, **CALL_KWARGS, batch_first=batch_first, key=jax.random.key(0))
        lstm.load_state_dict(reference.state_dict())
        pairs[batch_first] = lstm, reference
    return pairs


def _inputs(batch_first, unbatched=False):
    rng = np.random.default_rng(0)
    shape = (BATCH, SEQ_LEN) if batch_first else (SEQ_LEN, BATCH)
    x = rng.standard_normal((SEQ_LEN, 3) if unbatched else (*shape, 3)).astype(np.float32)
    slots = () if unbatched else (BATCH,)
    hx = tuple(rng.standard_normal((4, *slots, n)).astype(np.float32) for n in (2, 4))
    return x, hx


@jax.jit
def _call(module, inp, hx, lengths=None):
    return module(inp, hx, lengths=lengths)


def _assert_call_matches(results, expected):
    output, (h_n, c_n) = results
    t_output, (t_h, t_c) = expected
    assert_matches(output, t_output, "output")
    assert_matches(h_n, t_h, "h_n")
    assert_matches(c_n, t_c, "c_n")


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_call_matches_torch(twins, batch_first):
    lstm, reference = twins[batch_first]
    x, hx = _inputs(batch_first)
    _assert_call_matches(_call(lstm, x, hx), reference(t(x), tuple(map(t, hx))))
    # Without hx, too.
    _assert_call_matches(_call(lstm, x, None), reference(t(x)))


def test_unbatched_call_matches_torch(twins):
    lstm, reference = twins[False]
    x, hx = _inputs(False, unbatched=True)
    _assert_call_matches(_call(lstm, x, hx), reference(t(x), tuple(map(t, hx))))


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_lengths_keyword_matches_torch_packed(twins, batch_first):
    lstm, reference = twins[batch_first]
    x, hx = _inputs(batch_first)
    output, (h_n, c_n) = _call(lstm, x, hx, np.asarray(LENGTHS))
    packed = torch_rnn.pack_padded_sequence(
        t(x), LENGTHS, batch_first=batch_first, enforce_sorted=False
    )
    t_packed, state = reference(packed, tuple(map(t, hx)))
    t_output, _ = torch_rnn.pad_packed_sequence(
        t_packed, batch_first=batch_first, total_length=SEQ_LEN
    )
    _assert_call_matches((output, (h_n, c_n)), (t_output, state))


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
def test_packed_sequence_in_packed_sequence_out(twins, enforce_sorted):
    lstm, reference = twins[False]
    x, hx = _inputs(False)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    packed = jl.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    t_packed_in = torch_rnn.pack_padded_sequence(t(x), lengths, enforce_sorted=enforce_sorted)
    packed_out, (h_n, c_n) = _call(lstm, packed, hx)
    t_packed_out, (t_h, t_c) = reference(t_packed_in, tuple(map(t, hx)))

    assert isinstance(packed_out, jl.PackedSequence)
    assert_matches(packed_out.data, t_packed_out.data, "data")
    np.testing.assert_array_equal(packed_out.batch_sizes, t_packed_out.batch_sizes.numpy())
    for name in ("sorted_indices", "unsorted_indices"):
        got, want = getattr(packed_out, name), getattr(t_packed_out, name)
        if want is None:
            assert got is None, name
        else:
            np.testing.assert_array_equal(got, want.numpy(), err_msg=name)
    assert_matches(h_n, t_h, "h_n")
    assert_matches(c_n, t_c, "c_n")


@pytest.mark.parametrize("args, kwargs", CELL_CONFIGS)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_cell_call_matches_torch(args, kwargs, with_hx, unbatched):
    torch.manual_seed(1)
    reference = torch.nn.LSTMCell(*args, **kwargs)
    cell = jl.LSTMCell(*args, **kwargs, key=jax.random.key(0))
    cell.load_state_dict(reference.state_dict())
    rng = np.random.default_rng(2)
    lead = () if unbatched else (BATCH,)
    x = rng.standard_normal((*lead, args[0])).astype(np.float32)
    hx = tuple(rng.standard_normal((*lead, args[1])).astype(np.float32) for _ in range(2))
    h, c = cell(x, hx if with_hx else None)
    t_h, t_c = reference(t(x), tuple(map(t, hx)) if with_hx else None)
    assert_matches(h, t_h, "h")
    assert_matches(c, t_c, "c")
