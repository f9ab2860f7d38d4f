"""``jl.lstm_cell`` and ``jl.LSTMCell`` against live ``torch.nn.LSTMCell`` (CPU).

Each case compares ``h``, ``c`` (primal and under ``value_and_grad``) and the gradients of
a random weighted sum of both w.r.t. every parameter, the input and ``hx``. The grid is the
full product bias x batched/unbatched x hx given or not for float64,
two opposite corners of it for float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import (
    BATCH,
    HIDDEN_SIZE,
    INPUT_SIZE,
    assert_all_close,
    cell_torch_names,
    torch_dtype,
)

import jaxlstm as jl

BIAS = pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
BATCHED = pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
WITH_HX = pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])


def cell_inputs(batched, with_hx, dtype, seed=0):
    """Numpy ``(x, hx or None, cotangents of (h, c))``."""
    rng = np.random.default_rng(seed)
    batch = (BATCH,) if batched else ()

    def normal(size):
        return rng.standard_normal((*batch, size)).astype(dtype)

    hx = (normal(HIDDEN_SIZE), normal(HIDDEN_SIZE)) if with_hx else None
    return normal(INPUT_SIZE), hx, (normal(HIDDEN_SIZE), normal(HIDDEN_SIZE))


def named_results(h, c, grads=None):
    """``{"h", "c"}`` plus, given ``(d input, d hx, d params by torch name)``, the grads."""
    results = {"h": h, "c": c}
    if grads is not None:
        grad_x, grad_hx, grad_params = grads
        results["d input"] = grad_x
        if grad_hx is not None:
            results["d h_0"], results["d c_0"] = grad_hx
        results.update((f"d {name}", g) for name, g in grad_params)
    return {name: np.asarray(value) for name, value in results.items()}


def torch_cell_reference(state_dict, x, hx, cotangents):
    """``torch.nn.LSTMCell`` loaded from a numpy ``state_dict``, run with the same loss."""
    cell = torch.nn.LSTMCell(
        INPUT_SIZE,
        HIDDEN_SIZE,
        bias="bias_ih" in state_dict,
        dtype=torch_dtype(state_dict["weight_ih"].dtype),
    )
    cell.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    tx = torch.tensor(x, requires_grad=True)
    thx = None if hx is None else tuple(torch.tensor(a, requires_grad=True) for a in hx)
    h, c = cell(tx, thx)
    g_h, g_c = (torch.from_numpy(g) for g in cotangents)
    ((h * g_h).sum() + (c * g_c).sum()).backward()
    grad_hx = None if thx is None else tuple(t.grad for t in thx)
    params = ((name, p.grad) for name, p in cell.named_parameters())
    return named_results(h.detach(), c.detach(), (tx.grad, grad_hx, params))


def check_cell(model, call, state_dict, inputs, *, dtype, tol, params_of=lambda p: p):
    """``call(model, x, hx) -> (h, c)`` (primal and under grad) against PyTorch.

    ``state_dict`` loads the PyTorch twin; ``params_of`` extracts the cell params from the
    gradient w.r.t. ``model``. ``inputs`` are numpy; jaxlstm gets them cast to ``dtype``.
    """

    def loss(model, x, hx, cotangents):
        h, c = call(model, x, hx)
        return (h * cotangents[0]).sum() + (c * cotangents[1]).sum(), (h, c)

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    run = jax.jit(lambda *args: (call(*args[:3]), value_and_grad(*args)))
    primal, ((_, under_grad), grads) = run(
        model, *jax.tree.map(lambda a: jnp.asarray(a, dtype), inputs)
    )
    for array in (*primal, *under_grad):
        assert array.dtype == dtype, f"result dtype {array.dtype}, want {dtype}"
    expected = torch_cell_reference(state_dict, *inputs)
    grad_params = cell_torch_names(params_of(grads[0]))
    actual = named_results(*under_grad, (grads[1], grads[2], grad_params))
    assert_all_close(actual, expected, tol, "under grad:")
    want_primal = {name: expected[name] for name in ("h", "c")}
    assert_all_close(named_results(*primal), want_primal, tol, "primal:")


def check_functional(bias, batched, with_hx, dtype, tol):
    kwargs = {} if dtype is None else {"dtype": dtype}  # None: the default dtype
    params = jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bias=bias, **kwargs)
    dtype = np.dtype(dtype or np.float32)
    check_cell(
        params,
        jl.lstm_cell,
        jl.params_to_torch(params),
        cell_inputs(batched, with_hx, dtype),
        dtype=dtype,
        tol=tol,
    )


@WITH_HX
@BATCHED
@BIAS
def test_lstm_cell_matches_torch_float64(bias, batched, with_hx, x64):
    check_functional(bias, batched, with_hx, np.float64, 1e-10)


@pytest.mark.parametrize(
    ("bias", "batched", "with_hx"),
    [(True, True, True), (False, False, False)],
    ids=["bias-batched-hx", "nobias-unbatched-nohx"],
)
def test_lstm_cell_matches_torch_float32_by_default(bias, batched, with_hx):
    check_functional(bias, batched, with_hx, None, 1e-5)


def test_lstm_cell_bfloat16_close_to_float32():
    """bfloat16 runs in bfloat16 and stays near PyTorch float32 on the same numbers."""
    params = jl.init_cell_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, dtype=jnp.bfloat16)
    inputs = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16).astype(np.float32), cell_inputs(True, True, np.float32)
    )
    check_cell(
        params,
        jl.lstm_cell,
        jl.params_to_torch(jax.tree.map(lambda a: a.astype(jnp.float32), params)),
        inputs,
        dtype=jnp.bfloat16,
        tol=5e-2,
    )


@BIAS
@pytest.mark.parametrize(
    ("batched", "with_hx"), [(True, True), (False, False)], ids=["batched-hx", "unbatched-nohx"]
)
def test_cell_module_matches_torch(bias, batched, with_hx, x64):
    """``jl.LSTMCell`` against ``torch.nn.LSTMCell`` loaded from ``jl.LSTMCell.state_dict()``;
    gradients taken over the module."""
    cell = jl.LSTMCell(INPUT_SIZE, HIDDEN_SIZE, bias=bias, key=jax.random.key(1), dtype=jnp.float64)
    check_cell(
        cell,
        lambda module, x, hx: module(x, hx),
        cell.state_dict(),
        cell_inputs(batched, with_hx, np.float64),
        dtype=np.float64,
        tol=1e-10,
        params_of=lambda module: module.params,
    )
