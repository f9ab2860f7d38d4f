"""``lstm()``: ``torch.nn.LSTM``'s forward as a pure function.

This module owns the input forms (batched, ``batch_first``, unbatched, packed), their
validation, the stacking of layers, and inter-layer dropout. One layer over a sequence
is :func:`jaxlstm._scan.scan_layer`; one step is :mod:`jaxlstm._cell`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxlstm import _cudnn, _kernel
from jaxlstm._checks import (
    check_bool,
    check_dropout,
    check_floating,
    check_impl,
    check_int,
    check_key,
    check_lengths,
    check_matmul_dtype,
    check_static,
)
from jaxlstm._packed import PackedSequence, as_packed
from jaxlstm._params import Config, Params, as_arrays, config_of
from jaxlstm._scan import scan_layer

Array = jax.Array
State = tuple[Array, Array]


def lstm(
    params: Params,
    input: Array | PackedSequence,
    hx: State | None = None,
    *,
    lengths: Array | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: Array | None = None,
    matmul_dtype: Any = None,
    checkpoint_every: int | None = None,
    impl: str = "auto",
) -> tuple[Array | PackedSequence, State]:
    """Runs a (multi-layer, optionally bidirectional) LSTM over a batch of sequences.

    The same computation as ``torch.nn.LSTM``, number for number. Shape letters: ``L``
    sequence length, ``N`` batch, ``H_in`` input size, ``H`` hidden size, ``P``
    projection size, ``H_out = P or H``, ``D = 2`` if bidirectional else ``1``.

    Args:
        params: ``params[layer][direction]`` of :class:`~jaxlstm.LayerParams`, e.g. from
            :func:`~jaxlstm.init_params` or :func:`~jaxlstm.params_from_torch`; the
            configuration is read from it.
        input: ``(L, N, H_in)``; ``(N, L, H_in)`` with ``batch_first``; ``(L, H_in)``
            for one unbatched sequence; or a :class:`~jaxlstm.PackedSequence` (PyTorch's
            is converted). Torch tensors are accepted wherever an array is.
        hx: optional ``(h_0, c_0)``, shapes ``(D*num_layers, N, H_out)`` and
            ``(D*num_layers, N, H)`` (no ``N`` axis when unbatched), slot
            ``layer*D + direction``; zeros when omitted. ``batch_first`` never applies.
        lengths: optional ``(N,)`` integers (a scalar when unbatched), each sequence's
            valid steps, in any order. Traced: new values never recompile. Results are
            PyTorch's packed results: zeros past each length, the reverse direction over
            each valid part, ``h_n``/``c_n`` at each sequence's own last valid step.
            A length of 0 gives zero outputs and ``h_n, c_n = h_0, c_0``. Under ``jit``
            (where values can't be checked) a length above ``L`` acts as ``L`` and a
            negative one as 0. Not allowed with a ``PackedSequence``, which has its own.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: probability of zeroing each output of every layer but the last; applied
            only when ``key`` is given.
        key: a ``jax.random`` key for dropout; ``None`` is inference (deterministic).
        matmul_dtype: opt-in reduced-precision mode, e.g. ``jnp.bfloat16``: the operands
            of every matmul (forward and backward) are cast to it, while accumulation,
            the cell state, the gates and the results stay in the result dtype. ``None``
            (default) computes everything in the result dtype, PyTorch's numbers.
        checkpoint_every: bounded-memory gradients: keep the state only every ``k``
            steps and recompute each chunk of ``k`` steps during the backward pass
            (results equal; the gradient's temporary memory shrinks roughly by ``L/k``
            at the cost of one more forward pass). ``None`` (default) keeps everything.
        impl: how layers run (static): ``"auto"`` (default) in jaxlstm's fused CPU
            kernel where it applies (float32 layers without projection on an x86-64 CPU
            with AVX2 or AVX-512, one device; ``JAXLSTM_CPU_KERNEL=0`` in the environment turns
            this default off), else as ``lax.scan``; ``"scan"`` always as ``lax.scan``
            (e.g. for :func:`jax.export`: the kernel's custom call cannot travel);
            ``"cpu_kernel"`` in the kernel, or a ``ValueError`` that says why it can't;
            ``"cudnn"`` (opt-in, awaiting its first GPU verification: ``"auto"`` does not
            take it yet) in cuDNN on an NVIDIA GPU (float32 layers without projection,
            one device), or a ``ValueError`` that says why it can't. Every choice gives
            the same numbers (to float32 rounding) and supports every transformation.

    Returns:
        ``(output, (h_n, c_n))``: ``output`` in the form of ``input`` with feature size
        ``D*H_out`` (zero past each length); ``h_n (D*num_layers, N, H_out)``,
        ``c_n (D*num_layers, N, H)`` (no ``N`` axis when unbatched). The dtype is the
        common floating dtype of ``params``, ``input`` and ``hx``.

    Example:
        >>> params = init_params(jax.random.key(0), 5, 3, num_layers=2)
        >>> out, (h_n, c_n) = lstm(params, jnp.ones((10, 4, 5)), lengths=jnp.array([10, 3, 0, 7]))
        >>> out.shape, h_n.shape
        ((10, 4, 3), (2, 4, 3))
    """
    params = as_arrays(params)  # array-likes, e.g. nnx.Param or torch tensors
    input = as_packed(input)  # PyTorch's own PackedSequence, converted
    cfg = config_of(params)
    check_static("batch_first", batch_first)
    check_bool("batch_first", batch_first)
    check_impl(impl)
    check_key(key)
    if checkpoint_every is not None:
        check_static("checkpoint_every", checkpoint_every)
        check_int("checkpoint_every", checkpoint_every, minimum=1)
    dropout = check_dropout(dropout, cfg.num_layers)
    x, lengths, unbatched = _time_major(input, lengths, batch_first, cfg)
    h0, c0 = _initial_state(hx, cfg, x, unbatched)
    dtype = jnp.result_type(x, h0, c0, *jax.tree_util.tree_leaves(params))
    x, (h_n, c_n) = _layers(
        params,
        x,
        h0,
        c0,
        lengths,
        key,
        dropout=dropout if key is not None else 0.0,
        matmul_dtype=check_matmul_dtype(matmul_dtype, dtype),
        checkpoint_every=checkpoint_every,
        cpu_kernel="" if impl == "cudnn" else _kernel.choose(impl),
        strict=impl in ("cpu_kernel", "cudnn"),
        cudnn=_cudnn.choose(impl),
    )
    if isinstance(input, PackedSequence):
        return PackedSequence(x, input.lengths, enforce_sorted=input.enforce_sorted), (h_n, c_n)
    if unbatched:
        return x[:, 0], (h_n[:, 0], c_n[:, 0])  # (L, D*H_out), (D*num_layers, H_out / H)
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (L, N, D*H_out) -> (N, L, D*H_out)
    return x, (h_n, c_n)


@partial(
    jax.jit,
    static_argnames=(
        "dropout",
        "matmul_dtype",
        "checkpoint_every",
        "cpu_kernel",
        "strict",
        "cudnn",
    ),
)
def _layers(
    params,
    x,
    h0,
    c0,
    lengths,
    key,
    *,
    dropout,
    matmul_dtype,
    checkpoint_every,
    cpu_kernel,
    strict,
    cudnn,
):
    """The layers over checked, time-major arrays (jitted: eager calls compile once).

    Args:
        params: ``params[layer][direction]``.
        x: ``(L, N, H_in)``.
        h0, c0: ``(D*num_layers, N, H_out)``, ``(D*num_layers, N, H)``.
        lengths: ``(N,)`` or ``None``.
        key: dropout key or ``None``.
        dropout, matmul_dtype, checkpoint_every: as :func:`lstm` (static).
        cpu_kernel: which of jaxlstm's fused CPU kernels layers may run in, ``""`` for
            none (static; see :func:`jaxlstm._kernel.choose`).
        strict: a layer the kernel (or cuDNN) cannot run is a ``ValueError``
            (``impl="cpu_kernel"`` or ``"cudnn"``).
        cudnn: layers run in cuDNN where they can (static; see
            :func:`jaxlstm._cudnn.choose`).

    Returns:
        ``(y (L, N, D*H_out), (h_n, c_n))`` in the common floating dtype.
    """
    dtype = jnp.result_type(x, h0, c0, *jax.tree_util.tree_leaves(params))
    x, h0, c0 = x.astype(dtype), h0.astype(dtype), c0.astype(dtype)
    if lengths is not None:
        valid = jnp.arange(x.shape[0])[:, None] < lengths[None, :]  # (L, N)
        x = jnp.where(valid[..., None], x, 0)  # padding is never read, nor differentiated
    num_dirs = len(params[0])
    h_n, c_n = [], []
    for k, layer in enumerate(params):
        layer = jax.tree_util.tree_map(lambda a: a.astype(dtype), layer)
        slots = slice(k * num_dirs, (k + 1) * num_dirs)
        x, h, c = scan_layer(
            layer,
            x,
            h0[slots],
            c0[slots],
            lengths,
            matmul_dtype,
            checkpoint_every,
            cpu_kernel,
            strict,
            cudnn=cudnn,
        )
        h_n.append(h)
        c_n.append(c)
        if k < len(params) - 1 and dropout > 0:
            x = _dropout(x, dropout, jax.random.fold_in(key, k))
    return x, (jnp.concatenate(h_n), jnp.concatenate(c_n))  # (D*num_layers, N, H_out / H)


def _time_major(
    input: Any, lengths: Any, batch_first: bool, cfg: Config
) -> tuple[Array, Array | None, bool]:
    """Checks ``input`` and ``lengths``; returns ``x (L, N, H_in)``, ``(N,)`` lengths."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError(
                "lengths must not be given with a PackedSequence input, which carries its own"
            )
        x, lengths, unbatched = check_floating("input", input.padded), input.lengths, False
        if lengths is None:
            raise TypeError("PackedSequence.lengths must be an integer array, got None")
        if x.ndim != 3:
            raise ValueError(
                f"LSTM: Expected a PackedSequence of (L, N, H_in) padded data, got {x.ndim}D"
            )
    else:
        x = check_floating("input", input)
        if x.ndim not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.ndim}D instead")
        if x.shape[0 if x.ndim == 2 or not batch_first else 1] == 0:
            raise ValueError("Expected sequence length to be larger than 0 in RNN")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None]  # (L, H_in) -> (L, 1, H_in)
        elif batch_first:
            x = jnp.swapaxes(x, 0, 1)  # (N, L, H_in) -> (L, N, H_in)
    if x.shape[-1] != cfg.input_size:
        raise ValueError(
            "input.size(-1) must be equal to input_size. "
            f"Expected {cfg.input_size}, got {x.shape[-1]}"
        )
    if lengths is not None:
        batch = None if unbatched else x.shape[1]
        lengths = check_lengths(lengths, batch=batch, max_len=x.shape[0]).reshape(x.shape[1])
    return x, lengths, unbatched


def _initial_state(hx: Any, cfg: Config, x: Array, unbatched: bool) -> tuple[Array, Array]:
    """``(h_0 (D*num_layers, N, H_out), c_0 (D*num_layers, N, H))``, zeros if ``hx`` is None."""
    slots, batch = cfg.num_directions * cfg.num_layers, x.shape[1]
    if hx is None:
        # Zeros laid out like the input's batch (a sharded batch gives a sharded state).
        zero = jnp.zeros_like(x[0, :, :1])  # (N, 1)
        return (
            jnp.broadcast_to(zero[None], (slots, batch, cfg.output_size)),
            jnp.broadcast_to(zero[None], (slots, batch, cfg.hidden_size)),
        )
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
    h0, c0 = check_floating("hx[0]", hx[0]), check_floating("hx[1]", hx[1])
    want_ndim = 2 if unbatched else 3
    if h0.ndim != want_ndim or c0.ndim != want_ndim:
        kind = "unbatched 2-D" if unbatched else "batched 3-D"
        raise ValueError(
            f"For {kind} input, hx and cx should also be {want_ndim}-D but got "
            f"({h0.ndim}-D, {c0.ndim}-D) tensors"
        )
    lead = (slots,) if unbatched else (slots, batch)
    for i, (state, size) in enumerate(((h0, cfg.output_size), (c0, cfg.hidden_size))):
        if state.shape != (*lead, size):
            raise ValueError(f"Expected hidden[{i}] size {(*lead, size)}, got {list(state.shape)}")
    if unbatched:
        return h0[:, None], c0[:, None]  # (D*num_layers, H) -> (D*num_layers, 1, H)
    return h0, c0


def _dropout(x: Array, rate: float, key: Array) -> Array:
    """Inverted dropout: zeros with probability ``rate``, the rest scaled by ``1/(1-rate)``."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0)
