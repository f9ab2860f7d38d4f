"""``jl.lstm`` and the ``jl.LSTM`` facade under JAX's transformations.

``jax.jit``, ``jax.grad``, ``jax.vmap``, ``jax.jacrev``, ``jax.jacfwd`` compose with the
functional core and the module; configuration is static (a new module or new lengths
with the same shapes never retrace: traces are counted with a Python counter bumped
inside the traced function); dtypes follow ``jnp.result_type``. Numbers are judged
against live PyTorch (``conftest.torch_reference``), finite differences, or the same
computation run without the transformation. (Every transformation on every path:
``test_transform_matrix.py``.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import (
    HIDDEN_SIZE,
    INPUT_SIZE,
    LENGTH_PATTERNS,
    PROJ_SIZE,
    SEQ_LEN,
    Case,
    assert_close,
    init_case_params,
    loss_of,
    random_inputs,
    torch_lstm,
    torch_names,
    torch_reference,
)

import jaxlstm as jl

CASE = Case(bidirectional=True, proj_size=PROJ_SIZE, hx=True)


class TraceCounter:
    """``jax.jit(fn)`` that counts how many times ``fn`` is traced."""

    def __init__(self, fn):
        self.traces = 0

        def traced(*args):
            self.traces += 1
            return fn(*args)

        self.jitted = jax.jit(traced)

    def __call__(self, *args):
        return self.jitted(*args)


def module_for(case, key=0, dtype=jnp.float32, **overrides):
    """A ``jl.LSTM`` of ``case``'s configuration."""
    options = {
        "num_layers": case.num_layers,
        "bias": case.bias,
        "batch_first": case.batch_first,
        "bidirectional": case.bidirectional,
        "proj_size": case.proj_size,
    } | overrides
    return jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(key), dtype=dtype, **options)


def call_module(m, x, hx):
    return m(x, hx)


def module_loss(m, x, hx, cotangents):
    output, (h_n, c_n) = m(x, hx)
    return loss_of(output, h_n, c_n, cotangents)


def assert_trees_close(actual, expected, tol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        assert_close(a, e, tol, "leaf")


def torch_args(x, hx=None):
    """``(input, hx)`` as torch tensors, for a ``torch.nn.LSTM`` call."""
    as_tensor = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    return as_tensor(x), None if hx is None else tuple(as_tensor(a) for a in hx)


def stack_trees(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


# ------------------------------------------------------------------------------ jit, grad


def test_jit_over_module_matches_torch_without_retrace():
    """``jax.jit(lambda m, x: m(x))``: a new module with the same config reuses the trace."""
    x, hx, cotangents = random_inputs(CASE, np.float32)
    run = TraceCounter(call_module)
    for key in (1, 2):
        lstm = module_for(CASE, key=key)
        output, (h_n, c_n) = run(lstm, x, hx)
        expected = torch_reference(CASE, torch_lstm(lstm.state_dict()), x, hx, None, cotangents)
        assert_close(output, expected.output, 1e-5, f"[key {key}] output")
        assert_close(h_n, expected.h_n, 1e-5, f"[key {key}] h_n")
        assert_close(c_n, expected.c_n, 1e-5, f"[key {key}] c_n")
    assert run.traces == 1


def test_batch_first_is_static_config():
    """Same parameter shapes, other ``batch_first``: a retrace, with batch-first numbers."""
    case = Case()
    x = np.asarray(jax.random.normal(jax.random.key(5), (SEQ_LEN, SEQ_LEN, INPUT_SIZE)))
    run = TraceCounter(lambda m, x: m(x))
    time_major = module_for(case, key=1)
    batch_major = module_for(case, key=1, batch_first=True)
    out_time_major, _ = run(time_major, x)
    out_batch_major, _ = run(batch_major, x)
    assert run.traces == 2
    reference = torch_lstm(batch_major.state_dict(), batch_first=True)
    assert_close(out_batch_major, reference(*torch_args(x))[0].detach().numpy(), 1e-5, "out")
    reference = torch_lstm(time_major.state_dict())
    assert_close(out_time_major, reference(*torch_args(x))[0].detach().numpy(), 1e-5, "out")


def test_grad_over_module_is_a_module_of_grads():
    lstm = module_for(CASE)
    x, hx, cotangents = random_inputs(CASE, np.float32)

    def params_loss(params):
        output, (h_n, c_n) = jl.lstm(params, x, hx)
        return loss_of(output, h_n, c_n, cotangents)

    grads, params_grads = jax.jit(
        lambda m: (jax.grad(module_loss)(m, x, hx, cotangents), jax.grad(params_loss)(m.params))
    )(lstm)

    assert type(grads) is jl.LSTM
    assert jax.tree.structure(grads) == jax.tree.structure(lstm)
    assert (grads.num_layers, grads.bidirectional, grads.proj_size) == (1, True, PROJ_SIZE)
    assert_trees_close(grads.params, params_grads, 1e-6)
    expected = torch_reference(CASE, torch_lstm(lstm.state_dict()), x, hx, None, cotangents)
    for name, grad in torch_names(grads.params):
        assert_close(grad, expected.grads[name], 1e-5, f"d loss / d {name}")


def test_no_retrace_for_new_lengths():
    case = Case(bidirectional=True, form="lengths", hx=True)
    params = init_case_params(case)
    x, hx, cotangents = random_inputs(case, np.float32)
    run = TraceCounter(lambda p, x, hx, lengths: jl.lstm(p, x, hx, lengths=lengths))
    module = torch_lstm(jl.params_to_torch(params))
    for name, lengths in case.length_patterns().items():
        output, (h_n, c_n) = run(params, x, hx, lengths)
        expected = torch_reference(case, module, x, hx, lengths, cotangents)
        assert_close(output, expected.output, 1e-5, f"[{name}] output")
        assert_close(h_n, expected.h_n, 1e-5, f"[{name}] h_n")
        assert_close(c_n, expected.c_n, 1e-5, f"[{name}] c_n")
    assert run.traces == 1


# ------------------------------------------------------------------------------ vmap

VMAP_CASE = Case(proj_size=PROJ_SIZE, form="lengths", hx=True)
VMAP_LENGTHS = np.asarray(LENGTH_PATTERNS["mixed"], np.int32)


@jax.jit
def run_vmap_case(params, x, hx, lengths):
    return jl.lstm(params, x, hx, lengths=lengths)


def test_vmap_over_an_ensemble_of_params():
    members = [init_case_params(VMAP_CASE, seed=seed) for seed in range(3)]
    x, hx, _ = random_inputs(VMAP_CASE, np.float32)
    stacked = stack_trees(members)
    assert {leaf.shape[0] for leaf in jax.tree.leaves(stacked)} == {3}
    ensemble = jax.jit(jax.vmap(run_vmap_case, in_axes=(0, None, None, None)))(
        stacked, x, hx, VMAP_LENGTHS
    )
    for i, member in enumerate(members):
        one = jax.tree.map(lambda a, i=i: a[i], ensemble)
        assert_trees_close(one, run_vmap_case(member, x, hx, VMAP_LENGTHS), 1e-6)
    # The members differ, so the comparison above tells them apart.
    assert not np.allclose(ensemble[0][0], ensemble[0][1])


def test_vmap_over_batches_of_inputs():
    params = init_case_params(VMAP_CASE)
    batches = [random_inputs(VMAP_CASE, np.float32, seed=seed)[:2] for seed in range(3)]
    xs, hxs = stack_trees([b[0] for b in batches]), stack_trees([b[1] for b in batches])
    lengths = np.stack([np.asarray(p, np.int32) for p in list(LENGTH_PATTERNS.values())[:3]])
    mapped = jax.jit(jax.vmap(run_vmap_case, in_axes=(None, 0, 0, 0)))(params, xs, hxs, lengths)
    for i in range(3):
        one, hx = (jax.tree.map(lambda a, i=i: a[i], tree) for tree in (mapped, hxs))
        assert_trees_close(one, run_vmap_case(params, xs[i], hx, lengths[i]), 1e-6)


def test_vmap_over_unbatched_sequences_equals_a_batch():
    """``vmap`` of the unbatched form over ``N`` sequences is the batched call."""
    params = init_case_params(VMAP_CASE)
    x, hx, _ = random_inputs(VMAP_CASE, np.float32)  # (L, N, H_in), ((S, N, H_out), (S, N, H))
    unbatched = jax.vmap(run_vmap_case, in_axes=(None, 1, 1, 0), out_axes=(1, 1))
    assert_trees_close(
        jax.jit(unbatched)(params, x, hx, VMAP_LENGTHS),
        run_vmap_case(params, x, hx, VMAP_LENGTHS),
        1e-6,
    )


# ------------------------------------------------------------------------------ forward mode

TINY = {"input_size": 2, "hidden_size": 2, "seq_len": 3, "batch": 2, "lengths": (3, 1)}


def _finite_differences(f, x, eps=1e-6):
    """Central differences of ``f`` at ``x``: ``(out, *x.shape)``."""
    x = np.asarray(x)
    steps = np.eye(x.size).reshape(x.size, *x.shape) * eps
    columns = [(np.asarray(f(x + s)) - np.asarray(f(x - s))) / (2 * eps) for s in steps]
    return np.stack(columns, axis=-1).reshape(-1, *x.shape)


@pytest.mark.usefixtures("x64")
def test_jacrev_and_jacfwd_match_finite_differences():
    """``jax.jacrev`` and ``jax.jacfwd`` of ``jl.lstm`` w.r.t. the input equal central
    differences (float64, tiny, bidirectional, with lengths)."""
    params = jl.init_params(
        jax.random.key(7),
        TINY["input_size"],
        TINY["hidden_size"],
        bidirectional=True,
        dtype=jnp.float64,
    )
    shape = (TINY["seq_len"], TINY["batch"], TINY["input_size"])
    x = jax.random.normal(jax.random.key(8), shape, jnp.float64)
    length_array = jnp.asarray(TINY["lengths"])

    @jax.jit
    def f(x):  # every output, h_n and c_n entry, flattened
        output, (h_n, c_n) = jl.lstm(params, x, lengths=length_array)
        return jnp.concatenate([output.ravel(), h_n.ravel(), c_n.ravel()])

    expected = _finite_differences(f, x)
    assert_close(jax.jacrev(f)(x), expected, 1e-7, "jacrev vs finite differences")
    assert_close(jax.jacfwd(f)(x), expected, 1e-7, "jacfwd vs finite differences")


# ------------------------------------------------------------------------------ dtypes

DTYPE_CASE = Case(num_layers=2, hx=True)  # two layers: each layer's params are promoted


@jax.jit
def run_dtype_case(params, x, hx):
    return jl.lstm(params, x, hx)


def _inputs_in(dtype, params_dtype=None, hx_dtype=None):
    """``DTYPE_CASE``'s params, input and hx, in their dtypes (default: ``dtype``)."""
    params = init_case_params(DTYPE_CASE, params_dtype or dtype)
    x, hx, _ = random_inputs(DTYPE_CASE, np.float32)
    return params, jnp.asarray(x, dtype), tuple(jnp.asarray(a, hx_dtype or dtype) for a in hx)


def _assert_dtype(results, dtype):
    output, (h_n, c_n) = results
    assert (output.dtype, h_n.dtype, c_n.dtype) == (dtype,) * 3


def _assert_matches_torch(params, x, hx, results, tol):
    x, hx = np.asarray(x), tuple(np.asarray(a) for a in hx)
    module = torch_lstm(jl.params_to_torch(params))
    cotangents = random_inputs(DTYPE_CASE, x.dtype)[2]
    expected = torch_reference(DTYPE_CASE, module, x, hx, None, cotangents)
    output, (h_n, c_n) = results
    assert_close(output, expected.output, tol, "output")
    assert_close(h_n, expected.h_n, tol, "h_n")
    assert_close(c_n, expected.c_n, tol, "c_n")


def test_float32_by_default():
    lstm = jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, key=jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(lstm)} == {jnp.dtype(jnp.float32)}
    params = init_case_params(DTYPE_CASE)  # the library's default dtype
    x, hx, _ = random_inputs(DTYPE_CASE, np.float32)
    results = run_dtype_case(params, x, hx)
    _assert_dtype(results, jnp.float32)
    _assert_matches_torch(params, x, hx, results, 1e-5)


@pytest.mark.usefixtures("x64")
def test_float64_with_x64():
    lstm = jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, dtype=jnp.float64, key=jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(lstm)} == {jnp.dtype(jnp.float64)}
    params, x, hx = _inputs_in(jnp.float64)
    results = run_dtype_case(params, x, hx)
    _assert_dtype(results, jnp.float64)
    _assert_matches_torch(params, x, hx, results, 1e-12)


def test_bfloat16_params_and_input_give_bfloat16():
    params, x, hx = _inputs_in(jnp.bfloat16)
    results = run_dtype_case(params, x, hx)
    _assert_dtype(results, jnp.bfloat16)
    # The same (bfloat16-representable) numbers in float32, by PyTorch.
    as_float32 = jax.tree.map(lambda a: a.astype(jnp.float32), (params, x, hx, results))
    _assert_matches_torch(*as_float32, 5e-2)


MIXED = [  # (input, params, hx (None: as input), the common dtype)
    pytest.param(jnp.float32, jnp.float64, None, jnp.float64, id="f32-input-f64-params"),
    pytest.param(jnp.float32, jnp.float32, jnp.float64, jnp.float64, id="f64-hx"),
    pytest.param(jnp.float16, jnp.bfloat16, None, jnp.float32, id="f16-input-bf16-params"),
]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("x_dtype, params_dtype, hx_dtype, expected", MIXED)
def test_mixed_dtypes_promote_per_result_type(x_dtype, params_dtype, hx_dtype, expected):
    params, x, hx = _inputs_in(x_dtype, params_dtype, hx_dtype)
    common = jnp.result_type(x, *hx, *jax.tree.leaves(params))
    assert common == expected
    results = run_dtype_case(params, x, hx)
    _assert_dtype(results, common)
    # The same as casting everything to the common dtype first.
    cast = jax.tree.map(lambda a: a.astype(common), (params, x, hx))
    assert_trees_close(results, run_dtype_case(*cast), 1e-6)


def test_array_likes_are_accepted_wherever_an_array_is():
    """Parameters as flax ``nnx.Param``\\ s, numpy arrays or torch tensors, the input and
    lengths as torch tensors, the state as ``nnx.Param``\\ s: the numbers of plain arrays.
    A leaf ``jnp.asarray`` refuses is named by its place."""
    from flax import nnx

    params = jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, num_layers=2)
    x = np.asarray(jax.random.normal(jax.random.key(1), (SEQ_LEN, 2, INPUT_SIZE)))
    hx = tuple(np.full((2, 2, HIDDEN_SIZE), v, np.float32) for v in (0.1, -0.2))
    lengths = np.array([SEQ_LEN, 2])
    want = jl.lstm(params, x, hx, lengths=lengths)
    for convert in (nnx.Param, np.asarray, lambda a: torch.tensor(np.asarray(a))):
        got = jl.lstm(
            jax.tree.map(convert, params),
            torch.tensor(x),
            tuple(nnx.Param(jnp.asarray(a)) for a in hx),
            lengths=torch.tensor(lengths),
        )
        assert_trees_close(got, want, 0)
    cell = jl.init_cell_params(jax.random.key(2), INPUT_SIZE, HIDDEN_SIZE)
    assert_trees_close(
        jl.lstm_cell(jax.tree.map(nnx.Param, cell), torch.tensor(x[0])),
        jl.lstm_cell(cell, x[0]),
        0,
    )
    bad = params[0][0]._replace(w_hh="weights")
    with pytest.raises(TypeError, match=r"params\[0\]\[0\]\.w_hh must be an array, got str"):
        jl.lstm(((bad,), params[1]), x)
