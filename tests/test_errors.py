"""Bad input: ``ValueError``/``TypeError`` naming the argument, in PyTorch's words.

Each case runs the jaxlstm call and, where PyTorch has the same error, the PyTorch call
too: the ``match`` pattern must fit both messages, so it *is* PyTorch's wording. Cases
without a PyTorch twin (length checks PyTorch leaves out, JAX-only arguments) still
require the message to name the argument. Under ``jax.jit``, where traced lengths cannot
be checked, the documented behaviour is asserted: a length above ``L`` acts as ``L`` and a
negative one as 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as torch_rnn

import jaxlstm as jl

# The model of every case: H_in = 4, H = 3, two layers (hx slots: 2); input L = 5, N = 2.
INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS, SEQ_LEN, BATCH = 4, 3, 2, 5, 2
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)


@functools.cache
def params():
    return jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS)


@functools.cache
def torch_module():
    return torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS)


@functools.cache
def cell_params():
    return jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE)


def x(*shape, dtype=np.float32):
    """An input of ``shape`` (default ``(L, N, H_in)``)."""
    return np.ones(shape or (SEQ_LEN, BATCH, INPUT_SIZE), dtype)


def hx(h_shape, c_shape=None):
    return np.zeros(h_shape, np.float32), np.zeros(c_shape or h_shape, np.float32)


def t(a):
    return torch.from_numpy(np.asarray(a))


def lstm(inp, state=None, **kwargs):
    return jl.lstm(params(), inp, state, **kwargs)


def torch_lstm(inp, state=None):
    return torch_module()(t(inp), None if state is None else tuple(map(t, state)))


def check(call, error, match, torch_call=None):
    with pytest.raises(error, match=match):
        call()
    if torch_call is not None:
        with pytest.raises(TORCH_ERRORS, match=match):
            torch_call()


def case(id, call, error, match, torch_call=None):
    return pytest.param(call, error, match, torch_call, id=id)


# ------------------------------------------------------------------ input and hx

STATE_OK = hx((NUM_LAYERS, BATCH, HIDDEN_SIZE))
INPUT_CASES = [
    case(
        "input-size",
        lambda: lstm(x(SEQ_LEN, BATCH, 7)),
        ValueError,
        r"input\.size\(-1\) must be equal to input_size\. Expected 4, got 7",
        lambda: torch_lstm(x(SEQ_LEN, BATCH, 7)),
    ),
    case(
        "input-size-unbatched",
        lambda: lstm(x(SEQ_LEN, 7)),
        ValueError,
        r"input\.size\(-1\) must be equal to input_size\. Expected 4, got 7",
        lambda: torch_lstm(x(SEQ_LEN, 7)),
    ),
    case(
        "input-size-packed",
        lambda: lstm(jl.pack_padded_sequence(x(SEQ_LEN, BATCH, 7), [5, 3])),
        ValueError,  # PyTorch fails in a matmul here, without naming input_size
        r"input\.size\(-1\) must be equal to input_size\. Expected 4, got 7",
    ),
    case(
        "hidden0-size",
        lambda: lstm(x(), hx((1, BATCH, HIDDEN_SIZE), (NUM_LAYERS, BATCH, HIDDEN_SIZE))),
        ValueError,
        r"Expected hidden\[0\] size \(2, 2, 3\), got \[1, 2, 3\]",
        lambda: torch_lstm(x(), hx((1, BATCH, HIDDEN_SIZE), (NUM_LAYERS, BATCH, HIDDEN_SIZE))),
    ),
    case(
        "hidden1-size",
        lambda: lstm(x(), hx((NUM_LAYERS, BATCH, HIDDEN_SIZE), (1, BATCH, HIDDEN_SIZE))),
        ValueError,
        r"Expected hidden\[1\] size \(2, 2, 3\), got \[1, 2, 3\]",
        lambda: torch_lstm(x(), hx((NUM_LAYERS, BATCH, HIDDEN_SIZE), (1, BATCH, HIDDEN_SIZE))),
    ),
    case(
        "hidden0-batch",
        lambda: lstm(x(), hx((NUM_LAYERS, 3, HIDDEN_SIZE), (NUM_LAYERS, BATCH, HIDDEN_SIZE))),
        ValueError,
        r"Expected hidden\[0\] size \(2, 2, 3\), got \[2, 3, 3\]",
        lambda: torch_lstm(x(), hx((NUM_LAYERS, 3, HIDDEN_SIZE), (NUM_LAYERS, BATCH, HIDDEN_SIZE))),
    ),
    case(
        "hx-rank-batched",
        lambda: lstm(x(), hx((NUM_LAYERS, HIDDEN_SIZE))),
        ValueError,
        r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors",
        lambda: torch_lstm(x(), hx((NUM_LAYERS, HIDDEN_SIZE))),
    ),
    case(
        "hx-rank-unbatched",
        lambda: lstm(x(SEQ_LEN, INPUT_SIZE), STATE_OK),
        ValueError,
        r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors",
        lambda: torch_lstm(x(SEQ_LEN, INPUT_SIZE), STATE_OK),
    ),
    case(
        "hx-not-a-pair",
        lambda: lstm(x(), STATE_OK[0]),
        TypeError,
        r"hx",
    ),
    case(
        "input-4d",
        lambda: lstm(x(SEQ_LEN, BATCH, 1, INPUT_SIZE)),
        ValueError,
        r"LSTM: Expected input to be 2D or 3D, got 4D instead",
        lambda: torch_lstm(x(SEQ_LEN, BATCH, 1, INPUT_SIZE)),
    ),
    case(
        "input-1d",
        lambda: lstm(x(INPUT_SIZE)),
        ValueError,
        r"LSTM: Expected input to be 2D or 3D, got 1D instead",
        lambda: torch_lstm(x(INPUT_SIZE)),
    ),
    case(
        "input-integer",
        lambda: lstm(x(dtype=np.int32)),
        TypeError,
        r"input.*int32",
    ),
    case(
        "hx-integer",
        lambda: lstm(x(), tuple(a.astype(np.int32) for a in STATE_OK)),
        TypeError,
        r"hx\[0\].*int32",
    ),
]


@pytest.mark.parametrize("call, error, match, torch_call", INPUT_CASES)
def test_input_errors(call, error, match, torch_call):
    check(call, error, match, torch_call)


# ------------------------------------------------------------------ lengths

LENGTHS_CASES = [
    case(
        "too-many",
        lambda: lstm(x(), lengths=np.array([5, 3, 1])),
        ValueError,
        r"Expected `len\(lengths\)` to be equal to batch_size, but got 3 \(batch_size=2\)",
        lambda: torch_rnn.pack_padded_sequence(t(x()), [5, 3, 1]),
    ),
    case(
        "too-few",
        lambda: lstm(x(), lengths=np.array([5])),
        ValueError,
        r"Expected `len\(lengths\)` to be equal to batch_size, but got 1 \(batch_size=2\)",
        lambda: torch_rnn.pack_padded_sequence(t(x()), [5]),
    ),
    case("negative", lambda: lstm(x(), lengths=np.array([5, -1])), ValueError, r"lengths.*-1"),
    case("above-L", lambda: lstm(x(), lengths=np.array([6, 3])), ValueError, r"lengths.*\b6\b"),
    case(
        "above-L-batch-first",
        lambda: lstm(x(BATCH, SEQ_LEN, INPUT_SIZE), lengths=[3, 6], batch_first=True),
        ValueError,
        r"lengths.*\b6\b",
    ),
    case("2-d", lambda: lstm(x(), lengths=np.array([[5, 3]])), ValueError, r"lengths"),
    case(
        "float-non-integral",
        lambda: lstm(x(), lengths=np.array([2.5, 1.0])),
        TypeError,
        r"lengths.*2\.5",
    ),
    case(
        "unbatched-not-scalar",
        lambda: lstm(x(SEQ_LEN, INPUT_SIZE), lengths=np.array([3])),
        ValueError,
        r"lengths.*scalar",
    ),
    case(
        "unbatched-above-L",
        lambda: lstm(x(SEQ_LEN, INPUT_SIZE), lengths=6),
        ValueError,
        r"lengths.*\b6\b",
    ),
    case(
        "with-packed-sequence",
        lambda: lstm(jl.pack_padded_sequence(x(), [5, 3]), lengths=np.array([5, 3])),
        ValueError,
        r"lengths.*PackedSequence",
    ),
    case(
        "module-too-many",
        lambda: jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(0))(
            x(), lengths=np.array([5, 3, 1])
        ),
        ValueError,
        r"Expected `len\(lengths\)` to be equal to batch_size, but got 3 \(batch_size=2\)",
    ),
    case(
        "enforce-sorted",
        lambda: jl.pack_padded_sequence(x(), [3, 5]),
        ValueError,
        r"`lengths` array must be sorted in decreasing order when `enforce_sorted` is True",
        lambda: torch_rnn.pack_padded_sequence(t(x()), [3, 5]),
    ),
    case(
        "total-length",
        lambda: jl.pad_packed_sequence(jl.pack_padded_sequence(x(), [5, 3]), total_length=4),
        ValueError,
        r"Expected total_length to be at least the length of the longest sequence in input, "
        r"but got total_length=4 and max sequence length being 5",
        lambda: torch_rnn.pad_packed_sequence(
            torch_rnn.pack_padded_sequence(t(x()), [5, 3]), total_length=4
        ),
    ),
]


@pytest.mark.parametrize("call, error, match, torch_call", LENGTHS_CASES)
def test_lengths_errors(call, error, match, torch_call):
    check(call, error, match, torch_call)


def test_traced_lengths_out_of_range_are_clamped_under_jit():
    """Documented: under ``jit`` a length above ``L`` acts as ``L``, a negative one as 0."""
    inp = np.asarray(jax.random.normal(jax.random.key(1), (SEQ_LEN, 3, INPUT_SIZE)))
    run = jax.jit(lambda p, x, lengths: jl.lstm(p, x, lengths=lengths))
    out_of_range = run(params(), inp, jnp.array([7, -2, 3]))
    clamped = run(params(), inp, jnp.array([SEQ_LEN, 0, 3]))
    for got, want in zip(jax.tree.leaves(out_of_range), jax.tree.leaves(clamped), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out_of_range[0][:, 1], 0)  # length 0: no output
    assert np.all(out_of_range[0][:, 0] != 0)  # length L: output at every step


@pytest.mark.parametrize("option, value", [("dropout", 0.5), ("batch_first", True)])
def test_traced_static_options_are_refused_under_jit(option, value):
    """Options that shape the computation cannot be traced values: a clear TypeError."""
    run = jax.jit(lambda p, inp, v: jl.lstm(p, inp, **{option: v}))
    with pytest.raises(TypeError, match=rf"{option}.*(traced|static)"):
        run(params(), x(), value)


# ------------------------------------------------------------------ constructors

DROPOUT_WORDS = (
    r"dropout should be a number in range \[0, 1\] representing the probability of an "
    r"element being zeroed"
)
CONSTRUCTOR_CASES = [
    ((4, 0), {}, ValueError, r"hidden_size must be greater than zero"),
    ((4, 3.0), {}, TypeError, r"hidden_size should be of type int, got: float"),
    ((0, 3), {}, ValueError, r"input_size must be greater than zero"),
    ((4, 3, 0), {}, ValueError, r"num_layers must be greater than zero"),
    ((4, 3, 2), {"dropout": -0.1}, ValueError, DROPOUT_WORDS),
    ((4, 3, 2), {"dropout": 1.5}, ValueError, DROPOUT_WORDS),
    (
        (4, 3),
        {"proj_size": -1},
        ValueError,
        r"proj_size should be a positive integer or zero to disable projections",
    ),
    ((4, 3), {"proj_size": 3}, ValueError, r"proj_size has to be smaller than hidden_size"),
    ((4, 3), {"proj_size": 5}, ValueError, r"proj_size has to be smaller than hidden_size"),
]
CONSTRUCTOR_IDS = [
    "hidden_size-0",
    "hidden_size-float",
    "input_size-0",
    "num_layers-0",
    "dropout-negative",
    "dropout-above-1",
    "proj_size-negative",
    "proj_size-equal-hidden",
    "proj_size-above-hidden",
]


@pytest.mark.parametrize("args, kwargs, error, match", CONSTRUCTOR_CASES, ids=CONSTRUCTOR_IDS)
def test_lstm_constructor_errors(args, kwargs, error, match):
    check(lambda: jl.LSTM(*args, **kwargs), error, match, lambda: torch.nn.LSTM(*args, **kwargs))


@pytest.mark.parametrize("args, kwargs, error, match", CONSTRUCTOR_CASES, ids=CONSTRUCTOR_IDS)
def test_init_params_errors(args, kwargs, error, match):
    """The functional core refuses the same sizes; dropout is a call argument there."""
    if "dropout" in kwargs:
        check(lambda: lstm(x(), dropout=kwargs["dropout"]), error, match)
    else:
        check(lambda: jl.init_params(jax.random.key(0), *args, **kwargs), error, match)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((4, 0), ValueError, r"hidden_size must be greater than zero"),
        ((4, 3.0), TypeError, r"hidden_size should be of type int, got: float"),
        ((0, 3), ValueError, r"input_size must be greater than zero"),
    ],
    ids=["hidden_size-0", "hidden_size-float", "input_size-0"],
)
@pytest.mark.parametrize(
    "make",
    [jl.LSTMCell, functools.partial(jl.init_cell_params, None)],
    ids=["LSTMCell", "init_cell_params"],
)
def test_cell_constructor_errors(make, args, error, match):
    check(lambda: make(*args), error, match)


# ------------------------------------------------------------------ LSTMCell calls

CELL_CASES = [  # (call(cell), error, match): ``cell(input, hx=None)`` of either library
    pytest.param(
        lambda cell: cell(x(BATCH, 1, INPUT_SIZE)),
        ValueError,
        r"LSTMCell: Expected input to be 1D or 2D, got 3D instead",
        id="input-3d",
    ),
    pytest.param(
        lambda cell: cell(x(BATCH, 7)),
        ValueError,
        r"input has inconsistent input_size: got 7 expected 4",
        id="input-size",
    ),
    pytest.param(
        lambda cell: cell(x(BATCH, INPUT_SIZE), hx((BATCH, 4), (BATCH, HIDDEN_SIZE))),
        ValueError,
        r"hidden0 has inconsistent hidden_size: got 4, expected 3",
        id="hidden-size",
    ),
    pytest.param(
        lambda cell: cell(x(BATCH, INPUT_SIZE), hx((3, HIDDEN_SIZE))),
        ValueError,
        r"Input batch size 2 doesn't match hidden0 batch size 3",
        id="hidden-batch",
    ),
]


def _torch_cell():
    cell = torch.nn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE)
    return lambda inp, state=None: cell(t(inp), None if state is None else tuple(map(t, state)))


@pytest.mark.parametrize("call, error, match", CELL_CASES)
def test_cell_call_errors(call, error, match):
    check(
        lambda: call(functools.partial(jl.lstm_cell, cell_params())),
        error,
        match,
        lambda: call(_torch_cell()),
    )
    check(lambda: call(jl.LSTMCell(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(0))), error, match)


def test_cell_integer_input():
    check(
        lambda: jl.lstm_cell(cell_params(), x(BATCH, INPUT_SIZE, dtype=np.int32)),
        TypeError,
        r"input.*int32",
    )


# ------------------------------------------------------------------ params

PARAMS_CASES = [
    case("cell-params", lambda: jl.lstm(cell_params(), x()), TypeError, r"params"),
    case("one-layer-tuple", lambda: jl.lstm(params()[0], x()), TypeError, r"params"),
    case("dict", lambda: jl.lstm(jl.params_to_torch(params()), x()), TypeError, r"params"),
    case("empty", lambda: jl.lstm((), x()), TypeError, r"params"),
    case(
        "lstm-params-to-cell",
        lambda: jl.lstm_cell(params(), x(BATCH, INPUT_SIZE)),
        TypeError,
        "params",
    ),
    case(
        "mis-shaped-w_hh",
        lambda: jl.lstm(((params()[0][0]._replace(w_hh=jnp.ones((12, 4))),), params()[1]), x()),
        (TypeError, ValueError),
        r"w_hh|weight_hh_l0",
    ),
    case(
        "mis-shaped-layer-1-w_ih",
        lambda: jl.lstm((params()[0], (params()[1][0]._replace(w_ih=jnp.ones((12, 4))),)), x()),
        (TypeError, ValueError),
        r"w_ih|weight_ih_l1",
    ),
]


@pytest.mark.parametrize("call, error, match, torch_call", PARAMS_CASES)
def test_params_structure_errors(call, error, match, torch_call):
    check(call, error, match, torch_call)


# ------------------------------------------------------------------ state dicts


def _lstm_state_dict():
    return {k: t(v) for k, v in jl.params_to_torch(params()).items()}


def _cell_state_dict():
    return {k: t(v) for k, v in jl.params_to_torch(cell_params()).items()}


def _missing(sd, name):
    return {k: v for k, v in sd.items() if k != name}


def _unexpected(sd, name):
    return {**sd, name: torch.zeros(3)}


def _mis_shaped(sd, name):
    return {**sd, name: torch.zeros(*sd[name].shape[:-1], sd[name].shape[-1] + 1)}


STATE_DICT_CASES = [
    (_lstm_state_dict, _missing, "bias_hh_l1", r"Missing key\(s\) in state_dict: .bias_hh_l1."),
    (_lstm_state_dict, _missing, "weight_ih_l1", r"Missing key\(s\) in state_dict: .weight_ih_l1."),
    (_lstm_state_dict, _unexpected, "extra", r"Unexpected key\(s\) in state_dict: .extra."),
    (
        _lstm_state_dict,
        _unexpected,
        "weight_hr_l0",
        r"Unexpected key\(s\) in state_dict: .weight_hr_l0.",
    ),
    (
        _lstm_state_dict,
        _mis_shaped,
        "weight_hh_l1",
        r"size mismatch for weight_hh_l1: copying a param with shape .*12, 4.* from "
        r"checkpoint, the shape in current model is .*12, 3",
    ),
    (_cell_state_dict, _missing, "bias_hh", r"Missing key\(s\) in state_dict: .bias_hh."),
    (_cell_state_dict, _unexpected, "extra", r"Unexpected key\(s\) in state_dict: .extra."),
    (_cell_state_dict, _mis_shaped, "weight_hh", r"size mismatch for weight_hh"),
]
STATE_DICT_IDS = [f"{m.__name__[1:]}-{name}" for _, m, name, _ in STATE_DICT_CASES]


@pytest.mark.parametrize("state_dict, damage, name, match", STATE_DICT_CASES, ids=STATE_DICT_IDS)
def test_state_dict_errors_name_the_key(state_dict, damage, name, match):
    bad = damage(state_dict(), name)
    is_cell = state_dict is _cell_state_dict
    torch_twin = (
        torch.nn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE)
        if is_cell
        else torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS)
    )
    module = (
        jl.LSTMCell(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(0))
        if is_cell
        else jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS, key=jax.random.key(0))
    )
    before = module.state_dict()
    check(
        lambda: module.load_state_dict(bad),
        ValueError,
        match,
        lambda: torch_twin.load_state_dict(bad),
    )
    # A refused load leaves the module as it was.
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    # params_from_torch refuses it too, naming the key (its wording may differ: it has no
    # module to compare with, only the configuration it infers).
    with pytest.raises(ValueError, match=name):
        jl.params_from_torch({k: v.numpy() for k, v in bad.items()})
