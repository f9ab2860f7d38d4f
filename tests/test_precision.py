"""The opt-in ``matmul_dtype`` mode: bfloat16 matmuls, float32 state, gates and results.

Judged against the float64 computation of the same parameters and inputs (the errors
quoted in the docs come from this comparison), and against float32 without the mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl

CONFIGS = {
    "1-layer": dict(num_layers=1),
    "2-layer-bidir-proj": dict(num_layers=2, bidirectional=True, proj_size=16),
}


def _loss(params, x, lengths, matmul_dtype):
    out, (h_n, c_n) = jl.lstm(params, x, lengths=lengths, matmul_dtype=matmul_dtype)
    return jnp.sum(out**2) + jnp.sum(h_n) + jnp.sum(c_n), out


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_bfloat16_matmuls_close_to_float64(config, with_lengths):
    with jax.enable_x64(True):
        params64 = jl.init_params(jax.random.key(0), 24, 32, dtype=jnp.float64, **CONFIGS[config])
        x64 = jax.random.normal(jax.random.key(1), (30, 6, 24), jnp.float64)
        lengths = jnp.array([30, 12, 0, 29, 1, 7], jnp.int32) if with_lengths else None
        grad64 = jax.grad(_loss, has_aux=True)
        g_ref, out_ref = grad64(params64, x64, lengths, None)
        g_ref, out_ref = jax.tree.map(np.asarray, (g_ref, out_ref))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params64)
    x = x64.astype(jnp.float32)
    grad = jax.jit(jax.grad(_loss, has_aux=True), static_argnums=3)
    # (matmul_dtype, error bounds): two-sided for bfloat16, whose error a matmul_dtype
    # that changed nothing would not have (float32's is ~1e-6)
    bounds = ((None, 0, 1e-5, 1e-4), (jnp.bfloat16, 1e-4, 2e-2, 5e-2))
    for matmul_dtype, out_floor, out_tol, grad_tol in bounds:
        g, out = grad(params, x, lengths, matmul_dtype)
        assert out.dtype == jnp.float32
        assert out_floor < np.abs(np.asarray(out) - out_ref).max() < out_tol
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
            assert a.dtype == jnp.float32
            assert np.abs(np.asarray(a) - b).max() <= grad_tol * max(1.0, np.abs(b).max())
    if lengths is not None:  # zeros past each length in the reduced-precision mode too
        valid = np.arange(30)[:, None] < np.asarray(lengths)[None, :]
        assert not np.asarray(out)[~valid].any()


def test_matmul_dtype_is_refused_unless_floating():
    params = jl.init_params(jax.random.key(0), 3, 4)
    with pytest.raises(TypeError, match="matmul_dtype must be a floating dtype"):
        jl.lstm(params, jnp.ones((2, 1, 3)), matmul_dtype=jnp.int8)
    with pytest.raises(TypeError, match="matmul_dtype must be a floating dtype"):
        jl.LSTM(3, 4, matmul_dtype="not a dtype", key=jax.random.key(0))
