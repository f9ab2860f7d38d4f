"""One LSTM step: the equations, once.

With ``x`` the input, ``h``/``c`` the previous hidden and cell states and ``*`` the
elementwise product (PyTorch's ``torch.nn.LSTM`` and ``torch.nn.LSTMCell``)::

    i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g  = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')
    h' = W_hr h'            (only with a projection, proj_size > 0)

The input part ``W_i* x + b_i* + b_h*`` does not depend on the state, so callers compute
it for a whole sequence at once (one matmul, outside the time loop) and pass it here as
``xg``: the step itself only does the recurrent matmul and the elementwise gates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlstm._checks import check_floating
from jaxlstm._params import CellParams, as_arrays, check_cell_params

Array = jax.Array


def matmul(a: Array, w: Array) -> Array:
    """``a @ w`` computed in ``w``'s dtype, accumulated and returned in ``a``'s dtype.

    With float32 ``a`` and bfloat16 ``w`` this is a bfloat16 matmul with float32
    accumulation (the ``matmul_dtype`` mode); with equal dtypes, a plain ``a @ w``.
    """
    return jnp.matmul(a.astype(w.dtype), w, preferred_element_type=a.dtype)


def input_gates(x: Array, w_ih: Array, b: Array | None, matmul_dtype: Any = None) -> Array:
    """The state-independent part of the gates: ``x @ w_ih.T + b``.

    Args:
        x: ``(..., H_in)``.
        w_ih: ``(4H, H_in)``.
        b: ``(4H,)``, ``b_ih + b_hh``, or ``None`` (no bias).
        matmul_dtype: dtype of the matmul's operands (``None``: ``x``'s dtype).

    Returns:
        ``(..., 4H)`` in ``x``'s dtype.
    """
    xg = matmul(x, w_ih.T.astype(matmul_dtype or x.dtype))  # (..., H_in) @ (H_in, 4H)
    if b is not None:
        xg = xg + b
    return xg


def activations(gates: Array) -> Array:
    """``(..., 4H)`` pre-activations -> ``(..., 4H)`` gates ``[sigmoid(i), sigmoid(f), tanh(g),
    sigmoid(o)]``."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)  # each (..., H)
    return jnp.concatenate(
        [jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)], -1
    )


def update(act: Array, c: Array) -> tuple[Array, Array]:
    """The new cell state and the unprojected hidden state from activated gates.

    Args:
        act: ``(..., 4H)`` from :func:`activations`.
        c: ``(..., H)``, previous cell state.

    Returns:
        ``(c', o * tanh(c'))``, each ``(..., H)``.
    """
    i, f, g, o = jnp.split(act, 4, axis=-1)  # each (..., H)
    c = f * c + i * g
    return c, o * jnp.tanh(c)


def tangent_factors(act: Array, c_prev: Array, c: Array) -> tuple[Array, Array, Array]:
    """The per-step factors of :func:`activations` then :func:`update`'s derivative.

    With ``dpre`` the tangent of the gate pre-activations and ``dc`` that of the previous
    cell state, :func:`update_jvp` gives the tangents of the new cell state and of
    ``o * tanh(c')`` from these factors alone (they depend on the primal values only, so
    a caller computes them for every step at once, outside the time loop).

    Args:
        act: ``(..., 4H)`` activated gates of the step.
        c_prev: ``(..., H)``, the cell state before the step.
        c: ``(..., H)``, the cell state after the step.

    Returns:
        ``(k, f, d)``: ``k (..., 4H)`` = ``[i(1-i) g, f(1-f) c_prev, i (1-g^2),
        o(1-o) tanh(c')]`` (each gate's pre-activation to its term), ``f (..., H)`` the
        forget gate, ``d (..., H)`` = ``o (1 - tanh(c')^2)``.
    """
    i, f, g, o = jnp.split(act, 4, axis=-1)  # each (..., H)
    tanh_c = jnp.tanh(c)
    k = jnp.concatenate(
        [i * (1 - i) * g, f * (1 - f) * c_prev, i * (1 - g * g), o * (1 - o) * tanh_c], -1
    )
    return k, f, o * (1 - tanh_c * tanh_c)


def update_jvp(k: Array, f: Array, d: Array, dpre: Array, dc: Array) -> tuple[Array, Array]:
    """Forward mode of :func:`activations` then :func:`update`, linear in ``dpre, dc``.

    Args:
        k, f, d: :func:`tangent_factors` of the step.
        dpre: ``(..., 4H)``, tangent of the gate pre-activations.
        dc: ``(..., H)``, tangent of the previous cell state.

    Returns:
        ``(dc', dr)``: tangents of the new cell state and of ``o * tanh(c')``, each
        ``(..., H)``.
    """
    di, df, dg, do = jnp.split(dpre * k, 4, axis=-1)  # each (..., H)
    dc = di + df + dg + f * dc
    return dc, do + d * dc


def update_vjp(k: Array, f: Array, d: Array, dr: Array, dc: Array) -> tuple[Array, Array]:
    """Reverse mode of :func:`activations` then :func:`update`: :func:`update_jvp`
    transposed.

    Args:
        k, f, d: :func:`tangent_factors` of the step.
        dr: ``(..., H)``, cotangent of ``o * tanh(c')`` (the unprojected ``h``).
        dc: ``(..., H)``, cotangent of ``c'`` from later steps.

    Returns:
        ``(dpre, dc_prev)``: ``(..., 4H)`` cotangent of the gate pre-activations and
        ``(..., H)`` cotangent of the previous cell state.
    """
    dc = dc + d * dr
    return jnp.concatenate([dc, dc, dc, dr], axis=-1) * k, f * dc


def step(
    xg: Array, h: Array, c: Array, w_hh_t: Array, w_hr_t: Array | None
) -> tuple[Array, Array, Array]:
    """One step from precomputed input gates (any leading dims, broadcast by ``@``).

    Args:
        xg: ``(..., 4H)``, :func:`input_gates` of this step's input.
        h: ``(..., H_out)``, previous hidden state.
        c: ``(..., H)``, previous cell state.
        w_hh_t: ``(..., H_out, 4H)``, ``w_hh`` transposed (batched over any leading dims
            shared with ``h``, e.g. a direction axis), in the matmul dtype.
        w_hr_t: ``(..., H, P)``, ``w_hr`` transposed, or ``None`` (no projection).

    Returns:
        ``(h', c', act)`` with shapes ``(..., H_out)``, ``(..., H)`` and ``(..., 4H)``
        (the activated gates, kept for :func:`tangent_factors`).
    """
    act = activations(xg + matmul(h, w_hh_t))  # (..., H_out) @ (..., H_out, 4H) -> (..., 4H)
    c, h = update(act, c)
    if w_hr_t is not None:
        h = matmul(h, w_hr_t)  # (..., H) @ (..., H, P) -> (..., P)
    return h, c, act


def lstm_cell(
    params: CellParams, input: Array, hx: tuple[Array, Array] | None = None
) -> tuple[Array, Array]:
    """One step of ``torch.nn.LSTMCell``.

    Args:
        params: :class:`~jaxlstm.CellParams` (``w_ih (4H, H_in)``, ``w_hh (4H, H)``,
            ``b_ih``/``b_hh (4H,)`` or ``None``), e.g. from
            :func:`~jaxlstm.init_cell_params`.
        input: ``(N, H_in)``, or ``(H_in,)`` unbatched.
        hx: optional ``(h_0, c_0)``, each ``(N, H)`` (``(H,)`` unbatched); zeros when
            omitted.

    Returns:
        ``(h_1, c_1)``, each ``(N, H)`` (``(H,)`` unbatched), in the common floating dtype
        of ``params``, ``input`` and ``hx``.

    Example:
        >>> p = init_cell_params(jax.random.key(0), 10, 20)
        >>> h, c = lstm_cell(p, jnp.ones((3, 10)))
        >>> h.shape, c.shape
        ((3, 20), (3, 20))
    """
    params = as_arrays(params)  # array-likes, e.g. nnx.Param or torch tensors
    input_size, hidden = check_cell_params(params)
    input = check_floating("input", input)
    if input.ndim not in (1, 2):
        raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.ndim}D instead")
    if input.shape[-1] != input_size:
        raise ValueError(
            f"input has inconsistent input_size: got {input.shape[-1]} expected {input_size}"
        )
    lead = input.shape[:-1]
    if hx is None:
        h = c = jnp.zeros((*lead, hidden), input.dtype)
    else:
        h, c = _check_cell_hx(hx, lead, hidden)
    dtype = jnp.result_type(input, h, c, *(a for a in params[:4] if a is not None))
    w_ih, w_hh, b_ih, b_hh = (None if a is None else a.astype(dtype) for a in params[:4])
    xg = input_gates(input.astype(dtype), w_ih, None if b_ih is None else b_ih + b_hh)
    h, c, _ = step(xg, h.astype(dtype), c.astype(dtype), w_hh.T, None)
    return h, c


def _check_cell_hx(hx, lead: tuple[int, ...], hidden: int) -> tuple[Array, Array]:
    """``(h_0, c_0)``, each of shape ``lead + (H,)``, with PyTorch's messages."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
    out = []
    for i, s in enumerate(hx):
        s = check_floating(f"hx[{i}]", s)
        if s.ndim not in (1, 2):  # PyTorch's words
            raise ValueError(f"LSTMCell: Expected hx[{i}] to be 1D or 2D, got {s.ndim}D instead")
        if s.ndim != len(lead) + 1:
            raise ValueError(
                f"LSTMCell: Expected hx[{i}] to be {len(lead) + 1}D like the input, "
                f"got {s.ndim}D instead"
            )
        if s.shape[:-1] != lead:
            raise ValueError(
                f"Input batch size {lead[0]} doesn't match hidden{i} batch size {s.shape[0]}"
            )
        if s.shape[-1] != hidden:
            raise ValueError(
                f"hidden{i} has inconsistent hidden_size: got {s.shape[-1]}, expected {hidden}"
            )
        out.append(s)
    return out[0], out[1]
