"""The fused CPU recurrence: jaxlstm's XLA FFI kernel (``_cpu_kernel.cc``) and when to use it.

On an x86-64 CPU with AVX-512, the recurrence of a float32 layer without projection runs
as one custom call per direction set instead of a ``lax.scan``: each step's recurrent
matmul keeps its gate pre-activations in registers, applies the nonlinearities, the cell
update and the length masks there, and splits the hidden units over the CPU's cores with
one barrier per step. Its backward pass is the same scheme over the gate cotangents. The
results are those of :func:`jaxlstm._scan._forward` / ``_recurrence_bwd`` to float32
rounding (its ``exp``/``tanh`` are ~1 ulp polynomials).

Everything else (float64 and other dtypes, ``proj_size > 0``, ``matmul_dtype``, GPUs and
TPUs, several devices, CPUs without AVX-512, an install without a C++ compiler) takes the
pure-XLA path. ``JAXLSTM_CPU_KERNEL=0`` in the environment turns the kernel off, read at
each call of :func:`jaxlstm.lstm` (a static argument of its compiled function).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

Array = jax.Array

try:
    from jaxlstm import _cpu_kernel as _extension
except ImportError:  # built without a C++ compiler, or not x86-64
    _extension = None

_registered = False


def available() -> bool:
    """Whether the kernel is built, this CPU can run it and ``JAXLSTM_CPU_KERNEL`` allows it."""
    if _extension is None or not _extension.supported():
        return False
    return os.environ.get("JAXLSTM_CPU_KERNEL", "1") != "0"


def usable(xg: Array, w_hr_t: Array | None, matmul_dtype) -> bool:
    """Whether the kernel computes the recurrence with input gates ``xg (L, D, N, 4H)``.

    Called at trace time, after :func:`available` allowed the kernel for the call.
    """
    return (
        w_hr_t is None
        and matmul_dtype is None
        and xg.dtype == jnp.float32
        and min(xg.shape) > 0
        and jax.default_backend() == "cpu"
        and jax.device_count() == 1
    )


def _register() -> None:
    global _registered
    if not _registered:
        for name, handler in _extension.handlers().items():
            jax.ffi.register_ffi_target(name, handler, platform="cpu")
        _registered = True


def _all_valid(valid: Array | None, shape: tuple[int, ...]) -> Array:
    return jnp.ones(shape, bool) if valid is None else valid


def forward(xg, b, w_hh_t, h0, c0, valid, *, save: bool):
    """The forward loop of :func:`jaxlstm._scan._forward` in the kernel.

    Args:
        xg: ``(L, D, N, 4H)`` float32 input gates in scan order, without bias.
        b: ``(D, 4H)`` or ``None``.
        w_hh_t: ``(D, H, 4H)``.
        h0, c0: ``(D, N, H)``.
        valid: ``(L, D, N)`` bool in scan order, or ``None``.
        save: also return the activated gates ``(L, D, N, 4H)`` and cell carries
            ``(L, D, N, H)``.

    Returns:
        ``(ys (L, D, N, H), h_n, c_n)``, or with ``save`` ``(ys, acts, cs, h_n, c_n)`` (the
        order of :func:`jaxlstm._scan._forward`).
    """
    _register()
    steps, dirs, batch, gates = xg.shape
    hidden = gates // 4
    f32 = jnp.float32
    state = jax.ShapeDtypeStruct((dirs, batch, hidden), f32)
    saved = (steps, dirs, batch) if save else (0, 0, 0)
    out = jax.ffi.ffi_call(
        "jaxlstm_lstm_forward_save" if save else "jaxlstm_lstm_forward",
        (
            jax.ShapeDtypeStruct((steps, dirs, batch, hidden), f32),
            state,
            state,
            jax.ShapeDtypeStruct((*saved, gates), f32),
            jax.ShapeDtypeStruct((*saved, hidden), f32),
        ),
        vmap_method="sequential",
    )(
        xg,
        jnp.zeros((dirs, gates), f32) if b is None else b,
        w_hh_t,
        h0,
        c0,
        _all_valid(valid, (steps, dirs, batch)),
    )
    ys, h_n, c_n, acts, cs = out
    return (ys, acts, cs, h_n, c_n) if save else (ys, h_n, c_n)


def backward(d_ys, acts, cs, w_hh_t, c0, valid, d_hn, d_cn):
    """The backward loop of :func:`jaxlstm._scan._recurrence_bwd` in the kernel.

    Args:
        d_ys: ``(L, D, N, H)`` cotangents of the outputs, scan order.
        acts, cs: the residuals ``(L, D, N, 4H)``, ``(L, D, N, H)`` of :func:`forward`.
        w_hh_t: ``(D, H, 4H)``.
        c0: ``(D, N, H)``.
        valid: ``(L, D, N)`` bool in scan order, or ``None``.
        d_hn, d_cn: ``(D, N, H)`` cotangents of the final states.

    Returns:
        ``(dgates (L, D, N, 4H), dh0 (D, N, H), dc0 (D, N, H))``.
    """
    _register()
    state = jax.ShapeDtypeStruct(c0.shape, jnp.float32)
    return tuple(
        jax.ffi.ffi_call(
            "jaxlstm_lstm_backward",
            (jax.ShapeDtypeStruct(acts.shape, jnp.float32), state, state),
            vmap_method="sequential",
        )(d_ys, acts, cs, w_hh_t, c0, _all_valid(valid, acts.shape[:3]), d_hn, d_cn)
    )
