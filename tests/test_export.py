"""``jax.export``: jaxlstm's functions and objects as serialised, shape-polymorphic artifacts.

Each round trip exports here, with a symbolic batch ``b`` and sequence length ``t`` and
traced lengths, serialises to bytes, then deserialises and runs the artifact in a fresh
Python process (which imports jaxlstm, as a server would) at two concrete shapes, and
compares with direct calls made here: float32 to 1e-6, float64 to 1e-12. Covered: params
(``LayerParams``) and the facades as inputs, a ``PackedSequence`` in and out, the cell
(``CellParams``, ``LSTMCell``), gradients through ``vjp_order=1`` (also with
``checkpoint_every``, whose chunking must take a symbolic length), traced lengths left
unchecked unless asked (:func:`jaxlstm.checked_lengths`: a check is an effect that can't
be serialised), the CPU kernel kept out of symbolic shapes, and the registrations
surviving a second run and a jax without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import KERNEL_FORWARD
from jax.experimental import checkify

import jaxlstm as jl
from jaxlstm import _export, _kernel

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (5, 3)  # (L, N) an artifact runs at
SHAPES = [SHAPE, (2, 1)]  # ... and the float32 LSTM's, to show one artifact runs at any
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
# The fresh processes compile small programs and run them once: LLVM's optimisations
# cost more than they save there (as in tests/test_docs.py).
XLA_FLAGS = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
)

# The fresh process: jax (with 64-bit types for float64 artifacts), jaxlstm imported (its
# registrations), this module's models, the artifacts of `folder` as `exported[name]`.
# A test's lines then append arrays to `results`, which come back in order.
_PRELUDE = """
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", {x64})
import numpy as np

import jaxlstm as jl

folder = Path(sys.argv[1])
sys.path.insert(0, {tests!r})
from test_export import inputs_at, make_cell, make_lstm, make_params, packed_at

exported = {{
    path.stem: jax.export.deserialize(bytearray(path.read_bytes()))
    for path in folder.glob("*.bin")
}}
results = []
"""


def make_params(dtype):
    """One layer (it compiles fastest), bidirectional, with a projection to size 2."""
    return jl.init_params(jax.random.key(0), 3, 4, bidirectional=True, proj_size=2, dtype=dtype)


def make_lstm():
    return jl.LSTM(3, 4, batch_first=True, bidirectional=True, key=jax.random.key(1))


def make_cell():
    return jl.LSTMCell(3, 4, key=jax.random.key(2))


def inputs_at(seq_len: int, batch: int, dtype=np.float32):
    """``x (L, N, 3)``, ``h_0 (2, N, 2)``, ``c_0 (2, N, 4)``, lengths ``(N,)`` (a 0 among
    them when ``N > 1``), the same in every process."""
    rng = np.random.default_rng(10 * seq_len + batch)
    shapes = [(seq_len, batch, 3), (2, batch, 2), (2, batch, 4)]
    x, h0, c0 = (rng.standard_normal(shape).astype(dtype) for shape in shapes)
    return x, h0, c0, np.array([seq_len, 0, 1][:batch], np.int32)


def packed_at(seq_len: int, batch: int):
    """:func:`inputs_at`'s ``x`` and lengths, sorted and packed with ``enforce_sorted``."""
    x, _, _, lengths = inputs_at(seq_len, batch)
    order = np.argsort(-lengths, kind="stable")
    return jl.PackedSequence(x[:, order], lengths[order], enforce_sorted=True)


def fresh_python(script: str, *args: str) -> None:
    """Runs ``script`` with ``args`` in a fresh Python process, which must succeed."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=XLA_FLAGS),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def serve(
    folder: Path, artifacts: dict[str, bytes], lines: str, *, x64: bool = False
) -> list[np.ndarray]:
    """Runs ``lines`` after :data:`_PRELUDE` in a fresh Python process; its ``results``."""
    for name, blob in artifacts.items():
        (folder / f"{name}.bin").write_bytes(blob)
    script = (
        _PRELUDE.format(x64=x64, tests=str(Path(__file__).parent))
        + textwrap.dedent(lines)
        + '\nnp.savez(folder / "results.npz", *[np.asarray(r) for r in results])\n'
    )
    fresh_python(script, str(folder))
    with np.load(folder / "results.npz") as results:
        return [results[f"arr_{i}"] for i in range(len(results.files))]


def assert_close(got: list[np.ndarray], want, dtype=np.float32) -> None:
    """``got`` equals the leaves of ``want``, in dtype and shape, to ``TOL[dtype]``."""
    want = [np.asarray(w) for w in jax.tree.leaves(want)]
    assert len(got) == len(want)
    tol = TOL[np.dtype(dtype)]
    for g, w in zip(got, want, strict=True):
        assert (g.dtype, g.shape) == (w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def specs(*shapes: str, dtype=np.float32) -> list[jax.ShapeDtypeStruct]:
    """``ShapeDtypeStruct`` per shape (``"t, b, 3"``; ``int32:b`` for lengths), all in one
    symbolic scope of ``t`` and ``b``."""
    scope = jax.export.SymbolicScope()
    out = []
    for shape in shapes:
        kind, _, dims = shape.rpartition(":")
        out.append(
            jax.ShapeDtypeStruct(
                jax.export.symbolic_shape(dims, scope=scope), np.dtype(kind or dtype)
            )
        )
    return out


def run_lstm(params, x, h0, c0, lengths):
    return jl.lstm(params, x, (h0, c0), lengths=lengths)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_lstm_round_trip(tmp_path, dtype):
    """``jl.lstm`` with its params (``LayerParams``) as input, hx and traced lengths."""
    shapes = SHAPES if dtype == np.float32 else [SHAPE]
    with jax.enable_x64(dtype == np.float64):
        params = make_params(dtype)
        args = specs("t, b, 3", "2, b, 2", "2, b, 4", "int32:b", dtype=dtype)
        exported = jax.export.export(jax.jit(run_lstm))(params, *args)
        assert not exported.ordered_effects and not exported.unordered_effects
        got = serve(
            tmp_path,
            {"lstm": exported.serialize()},
            f"""
            for shape in {shapes}:
                out, (h_n, c_n) = exported["lstm"].call(
                    make_params(np.{np.dtype(dtype).name}),
                    *inputs_at(*shape, np.{np.dtype(dtype).name}),
                )
                results += [out, h_n, c_n]
            """,
            x64=dtype == np.float64,
        )
        want = [run_lstm(params, *inputs_at(*shape, dtype)) for shape in shapes]
        assert_close(got, want, dtype)


def test_facades_round_trip(tmp_path):
    """An ``LSTM`` (its options static) and an ``LSTMCell`` as inputs of artifacts, and
    ``lstm_cell`` on ``CellParams``."""
    x, n, xc = specs("b, t, 3", "int32:b", "b, 3")
    artifacts = {
        "lstm": jax.export.export(jax.jit(lambda m, x, n: m(x, lengths=n)))(make_lstm(), x, n),
        "cell": jax.export.export(jax.jit(lambda m, x: m(x)))(make_cell(), xc),
        "cell_fn": jax.export.export(jax.jit(jl.lstm_cell))(make_cell().params, xc),
    }
    got = serve(
        tmp_path,
        {name: e.serialize() for name, e in artifacts.items()},
        f"""
        x, _, _, n = inputs_at{SHAPE}
        x = x.swapaxes(0, 1)  # batch first
        results += jax.tree.leaves(exported["lstm"].call(make_lstm(), x, n))
        results += exported["cell"].call(make_cell(), x[:, 0])
        results += exported["cell_fn"].call(make_cell().params, x[:, 0])
        """,
    )
    x, _, _, n = inputs_at(*SHAPE)
    x = x.swapaxes(0, 1)
    assert_close(got, [make_lstm()(x, lengths=n), make_cell()(x[:, 0]), make_cell()(x[:, 0])])


@pytest.mark.parametrize(
    "make",
    [
        lambda: jl.LSTM(
            3, 4, 2, False, True, 0.5, True, 2, key=jax.random.key(0), matmul_dtype=jnp.bfloat16
        ),
        lambda: jl.LSTMCell(3, 4, bias=False, key=jax.random.key(0)),
    ],
    ids=["LSTM", "LSTMCell"],
)
def test_facade_options_round_trip(make):
    """A facade returned by an artifact comes back with every option, as it went in."""
    module = make()
    exported = jax.export.export(jax.jit(lambda m: m))(module)
    exported = jax.export.deserialize(exported.serialize())
    back = jax.tree.unflatten(exported.out_tree, jax.tree.leaves(module))
    assert type(back) is type(module) and repr(back) == repr(module)
    for option in module.tree_flatten()[1]._fields:
        want, got = getattr(module, option), getattr(back, option)
        assert (type(got), got) == (type(want), want), option


def test_packed_sequence_round_trip(tmp_path):
    """A ``PackedSequence`` in and out: the output comes back a ``PackedSequence`` with
    its static ``enforce_sorted``."""
    x, n = specs("t, b, 3", "int32:b")
    packed = jl.PackedSequence(x, n, enforce_sorted=True)
    exported = jax.export.export(jax.jit(jl.lstm))(make_params(np.float32), packed)
    got = serve(
        tmp_path,
        {"packed": exported.serialize()},
        f"""
        out, (h_n, c_n) = exported["packed"].call(make_params(np.float32), packed_at{SHAPE})
        assert isinstance(out, jl.PackedSequence) and out.enforce_sorted, out
        results += [out.padded, out.lengths, h_n, c_n]
        """,
    )
    out, state = jl.lstm(make_params(np.float32), packed_at(*SHAPE))
    assert_close(got, [out.padded, out.lengths, state])


def loss(params, x, h0, c0, lengths, checkpoint_every):
    out, (h_n, c_n) = jl.lstm(
        params, x, (h0, c0), lengths=lengths, checkpoint_every=checkpoint_every
    )
    return (out**2).sum() + (h_n * c_n[..., :2]).sum()


@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_vjp_order_1(tmp_path, checkpoint_every):
    """Gradients through a deserialised artifact (``serialize(vjp_order=1)``) equal
    ``jax.grad`` of the direct call; with ``checkpoint_every`` a symbolic ``t`` is cut
    into chunks too."""

    def run(params, x, h0, c0, lengths):
        return jl.lstm(params, x, (h0, c0), lengths=lengths, checkpoint_every=checkpoint_every)

    args = specs("t, b, 3", "2, b, 2", "2, b, 4", "int32:b")
    exported = jax.export.export(jax.jit(run))(make_params(np.float32), *args)
    got = serve(
        tmp_path,
        {"grad": exported.serialize(vjp_order=1)},
        f"""
        def loss(params, x, h0, c0, lengths):
            out, (h_n, c_n) = exported["grad"].call(params, x, h0, c0, lengths)
            return (out**2).sum() + (h_n * c_n[..., :2]).sum()


        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        value, grads = grad(make_params(np.float32), *inputs_at{SHAPE})
        results += [value, *jax.tree.leaves(grads)]
        """,
    )
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=5)
    assert_close(got, grad(make_params(np.float32), *inputs_at(*SHAPE), checkpoint_every))


def test_checked_lengths_are_opt_in():
    """Traced lengths carry no check by default (an artifact can't hold one); inside
    ``checked_lengths()`` they do (an effect), for ``checkify`` to report."""
    params = make_params(np.float32)
    x, n = specs("t, b, 3", "int32:b")
    run = jax.jit(lambda p, x, n: jl.lstm(p, x, lengths=n)[0])
    jax.export.export(run)(params, x, n).serialize()
    with jl.checked_lengths():
        exported = jax.export.export(run)(params, x, n)
        assert exported.unordered_effects or exported.ordered_effects
        err, _ = checkify.checkify(run)(params, np.ones((4, 2, 3), np.float32), np.array([9, 2]))
        assert err.get().startswith("lengths must lie in [0, 4]")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        jl.checked_lengths(1)


def test_cpu_kernel_not_chosen_for_symbolic_shapes(monkeypatch):
    """The fused CPU kernel (a custom call that can't travel in an artifact) is never
    chosen for a symbolic shape: the exported program is the portable scan, wherever it
    is exported from. (Its tests must not compare a symbolic dimension.)"""
    t, b = jax.export.symbolic_shape("t, b")
    x = jax.ShapeDtypeStruct((t, b, 7), jnp.float32)
    assert _kernel.unusable(x, None, None, None, x, "avx512") == "empty or symbolic shapes"
    assert _kernel.unusable(x, None, None, 2, x, "avx2") == "empty or symbolic shapes"
    monkeypatch.setattr(_kernel, "available", lambda: "avx512")  # as on an AVX-512 CPU
    exported = jax.export.export(jax.jit(jl.lstm))(make_params(np.float32), *specs("t, b, 3"))
    assert not KERNEL_FORWARD.search(exported.mlir_module())  # the kernel's FFI targets


@pytest.mark.skipif(_kernel._extension is None, reason="jaxlstm built without its CPU kernel")
def test_cpu_kernel_cannot_travel(monkeypatch):
    """docs/export.md: with concrete shapes on an AVX-512 CPU, the kernel's custom call
    is refused by ``jax.export`` (lowering only: no AVX-512 needed here), and
    ``impl="scan"`` exports the portable program."""
    monkeypatch.setattr(_kernel, "available", lambda: "avx512")  # as on an AVX-512 CPU
    x = jax.ShapeDtypeStruct((5, 2, 3), jnp.float32)
    params = jl.init_params(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match=KERNEL_FORWARD.pattern):
        jax.export.export(jax.jit(jl.lstm))(params, x)
    exported = jax.export.export(jax.jit(partial(jl.lstm, impl="scan")))(params, x)
    assert not KERNEL_FORWARD.search(exported.mlir_module())


def test_registration_is_idempotent_and_guarded(tmp_path):
    """A second registration is no error, and a jax without ``jax.export`` or
    ``jax.make_user_context`` still imports jaxlstm (checked lengths then read at
    trace time)."""
    _export.register()
    script = """
import jax
import numpy as np
from jax.experimental import checkify

del jax.export, jax.make_user_context  # as an older jax
import jaxlstm as jl

params = jl.init_params(jax.random.key(0), 3, 4)
run = jax.jit(lambda x, n: jl.lstm(params, x, lengths=n)[0])
x, bad = np.ones((4, 2, 3), np.float32), np.array([9, 2])
with jl.checked_lengths():
    assert checkify.checkify(run)(x, bad)[0].get().startswith("lengths must lie in [0, 4]")
"""
    fresh_python(script)
