"""Every JAX transformation on every path, against a plain-JAX autodiff reference.

The matrix: each transformation below (first order, forward mode, Jacobians, Hessians,
Hessian-vector products both ways, MAML's gradient of a gradient step, ``vmap`` of a
gradient, ``jax.checkpoint``) x each path x lengths or none x float32 / float64. The
reference is an LSTM written here as a plain Python loop over time (PyTorch's packed
semantics by masks, nothing of jaxlstm's), differentiated by JAX's own autodiff.

Paths:

* ``scan``: ``impl="scan"``, float64, and a sample in float32;
* ``kernel-structure``: the fused kernel's derivative structure (its ``custom_jvp`` and
  the linear primitive whose transpose is the kernel's backward loop), with plain-JAX
  stand-ins for its two FFI calls (``conftest.fake_kernel``), so it runs on every CPU;
  float32 (the kernel's dtype);
* ``kernel``: the real kernel, where this CPU has it (AVX-512); its custom call must be
  in the lowered program.

The forward-mode results are also judged against central finite differences in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import KERNEL_FORWARD

import jaxlstm as jl
from jaxlstm import _kernel

L, N, H_IN, H = 4, 3, 3, 4
LENGTHS = {"lengths": (4, 2, 0), "full": None}


def reference_lstm(params, x, lengths):
    """``jl.lstm``'s results, as a plain loop: ``x (L, N, H_in)``, ``lengths (N,)``."""
    steps = x.shape[0]
    valid = np.ones((steps, x.shape[1]), bool) if lengths is None else None
    h_n, c_n = [], []
    for layer in params:
        outs = []
        for d, p in enumerate(layer):
            h = c = jnp.zeros((x.shape[1], p.w_hh.shape[1]), x.dtype)
            ys = [None] * steps
            for t in range(steps) if d == 0 else reversed(range(steps)):
                gates = x[t] @ p.w_ih.T + p.b_ih + h @ p.w_hh.T + p.b_hh
                i, f, g, o = jnp.split(gates, 4, axis=-1)
                c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
                keep = (valid[t] if lengths is None else t < lengths)[:, None]
                h, c = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
                ys[t] = jnp.where(keep, h_new, 0)
            outs.append(jnp.stack(ys))
            h_n.append(h)
            c_n.append(c)
        x = jnp.concatenate(outs, axis=-1)
    return x, (jnp.stack(h_n), jnp.stack(c_n))


def _setup(dtype):
    """Parameters, input and tangents: the same numbers in either dtype."""
    with jax.enable_x64(True):
        params = jl.init_params(jax.random.key(0), H_IN, H, bidirectional=True)
        x = jax.random.normal(jax.random.key(1), (L, N, H_IN))
        tangents = jax.tree.map(
            lambda a: jax.random.normal(jax.random.key(2), a.shape), (params, x)
        )
        return jax.tree.map(lambda a: np.asarray(a, dtype), (params, x, tangents))


def _transforms(run, params, x, tangents):
    """Each transformation of ``run(params, x) -> (output, (h_n, c_n))``."""
    t_params, t_x = tangents

    def outputs(p, x):  # every output entry, flattened
        output, (h_n, c_n) = run(p, x)
        return jnp.concatenate([output.ravel(), h_n.ravel(), c_n.ravel()])

    def loss(p, x):  # nonlinear in the results, so that second derivatives are not zero
        out = outputs(p, x)
        return jnp.sum(out * out * jnp.cos(out))

    def inner(p, x):
        return jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p, x))

    def vdot(a, b):
        return sum(
            jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    return {
        "grad": lambda: jax.grad(loss, argnums=(0, 1))(params, x),
        "jvp": lambda: jax.jvp(outputs, (params, x), tangents),
        "linearize": lambda: jax.linearize(lambda x: outputs(params, x), x)[1](t_x),
        "jacfwd": lambda: jax.jacfwd(lambda x: outputs(params, x))(x),
        "jacrev": lambda: jax.jacrev(lambda x: outputs(params, x))(x),
        "hessian": lambda: jax.hessian(lambda x: loss(params, x))(x),
        "hvp-fwd-over-rev": lambda: jax.jvp(lambda p: jax.grad(loss)(p, x), (params,), (t_params,))[
            1
        ],
        "hvp-rev-over-rev": lambda: jax.grad(lambda p: vdot(jax.grad(loss)(p, x), t_params))(
            params
        ),
        "maml-grad-of-grad-step": lambda: jax.grad(lambda p: loss(inner(p, x), x))(params),
        "vmap-of-grad": lambda: jax.vmap(jax.grad(loss), in_axes=(None, 0))(
            params, jnp.stack([x, -x])
        ),
        "grad-of-vmap": lambda: jax.grad(
            lambda p: jax.vmap(loss, in_axes=(None, 0))(p, jnp.stack([x, -x])).sum()
        )(params),
        "checkpoint": lambda: jax.grad(jax.checkpoint(loss))(params, x),
    }


TRANSFORMS = list(_transforms(None, None, None, (None, None)))
# Every transformation with lengths; without them (one full-length mask less) the first
# order of each mode; float32 on the scan path a sample (the kernel's path below is the
# float32 one), to keep the suite within CI's time.
CASES = [(name, "lengths") for name in TRANSFORMS] + [("grad", "full"), ("jvp", "full")]
SCAN_FLOAT32 = ("grad", "jvp", "hessian", "hvp-fwd-over-rev")
FIRST_ORDER_REVERSE = ("grad", "jacrev", "vmap-of-grad", "grad-of-vmap", "checkpoint")
FORWARD = ("jvp", "linearize", "jacfwd")


@functools.cache
def _reference(name, lengths):
    """The transformation of the reference, in float64."""
    with jax.enable_x64(True):
        params, x, tangents = _setup(jnp.float64)
        n = None if lengths is None else jnp.asarray(lengths)
        result = _transforms(lambda p, x: reference_lstm(p, x, n), params, x, tangents)[name]()
        return jax.tree.map(np.asarray, result)


def _assert_matches(got, want, tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = 1e-3 + float(np.max(np.abs(b), initial=0))
        err = float(np.max(np.abs(np.asarray(a, np.float64) - b), initial=0))
        assert err <= tol * scale, (err, scale)


def _jaxlstm(name, lengths, dtype, impl):
    params, x, tangents = _setup(dtype)
    n = None if lengths is None else jnp.asarray(lengths)
    fn = _transforms(lambda p, x: jl.lstm(p, x, lengths=n, impl=impl), params, x, tangents)[name]
    return fn, jax.jit(fn)()


@pytest.mark.parametrize("name, lengths", CASES)
def test_scan_float64(name, lengths):
    lengths = LENGTHS[lengths]
    with jax.enable_x64(True):
        fn, got = _jaxlstm(name, lengths, jnp.float64, "scan")
        assert "jaxlstm_lstm" not in str(jax.make_jaxpr(fn)())
    _assert_matches(got, _reference(name, lengths), 1e-10)


@pytest.mark.parametrize("name", SCAN_FLOAT32)
def test_scan_float32(name):
    lengths = LENGTHS["lengths"]
    _, got = _jaxlstm(name, lengths, jnp.float32, "scan")
    _assert_matches(got, _reference(name, lengths), 1e-4)


@pytest.mark.parametrize("name, lengths", CASES)
def test_kernel_structure_float32(name, lengths, fake_kernel):
    """The kernel's derivative rules, with plain-JAX stand-ins for its FFI calls: the
    tangent primitive is in the program; first-order reverse mode runs the kernel's
    backward loop, forward mode never (second order differentiates the plain-JAX
    version of the backward loop, so it may or may not run the kernel's)."""
    lengths = LENGTHS[lengths]
    fn, got = _jaxlstm(name, lengths, jnp.float32, "auto")
    assert "jaxlstm_lstm_tangent" in str(jax.make_jaxpr(fn)())
    if name in FIRST_ORDER_REVERSE:
        assert fake_kernel["backward"] > 0
    elif name in FORWARD:
        assert fake_kernel["backward"] == 0
    _assert_matches(got, _reference(name, lengths), 1e-4)


@pytest.mark.skipif(
    not _kernel.available(),
    reason="no fused CPU kernel on this machine (it needs x86-64 with AVX2 and a build "
    "with a C++17 compiler; JAXLSTM_CPU_KERNEL=0 turns it off)",
)
@pytest.mark.parametrize("name, lengths", CASES)
def test_kernel_float32(name, lengths):
    lengths = LENGTHS[lengths]
    fn, got = _jaxlstm(name, lengths, jnp.float32, "cpu_kernel")
    assert KERNEL_FORWARD.search(jax.jit(fn).lower().as_text())
    _assert_matches(got, _reference(name, lengths), 1e-4)


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_forward_mode_matches_finite_differences(lengths):
    """``jax.jvp`` of ``jl.lstm`` (every argument's tangent at once) equals central
    differences in float64."""
    eps = 1e-6
    with jax.enable_x64(True):
        params, x, tangents = _setup(jnp.float64)
        n = None if lengths is None else jnp.asarray(lengths)

        def f(p, x):
            output, (h_n, c_n) = jl.lstm(p, x, lengths=n)
            return jnp.concatenate([output.ravel(), h_n.ravel(), c_n.ravel()])

        def at(s):
            return jax.tree.map(lambda a, t: a + s * t, (params, x), tangents)

        fd = (f(*at(eps)) - f(*at(-eps))) / (2 * eps)
        _, jvp = jax.jvp(f, (params, x), tangents)
        _assert_matches(jvp, np.asarray(fd), 1e-7)


def test_impl_is_validated_and_chosen_per_call():
    """``impl`` picks the path per call (``"scan"`` never lowers the kernel, even where the
    default takes it); a wrong value is a ``ValueError`` naming the choices;
    ``"cpu_kernel"`` where the kernel can't run says why."""
    params, x, _ = _setup(np.float32)
    for impl in ("xla", "Scan", None):
        with pytest.raises(ValueError, match="impl must be one of 'auto', 'scan', 'cpu_kernel'"):
            jl.lstm(params, x, impl=impl)
    assert not KERNEL_FORWARD.search(
        jax.jit(lambda p, x: jl.lstm(p, x, impl="scan")).lower(params, x).as_text()
    )
    if not _kernel.available():
        with pytest.raises(ValueError, match="impl='cpu_kernel'"):
            jl.lstm(params, x, impl="cpu_kernel")


def test_impl_per_call_takes_the_kernel_path(fake_kernel):
    params, x, _ = _setup(np.float32)
    with jax.enable_x64(True):
        params64, x64, _ = _setup(np.float64)
        with pytest.raises(ValueError, match="cannot run this layer: dtype float64"):
            jl.lstm(params64, x64, impl="cpu_kernel")
    for impl, kernel in (("auto", True), ("cpu_kernel", True), ("scan", False)):
        jaxpr = str(
            jax.make_jaxpr(jax.grad(lambda x, i=impl: jl.lstm(params, x, impl=i)[0].sum()))(x)
        )
        assert ("jaxlstm_lstm_tangent" in jaxpr) == kernel, impl
