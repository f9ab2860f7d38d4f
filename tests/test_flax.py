"""``jaxlstm.flax``: the nnx and linen layers against ``jl.lstm`` and live PyTorch.

Weights: PyTorch's names, shapes and order, ``jl.init_params``'s numbers from
``rngs.params()``, in and out through ``state_dict``. Numbers: outputs equal to
``jl.lstm`` and to ``torch.nn.LSTM`` with the same weights; gradients equal to
``jax.grad`` of ``jl.lstm``. Training: a few optax steps move every LSTM weight and lower
the loss. Dropout: flax's conventions (nnx ``deterministic``/``eval()``/``nnx.view`` and
``rngs``; linen ``deterministic`` and the ``dropout`` rng). And the ways a PyTree facade
does not train in an nnx Module, each loud or pinned as documented in ``docs/flax.md``.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import torch_lstm
from flax import linen, nnx

import jaxlstm as jl
import jaxlstm.flax as jf

TOL = 1e-5  # float32
L, N, H_IN, H = 5, 3, 4, 6
CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"num_layers": 2, "bidirectional": True}, id="2-layers-bidir"),
    pytest.param({"num_layers": 2, "proj_size": 2, "bias": False}, id="2-layers-proj-nobias"),
]


@pytest.fixture(autouse=True)
def _torch_one_thread(torch_one_thread):
    """PyTorch on one thread (see conftest)."""


def config_kwargs(config: dict) -> dict:
    """The ``jl.init_params`` keywords of a layer configuration."""
    return {k: v for k, v in config.items() if k not in ("batch_first", "dropout")}


def init(config: dict, seed: int = 0):
    params = jl.init_params(jax.random.key(seed), H_IN, H, **config_kwargs(config))
    return params, jl.params_to_torch(params)


def inputs(seed: int = 1, batch_first: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, H_IN) if batch_first else (L, N, H_IN)).astype(np.float32)
    return x, np.array([5, 2, 4], np.int32)


def assert_close(actual, expected, what):
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


def torch_run(module: torch.nn.LSTM, x: np.ndarray, lengths, batch_first: bool):
    """PyTorch's padded output and final states, through packing (lengths in any order)."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first, enforce_sorted=False
    )
    out, (h_n, c_n) = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first, total_length=L)
    return out, h_n, c_n


def loss_of(out, h_n, c_n):
    """A scalar that weighs every output and state element differently."""
    return sum(jnp.sum(jnp.sin(jnp.arange(a.size).reshape(a.shape)) * a) for a in (out, h_n, c_n))


# ------------------------------------------------------------------ packaging


def test_import_jaxlstm_does_not_import_flax():
    code = "import sys, jaxlstm; assert not [m for m in sys.modules if m.split('.')[0] == 'flax']"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_flax_the_import_error_shows_the_extra():
    code = (
        "import sys; sys.modules['flax'] = None\n"
        "try:\n    import jaxlstm.flax\nexcept ImportError as e:\n    print(e)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install "jaxlstm[flax]"' in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------ nnx: weights


@pytest.mark.parametrize("config", CONFIGS)
def test_nnx_weights_as_init_params_with_torch_names(config):
    layer = jf.LSTM(H_IN, H, **config, rngs=nnx.Rngs(3))
    expected = jl.params_to_torch(
        jl.init_params(nnx.Rngs(3).params(), H_IN, H, **config_kwargs(config))
    )
    reference = torch.nn.LSTM(H_IN, H, **config).state_dict()
    state_dict = layer.state_dict()
    assert list(state_dict) == list(reference) == list(expected)
    params = nnx.state(layer, nnx.Param)
    assert sorted(params.keys()) == sorted(reference)  # every weight is an nnx.Param
    for name, value in expected.items():
        np.testing.assert_array_equal(state_dict[name], value, err_msg=name)
        np.testing.assert_array_equal(params[name][...], value, err_msg=name)


def test_nnx_state_dict_round_trip_through_torch():
    config = {"num_layers": 2, "bidirectional": True, "proj_size": 2}
    layer = jf.LSTM(H_IN, H, **config, rngs=nnx.Rngs(0))
    module = torch.nn.LSTM(H_IN, H, **config)
    layer.load_state_dict(module.state_dict())  # torch tensors, in place
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(getattr(layer, name)[...], tensor.numpy(), err_msg=name)
    other = torch.nn.LSTM(H_IN, H, **config)
    other.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for name, tensor in other.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), module.state_dict()[name].numpy())


@pytest.mark.filterwarnings("error")  # no implicit float32 -> bfloat16 cast warning
def test_nnx_load_state_dict_is_strict_and_casts():
    layer = jf.LSTM(H_IN, H, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    _, state_dict = init(config={})
    assert layer.load_state_dict(state_dict) == ([], [])
    for name, value in state_dict.items():
        loaded = getattr(layer, name)[...]
        assert loaded.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(loaded, value.astype(jnp.bfloat16), err_msg=name)
    with pytest.raises(ValueError, match=r"Missing key.*'bias_hh_l0'"):
        layer.load_state_dict({k: v for k, v in state_dict.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match=r"Unexpected key.*'weight_hr_l0'"):
        layer.load_state_dict({**state_dict, "weight_hr_l0": np.zeros((2, H), np.float32)})
    with pytest.raises(ValueError, match="size mismatch for weight_ih_l0"):
        layer.load_state_dict({**state_dict, "weight_ih_l0": np.zeros((4 * H, 7), np.float32)})


def test_nnx_needs_rngs():
    with pytest.raises(TypeError, match=r"rngs must be a flax\.nnx\.Rngs, e\.g\. rngs=nnx\.Rngs"):
        jf.LSTM(H_IN, H, rngs=jax.random.key(0))
    with pytest.raises(TypeError, match="rngs"):
        jf.LSTM(H_IN, H)
    with pytest.raises(TypeError, match=r"rngs must be a flax\.nnx\.Rngs, e\.g\."):
        jf.LSTMCell(H_IN, H, rngs=0)


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("config", CONFIGS)
def test_nnx_and_linen_match_lstm_and_torch(config, batch_first):
    params, state_dict = init(config)
    module = torch_lstm(state_dict, batch_first=batch_first)
    x, lengths = inputs(batch_first=batch_first)
    expected = torch_run(module, x, lengths, batch_first)

    layer = jf.LSTM(H_IN, H, **config, batch_first=batch_first, rngs=nnx.Rngs(7))
    layer.load_state_dict(module.state_dict())
    linen_layer = jf.LinenLSTM(H_IN, H, **config, batch_first=batch_first)
    variables = {"params": {k: jnp.asarray(v) for k, v in state_dict.items()}}
    runs = {
        "jl.lstm": jl.lstm(params, x, lengths=lengths, batch_first=batch_first),
        "nnx": layer(x, lengths=lengths),
        "linen": linen_layer.apply(variables, x, lengths=lengths),
    }
    for name, (out, (h_n, c_n)) in runs.items():
        for what, actual, reference in zip(
            ("output", "h_n", "c_n"), (out, h_n, c_n), expected, strict=True
        ):
            assert_close(actual, reference, f"{name} {what}")


@pytest.mark.parametrize("config", CONFIGS)
def test_linen_init_gives_torch_names_shapes_and_init(config):
    x, _ = inputs()
    variables = jf.LinenLSTM(H_IN, H, **config).init(jax.random.key(0), x)
    reference = torch.nn.LSTM(H_IN, H, **config).state_dict()
    assert set(variables) == {"params"}
    assert sorted(variables["params"]) == sorted(reference)
    for name, tensor in reference.items():
        value = variables["params"][name]
        assert value.shape == tuple(tensor.shape) and value.dtype == jnp.float32, name
        assert 0 < np.abs(value).max() <= 1 / np.sqrt(H), name  # U(-1/sqrt(H), 1/sqrt(H))


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_equal_jax_grad_of_lstm(config):
    params, state_dict = init(config)
    x, lengths = inputs()
    expected = jl.params_to_torch(
        jax.grad(lambda p: loss_of(*jax.tree.leaves(jl.lstm(p, x, lengths=lengths))))(params)
    )

    layer = jf.LSTM(H_IN, H, **config, rngs=nnx.Rngs(0))
    layer.load_state_dict(state_dict)
    grads = nnx.grad(lambda m: loss_of(*jax.tree.leaves(m(x, lengths=lengths))))(layer)
    assert sorted(grads.keys()) == sorted(expected)
    for name, value in expected.items():
        assert_close(grads[name][...], value, f"nnx d/d{name}")

    linen_layer = jf.LinenLSTM(H_IN, H, **config)
    linen_grads = jax.grad(
        lambda p: loss_of(*jax.tree.leaves(linen_layer.apply({"params": p}, x, lengths=lengths)))
    )(state_dict)
    for name, value in expected.items():
        assert_close(linen_grads[name], value, f"linen d/d{name}")


def test_jit_and_nnx_jit():
    config = {"num_layers": 2, "bidirectional": True}
    params, state_dict = init(config)
    x, lengths = inputs()
    expected = jl.lstm(params, x, lengths=lengths)
    layer = jf.LSTM(H_IN, H, **config, rngs=nnx.Rngs(0))
    layer.load_state_dict(state_dict)
    traces = []

    def call(m, x, lengths):
        traces.append(None)
        return m(x, lengths=lengths)

    for name, run in (("nnx.jit", nnx.jit(call)), ("jax.jit", jax.jit(call))):
        traces.clear()
        for lengths_now in (lengths, lengths[::-1]):
            out = run(layer, x, lengths_now)
        assert len(traces) == 1, f"{name} retraced for new lengths"
        for what, a, b in zip(
            ("output", "h_n", "c_n"),
            jax.tree.leaves(out),
            jax.tree.leaves(jl.lstm(params, x, lengths=lengths[::-1])),
            strict=True,
        ):
            assert_close(a, b, f"{name} {what}")
    linen_layer = jf.LinenLSTM(H_IN, H, **config)
    out = jax.jit(linen_layer.apply)({"params": state_dict}, x, lengths=lengths)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
        assert_close(a, b, "linen under jax.jit")


# ------------------------------------------------------------------ training


class Regressor(nnx.Module):
    """An LSTM and a linear head on its last output."""

    def __init__(self, rngs: nnx.Rngs):
        self.lstm = jf.LSTM(1, 8, num_layers=2, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):  # x (L, N, 1) -> (N,)
        out, _ = self.lstm(x)
        return self.head(out[-1])[:, 0]


def regression_data():
    """Sum of each sequence: needs the recurrence (the LSTM) to be learned."""
    x = np.random.default_rng(0).uniform(-1, 1, (6, 16, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x.sum(axis=(0, 2)))


def test_nnx_training_moves_the_lstm_weights_and_lowers_the_loss():
    model = Regressor(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x, y = regression_data()
    before = model.lstm.state_dict()

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    after = model.lstm.state_dict()
    assert list(after) == list(before)
    for name in before:
        assert not np.allclose(after[name], before[name]), f"{name} did not train"


def test_linen_training_moves_the_lstm_weights_and_lowers_the_loss():
    class LinenRegressor(linen.Module):
        @linen.compact
        def __call__(self, x):
            out, _ = jf.LinenLSTM(1, 8, num_layers=2, name="lstm")(x)
            return linen.Dense(1)(out[-1])[:, 0]

    model = LinenRegressor()
    x, y = regression_data()
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2)
        )(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    before = params["lstm"]
    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    for name, value in before.items():
        assert not np.allclose(params["lstm"][name], value), f"{name} did not train"


# ------------------------------------------------------------------ dropout


def test_nnx_dropout_follows_flax_conventions():
    config = {"num_layers": 2, "dropout": 0.5}
    params, state_dict = init(config)
    x, _ = inputs()
    key = jax.random.key(42)
    layer = jf.LSTM(H_IN, H, **config, rngs=nnx.Rngs(0))
    layer.load_state_dict(state_dict)
    plain = jl.lstm(params, x)[0]
    with_key = jl.lstm(params, x, dropout=0.5, key=key)[0]
    assert not np.allclose(plain, with_key)

    assert_close(layer(x, rngs=key)[0], with_key, "rngs=key per call")
    assert_close(
        layer(x, rngs=nnx.Rngs(dropout=key))[0],
        jl.lstm(params, x, dropout=0.5, key=nnx.Rngs(dropout=key).dropout())[0],
        "rngs=nnx.Rngs per call",
    )
    first, second = layer(x)[0], layer(x)[0]  # the stream kept from construction
    assert not np.allclose(first, plain) and not np.allclose(first, second)
    assert_close(layer(x, deterministic=True)[0], plain, "deterministic=True per call")
    assert_close(nnx.view(layer, deterministic=True)(x)[0], plain, "nnx.view(deterministic=True)")
    layer.eval()
    assert_close(layer(x)[0], plain, "after eval()")
    assert_close(layer(x, rngs=key)[0], plain, "eval() ignores rngs")
    layer.train()
    assert_close(layer(x, rngs=key)[0], with_key, "after train()")
    with pytest.raises(TypeError, match=r"rngs must be a flax\.nnx\.Rngs, an nnx\.RngStream"):
        layer(x, rngs=42)


def test_linen_dropout_follows_flax_conventions():
    config = {"num_layers": 2, "dropout": 0.5}
    params, state_dict = init(config)
    x, _ = inputs()
    variables = {"params": state_dict}
    plain = jl.lstm(params, x)[0]
    layer = jf.LinenLSTM(H_IN, H, **config)
    assert_close(layer.apply(variables, x, deterministic=True)[0], plain, "deterministic=True")
    assert_close(
        jf.LinenLSTM(H_IN, H, **config, deterministic=True).apply(variables, x)[0],
        plain,
        "deterministic attribute",
    )

    def train(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return layer.apply(variables, x, deterministic=False, rngs=rngs)[0]

    assert not np.allclose(train(0), plain) and not np.allclose(train(0), train(1))
    assert_close(train(0), train(0), "same dropout rng, same mask")
    with pytest.raises(ValueError, match="deterministic"):
        layer.apply(variables, x)  # neither attribute nor argument, as nn.Dropout
    assert_close(jf.LinenLSTM(H_IN, H, num_layers=2).apply(variables, x)[0], plain, "dropout=0")


# ------------------------------------------------------------------ cell


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_nnx_cell_matches_torch_and_lstm_cell(bias):
    reference = torch.nn.LSTMCell(H_IN, H, bias=bias)
    cell = jf.LSTMCell(H_IN, H, bias=bias, rngs=nnx.Rngs(0))
    assert list(cell.state_dict()) == list(reference.state_dict())
    init_expected = jl.params_to_torch(
        jl.init_cell_params(nnx.Rngs(0).params(), H_IN, H, bias=bias)
    )
    for name, value in init_expected.items():
        np.testing.assert_array_equal(cell.state_dict()[name], value, err_msg=name)
    cell.load_state_dict(reference.state_dict())
    x, _ = inputs()
    h, c = cell(x[0])
    h_ref, c_ref = reference(torch.from_numpy(x[0]))
    assert_close(h, h_ref, "h")
    assert_close(c, c_ref, "c")

    params = jl.params_from_torch(reference.state_dict())
    expected = jax.grad(lambda p: loss_of(x[0], *jl.lstm_cell(p, x[0])))(params)
    grads = nnx.grad(lambda m: loss_of(x[0], *m(x[0])))(cell)
    for name, value in jl.params_to_torch(expected).items():
        assert_close(grads[name][...], value, f"d/d{name}")


# ------------------------------------------------------------------ facades in nnx


class Holder(nnx.Module):
    def __init__(self, wrap):
        self.lstm = wrap(jl.LSTM(H_IN, H, key=jax.random.key(0)))


def test_facade_as_a_plain_nnx_attribute_is_refused_by_flax():
    with pytest.raises(ValueError, match=r"Found data on value of type .*jaxlstm"):
        Holder(lambda lstm: lstm)


def test_facade_in_nnx_data_is_frozen_as_documented():
    """Pins the silent freeze that docs/flax.md warns about: nnx.data(facade) holds
    arrays that are not nnx.Params, so nnx.grad and nnx.Optimizer never see them."""
    model = Holder(nnx.data)
    assert not jax.tree.leaves(nnx.state(model, nnx.Param))
    x, _ = inputs()
    grads = nnx.grad(lambda m: jnp.sum(m.lstm(x)[0]))(model)
    assert not jax.tree.leaves(grads)


def test_facade_read_as_an_nnx_param_says_what_to_use():
    model = Holder(nnx.Param)
    with pytest.raises(TypeError, match=r"In a flax nnx Module use jaxlstm\.flax\.LSTM"):
        model.lstm[...]
    cell = nnx.Param(jl.LSTMCell(H_IN, H, key=jax.random.key(0)))
    with pytest.raises(TypeError, match=r"use jaxlstm\.flax\.LSTMCell"):
        cell[...]
    with pytest.raises(TypeError, match="'LSTM' object is not iterable"):
        iter(jl.LSTM(H_IN, H, key=jax.random.key(0)))


def test_facade_held_as_an_nnx_param_fails_in_adam_as_documented():
    """Pins the other documented failure: called through the Param (``model.lstm(x)``),
    the facade gets a gradient, but ``nnx.Optimizer`` with adam fails from its second
    update (its moments no longer match the facade's structure)."""
    model = Holder(nnx.Param)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x, _ = inputs()
    with pytest.raises(ValueError, match="pytree structure"):
        for _ in range(3):
            optimizer.update(model, nnx.grad(lambda m: jnp.sum(m.lstm(x)[0]))(model))
