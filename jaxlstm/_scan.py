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

Speed:

* Each step's inputs are prefetched into the carry (:func:`_scan`), which keeps the
  elementwise gate kernels vectorized.
* The input projection of all steps and both directions is one matmul before the loop;
  the loop body is one batched ``(D, N, H_out) @ (D, H_out, 4H)`` matmul plus the
  elementwise gates. The reverse direction reads a time-flipped copy of its input
  gates, so both directions advance in the same loop ("scan order" below).
* The derivative is one rule for both modes (:func:`_recurrence` has a custom JVP):
  the forward loop saves only the activated gates and the cell states; the tangent is
  a linear recurrence over ``(dh, dc)`` whose weight terms are hoisted out of the loop
  into one large matmul (:func:`_tangent`). Its transpose, reverse mode, is written by
  hand (:func:`_backward`, cuDNN's scheme: a backward loop that carries only ``dh, dc``
  and emits the gate cotangents, then the weight gradients as single large matmuls
  over all ``L*N`` rows), registered with JAX through
  :func:`jaxlstm._linear_pair.linear_pair`. Forward mode, reverse mode and every higher
  order come from it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxlstm import _cudnn, _kernel
from jaxlstm._cell import input_gates, matmul, step, tangent_factors, update_jvp, update_vjp
from jaxlstm._linear_pair import linear_pair, varying
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
    matmul_dtype: Any = None,
    checkpoint_every: int | None = None,
    cpu_kernel: str = "",
    strict: bool = False,
    cudnn: bool = False,
) -> tuple[Array, Array, Array]:
    """Runs one layer, every direction, over a time-major sequence.

    Args:
        layer: ``D`` :class:`LayerParams` (forward, then reverse), all of ``x``'s dtype.
        x: ``(L, N, H_in)``; with ``lengths``, zero past each length.
        h0: ``(D, N, H_out)``.
        c0: ``(D, N, H)``.
        lengths: ``(N,)`` integer valid lengths, or ``None`` for full length.
        matmul_dtype: dtype of every matmul's operands (accumulation, state and gates
            stay in ``x``'s dtype); ``None`` for ``x``'s dtype.
        checkpoint_every: ``k`` to keep only every ``k``-th state for the backward pass
            and recompute each chunk of ``k`` steps (input projection included) when it
            is needed; ``None`` keeps every step's residuals.
        cpu_kernel: :func:`jaxlstm._kernel.available`'s answer: unless ``""``, run the
            layer in jaxlstm's fused CPU kernel where it applies
            (:func:`jaxlstm._kernel.unusable`).
        strict: raise a ``ValueError`` where the kernel (or cuDNN) does not apply,
            instead of taking the ``lax.scan`` path (``impl="cpu_kernel"``, ``"cudnn"``).
        cudnn: run the layer in cuDNN where it applies (:func:`jaxlstm._cudnn.unusable`;
            ``impl="cudnn"`` only: ``"auto"`` keeps GPUs on the ``lax.scan`` path until a
            GPU run has verified the cuDNN one).

    Returns:
        ``(y, h_n, c_n)``: ``y (L, N, D*H_out)`` (direction outputs concatenated on the
        last axis, zero past each length), ``h_n (D, N, H_out)``, ``c_n (D, N, H)``.
    """
    b = None if layer[0].b_ih is None else tuple(p.b_ih + p.b_hh for p in layer)
    w_ih, w_hh = tuple(p.w_ih for p in layer), tuple(p.w_hh for p in layer)
    operands = (layer, x, h0, c0, lengths)
    if cudnn:
        unusable = _cudnn.unusable(x, layer[0].w_hr, matmul_dtype, checkpoint_every, operands)
        if not unusable:
            return _cudnn.layer(layer, x, h0, c0, lengths, reference=_scanned)
        if strict:
            raise ValueError(f"impl='cudnn' cannot run this layer: {unusable}")
    if cpu_kernel:
        unusable = _kernel.unusable(
            x, layer[0].w_hr, matmul_dtype, checkpoint_every, operands, cpu_kernel
        )
        if not unusable:
            return _kernel.layer(
                x, w_ih, b, w_hh, h0, c0, lengths, matmul_dtype, cpu_kernel, reference=_scanned
            )
        if strict:
            raise ValueError(f"impl='cpu_kernel' cannot run this layer: {unusable}")
    w_hr = None if layer[0].w_hr is None else tuple(p.w_hr for p in layer)
    return _scanned(x, w_ih, b, w_hh, h0, c0, lengths, matmul_dtype, w_hr, checkpoint_every)


def _scanned(x, w_ih, b, w_hh, h0, c0, lengths, matmul_dtype, w_hr=None, checkpoint_every=None):
    """:func:`scan_layer` on the ``lax.scan`` path, the weights per direction (``b`` is
    ``b_ih + b_hh``; ``lengths`` may be ``None``); also the kernel's plain-JAX reference
    (:func:`jaxlstm._kernel.layer`)."""
    seq_len, batch, _ = x.shape
    num_dirs = len(w_ih)
    weights = _Weights(
        w_ih=jnp.stack(w_ih),  # (D, 4H, H_in)
        b=None if b is None else jnp.stack(b),
        w_hh_t=jnp.stack([w.T for w in w_hh]),  # (D, H_out, 4H)
        w_hr_t=None if w_hr is None else jnp.stack([w.T for w in w_hr]),  # (D, H, P)
    )
    h0, c0 = _vary_like((h0, c0), (x, weights, lengths))
    # Scan order: step t of direction 1 reads time L-1-t.
    xs = _flip_reverse(jnp.broadcast_to(x[:, None], (seq_len, num_dirs, *x.shape[1:])))
    valid = None
    if lengths is not None:
        valid = jnp.arange(seq_len)[:, None] < lengths[None, :]  # (L, N)
        valid = _flip_reverse(jnp.broadcast_to(valid[:, None], (seq_len, num_dirs, batch)))
    chunk = partial(_chunk, matmul_dtype=matmul_dtype)
    if checkpoint_every is None or (isinstance(seq_len, int) and checkpoint_every >= seq_len):
        (h_n, c_n), ys = chunk(weights, (h0, c0), (xs, valid))
    else:
        (h_n, c_n), ys = _checkpointed(chunk, weights, (h0, c0), (xs, valid), checkpoint_every)
    ys = _flip_reverse(ys)  # (L, D, N, H_out), both directions in time order
    y = jnp.moveaxis(ys, 1, 2).reshape(seq_len, batch, num_dirs * ys.shape[-1])  # (L,N,D*H_out)
    return y, h_n, c_n


def _vary_like(carry, operands):
    """``carry`` made to vary over every mesh axis that any of ``operands`` varies over
    (inside ``shard_map``, e.g. with the weights sharded and the state not: a scan's
    carry keeps its type from step to step); unchanged outside ``shard_map``."""
    axes = frozenset().union(*(varying(a) for a in jax.tree.leaves(operands)))

    def vary(c):
        missing = tuple(sorted(axes - varying(c)))
        return lax.pcast(c, missing, to="varying") if missing else c

    return jax.tree.map(vary, carry)


class _Weights(NamedTuple):
    """One layer's weights, stacked over directions."""

    w_ih: Array  # (D, 4H, H_in)
    b: Array | None  # (D, 4H): b_ih + b_hh
    w_hh_t: Array  # (D, H_out, 4H)
    w_hr_t: Array | None  # (D, H, P)


def _chunk(weights: _Weights, carry, inputs, *, matmul_dtype):
    """Steps of one layer in scan order, input projection included.

    Args:
        weights: the layer's :class:`_Weights`.
        carry: ``(h (D, N, H_out), c (D, N, H))`` before the first step.
        inputs: ``(xs (K, D, N, H_in), valid (K, D, N) or None)`` in scan order.

    Returns:
        ``((h, c), ys (K, D, N, H_out))``.
    """
    xs, valid = inputs
    # The bias is added inside the loop's gate kernel (free there), not in a pass of its
    # own over all (K, D, N, 4H) input gates.
    xg = [
        input_gates(xs[:, d], weights.w_ih[d], None, matmul_dtype) for d in range(xs.shape[1])
    ]  # D x (K, N, 4H)
    # (K, D, N, 4H); for D = 1 a bitcast (a stack there made XLA transpose xg twice)
    xg = xg[0][:, None] if len(xg) == 1 else jnp.stack(xg, axis=1)
    ys, h, c = _recurrence(
        xg, weights.b, weights.w_hh_t, weights.w_hr_t, *carry, valid, matmul_dtype
    )
    return (h, c), ys


def _checkpointed(chunk, weights, carry, inputs, every: int):
    """``chunk`` over all steps, ``every`` steps at a time, rematerialised in backward.

    Only the carries between chunks are kept for the backward pass; each chunk's
    residuals (gates, cell states, projected inputs) are recomputed when its gradient is
    taken, so the gradient's temporary memory scales with ``every`` instead of ``L``.
    """
    xs, valid = inputs
    steps = xs.shape[0]
    if isinstance(steps, int):
        whole = steps - steps % every
    else:  # symbolic (jax.export): padded to whole chunks (at least one), cut after; the
        # padding's steps are not valid, so they change neither the state nor kept outputs
        whole = ((steps - 1) // every + 1) * every
        valid = jnp.ones(xs.shape[:3], bool) if valid is None else valid  # (L, D, N)
        inputs = jax.tree_util.tree_map(
            lambda a: jnp.pad(a, [(0, whole - steps)] + [(0, 0)] * (a.ndim - 1)), (xs, valid)
        )  # (whole, ...)

    def split(tree, sl, shape):
        return jax.tree_util.tree_map(lambda a: a[sl].reshape(*shape, *a.shape[1:]), tree)

    remat = jax.checkpoint(chunk)

    def body(c, xs):
        return remat(weights, c, xs)

    carry, ys = lax.scan(body, carry, split(inputs, slice(0, whole), (whole // every, every)))
    ys = ys.reshape(whole, *ys.shape[2:])  # (chunks, every, ...) -> (L', ...)
    if whole < steps:
        carry, rest = body(carry, jax.tree_util.tree_map(lambda a: a[whole:], inputs))
        ys = jnp.concatenate([ys, rest])
    return carry, ys[:steps]  # (L, ...): without a symbolic length's padding


def _scan(body, init, xs, *, reverse: bool = False):
    """``lax.scan(body, init, xs, reverse=reverse)`` with each step's inputs prefetched.

    The inputs of step ``t`` are sliced out of ``xs`` during step ``t-1`` and handed over
    in the carry. XLA:CPU compiles an elementwise kernel that reads a slice of a scanned
    array without vector instructions (measured: 139 vs 24 us per step at H=256, N=32);
    reading the carry, the gate kernels vectorize.
    """
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if steps == 0:
        return lax.scan(body, init, xs, reverse=reverse)

    def at(t):
        return jax.tree_util.tree_map(lambda a: lax.dynamic_index_in_dim(a, t, 0, False), xs)

    def wrapped(carry, t):
        inner, current = carry
        upcoming = at(jnp.maximum(t - 1, 0) if reverse else jnp.minimum(t + 1, steps - 1))
        inner, out = body(inner, current)
        return (inner, upcoming), out

    first = at(steps - 1 if reverse else 0)
    (carry, _), out = lax.scan(wrapped, (init, first), jnp.arange(steps), reverse=reverse)
    return carry, out


def _forward(xg, b, w_hh_t, w_hr_t, h0, c0, valid, matmul_dtype, *, save: bool):
    """The forward loop in scan order.

    Args:
        xg: ``(L, D, N, 4H)`` input gates in scan order, without bias.
        b: ``(D, 4H)`` bias (``b_ih + b_hh``) or ``None``.
        w_hh_t: ``(D, H_out, 4H)``.
        w_hr_t: ``(D, H, P)`` or ``None``.
        h0, c0: ``(D, N, H_out)``, ``(D, N, H)``.
        valid: ``(L, D, N)`` bool in scan order, or ``None`` (all valid).
        matmul_dtype: dtype of the matmuls' operands, or ``None``.
        save: also return the residuals of the backward pass.

    Returns:
        ``(ys (L, D, N, H_out), h_n, c_n)``, plus, with ``save``, the activated gates
        ``(L, D, N, 4H)`` and the cell-state carries ``(L, D, N, H)``.
    """
    w_hh_t, w_hr_t = _cast((w_hh_t, w_hr_t), matmul_dtype)

    def body(carry, inputs):
        h, c = carry
        xg_t, valid_t = inputs  # (D, N, 4H), (D, N) or None
        if b is not None:
            xg_t = xg_t + b[:, None]  # + (D, 1, 4H)
        h_new, c_new, act = step(xg_t, h, c, w_hh_t, w_hr_t)  # (D, N, H_out), (D, N, H)
        y = h_new
        if valid_t is not None:
            keep = valid_t[..., None]  # (D, N, 1)
            h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
            y = jnp.where(keep, y, 0)
        return (h_new, c_new), ((y, act, c_new) if save else y)

    (h_n, c_n), out = _scan(body, (h0, c0), (xg, valid))
    return (*out, h_n, c_n) if save else (out, h_n, c_n)


@partial(jax.custom_jvp, nondiff_argnums=(7,))
def _recurrence(xg, b, w_hh_t, w_hr_t, h0, c0, valid, matmul_dtype):
    """The recurrence of one layer, all directions, in scan order (see :func:`_forward`).

    Its derivative is a ``custom_jvp`` (:func:`_recurrence_jvp`) whose tangent is linear
    in the input tangents: forward mode, reverse mode (its transpose) and every higher
    order come from one rule.

    Returns:
        ``(ys (L, D, N, H_out), h_n (D, N, H_out), c_n (D, N, H))``.
    """
    return _forward(xg, b, w_hh_t, w_hr_t, h0, c0, valid, matmul_dtype, save=False)


@_recurrence.defjvp
def _recurrence_jvp(matmul_dtype, primals, tangents):
    r"""The forward loop, keeping the activated gates and the cell states, then the
    tangent recurrence (:func:`_tangent`) over them, as a primitive whose transpose is
    the hand-written backward loop (:func:`_backward`); inside ``shard_map`` as plain
    JAX, which JAX transposes by itself (adding the ``psum``\ s of replicated weights)."""
    ys, acts, cs, h_n, c_n = _forward(*primals, matmul_dtype, save=True)
    out, residuals = (ys, h_n, c_n), (primals, (ys, acts, cs))
    if any(varying(a) for a in jax.tree.leaves(primals)):
        return out, _tangent(residuals, tangents[:6], matmul_dtype)
    return out, _tangent_pair(residuals, tangents[:6], matmul_dtype, out)


def _shift(seq: Array, first: Array) -> Array:
    """``seq (L, ...)`` delayed by one step, ``first (...)`` at step 0."""
    return jnp.concatenate([first[None], seq[:-1]])[: seq.shape[0]]  # L = 0 stays empty


def _cast(arrays, dtype):
    """``arrays`` (``None`` entries kept) cast to ``dtype``; unchanged when it is ``None``."""
    if dtype is None:
        return arrays
    return tuple(None if a is None else a.astype(dtype) for a in arrays)


def _over_steps(spec: str, a: Array, w: Array) -> Array:
    """``einsum(spec, a, w)``: every step's ``a (L, D, N, K)`` times its direction's
    ``w (D, K, M)`` as one product, computed in ``w``'s dtype and returned in ``a``'s.

    In reverse mode JAX transposes it into the weight's gradient: one product that
    contracts all ``L*N`` rows.
    """
    return jnp.einsum(spec, a.astype(w.dtype), w, preferred_element_type=a.dtype)


def _tangent(residuals, tangents, matmul_dtype):
    """The tangent of :func:`_recurrence`: a linear recurrence over ``(dh, dc)``.

    Everything that does not depend on the state's tangent is computed for all steps at
    once, outside the loop: the gate factors (:func:`jaxlstm._cell.tangent_factors`) and
    the driving term ``dxg + db + h_prev @ dw_hh^T`` (one large product; with a projection
    also ``r @ dw_hr^T``). The loop body is one small product and a few elementwise
    operations, all linear in the tangents. Its transpose is :func:`_backward` (and JAX's
    own, :func:`_plain_backward`, for second order and inside ``shard_map``).

    Args:
        residuals: ``(primals, (ys (L, D, N, H_out), acts (L, D, N, 4H), cs (L, D, N, H)))``:
            :func:`_recurrence`'s arguments but ``matmul_dtype``, then what its forward
            loop saved.
        tangents: the tangents of ``(xg, b, w_hh_t, w_hr_t, h0, c0)``.
        matmul_dtype: as :func:`_recurrence`.

    Returns:
        The tangents of ``(ys, h_n, c_n)``.
    """
    (_, b, w_hh_t, w_hr_t, h0, c0, valid), (ys, acts, cs) = residuals
    d_xg, d_b, d_w_hh_t, d_w_hr_t, d_h0, d_c0 = tangents
    w_hh_t, w_hr_t, d_w_hh_t, d_w_hr_t = _cast((w_hh_t, w_hr_t, d_w_hh_t, d_w_hr_t), matmul_dtype)
    k, f, d = tangent_factors(acts, _shift(cs, c0), cs)  # (L, D, N, 4H), (L, D, N, H) x 2
    h_prev = _previous_hidden(ys, h0, valid)  # (L, D, N, H_out)
    drive = d_xg + _over_steps("ldnh,dhg->ldng", h_prev, d_w_hh_t)  # (L, D, N, 4H)
    if b is not None:
        drive = drive + d_b[:, None]  # + (D, 1, 4H)
    d_proj = None
    if w_hr_t is not None:
        r = acts[..., 3 * acts.shape[-1] // 4 :] * jnp.tanh(cs)  # (L, D, N, H): o * tanh(c)
        d_proj = _over_steps("ldnh,dhp->ldnp", r, d_w_hr_t)  # (L, D, N, P)

    def body(carry, inputs):
        dh, dc = carry  # (D, N, H_out), (D, N, H)
        drive_t, k_t, f_t, d_t, d_proj_t, valid_t = inputs
        dpre = drive_t + matmul(dh, w_hh_t)  # (D, N, H_out) @ (D, H_out, 4H) -> (D, N, 4H)
        dc_new, dr = update_jvp(k_t, f_t, d_t, dpre, dc)  # (D, N, H) each
        dh_new = dr if w_hr_t is None else matmul(dr, w_hr_t) + d_proj_t  # (D, N, H_out)
        if valid_t is None:
            return (dh_new, dc_new), dh_new
        keep = valid_t[..., None]  # (D, N, 1): a frozen step keeps the state's tangent
        dy = jnp.where(keep, dh_new, 0)
        return (jnp.where(keep, dh_new, dh), jnp.where(keep, dc_new, dc)), dy

    (d_hn, d_cn), d_ys = lax.scan(body, (d_h0, d_c0), (drive, k, f, d, d_proj, valid))
    return d_ys, d_hn, d_cn


def _previous_hidden(ys: Array, h0: Array, valid: Array | None) -> Array:
    """The hidden state each step started from, ``(L, D, N, H_out)`` in scan order: the
    previous step's output, or ``h0`` before a sequence's first valid step."""
    h_prev = _shift(ys, h0)
    if valid is None:
        return h_prev
    return jnp.where(_shift(valid, jnp.zeros(valid.shape[1:], bool))[..., None], h_prev, h0)


def _sum_over_steps(spec: str, a: Array, b: Array, matmul_dtype: Any) -> Array:
    """``einsum(spec, a, b)`` contracting steps and batch into a weight gradient, its
    operands rounded to ``matmul_dtype`` (``None``: as they are), its products and sums
    in their own dtype (exact products: what a bfloat16 matmul with float32 sums computes,
    which XLA:CPU runs only inside its fused dots).

    The result is replicated; with a batch sharded over explicit mesh axes, JAX needs
    that said (``out_sharding``), and the contraction becomes a per-device partial sum
    plus one all-reduce.
    """
    dtype = a.dtype
    a, b = (v.astype(dtype) for v in _cast((a, b), matmul_dtype))
    mesh = getattr(getattr(jax.typeof(a), "sharding", None), "mesh", None)
    if (
        mesh is None
        or mesh.empty
        or not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    ):
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, a, b, out_sharding=jax.sharding.NamedSharding(mesh, P()))


def _backward(residuals, cotangents, matmul_dtype):
    """:func:`_tangent` transposed, by hand (cuDNN's scheme): one backward loop that
    carries only ``dh, dc`` and emits the gate cotangents, then the weight gradients as
    single large matmuls over all ``L*N`` rows.

    Returns:
        The cotangents of ``(xg, b, w_hh_t, w_hr_t, h0, c0)`` from those of
        ``(ys, h_n, c_n)``.
    """
    (_, b, w_hh_t, w_hr_t, h0, c0, valid), (ys, acts, cs) = residuals
    d_ys, d_hn, d_cn = cotangents  # (L, D, N, H_out), (D, N, H_out), (D, N, H)
    c_prev = _shift(cs, c0)  # (L, D, N, H): the carries are the previous cell states
    w_hh = jnp.swapaxes(w_hh_t, 1, 2)  # (D, 4H, H_out)
    w_hr = None if w_hr_t is None else jnp.swapaxes(w_hr_t, 1, 2)  # (D, P, H)
    w_hh, w_hr = _cast((w_hh, w_hr), matmul_dtype)

    def body(carry, inputs):
        dh, dc = carry  # (D, N, H_out), (D, N, H)
        dy, act, c, c_before, valid_t = inputs
        dh_new = dh + dy
        if valid_t is not None:
            keep = valid_t[..., None]  # (D, N, 1): a frozen step passes dh, dc through
            dh_new, dh = jnp.where(keep, dh_new, 0), jnp.where(keep, 0, dh)
            dc_new, dc = jnp.where(keep, dc, 0), jnp.where(keep, 0, dc)
        else:
            dh, dc_new, dc = 0, dc, 0
        dr = dh_new if w_hr is None else matmul(dh_new, w_hr)  # (D,N,P) @ (D,P,H) -> (D,N,H)
        dgates, dc_prev = update_vjp(*tangent_factors(act, c_before, c), dr, dc_new)
        dh_prev = matmul(dgates, w_hh)  # (D, N, 4H) @ (D, 4H, H_out) -> (D, N, H_out)
        return (dh + dh_prev, dc + dc_prev), (dgates if w_hr is None else (dgates, dh_new))

    inputs = (d_ys, acts, cs, c_prev, valid)
    (dh0, dc0), out = _scan(body, (d_hn, d_cn), inputs, reverse=True)
    dgates = out if w_hr is None else out[0]  # (L, D, N, 4H)
    h_prev = _previous_hidden(ys, h0, valid)  # (L, D, N, H_out)
    d_w_hh_t = _sum_over_steps("ldnh,ldng->dhg", h_prev, dgates, matmul_dtype)  # (D, H_out, 4H)
    d_w_hr_t = None
    if w_hr is not None:
        r = acts[..., 3 * acts.shape[-1] // 4 :] * jnp.tanh(cs)  # (L, D, N, H): o * tanh(c)
        d_w_hr_t = _sum_over_steps("ldnh,ldnp->dhp", r, out[1], matmul_dtype)  # (D, H, P)
    d_b = None if b is None else dgates.sum(axis=(0, 2))  # (D, 4H)
    return dgates, d_b, d_w_hh_t, d_w_hr_t, dh0, dc0


def _plain_backward(residuals, cotangents, matmul_dtype):
    """:func:`_backward` as JAX's own transpose of :func:`_tangent` (differentiable, for
    the derivatives of reverse mode)."""
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), residuals[0][:6])
    tangent = jax.linear_transpose(lambda *t: _tangent(residuals, t, matmul_dtype), *like)
    return tangent(cotangents)


# The tangent, with the hand-written backward loop as its transpose.
_tangent_pair = linear_pair("jaxlstm_scan_tangent", _tangent, _tangent, _backward, _plain_backward)
