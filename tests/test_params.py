"""Parameters: init, and PyTorch state dicts both ways.

PyTorch is the reference for names and shapes (``torch.nn.LSTM(...).state_dict()``), and
``conftest.torch_names`` is an independent statement of the name mapping. The
configuration grid (num_layers 1-3 x bidirectional x proj_size x bias) is run in full:
nothing here compiles more than a few tiny kernels.
"""

import itertools
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import (
    HIDDEN_SIZE,
    INPUT_SIZE,
    PROJ_SIZE,
    Case,
    cell_torch_names,
    init_case_params,
    torch_dtype,
    torch_names,
)

import jaxlstm as jl

CONFIGS = [
    pytest.param(case, id=case.config_id)
    for case in itertools.starmap(
        Case, itertools.product((1, 2, 3), (False, True), (0, PROJ_SIZE), (True, False))
    )
]
BIAS = pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
BOUND = 1 / np.sqrt(HIDDEN_SIZE)


def torch_module(case, dtype=torch.float32, seed=0):
    """A randomly initialised ``torch.nn.LSTM`` of ``case``'s configuration."""
    torch.manual_seed(seed)
    return torch.nn.LSTM(
        INPUT_SIZE,
        HIDDEN_SIZE,
        case.num_layers,
        bias=case.bias,
        bidirectional=case.bidirectional,
        proj_size=case.proj_size,
        dtype=dtype,
    )


def torch_cell(bias, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE, bias=bias, dtype=dtype)


def shapes(named):
    """``{name: shape}`` of ``(name, array)`` pairs or a state dict."""
    items = named.items() if isinstance(named, dict) else named
    return {name: tuple(array.shape) for name, array in items}


def assert_same_arrays(actual, expected):
    """Two ``{name: array}`` mappings hold the same names and exactly equal values/dtypes."""
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        want = want.numpy() if isinstance(want, torch.Tensor) else want
        got = np.asarray(actual[name])
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=name)


def assert_layout(case, params):
    """``params[layer][direction]`` of LayerParams, absent arrays None, PyTorch's shapes."""
    assert isinstance(params, tuple)
    assert len(params) == case.num_layers
    for layer in params:
        assert isinstance(layer, tuple)
        assert len(layer) == case.num_directions
        for layer_params in layer:
            assert isinstance(layer_params, jl.LayerParams)
            assert (layer_params.b_ih is None) == (layer_params.b_hh is None) == (not case.bias)
            assert (layer_params.w_hr is None) == (not case.proj_size)
    assert shapes(torch_names(params)) == shapes(torch_module(case).state_dict())


def assert_in_bound(arrays, dtype):
    for name, array in arrays:
        assert array.dtype == dtype, f"{name}: dtype {array.dtype}, want {dtype}"
        values = np.asarray(array, np.float64)
        assert np.all(np.abs(values) <= BOUND), f"{name} outside U(-1/sqrt(H), 1/sqrt(H))"


# --------------------------------------------------------------------------------- init


@pytest.mark.parametrize("case", CONFIGS)
def test_init_params_layout_matches_torch(case):
    """Structure and shapes as PyTorch; float32 by default; every value within the bound."""
    params = init_case_params(case)
    assert_layout(case, params)
    assert_in_bound(torch_names(params), jnp.float32)


@pytest.mark.parametrize(
    ("dtype", "enable_x64"),
    [(jnp.float32, False), (jnp.float64, True), (jnp.bfloat16, False)],
    ids=["float32", "float64-x64", "bfloat16"],
)
def test_init_params_dtype(dtype, enable_x64):
    case = Case(1, True)
    with jax.enable_x64(enable_x64):
        assert_in_bound(torch_names(init_case_params(case, dtype)), dtype)
        cell = jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, dtype=dtype)
        assert_in_bound(cell_torch_names(cell), dtype)


def test_init_params_distribution():
    """Each array looks like an independent draw from U(-1/sqrt(H), 1/sqrt(H)), and the
    key alone decides the draw."""
    hidden = 64
    bound = 1 / np.sqrt(hidden)
    params = jl.init_params(jax.random.key(0), 48, hidden, bidirectional=True, proj_size=8)
    arrays = dict(torch_names(params))
    for name, array in arrays.items():
        values = np.asarray(array, np.float64).ravel()
        assert np.all(np.abs(values) <= bound), name
        if values.size >= 2048:  # weight matrices; biases and w_hr are too small to judge
            assert values.min() < -0.99 * bound and values.max() > 0.99 * bound, name
            assert abs(values.mean()) < 0.05 * bound, name
            assert abs(values.std() - bound / np.sqrt(3)) < 0.05 * bound, name
    firsts = [np.asarray(a).ravel()[:8].tobytes() for a in arrays.values()]
    assert len(set(firsts)) == len(firsts), "two arrays share their draw"
    again = jl.init_params(jax.random.key(0), 48, hidden, bidirectional=True, proj_size=8)
    assert_same_arrays(dict(torch_names(again)), {k: np.asarray(v) for k, v in arrays.items()})
    other = jl.init_params(jax.random.key(1), 48, hidden, bidirectional=True, proj_size=8)
    assert not np.array_equal(other[0][1].w_hh, params[0][1].w_hh)


@BIAS
def test_init_cell_params_layout_matches_torch(bias):
    params = jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bias=bias)
    assert isinstance(params, jl.CellParams)
    assert (params.b_ih is None) == (params.b_hh is None) == (not bias)
    assert shapes(cell_torch_names(params)) == shapes(torch_cell(bias).state_dict())
    assert_in_bound(cell_torch_names(params), jnp.float32)


# ---------------------------------------------------------------- state dicts, both ways


def from_torch_sources(state_dict):
    """The same state dict as torch tensors and as numpy arrays."""
    return {
        "tensors": state_dict,
        "numpy": {k: v.numpy() for k, v in state_dict.items()},
    }


def load_into_torch(module, state_dict):
    """The documented idiom, strict; it must not warn (e.g. about read-only arrays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})


@pytest.mark.parametrize("case", CONFIGS)
def test_params_from_torch(case):
    """A ``torch.nn.LSTM`` state dict (tensors or numpy) gives its arrays in place, and
    ``params_to_torch`` gives the state dict back."""
    expected = torch_module(case).state_dict()
    for source, state_dict in from_torch_sources(expected).items():
        params = jl.params_from_torch(state_dict)
        assert_layout(case, params)
        assert_same_arrays(dict(torch_names(params)), expected)
        back = jl.params_to_torch(params)
        assert all(type(v) is np.ndarray for v in back.values()), source
        assert_same_arrays(back, expected)


@pytest.mark.parametrize("case", CONFIGS)
def test_params_to_torch_loads_into_torch(case):
    params = init_case_params(case)
    state_dict = jl.params_to_torch(params)
    assert all(type(v) is np.ndarray for v in state_dict.values())
    assert_same_arrays(state_dict, {k: np.asarray(v) for k, v in torch_names(params)})
    module = torch_module(case, seed=1)
    load_into_torch(module, state_dict)
    assert_same_arrays(state_dict, module.state_dict())


@pytest.mark.parametrize(
    ("dtype", "enable_x64"),
    [(np.float32, False), (np.float64, True), (np.float16, False)],
    ids=["float32", "float64-x64", "float16"],
)
def test_state_dicts_keep_dtype(dtype, enable_x64):
    """PyTorch -> params -> PyTorch keeps the dtype, for LSTM and cell state dicts."""
    with jax.enable_x64(enable_x64):
        for module in (torch_module(Case(2, True)), torch_cell(True)):
            module = module.to(torch_dtype(dtype))
            params = jl.params_from_torch(module.state_dict())
            assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(dtype)}
            state_dict = jl.params_to_torch(params)
            assert_same_arrays(state_dict, module.state_dict())
            load_into_torch(module, state_dict)


@BIAS
def test_cell_params_from_torch(bias):
    """``torch.nn.LSTMCell`` state dicts (no layer suffix) both ways."""
    expected = torch_cell(bias).state_dict()
    for state_dict in from_torch_sources(expected).values():
        params = jl.params_from_torch(state_dict)
        assert isinstance(params, jl.CellParams)
        assert_same_arrays(dict(cell_torch_names(params)), expected)
        assert_same_arrays(jl.params_to_torch(params), expected)


@BIAS
def test_cell_params_to_torch_loads_into_torch(bias):
    params = jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bias=bias)
    state_dict = jl.params_to_torch(params)
    assert_same_arrays(state_dict, {k: np.asarray(v) for k, v in cell_torch_names(params)})
    module = torch_cell(bias, seed=1)
    load_into_torch(module, state_dict)
    assert_same_arrays(state_dict, module.state_dict())


def test_params_from_numpy_does_not_import_torch():
    code = (
        "import sys, numpy as np, jaxlstm as jl\n"
        "h, n = 4, 3\n"
        "sd = {'weight_ih_l0': np.zeros((4 * h, n), np.float32),\n"
        "      'weight_hh_l0': np.zeros((4 * h, h), np.float32)}\n"
        "params = jl.params_from_torch(sd)\n"
        "assert params[0][0].w_hh.shape == (4 * h, h)\n"
        "assert sorted(jl.params_to_torch(params)) == sorted(sd)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# ------------------------------------------------------------------ refusals, by name

FULL = Case(2, True, PROJ_SIZE, True)
H4 = 4 * HIDDEN_SIZE


def mutate(state_dict, key, change):
    """``state_dict`` (numpy) with ``key`` removed (``change`` None) or set to ``change``."""
    state_dict = {k: v.numpy() for k, v in state_dict.items()}
    if change is None:
        del state_dict[key]
    else:
        state_dict[key] = np.zeros(change, np.float32)
    return state_dict


def bad_keys(*changes):
    """``pytest.param(key, change)`` per ``(what, key, change)``: ``change`` None removes
    ``key``, a shape adds it or replaces it by a zero array of that shape."""
    return [pytest.param(key, change, id=f"{what}-{key}") for what, key, change in changes]


LSTM_BAD_KEYS = bad_keys(
    ("missing", "weight_hh_l1_reverse", None),
    ("missing", "bias_ih_l1", None),
    ("missing", "weight_hr_l0_reverse", None),
    ("extra", "weight_ih_l0_backward", (H4, INPUT_SIZE)),
    ("extra", "running_mean", (H4,)),
    ("shape", "weight_hh_l1_reverse", (H4, PROJ_SIZE + 1)),
    ("shape", "bias_hh_l0", (H4 + 1,)),
    ("shape", "weight_hr_l1", (PROJ_SIZE, HIDDEN_SIZE + 1)),
    ("shape", "weight_ih_l1", (H4, 2 * PROJ_SIZE + 1)),
)
CELL_BAD_KEYS = bad_keys(
    ("missing", "bias_hh", None),
    ("missing", "weight_hh", None),
    ("extra", "weight_hr", (PROJ_SIZE, HIDDEN_SIZE)),
    ("shape", "weight_hh", (H4, HIDDEN_SIZE + 1)),
    ("shape", "bias_ih", (H4 - 1,)),
)


def names_key(key):
    """A ``match`` pattern: ``key`` as a whole name (not a prefix of a longer one)."""
    return rf"(?<![\w]){re.escape(key)}(?![\w])"


@pytest.mark.parametrize(("key", "change"), LSTM_BAD_KEYS)
def test_params_from_torch_refuses_bad_key(key, change):
    state_dict = mutate(torch_module(FULL).state_dict(), key, change)
    with pytest.raises(ValueError, match=names_key(key)):
        jl.params_from_torch(state_dict)


@pytest.mark.parametrize(("key", "change"), CELL_BAD_KEYS)
def test_cell_params_from_torch_refuses_bad_key(key, change):
    state_dict = mutate(torch_cell(True).state_dict(), key, change)
    with pytest.raises(ValueError, match=names_key(key)):
        jl.params_from_torch(state_dict)


# ----------------------------------------------------------- module state dicts

MODULES = [
    pytest.param(
        lambda: jl.LSTM(
            INPUT_SIZE,
            HIDDEN_SIZE,
            2,
            bidirectional=True,
            proj_size=PROJ_SIZE,
            key=jax.random.key(0),
        ),
        lambda: torch_module(FULL),
        LSTM_BAD_KEYS,
        id="LSTM",
    ),
    pytest.param(
        lambda: jl.LSTMCell(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(0)),
        lambda: torch_cell(True),
        CELL_BAD_KEYS,
        id="LSTMCell",
    ),
]


@pytest.mark.parametrize(("make", "make_torch", "refused"), MODULES)
def test_module_state_dict_both_ways(make, make_torch, refused, x64):
    """``state_dict()`` loads into PyTorch; ``load_state_dict`` takes PyTorch's (float64
    here) in place, cast to the module's float32; bad keys are refused by name."""
    module, twin = make(), make_torch()
    state_dict = module.state_dict()
    assert all(type(v) is np.ndarray for v in state_dict.values())
    load_into_torch(twin, state_dict)
    assert_same_arrays(state_dict, twin.state_dict())

    twin = make_torch().double()
    module.load_state_dict(twin.state_dict())
    expected = {k: v.numpy().astype(np.float32) for k, v in twin.state_dict().items()}
    assert_same_arrays(module.state_dict(), expected)

    for param in refused:
        key, change = param.values
        with pytest.raises(ValueError, match=names_key(key)):
            module.load_state_dict(mutate(make_torch().state_dict(), key, change))
