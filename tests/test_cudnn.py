"""``impl="cudnn"`` (:mod:`jaxlstm._cudnn`) on a CPU: what can be checked without a GPU.

* The flat weight layout against ``jax.experimental.rnn.unpack_lstm_weights``.
* Evidence about the binding's semantics: its reference, ``lstm_ref`` (the stand-in for
  what cuDNN computes), against jaxlstm's scan path over lengths and directions. It
  agrees everywhere but at a length of 0, which the binding is therefore never given.
* The whole derivative structure (custom JVP, tangent primitive, cuDNN's backward pass as
  its transpose, ``vmap``) on jax's real cuDNN primitives, lowered on the CPU by
  ``lstm_ref`` (``cudnn_fake.emulated_cudnn``), through a sample of the transformation
  matrix of ``test_transform_matrix.py`` against its plain-loop reference.
* The dispatch: the clear error where there is no cuDNN, ``impl="auto"`` unchanged,
  each case cuDNN can't run named under ``impl="cudnn"``.

The GPU itself (cuDNN's numbers against PyTorch's CUDA LSTM, timings) is
``benchmarks/scripts/gpu_check.py``'s.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cudnn_fake import emulated_cudnn, reference
from jax.experimental import rnn
from test_transform_matrix import (
    CASES,
    FIRST_ORDER_REVERSE,
    FORWARD,
    LENGTHS,
    _assert_matches,
    _jaxlstm,
    _reference,
    _setup,
)

import jaxlstm as jl
from jaxlstm import _cudnn, _scan

L, N, H_IN, H = 6, 5, 3, 4
# per-sequence lengths in the caller's order (N = 5, L = 6)
PATTERNS = {"full": (6, 6, 6, 6, 6), "unsorted": (3, 6, 1, 2, 5), "with-zero": (3, 0, 6, 1, 0)}


@pytest.fixture
def cudnn():
    with emulated_cudnn() as calls:
        yield calls


def _layer(bidirectional, bias=True, dtype=np.float32, seed=0):
    """One layer's params, ``x (L, N, H_in)`` and random ``h0, c0 (D, N, H)``."""
    params = jl.init_params(
        jax.random.key(seed), H_IN, H, bidirectional=bidirectional, bias=bias, dtype=dtype
    )
    keys = jax.random.split(jax.random.key(seed + 1), 3)
    dirs = 2 if bidirectional else 1
    x = jax.random.normal(keys[0], (L, N, H_IN), dtype)
    h0, c0 = (jax.random.normal(k, (dirs, N, H), dtype) for k in keys[1:])
    return params[0], x, h0, c0


def _scanned(layer, x, h0, c0, lengths):
    """The scan path's layer: ``(y (L, N, D*H), h_n, c_n)``."""
    return _scan.scan_layer(layer, x, h0, c0, lengths)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidir", "bidir"])
def test_flat_weights_are_unpack_lstm_weights_layout(bidirectional, bias):
    """:func:`_cudnn.flatten` is the vector ``unpack_lstm_weights`` reads as the layer's
    parameters (zero biases without bias), and :func:`_cudnn.unflatten` inverts it."""
    layer, *_ = _layer(bidirectional, bias)
    flat = _cudnn.flatten(layer)
    assert flat.shape == (rnn.get_num_params_in_lstm(H_IN, H, 1, bidirectional),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, H_IN, H, 1, bidirectional)
    for d, p in enumerate(layer):
        np.testing.assert_array_equal(w_ih[d], p.w_ih)
        np.testing.assert_array_equal(w_hh[d], p.w_hh)
        for got, want in ((b_ih[d], p.b_ih), (b_hh[d], p.b_hh)):
            np.testing.assert_array_equal(got, np.zeros(4 * H) if want is None else want)
    back = _cudnn.unflatten(flat, layer)
    assert jax.tree.structure(back) == jax.tree.structure(layer)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(layer), strict=True):
        np.testing.assert_array_equal(got, want)


def _lstm_ref(layer, x, h0, c0, lengths):
    """``jax.experimental.rnn.lstm_ref`` on one layer, time-major like the scan path."""
    y, h_n, c_n = reference(
        jnp.swapaxes(x, 0, 1),  # (L, N, H_in) -> (N, L, H_in)
        h0,
        c0,
        _cudnn.flatten(layer),
        jnp.asarray(lengths, jnp.int32),
        input_size=H_IN,
        hidden_size=H,
        num_layers=1,
        bidirectional=len(layer) == 2,
    )
    return jnp.swapaxes(y, 0, 1), h_n, c_n  # (N, L, D*H) -> (L, N, D*H)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidir", "bidir"])
@pytest.mark.parametrize("pattern", ["full", "unsorted"])
def test_evidence_lstm_ref_has_pytorch_semantics_for_positive_lengths(x64, bidirectional, pattern):
    """Lengths of 1 to L in any order: ``lstm_ref`` is the scan path (PyTorch's packed
    semantics) in float64: zeros past each length, the reverse direction over each
    valid part, ``h_n, c_n`` at each sequence's last valid step."""
    args = _layer(bidirectional, dtype=np.float64)
    lengths = np.asarray(PATTERNS[pattern])
    got, want = _lstm_ref(*args, lengths), _scanned(*args, jnp.asarray(lengths))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidir", "bidir"])
def test_evidence_lstm_ref_is_wrong_at_length_zero(x64, bidirectional):
    """A length of 0: PyTorch's (and the scan path's) ``h_n, c_n`` are ``h0, c0``;
    ``lstm_ref``'s are the carry at index ``-1``, the state after all ``L`` padded
    steps. The outputs (all masked) and the other sequences agree. Hence cuDNN is never
    given a length of 0 (:func:`jaxlstm._cudnn.layer`)."""
    layer, x, h0, c0 = _layer(bidirectional, dtype=np.float64)
    lengths = np.asarray(PATTERNS["with-zero"])
    (y, h_n, c_n), (y_s, h_s, c_s) = (
        _lstm_ref(layer, x, h0, c0, lengths),
        _scanned(layer, x, h0, c0, jnp.asarray(lengths)),
    )
    zero, other = lengths == 0, lengths > 0
    np.testing.assert_allclose(y, y_s, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(y[:, zero], 0)
    for got, want, initial in ((h_n, h_s, h0), (c_n, c_s, c0)):
        np.testing.assert_allclose(got[:, other], want[:, other], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(want[:, zero], initial[:, zero])
        assert np.min(np.abs(got[:, zero] - initial[:, zero]).max(axis=-1)) > 1e-3


# (lengths, bidirectional, bias): every pair of values of two of them at least once
LAYER_CASES = [
    (None, False, True),
    ("full", True, False),
    ("unsorted", True, True),
    ("unsorted", False, False),
    ("with-zero", False, False),
    ("with-zero", True, True),
]


@pytest.mark.parametrize("pattern, bidirectional, bias", LAYER_CASES)
def test_layer_equals_the_scan_path(cudnn, pattern, bidirectional, bias):
    """:func:`_cudnn.layer` on the emulated binding (results and every gradient, ``h0``
    and ``c0`` included) is the scan path's layer, lengths of 0 included."""
    layer, x, h0, c0 = _layer(bidirectional, bias)
    lengths = None if pattern is None else jnp.asarray(PATTERNS[pattern])
    cotangents = [jax.random.normal(jax.random.key(k), (L, N, len(layer) * H)) for k in (7,)]
    cotangents += [jax.random.normal(jax.random.key(k), h0.shape) for k in (8, 9)]

    def loss(run, *args):
        return sum(jnp.vdot(o, t) for o, t in zip(run(*args), cotangents, strict=True))

    def cudnn_layer(layer, x, h0, c0):
        return _cudnn.layer(layer, x, h0, c0, lengths, reference=_scan._scanned)

    def scan_layer(layer, x, h0, c0):
        return _scanned(layer, x, h0, c0, lengths)

    def results(run, *args):  # the layer's results, the loss and its gradients
        grads = jax.value_and_grad(lambda *a: loss(run, *a), argnums=(0, 1, 2, 3))(*args)
        return run(*args), grads

    args = (layer, x, h0, c0)
    got = jax.jit(partial(results, cudnn_layer))(*args)
    want = jax.jit(partial(results, scan_layer))(*args)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert cudnn["backward"] > 0


# A sample of the matrix (its kernel-structure test covers the same machinery): each
# mode's first order, forward over reverse, reverse over reverse, and vmap both ways.
SAMPLE = ("grad", "jvp", "jacfwd", "hvp-fwd-over-rev", "maml-grad-of-grad-step")
SAMPLE += ("vmap-of-grad", "grad-of-vmap")


@pytest.mark.parametrize(
    "name, lengths", [(n, lengths) for n, lengths in CASES if n in SAMPLE or lengths == "full"]
)
def test_transformations_float32(cudnn, name, lengths):
    """The transformation matrix of ``test_transform_matrix.py`` on ``impl="cudnn"``:
    jax's cuDNN primitives and the tangent primitive are in the program; first-order
    reverse mode runs cuDNN's backward pass, forward mode never."""
    lengths = LENGTHS[lengths]
    fn, got = _jaxlstm(name, lengths, jnp.float32, "cudnn")
    jaxpr = str(jax.make_jaxpr(fn)())
    assert "rnn_fwd" in jaxpr and "jaxlstm_cudnn_tangent" in jaxpr
    if name in FIRST_ORDER_REVERSE:
        assert cudnn["backward"] > 0
    elif name in FORWARD:
        assert cudnn["backward"] == 0
    _assert_matches(got, _reference(name, lengths), 1e-4)


def test_new_lengths_never_recompile(cudnn):
    params, x, _ = _setup(np.float32)
    traces = []

    @jax.jit
    def run(x, n):
        traces.append(None)
        return jax.grad(lambda x: jl.lstm(params, x, lengths=n, impl="cudnn")[0].sum())(x)

    for lengths in ((4, 2, 0), (1, 4, 3), (0, 0, 0)):
        run(x, jnp.asarray(lengths)).block_until_ready()
    assert len(traces) == 1
    assert cudnn == {"forward": 1, "backward": 1}  # lowered once


def test_impl_cudnn_without_a_gpu_says_why():
    params, x, _ = _setup(np.float32)
    assert "cudnn" in jl.lstm.__doc__
    with pytest.raises(
        ValueError, match="impl='cudnn' cannot run here: the cpu backend has no cuDNN"
    ):
        jl.lstm(params, x, impl="cudnn")


def test_impl_auto_does_not_take_cudnn_yet(cudnn):
    """Where cuDNN is at hand, ``"auto"`` (and ``"scan"``) keep the scan path until a
    GPU run has verified the cuDNN one; ``"cudnn"`` takes it."""
    params, x, _ = _setup(np.float32)
    for impl, taken in (("auto", False), ("scan", False), ("cudnn", True)):
        jaxpr = str(
            jax.make_jaxpr(jax.grad(lambda x, i=impl: jl.lstm(params, x, impl=i)[0].sum()))(x)
        )
        assert ("rnn_fwd" in jaxpr) == taken, impl


def _unusable(x, *, proj=False, matmul_dtype=None, checkpoint_every=None, operands=()):
    w_hr = jnp.zeros((2, H)) if proj else None
    return _cudnn.unusable(x, w_hr, matmul_dtype, checkpoint_every, operands)


def test_unusable_names_each_case_cudnn_cannot_run(cudnn, monkeypatch):
    x = jnp.zeros((L, N, H_IN), jnp.float32)
    assert _unusable(x) == ""
    assert _unusable(x, checkpoint_every=L) == ""
    assert _unusable(x, proj=True) == "a projection (proj_size > 0)"
    assert _unusable(x, matmul_dtype=jnp.dtype(jnp.bfloat16)).startswith("matmul_dtype bfloat16")
    assert _unusable(x, checkpoint_every=2) == "checkpoint_every shorter than the sequence"
    for dtype in (jnp.bfloat16, jnp.float16):
        assert _unusable(x.astype(dtype)).startswith(f"dtype {jnp.dtype(dtype)}")
    with jax.default_matmul_precision("bfloat16"):
        assert "bfloat16 products" in _unusable(x)
    for precision, tf32 in (("highest", False), ("tensorfloat32", True)):
        with jax.default_matmul_precision(precision):
            assert _cudnn._tf32() is tf32
    mesh = jax.make_mesh((1,), ("i",), axis_types=(jax.sharding.AxisType.Auto,))
    seen = []

    def inside(x):
        seen.append(_unusable(x, operands=x))
        return x

    jax.shard_map(inside, mesh=mesh, in_specs=jax.P("i"), out_specs=jax.P("i"))(x)
    assert seen == ["shard_map (values varying over mesh axes)"]
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    assert _unusable(x).startswith("several devices")


def test_impl_cudnn_raises_where_it_cannot_run(cudnn):
    """Under ``impl="cudnn"`` a layer cuDNN can't run is a ``ValueError`` naming why (as
    ``impl="cpu_kernel"``); the same call with ``"auto"`` takes the scan path."""
    x = jnp.ones((L, N, H_IN))
    proj = jl.init_params(jax.random.key(0), H_IN, H, proj_size=2)
    with pytest.raises(ValueError, match="impl='cudnn' cannot run this layer: a projection"):
        jl.lstm(proj, x, impl="cudnn")
    params = jl.init_params(jax.random.key(0), H_IN, H)
    with pytest.raises(ValueError, match="cannot run this layer: checkpoint_every shorter"):
        jl.lstm(params, x, impl="cudnn", checkpoint_every=2)
    with jax.enable_x64(True):
        params64 = jl.init_params(jax.random.key(0), H_IN, H, dtype=jnp.float64)
        with pytest.raises(ValueError, match="cannot run this layer: dtype float64"):
            jl.lstm(params64, x.astype(jnp.float64), impl="cudnn")
    jl.lstm(proj, x)
