"""Inter-layer dropout: ``jl.lstm(..., dropout=p, key=key)`` and ``jl.LSTM(dropout=p)``.

PyTorch's semantics: in training, the output of every layer but the last goes through
``F.dropout(p)`` (zeros with probability ``p``, the rest scaled by ``1/(1-p)``, every
element independently) before it feeds the next layer; ``h_n``/``c_n`` and the last
layer's output are never dropped. Here "training" means a ``key`` is given; without one
the call is deterministic inference.

The mask itself is observed, not assumed: a "reader" second layer (zero recurrence, fixed
gates, identity input weights on ``g``) makes the model's output an invertible function
of layer 2's input, so the dropped intermediate can be decoded exactly and compared with a
manual composition of two one-layer ``jl.lstm`` calls.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm as jl

INPUT_SIZE, HIDDEN_SIZE, SEQ_LEN, BATCH = 3, 4, 5, 4
LENGTHS = np.asarray([3, 5, 0, 1], np.int32)
ONE_LAYER_WARNING = (
    r"dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
    r"expects num_layers greater than 1, but got dropout=0\.5 and num_layers=1"
)


@functools.partial(jax.jit, static_argnames=("dropout",))
def run(params, x, hx=None, lengths=None, key=None, *, dropout):
    return jl.lstm(params, x, hx, lengths=lengths, dropout=dropout, key=key)


def make_params(num_layers, bidirectional=False, seed=0, dtype=jnp.float32):
    return jl.init_params(
        jax.random.key(seed),
        INPUT_SIZE,
        HIDDEN_SIZE,
        num_layers,
        bidirectional=bidirectional,
        dtype=dtype,
    )


def make_inputs(params, seed=1, dtype=jnp.float32, seq_len=SEQ_LEN, batch=BATCH):
    """``x (L, N, H_in)`` and ``hx`` for ``params``."""
    slots = len(params) * len(params[0])
    k_x, k_h, k_c = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k_x, (seq_len, batch, INPUT_SIZE), dtype)
    hx = (
        jax.random.normal(k_h, (slots, batch, HIDDEN_SIZE), dtype),
        jax.random.normal(k_c, (slots, batch, HIDDEN_SIZE), dtype),
    )
    return x, hx


def assert_trees_equal(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, e)


# ------------------------------------------------------------------ keys and determinism
# Most tests share one model (2 layers, bidirectional, hx given), so they share compilations.


@pytest.fixture(scope="module")
def model():
    params = make_params(2, bidirectional=True)
    return (params, *make_inputs(params))


def test_without_key_equals_no_dropout(model):
    params, x, hx = model
    plain = run(params, x, hx, dropout=0.0)
    assert_trees_equal(run(params, x, hx, dropout=0.5), plain)


def test_same_key_same_result_different_key_different_result(model):
    params, x, hx = model
    first = run(params, x, hx, key=jax.random.key(1), dropout=0.5)
    assert_trees_equal(run(params, x, hx, key=jax.random.key(1), dropout=0.5), first)
    other = run(params, x, hx, key=jax.random.key(2), dropout=0.5)
    plain = run(params, x, hx, dropout=0.0)
    for output in (first, other):
        assert not np.allclose(output[0], plain[0])
    assert not np.allclose(first[0], other[0])
    # States are never dropped: layer 0's h_n, c_n (slots 0, 1) do not see the mask.
    for dropped in (first, other):
        np.testing.assert_allclose(dropped[1][0][:2], plain[1][0][:2], rtol=1e-6)
        np.testing.assert_allclose(dropped[1][1][:2], plain[1][1][:2], rtol=1e-6)


def test_module_call_with_key_is_functional_dropout(model):
    params, x, hx = model
    module = jl.LSTM(
        INPUT_SIZE, HIDDEN_SIZE, 2, dropout=0.5, bidirectional=True, key=jax.random.key(0)
    )
    module.params = params
    key = jax.random.key(4)
    with_key = jax.jit(lambda m, x, hx, key: m(x, hx, key=key))(module, x, hx, key)
    assert_trees_equal(with_key, run(params, x, hx, key=key, dropout=0.5))
    assert not np.allclose(with_key[0], run(params, x, hx, dropout=0.0)[0])


# ------------------------------------------------------------------ the last layer


def test_last_layer_output_is_never_dropped(model):
    """No exact zero in the output, which is the last layer's ``h`` at every step."""
    params, x, hx = model
    output, (h_n, _) = run(params, x, hx, key=jax.random.key(5), dropout=0.5)
    assert np.count_nonzero(output == 0) == 0
    np.testing.assert_array_equal(output[-1, :, :HIDDEN_SIZE], h_n[-2])  # forward, step L-1
    np.testing.assert_array_equal(output[0, :, HIDDEN_SIZE:], h_n[-1])  # reverse, step 0


def test_one_layer_warns_like_torch_and_ignores_dropout():
    with pytest.warns(UserWarning, match=ONE_LAYER_WARNING):
        torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, 1, dropout=0.5)
    with pytest.warns(UserWarning, match=ONE_LAYER_WARNING):
        jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, 1, dropout=0.5, key=jax.random.key(0))
    params = make_params(1)
    x, hx = make_inputs(params)
    with pytest.warns(UserWarning, match=ONE_LAYER_WARNING):
        dropped = jl.lstm(params, x, hx, dropout=0.5, key=jax.random.key(6))
    assert_trees_equal(dropped, jl.lstm(params, x, hx))


# ------------------------------------------------------------------ dropout=1.0

FULL_DROP_CASES = [
    pytest.param(2, True, None, id="2-layers-bidir"),
    pytest.param(3, False, LENGTHS, id="3-layers-lengths"),
]


@pytest.mark.parametrize("num_layers, bidirectional, lengths", FULL_DROP_CASES)
def test_dropout_one_feeds_zeros_to_the_layers_above_the_first(num_layers, bidirectional, lengths):
    params = make_params(num_layers, bidirectional)
    x, hx = make_inputs(params)
    output, (h_n, c_n) = run(params, x, hx, lengths, jax.random.key(7), dropout=1.0)

    d = len(params[0])
    zeros = jnp.zeros((SEQ_LEN, BATCH, d * HIDDEN_SIZE))
    # Two programs compiled apart agree to float32 rounding, not bit for bit: 1e-7 of
    # absolute slack for the entries near zero.
    for k, layer in enumerate(params):
        slots = slice(k * d, (k + 1) * d)
        expected, (h_k, c_k) = run(
            (layer,), x if k == 0 else zeros, (hx[0][slots], hx[1][slots]), lengths, dropout=0.0
        )
        np.testing.assert_allclose(h_n[slots], h_k, 1e-6, 1e-7, err_msg=f"h_n, layer {k}")
        np.testing.assert_allclose(c_n[slots], c_k, 1e-6, 1e-7, err_msg=f"c_n, layer {k}")
    np.testing.assert_allclose(output, expected, 1e-6, 1e-7)


def test_dropout_one_has_finite_gradients():
    """Three layers with lengths: no NaN from ``x / (1 - p)`` nor from the masking."""
    params = make_params(3)
    x, hx = make_inputs(params)

    @jax.jit
    def grads(params, x, hx):
        def loss(params, x, hx):
            output, (h_n, c_n) = jl.lstm(
                params, x, hx, lengths=LENGTHS, dropout=1.0, key=jax.random.key(8)
            )
            return output.sum() + h_n[-1].sum() + c_n[-1].sum()

        return jax.grad(loss, argnums=(0, 1, 2))(params, x, hx)

    d_params, d_x, d_hx = grads(params, x, hx)
    for leaf in jax.tree.leaves((d_params, d_x, d_hx)):
        assert np.all(np.isfinite(leaf))
    # Nothing of the input, of the first layers, or of any w_ih above (zero input)
    # reaches the loss; the last layer's recurrence and biases do.
    np.testing.assert_array_equal(d_x, 0)
    for leaf in jax.tree.leaves(d_params[:-1]):
        np.testing.assert_array_equal(leaf, 0)
    for p in d_params[-1]:
        np.testing.assert_array_equal(p.w_ih, 0)
        assert np.any(p.w_hh != 0) and np.any(p.b_ih != 0) and np.any(p.b_hh != 0)


# ------------------------------------------------------------------ the mask, observed

DROP_RATE = 0.3
READER_SEQ_LEN, READER_BATCH = 6, 64


def reader_layer(bidirectional):
    """Layer 2 whose output at each step is ``0.5 tanh(0.5 tanh(z))`` of its input ``z``.

    Direction ``d`` reads ``z[..., d*H:(d+1)*H]`` through the ``g`` gate (identity
    weights); ``i``, ``o`` are ``sigmoid(0) = 0.5``; the forget gate is ``sigmoid(-60)``
    and ``w_hh = 0``, so no state carries over (to 1e-26).
    """
    h, d = HIDDEN_SIZE, 2 if bidirectional else 1
    layers = []
    for direction in range(d):
        w_ih = np.zeros((4 * h, d * h))
        w_ih[2 * h : 3 * h, direction * h : (direction + 1) * h] = np.eye(h)
        b_ih = np.zeros(4 * h)
        b_ih[h : 2 * h] = -60.0
        layers.append(
            jl.LayerParams(
                w_ih=jnp.asarray(w_ih),
                w_hh=jnp.zeros((4 * h, h)),
                b_ih=jnp.asarray(b_ih),
                b_hh=jnp.zeros(4 * h),
            )
        )
    return tuple(layers)


def read_input(output):
    """The reader layer's input, decoded from its output."""
    return np.arctanh(np.arctanh(np.asarray(output) / 0.5) / 0.5)


@pytest.mark.usefixtures("x64")
def test_mask_is_bernoulli_and_kept_values_scaled():
    """Bidirectional: layer 2 reads both directions' outputs of layer 1."""
    first = make_params(1, bidirectional=True, dtype=jnp.float64)
    reader = reader_layer(bidirectional=True)
    params = (*first, reader)
    x, _ = make_inputs(params, dtype=jnp.float64, seq_len=READER_SEQ_LEN, batch=READER_BATCH)

    output, _ = run(params, x, key=jax.random.key(9), dropout=DROP_RATE)
    layer_1_output, _ = run(first, x, dropout=0.0)  # (L, N, D*H)
    received = read_input(output)  # what layer 2 got, (L, N, D*H)

    dropped = np.abs(received) < 1e-9
    kept_value = np.asarray(layer_1_output) / (1 - DROP_RATE)
    np.testing.assert_allclose(received[~dropped], kept_value[~dropped], rtol=1e-9, atol=1e-9)
    # The fraction of zeros is p, within 5 standard deviations.
    sigma = np.sqrt(DROP_RATE * (1 - DROP_RATE) / dropped.size)
    assert abs(dropped.mean() - DROP_RATE) < 5 * sigma, dropped.mean()
    # Each element has its own draw: the mask varies over time, batch and features.
    for axis in range(3):
        assert not np.all(dropped == np.take(dropped, [0], axis=axis)), f"axis {axis}"
    forward, reverse = np.split(dropped, 2, axis=-1)
    assert not np.array_equal(forward, reverse)

    # Two one-layer calls with the decoded mask give the two-layer result.
    manual, _ = run((reader,), jnp.where(dropped, 0.0, kept_value), dropout=0.0)
    np.testing.assert_allclose(output, manual, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ lengths


def test_padding_stays_zero_with_lengths_and_dropout(model):
    params, x, hx = model
    key = jax.random.key(10)
    output, (h_n, c_n) = run(params, x, hx, LENGTHS, key, dropout=0.5)
    padded = np.arange(SEQ_LEN)[:, None] >= LENGTHS[None, :]  # (L, N)
    np.testing.assert_array_equal(np.asarray(output)[padded], 0)
    assert np.count_nonzero(np.asarray(output)[~padded] == 0) == 0
    # Sequences of length 0 keep their initial state; the others end at their own length.
    np.testing.assert_array_equal(h_n[:, 2], hx[0][:, 2])
    np.testing.assert_array_equal(c_n[:, 2], hx[1][:, 2])
    for n in np.flatnonzero(LENGTHS):
        np.testing.assert_array_equal(output[LENGTHS[n] - 1, n, :HIDDEN_SIZE], h_n[-2, n])
        np.testing.assert_array_equal(output[0, n, HIDDEN_SIZE:], h_n[-1, n])
    # What lies in the padding of the input never matters.
    garbage = jnp.where(padded[..., None], 1e3, x)
    assert_trees_equal(run(params, garbage, hx, LENGTHS, key, dropout=0.5), (output, (h_n, c_n)))
