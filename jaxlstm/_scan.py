"""One layer over a whole sequence, both directions in one ``lax.scan``.

What :func:`scan_layer` computes, as a plain loop (for one direction ``d``, with
``valid[t, n] = t < lengths[n]``)::

    h, c = h0[d], c0[d]
    for t in (range(L) if d == 0 else reversed(range(L))):
        h_new, c_new = step(x[t], h, c)
        if valid[t]: h, c = h_new, c_new      # state frozen outside a sequence
        y[t, d] = h_new if valid[t] else 0     # zeros past each length
    h_n[d], c_n[d] = h, c

The reverse direction therefore starts at each sequence's own last valid step and
ends at step 0, exactly PyTorch's packed semantics, without flipping each sequence by
its length: steps past a length leave the state at ``h0``. A length of 0 leaves
``h0, c0`` untouched and gives zero outputs.

Speed: the input projection of all steps and both directions is one matmul before the
loop; the loop body is one batched ``(D, N, H_out) @ (D, H_out, 4H)`` matmul plus the
elementwise gates; the reverse direction reads its inputs from a time-flipped copy so
that both directions advance together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxlstm._cell import step
from jaxlstm._params import LayerParams

Array = jax.Array


def _flip_reverse(a: Array) -> Array:
    """Flips direction 1 of ``a (L, D, ...)`` in time (direction 0 unchanged)."""
    if a.shape[1] == 1:
        return a
    return jnp.stack([a[:, 0], a[::-1, 1]], axis=1)  # (L, D, ...)


def scan_layer(
    layer: tuple[LayerParams, ...],
    x: Array,
    h0: Array,
    c0: Array,
    lengths: Array | None,
) -> tuple[Array, Array, Array]:
    """Runs one layer, every direction, over a time-major sequence.

    Args:
        layer: ``D`` :class:`LayerParams` (forward, then reverse), all of ``x``'s dtype.
        x: ``(L, N, H_in)``; with ``lengths``, zero past each length.
        h0: ``(D, N, H_out)``.
        c0: ``(D, N, H)``.
        lengths: ``(N,)`` integer valid lengths, or ``None`` for full length.

    Returns:
        ``(y, h_n, c_n)``: ``y (L, N, D*H_out)`` (direction outputs concatenated on the
        last axis, zero past each length), ``h_n (D, N, H_out)``, ``c_n (D, N, H)``.
    """
    num_dirs = len(layer)
    seq_len, batch, _ = x.shape
    w_ih = jnp.stack([p.w_ih for p in layer])  # (D, 4H, H_in)
    xg = jnp.einsum("lni,dgi->ldng", x, w_ih)  # (L, D, N, 4H)
    if layer[0].b_ih is not None:
        xg = xg + jnp.stack([p.b_ih + p.b_hh for p in layer])[:, None, :]  # + (D, 1, 4H)
    xg = _flip_reverse(xg)  # step t of direction 1 reads time L-1-t
    w_hh_t = jnp.stack([p.w_hh.T for p in layer])  # (D, H_out, 4H)
    w_hr_t = None if layer[0].w_hr is None else jnp.stack([p.w_hr.T for p in layer])  # (D,H,P)

    if lengths is None:

        def body(carry, xg_t):
            h, c = step(xg_t, *carry, w_hh_t, w_hr_t)
            return (h, c), h

        (h_n, c_n), ys = lax.scan(body, (h0, c0), xg)
    else:
        valid = jnp.arange(seq_len)[:, None] < lengths[None, :]  # (L, N)
        valid = _flip_reverse(jnp.broadcast_to(valid[:, None], (seq_len, num_dirs, batch)))

        def body(carry, inputs):
            xg_t, valid_t = inputs  # (D, N, 4H), (D, N)
            h, c = step(xg_t, *carry, w_hh_t, w_hr_t)
            keep = valid_t[..., None]  # (D, N, 1)
            carry = (jnp.where(keep, h, carry[0]), jnp.where(keep, c, carry[1]))
            return carry, jnp.where(keep, h, 0)

        (h_n, c_n), ys = lax.scan(body, (h0, c0), (xg, valid))
    ys = _flip_reverse(ys)  # (L, D, N, H_out), both directions in time order
    y = jnp.moveaxis(ys, 1, 2).reshape(seq_len, batch, -1)  # (L, N, D*H_out)
    return y, h_n, c_n
