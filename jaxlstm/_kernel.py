"""One layer in jaxlstm's fused CPU kernel (``csrc/``, XLA FFI custom calls).

On an x86-64 CPU with AVX-512, or with AVX2 and FMA, a float32 layer without projection
runs as one custom call, both directions at once, instead of a ``lax.scan``. Each step's gate matmul
``[x_t | h] @ [w_ih | w_hh]^T`` (the input projection included: no ``(L, N, 4H)`` array of
input gates is written and read back) keeps its results in registers and applies the
nonlinearities, the cell update and the length masks there, with the hidden units
shared out over the CPU's cores (the calling thread and XLA's intra-op pool). Its reverse
mode is the same scheme over the gate cotangents; the input and weight gradients are
single large matmuls in XLA. The output stays in time order ``(L, N, D, H)``; the
weights, the residuals and the gate cotangents are arrays of their own per direction
(the parameters as they are; residuals ``(L, N, ...)``: each direction's products take
whole arrays): no flips or stacks around the loop. The results are
:func:`jaxlstm._scan.scan_layer`'s to float32 rounding (the kernel's ``exp``/``tanh`` are
~1 ulp polynomials).

``matmul_dtype=bfloat16`` runs here too: with AVX512_BF16's dot products, its step
matmuls in AMX tiles where the CPU has them (Intel Sapphire Rapids and later) and Linux
grants them, and elsewhere with the operands widened to float32 for FMAs (AVX2). The
kernel is built twice, for AVX-512 (AVX512_BF16 and AMX for bfloat16) and for AVX2 with
FMA, and a call runs the best one this CPU has (:func:`available`; a bfloat16 layer on
an AVX-512 CPU without AVX512_BF16 takes the AVX2 build).

The kernel never breaks a call: where it cannot load, register or run (no C++ compiler at
install, a CPU without AVX2, an XLA whose FFI refuses the handlers), :func:`missing`
says why, found once per process and instruction set (loading, registering, then a
self-test: one small layer against a NumPy loop), :func:`available` answers ``""``, every
layer takes the ``lax.scan`` path, and the first call that could have used the kernel
warns once (:class:`KernelWarning`, with the cause and the fix).

Everything else takes the ``lax.scan`` path: float64 and other dtypes, ``proj_size > 0``,
``checkpoint_every`` shorter than the sequence, GPUs and TPUs, several devices, CPUs
without AVX2, an install without a C++ compiler, inside ``shard_map``. A call picks its
path with :func:`jaxlstm.lstm`'s ``impl`` (:func:`choose`); ``JAXLSTM_CPU_KERNEL`` in the
environment sets the default: ``0`` turns the kernel off, ``avx512`` keeps it off AMX,
``avx2`` on its AVX2 build; it is read at each call of :func:`jaxlstm.lstm` (a static
argument of its compiled function).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from functools import cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlstm._linear_pair import accelerated, varying

Array = jax.Array

_LOAD_ERROR = ""  # why a built extension failed to load
try:
    from jaxlstm import _cpu_kernel as _extension
except ModuleNotFoundError:  # not built: no C++ compiler at install, or not x86-64
    _extension = None
except Exception as error:  # built, but this Python or system refuses it
    _extension = None
    _LOAD_ERROR = f"{type(error).__name__}: {error}"


class KernelWarning(RuntimeWarning):
    """Said once per process, by the first call that could have used the fused CPU kernel,
    where the kernel cannot run: why, and what to do. ``JAXLSTM_CPU_KERNEL=0`` (the
    kernel turned off on purpose) silences it, as do Python's warning filters."""


_warned = False


# The kernels, best first: bfloat16 products in AMX tiles, then the two builds.
KERNELS = ("amx", "avx512", "avx2")


def available() -> str:
    """The best kernel this CPU runs and ``JAXLSTM_CPU_KERNEL`` allows: ``"amx"`` (the
    AVX-512 build, bfloat16 products in AMX tiles), ``"avx512"``, ``"avx2"``, or ``""``
    where there is none (on the CPU backend, the first such answer warns once why:
    :class:`KernelWarning`)."""
    choice = os.environ.get("JAXLSTM_CPU_KERNEL", "1")
    if choice == "0":
        return ""
    reason = missing()
    if reason:
        _warn_once(reason)
        return ""
    return _best(choice)


def _best(choice: str) -> str:
    """The best kernel this CPU runs at or below ``choice`` (``JAXLSTM_CPU_KERNEL``:
    one of :data:`KERNELS`, anything else for no limit)."""
    allowed = KERNELS[KERNELS.index(choice) :] if choice in KERNELS else KERNELS
    runs = [k for k in allowed if (_amx_granted() if k == "amx" else k in _isas())]
    return runs[0] if runs else _isas()[0]


def _warn_once(reason: str) -> None:
    global _warned
    if _warned or jax.default_backend() != "cpu":
        return
    _warned = True
    warnings.warn(
        f"jaxlstm's fused CPU kernel is off: {reason}. float32 layers take the lax.scan "
        "path: the same results, about half the kernel's speed on CPU "
        "(JAXLSTM_CPU_KERNEL=0 silences this; python -m jaxlstm shows the configuration)",
        KernelWarning,
        stacklevel=_user_level(),
    )


def _user_level() -> int:
    """The ``stacklevel`` for a warning from :func:`_warn_once` that points at the user's
    line: the first caller outside jaxlstm and JAX (``jl.lstm(...)``, or the call of a
    ``jax.jit``-compiled function that traces it)."""
    inside = tuple(os.path.dirname(path) + os.sep for path in (__file__, jax.__file__))
    frame, level = sys._getframe(2), 2  # _warn_once's caller is level 2
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def choose(impl: str) -> str:
    """The kernel a call with ``impl`` may run in, ``""`` for none.

    ``"auto"`` is :func:`available`; ``"scan"`` never the kernel; ``"cpu_kernel"`` the
    kernel even where ``JAXLSTM_CPU_KERNEL=0``, and a ``ValueError`` saying why where
    this machine or install has none.
    """
    if impl == "scan":
        return ""
    if impl == "auto":
        return available()
    reason = missing()
    if reason:
        raise ValueError(
            f"impl='cpu_kernel' cannot run here: {reason}; use impl='auto' or impl='scan'"
        )
    return _best(os.environ.get("JAXLSTM_CPU_KERNEL", "1"))


def missing() -> str:
    """Why this install or CPU has no kernel, or ``""`` when it has one."""
    if _extension is None:
        if _LOAD_ERROR:
            return (
                f"its extension failed to load ({_LOAD_ERROR}); reinstall jaxlstm "
                "(pip install --force-reinstall --no-cache-dir jaxlstm)"
            )
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return f"it is built for x86-64 CPUs only (this is {platform.machine()})"
        return (
            "this install has no CPU kernel: it was not built (no C++17 compiler at install "
            "time); install g++ or clang++ and reinstall jaxlstm to get it"
        )
    if not _isas():
        return "this CPU lacks AVX2 and FMA (and AVX-512), which the kernel needs"
    return next(filter(None, map(_broken, _isas())), "")


@cache
def _isas() -> tuple[str, ...]:
    """The instruction sets this CPU runs the kernel's builds with, best first."""
    return tuple(_extension.isas())


@cache
def _broken(isa: str) -> str:
    """Why the kernel's build for ``isa`` fails to register or to compute on this CPU, or
    ``""``: found once per process, in a thread of its own (outside any trace the caller
    is in)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(_self_test(isa)))
    worker.start()
    worker.join()
    return result[0]


def _self_test(isa: str) -> str:
    """Registers the kernel's handlers and runs one small bidirectional layer with lengths
    through its build for ``isa``, against a NumPy loop: ``""``, or what went wrong (and
    in which build) and what to do."""
    fix = (
        "reinstall jaxlstm against this jaxlib (pip install --force-reinstall --no-cache-dir "
        "jaxlstm), or report it with the output of python -m jaxlstm "
        f"(jaxlib {jax.lib.__version__})"
    )
    try:
        _register()
    except Exception as error:  # e.g. an XLA without these FFI types
        return f"registering its XLA FFI handlers failed ({type(error).__name__}: {error}); {fix}"
    rng = np.random.default_rng(0)
    seq_len, batch, size, hidden = 3, 2, 5, 20
    x = rng.standard_normal((seq_len, batch, size)).astype(np.float32)
    w_ih = tuple(0.3 * rng.standard_normal((2, 4 * hidden, size)).astype(np.float32))
    w_hh = tuple(0.3 * rng.standard_normal((2, 4 * hidden, hidden)).astype(np.float32))
    b = tuple(0.1 * rng.standard_normal((2, 4 * hidden)).astype(np.float32))
    zeros = np.zeros((2, batch, hidden), np.float32)
    lengths = np.array([seq_len, 2], np.int32)
    try:
        run = jax.jit(partial(_forward, mode="f32", isa=isa, save=False))
        y, h_n, c_n = jax.device_get(run(x, w_ih, b, w_hh, zeros, zeros, lengths))
    except Exception as error:  # e.g. "handler's API version (0.3) is incompatible ..."
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"its {isa} self-test failed to run ({type(error).__name__}: {first}); {fix}"
    want = _numpy_layer(x, w_ih, b, w_hh, lengths)
    got = (y, h_n, c_n)
    if not all(np.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want, strict=True)):
        return f"its {isa} self-test computed wrong numbers; {fix}"
    return ""


def _numpy_layer(x, w_ih, b, w_hh, lengths):
    """The layer :func:`_self_test` runs, as a float64 NumPy loop from a zero state:
    ``(y (L, N, D, H), h_n (D, N, H), c_n (D, N, H))``."""
    seq_len, batch, _ = x.shape
    hidden = w_hh[0].shape[1]
    y = np.zeros((seq_len, batch, len(w_hh), hidden))
    h_n, c_n = np.zeros((2, len(w_hh), batch, hidden))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    for d, steps in enumerate((range(seq_len), reversed(range(seq_len)))):
        h, c = np.zeros((batch, hidden)), np.zeros((batch, hidden))
        for t in steps:
            g = x[t] @ w_ih[d].T + h @ w_hh[d].T + b[d]  # (N, 4H): i, f, g, o
            i, f, o = (sigmoid(g[:, k * hidden : (k + 1) * hidden]) for k in (0, 1, 3))
            c_new = f * c + i * np.tanh(g[:, 2 * hidden : 3 * hidden])
            h_new = o * np.tanh(c_new)
            valid = (t < lengths)[:, None]
            h, c = np.where(valid, h_new, h), np.where(valid, c_new, c)
            y[t, :, d] = np.where(valid, h_new, 0)
        h_n[d], c_n[d] = h, c
    return y, h_n, c_n


def describe_builds() -> str:
    """The kernel's builds this CPU runs and how each multiplies bfloat16, in words (for
    ``python -m jaxlstm`` and the test report's header)."""
    if not _isas():
        return "no build runs on this CPU (it lacks AVX2 and FMA)"
    bf16 = {
        "avx512": "AMX tiles" if _amx_granted() else "AVX512_BF16 dot products",
        "avx2": "widened to float32 for FMAs",
    }
    if not _extension.supported_bf16():
        bf16["avx512"] = "in the avx2 build (no AVX512_BF16)"
    return "builds for this CPU: " + ", ".join(f"{i} (bfloat16: {bf16[i]})" for i in _isas())


@cache
def _amx_granted() -> bool:
    """Whether this CPU has AMX's bfloat16 tiles and Linux lets this process use them."""
    return _extension.supported_amx()


def unusable(
    x: Array,
    w_hr: Array | None,
    matmul_dtype: Any,
    checkpoint_every: int | None,
    operands: Any,
    kernel: str,
) -> str:
    """Why :func:`layer` cannot compute the layer of input ``x`` and projection ``w_hr`` in
    ``kernel`` (at trace time, :func:`available`'s answer), or ``""`` when it can;
    ``operands`` are all its arrays (a pytree), any of which may vary over
    ``shard_map``'s mesh axes."""
    reasons = {
        "a projection (proj_size > 0)": w_hr is not None,
        "empty or symbolic shapes": not all(isinstance(d, int) and d > 0 for d in x.shape),
        f"matmul_dtype {matmul_dtype} (the kernel's are float32 and bfloat16)": not (
            matmul_dtype is None or jnp.dtype(matmul_dtype) == jnp.bfloat16
        ),
        "checkpoint_every shorter than the sequence": not (
            checkpoint_every is None
            or not isinstance(x.shape[0], int)  # symbolic: said above, never compared
            or checkpoint_every >= x.shape[0]
        ),
        f"dtype {x.dtype} (it runs float32)": x.dtype != jnp.float32,
        f"the {jax.default_backend()} backend": jax.default_backend() != "cpu",
        "several devices": jax.device_count() != 1,
        "shard_map (values varying over mesh axes)": any(
            varying(a) for a in jax.tree.leaves(operands)
        ),
    }
    return ", ".join(reason for reason, applies in reasons.items() if applies)


def layer(
    x: Array,
    w_ih: tuple[Array, ...],
    b: tuple[Array, ...] | None,
    w_hh: tuple[Array, ...],
    h0: Array,
    c0: Array,
    lengths: Array | None,
    matmul_dtype: Any = None,
    kernel: str = "avx512",
    *,
    reference: Callable,
) -> tuple[Array, Array, Array]:
    """One layer, every direction, in the kernel; as :func:`jaxlstm._scan.scan_layer`.

    Args:
        x: ``(L, N, H_in)`` float32, zero past each length.
        w_ih: per direction ``(4H, H_in)`` (the kernel packs the parameters as they are).
        b: per direction ``(4H,)``, ``b_ih + b_hh``, or ``None``.
        w_hh: per direction ``(4H, H)``.
        h0, c0: ``(D, N, H)``.
        lengths: ``(N,)`` integer valid lengths, or ``None``.
        matmul_dtype: ``None`` (float32 matmuls) or bfloat16: every matmul (the kernel's
            steps, the input and weight gradients) takes bfloat16 operands with float32
            sums; the state, the gates and the results stay float32.
        kernel: :func:`available`'s answer (:data:`KERNELS`); ``"amx"`` runs bfloat16
            step matmuls in AMX tiles.
        reference: the same layer in plain JAX, ``reference(x, w_ih, b, w_hh, h0, c0,
            lengths (N,), matmul_dtype) -> (y (L, N, D*H), h_n, c_n)``: forward mode and
            the derivatives of the kernel's derivatives (second order) run it.

    Returns:
        ``(y (L, N, D*H), h_n (D, N, H), c_n (D, N, H))``.
    """
    seq_len, batch, _ = x.shape
    if lengths is None:
        lengths = jnp.full((batch,), seq_len, jnp.int32)
    mode = "f32" if matmul_dtype is None else ("amx" if kernel == "amx" else "bf16")
    spec = _Spec(mode, build(kernel, matmul_dtype), reference, matmul_dtype)
    y, h_n, c_n = _layer((x, w_ih, b, w_hh, h0, c0, lengths.astype(jnp.int32)), spec)
    return y.reshape(seq_len, batch, -1), h_n, c_n  # (L, N, D, H) -> (L, N, D*H)


def build(kernel: str, matmul_dtype: Any) -> str:
    """The kernel's build (``"avx512"`` or ``"avx2"``) that runs a layer in ``kernel``
    (:data:`KERNELS`) with ``matmul_dtype``: bfloat16 products in the AVX-512 build need
    AVX512_BF16, and take the AVX2 build where the CPU lacks it."""
    if kernel == "avx2" or (matmul_dtype is not None and not _extension.supported_bf16()):
        return "avx2"
    return "avx512"


class _Spec(NamedTuple):
    """What a kernel call computes, beyond its operands (static, hashable)."""

    mode: str  # "f32", "bf16" or "amx" (bfloat16 products in AMX tiles)
    isa: str  # the kernel's build: "avx512" or "avx2"
    reference: Callable  # the layer in plain JAX (see :func:`layer`)
    matmul_dtype: Any

    def plain(self, x, w_ih, b, w_hh, h0, c0, lengths):
        """:attr:`reference` in the kernel's layout: ``(y (L, N, D, H), h_n, c_n)``."""
        y, h_n, c_n = self.reference(x, w_ih, b, w_hh, h0, c0, lengths, self.matmul_dtype)
        return y.reshape(*x.shape[:2], len(w_hh), -1), h_n, c_n


@cache
def _register() -> None:
    for name, handler in _extension.handlers().items():
        jax.ffi.register_ffi_target(name, handler, platform="cpu")


def _operands(x, w_ih, w_hh, mode: str):
    """The forward matmul operands ``x`` and, per direction, ``w_ih`` and ``w_hh``, in
    the parameters' layouts (the kernel packs the weights from them): in float32
    (``mode`` ``"f32"``), or in bfloat16 with the input size padded to even (the kernel
    multiplies bfloat16 in pairs along it); for ``"amx"`` to a multiple of 32 (a tile's
    depth), and the batch to whole tiles of rows (:func:`_amx_rows`)."""
    if mode == "f32":
        return x, w_ih, w_hh
    _, batch, size = x.shape
    multiple = 32 if mode == "amx" else 2
    pad = -size % multiple
    rows = _amx_rows(batch) if mode == "amx" else batch
    bf16 = jnp.bfloat16
    x = jnp.pad(x, ((0, 0), (0, rows - batch), (0, pad))).astype(bf16)  # (L, rows, H_in + pad)
    w_ih = tuple(jnp.pad(w, ((0, 0), (0, pad))).astype(bf16) for w in w_ih)  # (4H, H_in + pad)
    return x, w_ih, tuple(w.astype(bf16) for w in w_hh)


def _amx_rows(batch: int) -> int:
    """The batch as the AMX products take it: up to 16 rows as they are, more padded to a
    multiple of 16 (the kernel's ``RowBlocks``)."""
    return batch if batch <= 16 else -(-batch // 16) * 16


def _forward(x, w_ih, b, w_hh, h0, c0, lengths, mode: str, isa: str, *, save: bool):
    """The kernel's forward loop (its build for ``isa``), input projection included.

    Returns:
        ``(y (L, N, D, H), h_n, c_n)``, then with ``save`` the residuals, each a tuple of
        one array per direction: ``acts`` (activated gates, ``(L, N, 4H)``), ``cs`` (cell
        carries) and ``hp`` (the hidden state each step started from, in the matmul dtype:
        only the weight gradient reads it), each ``(L, N, H)``.
    """
    _register()
    seq_len, batch, _ = x.shape
    dirs, (gates, hidden) = len(w_hh), w_hh[0].shape
    f32 = jnp.float32
    state = jax.ShapeDtypeStruct((dirs, batch, hidden), f32)
    x, w_ih, w_hh = _operands(x, w_ih, w_hh, mode)

    def residual(width, dtype):  # the kernel's two slots, empty past the directions
        rows = [(seq_len, batch) if save and d < dirs else (0, 0) for d in range(2)]
        return [jax.ShapeDtypeStruct((*r, width), dtype) for r in rows]

    out = jax.ffi.ffi_call(
        f"jaxlstm_{isa}_lstm_forward"
        + ("_save" if save else "")
        + ("" if mode == "f32" else "_bf16"),
        (
            jax.ShapeDtypeStruct((seq_len, batch, dirs, hidden), f32),
            state,
            state,
            *residual(gates, f32),
            *residual(hidden, f32),
            *residual(hidden, w_hh[0].dtype),  # the matmul dtype
        ),
        vmap_method="sequential",
    )(
        x,
        *_slots(w_ih),
        *_slots((jnp.zeros(gates, f32),) * dirs if b is None else b),
        *_slots(w_hh),
        h0,
        c0,
        lengths,
        amx=mode == "amx",
    )
    if not save:
        return tuple(out[:3])
    return (*out[:3], *(tuple(out[i : i + dirs]) for i in (3, 5, 7)))


def _run(operands, spec, save: bool):
    """The kernel's forward loop over ``operands = (x, w_ih, b, w_hh, h0, c0, lengths)``
    (:func:`_forward`): ``(y, h_n, c_n)``, with ``save`` and the residuals
    ``(acts, cs, hp)``."""
    out = _forward(*operands, spec.mode, spec.isa, save=save)
    return (tuple(out[:3]), tuple(out[3:])) if save else tuple(out)


# The layer in the kernel (operands as :func:`_run`'s, ``spec`` a :class:`_Spec`). Its
# derivative runs the forward loop that saves residuals, then the tangent as a primitive
# (``jaxlstm_lstm_tangent``) whose transpose is the kernel's backward loop: reverse mode
# is the kernel's, and forward mode, second order and ``vmap`` compose with it in plain
# JAX (:attr:`_Spec.plain`). The loops are looked up at each call, so that tests can run
# this structure on a CPU without the kernel.
_layer = accelerated(
    "jaxlstm_lstm_tangent",
    lambda operands, spec, save: _run(operands, spec, save),
    lambda residuals, cotangents, spec: _backward(residuals, cotangents, spec),
    lambda operands, spec: spec.plain(*operands),
    linear=6,
)


def _backward(residuals, cotangents, spec):
    """The kernel's reverse mode: the cotangents of ``(x, w_ih, b, w_hh, h0, c0)`` from
    those of ``(y (L, N, D, H), h_n, c_n)``."""
    (x, w_ih, b, w_hh, _, c0, lengths), (acts, cs, hp) = residuals
    d_y, d_hn, d_cn = cotangents  # (L, N, D, H), (D, N, H), (D, N, H)
    dirs = len(acts)
    seq_len, batch, gates = acts[0].shape
    state = jax.ShapeDtypeStruct(c0.shape, jnp.float32)
    bf16 = spec.mode != "f32"
    md = jnp.bfloat16 if bf16 else jnp.float32  # every matmul's operands, its sums float32
    w_in = tuple(w.astype(md) for w in w_ih)
    acts, cs = _slots(acts), _slots(cs)
    *d_gates, dh0, dc0 = jax.ffi.ffi_call(
        f"jaxlstm_{spec.isa}_lstm_backward" + ("_bf16" if bf16 else ""),
        (*(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in acts), state, state),
        vmap_method="sequential",
        input_output_aliases={1: 0, 2: 1},  # the gate cotangents overwrite the activations
    )(
        d_y,
        *acts,
        *cs,
        *_slots(tuple(w.astype(md) for w in w_hh)),
        c0,
        lengths,
        d_hn,
        d_cn,
        amx=spec.mode == "amx" and gates % 32 == 0,  # the products' depth: whole tiles
    )
    rows = seq_len * batch
    d_gates = [d.reshape(rows, gates) for d in d_gates[:dirs]]  # per direction (L*N, 4H)
    g = [d.astype(md) for d in d_gates]
    # sum over d of (L*N, 4H) @ (4H, H_in)
    d_x = sum(
        jnp.matmul(g_d, w, preferred_element_type=jnp.float32)
        for g_d, w in zip(g, w_in, strict=True)
    )
    d_x = d_x.reshape(seq_len, batch, -1)
    # per direction (L*N, H_in) and (L*N, 4H) -> (4H, H_in); (L*N, H) and (L*N, 4H) -> (4H, H)
    d_w_ih = tuple(_weight_gradients([x.reshape(rows, -1)], g))
    d_w_hh = tuple(_weight_gradients([h.reshape(rows, -1) for h in hp], g))
    d_b = None if b is None else tuple(d.sum(0) for d in d_gates)
    return d_x, d_w_ih, d_b, d_w_hh, dh0, dc0


def _slots(per_direction: tuple[Array, ...]) -> list[Array]:
    """An operand's or residual's arrays in the kernel's two direction slots (the second
    one empty for one direction)."""
    first = per_direction[0]
    return [*per_direction, jnp.zeros((0, *first.shape[1:]), first.dtype)][:2]


def _weight_gradients(a: list[Array], g: list[Array]) -> list[Array]:
    """``g[k]^T @ a[k]``, each ``(N, M)``, for ``a[k] (R, M)`` (a weight's operand, or one
    array: the same for every ``k``) and ``g[k] (R, N)`` (a direction's gate cotangents, in
    the matmul dtype), contracting the ``R = L*N`` rows, with float32 sums.

    XLA:CPU is slow at products that contract both operands' leading axis, in ways that
    depend on the dtype and the sizes (measured at typical, bidir2 and big sizes, on
    operands computed in the same program): in float32 with ``M >= 256`` the plain
    product ``g^T @ a`` is fastest (``M = 512``: 139 vs 173 ms at big, 29 vs 35-40 ms in
    bidir2's second layer); below, and in bfloat16, ``a`` transposed into a buffer of its
    own times ``g`` (a row-major matmul: ``M = 128`` 5.1 vs 6.2 ms; bfloat16 AMX dots 17
    vs 30 ms). The barriers stop XLA from folding the transposes (of ``a``, and of the
    result into the weight's layout) into the dot.
    """
    f32 = jnp.float32
    if g[0].dtype == f32 and a[0].shape[-1] >= 256:
        return [jnp.einsum("rn,rm->nm", g_k, a[k % len(a)]) for k, g_k in enumerate(g)]
    # (1, M, R) @ (1, R, N) as a 3-D product: XLA upcast a 2-D bfloat16 one whose operand
    # it had transposed to float32.
    a_t = [lax.optimization_barrier(a_j.T[None].astype(g[0].dtype)) for a_j in a]
    d_w_t = [
        jnp.einsum("kmr,krn->kmn", a_t[k % len(a_t)], g_k[None], preferred_element_type=f32)
        for k, g_k in enumerate(g)
    ]
    return [lax.optimization_barrier(d)[0].T for d in d_w_t]
