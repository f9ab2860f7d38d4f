"""The seed tutorial (``shared/seeds/000_5d1787f0f18e5562.txt``), ported line by line.

Each test is one section of the tutorial, with ``jnp``/``jaxlstm`` in place of ``torch``
(``torch.randn`` becomes ``jax.random.normal``, ``.view`` becomes ``.reshape``). Every
shape the tutorial shows is asserted, and every number it produces is checked against
live PyTorch running the same weights on the same inputs.

Two lines differ from the seed, on purpose:

* ``lstm(xs)`` on an unbatched ``(10, 5)`` sequence raised in old PyTorch; current
  PyTorch, and jaxlstm, accept it and give the batch-of-one result without the batch axis.
* ``torch.stack([xs, ys]).view(10, -1, 5)`` reinterprets the ``(2, 10, 5)`` memory as
  ``(10, 2, 5)``, so "sequence 0" is ``xs[0], xs[2], ..., ys[8]``: it mixes the two
  sequences up. The port stacks on the batch axis instead: ``jnp.stack([xs, ys], axis=1)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as torch_rnn

import jaxlstm as jl
import jaxlstm.rnn as rnn

TOL = 1e-5  # float32, as the tutorial runs


def randn(seed, shape):
    """``torch.randn(shape)``, the JAX way (explicit keys)."""
    return jax.random.normal(jax.random.key(seed), shape)


def to_torch(x):
    return torch.from_numpy(np.array(x))


def assert_matches(actual, expected):
    """jaxlstm's array against PyTorch's tensor: same shape, same numbers."""
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def lstm():
    # lstm = nn.LSTM(input_size=5, hidden_size=3)
    return jl.LSTM(input_size=5, hidden_size=3, key=jax.random.key(0))


@pytest.fixture(scope="module")
def torch_twin(lstm):
    """``torch.nn.LSTM(5, 3)`` holding ``lstm``'s weights."""
    twin = torch.nn.LSTM(input_size=5, hidden_size=3)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    return twin


# ---------------------------------------------------------------------------- Example


def test_create_module(lstm, torch_twin):
    assert (lstm.input_size, lstm.hidden_size) == (5, 3)
    # The twin holds exactly these weights, under PyTorch's names.
    for name, tensor in torch_twin.state_dict().items():
        np.testing.assert_array_equal(lstm.state_dict()[name], tensor.numpy())


def test_unbatched_sequence(lstm, torch_twin):
    xs = randn(0, (10, 5))

    # The seed's ``lstm(xs)  # => RuntimeError`` is outdated: an unbatched (L, H_in)
    # sequence is accepted and equals the batch-of-one result without the batch axis.
    hs, (h_n, c_n) = lstm(xs)
    assert hs.shape == (10, 3)
    assert (h_n.shape, c_n.shape) == ((1, 3), (1, 3))
    hs_batched, (h_n_batched, c_n_batched) = lstm(xs.reshape(10, 1, 5))
    np.testing.assert_array_equal(hs, hs_batched[:, 0])
    np.testing.assert_array_equal(h_n, h_n_batched[:, 0])
    np.testing.assert_array_equal(c_n, c_n_batched[:, 0])
    expected, (t_h, t_c) = torch_twin(to_torch(xs))
    assert_matches(hs, expected)
    assert_matches(h_n, t_h)
    assert_matches(c_n, t_c)


def test_single_element_batch(lstm, torch_twin):
    xs = randn(0, (10, 5))
    assert xs.reshape(10, 1, 5).shape == (10, 1, 5)
    # -1 lets the size of one dimension be inferred.
    assert xs.reshape(10, 1, -1).shape == (10, 1, 5)

    xs_batched = xs.reshape(10, 1, -1)
    hs, _ = lstm(xs_batched)
    assert hs.shape == (10, 1, 3)  # the last dimension goes from 5 (input) to 3 (hidden)
    assert_matches(hs, torch_twin(to_torch(xs_batched))[0])


def test_batch_of_two_sequences(lstm, torch_twin):
    xs = randn(0, (10, 5))
    ys = randn(1, (10, 5))
    batch = jnp.stack([xs, ys])
    assert batch.shape == (2, 10, 5)

    # The seed's ``batch.view(10, -1, 5)`` has the right shape but the wrong contents:
    # it reinterprets the (2, 10, 5) memory, so its "sequence 0" is xs[0], xs[2], ...
    # then ys[0], ys[2], ... Stacking on the batch axis keeps each sequence whole.
    viewed = batch.reshape(10, -1, 5)
    assert viewed.shape == (10, 2, 5)
    np.testing.assert_array_equal(viewed[:, 0], jnp.concatenate([xs[0::2], ys[0::2]]))
    batch = jnp.stack([xs, ys], axis=1)
    assert batch.shape == (10, 2, 5)
    np.testing.assert_array_equal(batch[:, 0], xs)
    np.testing.assert_array_equal(batch[:, 1], ys)

    hs, _ = lstm(batch)
    assert hs.shape == (10, 2, 3)
    assert_matches(hs, torch_twin(to_torch(batch))[0])
    # Each sequence of the batch is transformed as it would be on its own.
    for i, seq in enumerate([xs, ys]):
        np.testing.assert_allclose(hs[:, i], lstm(seq)[0], rtol=TOL, atol=TOL)


# ---------------------------------------------------------------- Dynamic sequence lengths


@pytest.fixture(scope="module")
def packed_run(lstm, torch_twin):
    """The tutorial's packing walk-through, run once for jaxlstm and once for PyTorch."""
    # Create two "sequences", the second shorter than the first
    xs = randn(2, (10, 5))
    ys = randn(3, (8, 5))
    # Convert [xs, ys] to a packed sequence
    packed_inp = rnn.pack_sequence([xs, ys])
    packed_hid, _ = lstm(packed_inp)
    padded_hid, padded_len = rnn.pad_packed_sequence(packed_hid, batch_first=True)

    t_packed_inp = torch_rnn.pack_sequence([to_torch(xs), to_torch(ys)])
    t_packed_hid, _ = torch_twin(t_packed_inp)
    t_padded_hid, t_padded_len = torch_rnn.pad_packed_sequence(t_packed_hid, batch_first=True)
    return {
        "packed_inp": (packed_inp, t_packed_inp),
        "packed_hid": (packed_hid, t_packed_hid),
        "padded_hid": (padded_hid, t_padded_hid),
        "padded_len": (padded_len, t_padded_len),
    }


def test_pack_sequence(packed_run):
    packed_inp, t_packed_inp = packed_run["packed_inp"]
    assert isinstance(packed_inp, rnn.PackedSequence)
    assert packed_inp.data.shape == (18, 5)  # all 18 input vectors, packed together
    assert packed_inp.batch_sizes.shape == (10,)  # the length of the longest sequence
    assert_matches(packed_inp.data, t_packed_inp.data)
    np.testing.assert_array_equal(packed_inp.batch_sizes, t_packed_inp.batch_sizes.numpy())


def test_lstm_on_packed_sequence(packed_run):
    packed_hid, t_packed_hid = packed_run["packed_hid"]
    assert isinstance(packed_hid, rnn.PackedSequence)
    assert packed_hid.data.shape == (18, 3)
    assert_matches(packed_hid.data, t_packed_hid.data)
    np.testing.assert_array_equal(packed_hid.batch_sizes, t_packed_hid.batch_sizes.numpy())


def test_pad_packed_sequence(packed_run):
    padded_hid, t_padded_hid = packed_run["padded_hid"]
    padded_len, t_padded_len = packed_run["padded_len"]
    assert padded_hid.shape == (2, 10, 3)
    assert padded_len.tolist() == [10, 8]
    assert_matches(padded_hid, t_padded_hid)
    np.testing.assert_array_equal(padded_len, t_padded_len.numpy())


def test_padded_outputs_of_shorter_sequence_are_zero(packed_run):
    # (The seed's commented-out example.)
    padded_hid, _ = packed_run["padded_hid"]
    # The hidden output tensor corresponding to the `ys` input sequence
    hid_for_ys = padded_hid[1]
    # Since `len(ys) < 10`, the last two elements should be 0s
    assert (hid_for_ys[9] == 0).tolist() == [True, True, True]
    assert (hid_for_ys[8] == 0).tolist() == [True, True, True]
    assert (hid_for_ys[7] == 0).tolist() == [False, False, False]


def test_unpad_to_list(packed_run):
    padded_hid, t_padded_hid = packed_run["padded_hid"]
    padded_len, _ = packed_run["padded_len"]
    hs = []
    for hidden, length in zip(padded_hid, padded_len, strict=True):
        hs.append(hidden[:length])
    assert len(hs) == 2  # size of the batch
    assert len(hs[0]) == 10  # length of `xs`
    assert len(hs[1]) == 8  # length of `ys`
    assert_matches(hs[0], t_padded_hid[0])
    assert_matches(hs[1], t_padded_hid[1, :8])


def test_unsorted_sequences_need_enforce_sorted_false(lstm, torch_twin):
    # Create two "sequences", the first shorter than the second
    xs = randn(4, (7, 5))
    ys = randn(5, (8, 5))
    # Without enforce_sorted=False, you will get an exception.
    with pytest.raises(ValueError, match="enforce_sorted"):
        rnn.pack_sequence([xs, ys])
    # Convert [xs, ys] to a packed sequence
    packed_inp = rnn.pack_sequence([xs, ys], enforce_sorted=False)

    t_packed_inp = torch_rnn.pack_sequence([to_torch(xs), to_torch(ys)], enforce_sorted=False)
    assert packed_inp.data.shape == (15, 5)
    assert_matches(packed_inp.data, t_packed_inp.data)
    np.testing.assert_array_equal(packed_inp.batch_sizes, t_packed_inp.batch_sizes.numpy())
    np.testing.assert_array_equal(packed_inp.sorted_indices, t_packed_inp.sorted_indices.numpy())
    np.testing.assert_array_equal(
        packed_inp.unsorted_indices, t_packed_inp.unsorted_indices.numpy()
    )
    # ... and the LSTM runs on it, with the lengths back in the caller's order.
    packed_hid, (h_n, c_n) = lstm(packed_inp)
    t_packed_hid, (t_h, t_c) = torch_twin(t_packed_inp)
    assert_matches(packed_hid.data, t_packed_hid.data)
    assert_matches(h_n, t_h)
    assert_matches(c_n, t_c)
    padded_hid, padded_len = rnn.pad_packed_sequence(packed_hid, batch_first=True)
    assert padded_len.tolist() == [7, 8]
    assert_matches(padded_hid, torch_rnn.pad_packed_sequence(t_packed_hid, batch_first=True)[0])
