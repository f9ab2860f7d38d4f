"""``jl.lstm`` and ``jl.LSTM`` against live ``torch.nn.LSTM`` (CPU).

Each case compares outputs, ``h_n``, ``c_n`` and the gradients of a random weighted sum of
all three w.r.t. every parameter, the input and ``hx``, on the primal and the gradient
paths, for every length pattern of ``conftest.LENGTH_PATTERNS`` (full length, zero
lengths, ties, no sequence at full length) on one compiled function.

Coverage: the float64 grid is a pairwise covering design over num_layers 1-3 x
bidirectional x proj_size x bias x batch_first x input form (padded, ``lengths=``,
PackedSequence sorted / unsorted, unbatched, unbatched with a length) x hx; the length
patterns are run in full for every case. float32, bfloat16 and the ``jl.LSTM`` facade run
on smaller, representative sets.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    FORMS,
    HIDDEN_SIZE,
    INPUT_SIZE,
    PROJ_SIZE,
    Case,
    assert_in_kernel,
    call_lstm,
    case_params,
    check_parity,
    init_case_params,
    needs_kernel,
    pairwise,
    pairwise_cases,
    random_inputs,
)

import jaxlstm as jl

GRID = {
    "form": FORMS,
    "num_layers": (1, 2, 3),
    "bidirectional": (False, True),
    "proj_size": (0, PROJ_SIZE),
    "bias": (False, True),
    "batch_first": (False, True),
    "hx": (False, True),
}

FLOAT32_CASES = (
    Case(3, True, PROJ_SIZE, True, False, "packed-unsorted", True),
    Case(2, False, 0, False, True, "lengths", False),
)


def check_functional(case, *, dtype, tol, params=None, inputs=None, torch_dtype=None):
    """``jl.lstm`` in ``dtype`` against PyTorch in ``torch_dtype`` (default: ``dtype``)."""
    params = init_case_params(case, dtype) if params is None else params
    torch_params = jax.tree.map(lambda a: a.astype(torch_dtype or dtype), params)
    check_parity(
        case,
        params,
        functools.partial(call_lstm, batch_first=case.batch_first),
        jl.params_to_torch(torch_params),
        dtype=dtype,
        tol=tol,
        inputs=inputs,
    )


def test_grid_covers_every_pair():
    """The covering design behind the float64 grid holds every pair of axis values."""
    rows = pairwise(GRID)
    for a, b in itertools.combinations(GRID, 2):
        seen = {(row[a], row[b]) for row in rows}
        assert seen == set(itertools.product(GRID[a], GRID[b])), (a, b)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", pairwise_cases(GRID))
def test_lstm_matches_torch_float64(case):
    check_functional(case, dtype=np.float64, tol=1e-10)


@pytest.mark.parametrize("case", case_params(FLOAT32_CASES))
def test_lstm_matches_torch_float32_by_default(case):
    params = init_case_params(case)  # the default dtype, float32
    check_functional(case, dtype=np.float32, tol=1e-5, params=params)


KERNEL_GRID = {**GRID, "proj_size": (0,)}  # the layers the fused CPU kernel runs


@pytest.mark.parametrize("impl", [pytest.param("auto", marks=needs_kernel), "scan"])
@pytest.mark.parametrize("case", pairwise_cases(KERNEL_GRID))
def test_lstm_matches_torch_float32_kernel_on_and_off(case, impl):
    """float32 against PyTorch over the grid's kernel layers, in the fused CPU kernel
    (``"auto"``, asserted to run it) and on the ``lax.scan`` path."""
    params = init_case_params(case)  # float32
    if impl == "auto":
        x = jnp.zeros((5, 2, INPUT_SIZE), jnp.float32)
        assert_in_kernel(lambda p, x: jl.lstm(p, x, impl=impl), params, x)
    check_parity(
        case,
        params,
        functools.partial(call_lstm, batch_first=case.batch_first, impl=impl),
        jl.params_to_torch(params),
        dtype=np.float32,
        tol=1e-5,
    )


@pytest.mark.parametrize(
    "case", case_params([Case(2, True, PROJ_SIZE, True, False, "lengths", True)])
)
def test_lstm_bfloat16_close_to_float32(case):
    """bfloat16 params and input run in bfloat16 and stay near PyTorch float32 on the same
    (bfloat16-representable) numbers."""
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), init_case_params(case))
    x, hx, cotangents = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16).astype(np.float32), random_inputs(case, np.float32)
    )
    check_functional(
        case,
        dtype=jnp.bfloat16,
        tol=5e-2,
        params=params,
        inputs=(x, hx, cotangents),
        torch_dtype=np.float32,
    )


# Each value of every facade axis at least once; two layers so that dropout (set, but
# inactive without a key) sits between layers.
MODULE_CASES = (
    Case(2, True, PROJ_SIZE, False, True, "padded", True, dropout=0.5),
    Case(2, False, 0, True, False, "packed-unsorted", False, dropout=0.5),
    Case(2, True, 0, True, True, "unbatched", True, dropout=0.5),
)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", case_params(MODULE_CASES))
def test_module_matches_torch(case):
    """``jl.LSTM`` (inter-layer dropout set, no key: inference) against ``torch.nn.LSTM`` in
    eval mode, loaded from ``jl.LSTM.state_dict()``; gradients taken over the module."""
    lstm = jl.LSTM(
        INPUT_SIZE,
        HIDDEN_SIZE,
        case.num_layers,
        bias=case.bias,
        batch_first=case.batch_first,
        dropout=case.dropout,
        bidirectional=case.bidirectional,
        proj_size=case.proj_size,
        key=jax.random.key(3),
        dtype=jnp.float64,
    )
    check_parity(
        case,
        lstm,
        lambda module, inp, hx: module(inp, hx),
        lstm.state_dict(),
        dtype=np.float64,
        tol=1e-10,
        params_of=lambda module: module.params,
    )
