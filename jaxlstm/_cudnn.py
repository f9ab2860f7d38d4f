"""One layer through cuDNN, by JAX's own binding (``jax.experimental.rnn``'s primitives).

Opt-in, with ``impl="cudnn"`` on an NVIDIA GPU: ``impl="auto"`` keeps the ``lax.scan``
path on GPUs until a GPU run has verified this one against PyTorch's CUDA LSTM
(``benchmarks/scripts/gpu_check.py``). A layer runs as one cuDNN call per pass, both
directions at once, the parameters converted to cuDNN's flat weight vector
(:func:`flatten`, jax's documented layout for one layer:
``w_ih, w_hh`` of each direction, then ``b_ih, b_hh`` of each direction).

What the binding can run (:func:`unusable` says why a layer can't): float32 only (its
kernels fix ``CUDNN_DATA_FLOAT``: no bfloat16, float16 or float64), no projection,
``matmul_dtype=None`` (cuDNN multiplies in float32, or in TF32 where
``jax_default_matmul_precision`` lets XLA's float32 dots use TF32 too: the binding's own
rule), concrete shapes, ``checkpoint_every`` not shorter than the sequence, one device,
no ``shard_map``-varying operands. Everything else takes the ``lax.scan`` path
(``impl="cudnn"`` raises instead, naming the reason).

Semantics: jaxlstm's, :func:`jaxlstm._scan.scan_layer`'s. The binding's reference,
``jax.experimental.rnn.lstm_ref``, agrees with the scan path on lengths in any order,
zeros past each length and the reverse direction over each valid part, but not on a
length of 0: it returns the carry at index ``lengths - 1 = -1``, the state after all
``L`` padded steps, where PyTorch's is ``h0, c0`` (``tests/test_cudnn.py`` holds the
evidence). cuDNN is therefore never given a length of 0: such a sequence runs one step,
its output is masked to zero and its ``h_n, c_n`` replaced by ``h0, c0`` around the call
(:func:`layer`), which also makes the outputs past each length zero whatever cuDNN's
padding does. Those replaced values get zero cotangents, so the step never reaches a
gradient.

Derivatives, as the fused CPU kernel's (:mod:`jaxlstm._kernel`), by
:func:`jaxlstm._linear_pair.accelerated`: a ``custom_jvp`` whose rule runs cuDNN's
forward pass (keeping its reserve space) and a tangent primitive: forward mode is the scan path's
``jax.jvp`` (plain JAX), reverse mode its transpose, cuDNN's backward pass (``rnn_bwd``:
``dx, dh0, dc0`` and the flat weight gradient, converted back by :func:`unflatten`), and
the derivatives of reverse mode (second order) and its ``vmap`` JAX's own transpose of
the plain tangent. jax's cuDNN primitives have no batching rule: under ``jax.vmap`` they
run once per member (:func:`_bind`). Lengths are operands: new ones never recompile.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_batching import sequential_vmap
from jax.experimental import rnn

from jaxlstm._linear_pair import accelerated, varying
from jaxlstm._params import LayerParams

Array = jax.Array


def missing() -> str:
    """Why this machine has no cuDNN LSTM for jaxlstm, or ``""`` when it has one."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"the {backend} backend has no cuDNN (it needs an NVIDIA GPU)"
    client = jax.devices()[0].client
    if "rocm" in f"{client.platform} {client.platform_version}".lower():
        return "this GPU is AMD's (ROCm): jax.experimental.rnn's MIOpen path is not verified"
    return ""


def choose(impl: str) -> bool:
    """Whether a call with ``impl`` runs its layers in cuDNN where they can: only for
    ``"cudnn"``, which raises a ``ValueError`` saying why where this machine has none.
    ``"auto"`` does not (yet): see the module's docstring."""
    if impl != "cudnn":
        return False
    reason = missing()
    if reason:
        raise ValueError(f"impl='cudnn' cannot run here: {reason}; use impl='auto' or impl='scan'")
    return True


def _tf32() -> bool | None:
    """Whether cuDNN may multiply in TF32 (the binding's rule, from
    ``jax_default_matmul_precision``: as XLA's float32 dots), ``None`` where that
    precision asks for what cuDNN's LSTM lacks (bfloat16 products)."""
    try:
        return rnn._lstm_cudnn_allow_tf32(None)
    except NotImplementedError:
        return None


def unusable(
    x: Array, w_hr: Array | None, matmul_dtype: Any, checkpoint_every: int | None, operands: Any
) -> str:
    """Why :func:`layer` cannot compute the layer of input ``x`` and projection ``w_hr``
    (at trace time), or ``""`` when it can; ``operands`` are all its arrays (a pytree),
    any of which may vary over ``shard_map``'s mesh axes."""
    shapes_known = all(isinstance(d, int) and d > 0 for d in x.shape)
    absent = missing()
    reasons = {
        absent: bool(absent),
        "a projection (proj_size > 0)": w_hr is not None,
        "empty or symbolic shapes": not shapes_known,
        f"dtype {x.dtype} (cuDNN's LSTM in jax runs float32)": x.dtype != jnp.float32,
        f"matmul_dtype {matmul_dtype} (cuDNN multiplies float32, or TF32)": matmul_dtype
        is not None,
        "jax_default_matmul_precision asks for bfloat16 products": _tf32() is None,
        "checkpoint_every shorter than the sequence": shapes_known
        and checkpoint_every is not None
        and checkpoint_every < x.shape[0],
        "several devices (the custom call has no partitioning rule)": jax.device_count() != 1,
        "shard_map (values varying over mesh axes)": any(
            varying(a) for a in jax.tree.leaves(operands)
        ),
    }
    return ", ".join(reason for reason, applies in reasons.items() if applies)


def flatten(layer: tuple[LayerParams, ...]) -> Array:
    """cuDNN's flat weight vector of one layer (``jax.experimental.rnn``'s layout with
    ``num_layers=1``): ``w_ih (4H, H_in)``, ``w_hh (4H, H)`` of each direction, then
    ``b_ih, b_hh (4H,)`` of each direction (zeros for a layer without bias), raveled.

    Returns:
        ``(D * 4H * (H_in + H + 2),)``.
    """
    gates = layer[0].w_hh.shape[0]
    zero = jnp.zeros((gates,), layer[0].w_hh.dtype)
    weights = [w for p in layer for w in (p.w_ih, p.w_hh)]
    biases = [b for p in layer for b in ((zero, zero) if p.b_ih is None else (p.b_ih, p.b_hh))]
    return jnp.concatenate([a.ravel() for a in weights + biases])


def unflatten(flat: Array, like: tuple[LayerParams, ...]) -> tuple[LayerParams, ...]:
    """:func:`flatten`'s inverse: ``flat`` as :class:`LayerParams` shaped as ``like``
    (its biases dropped where ``like`` has none; e.g. a flat weight gradient)."""
    gates, hidden = like[0].w_hh.shape
    size = like[0].w_ih.shape[1]
    dirs = len(like)
    ends = [(gates * size, gates * hidden)] * dirs + [(gates, gates)] * dirs  # per direction
    pieces, start = [], 0
    for first, second in ends:
        pieces.append((flat[start : start + first], flat[start + first : start + first + second]))
        start += first + second
    return tuple(
        LayerParams(
            w_ih=pieces[d][0].reshape(gates, size),
            w_hh=pieces[d][1].reshape(gates, hidden),
            b_ih=None if p.b_ih is None else pieces[dirs + d][0],
            b_hh=None if p.b_ih is None else pieces[dirs + d][1],
            w_hr=None,
        )
        for d, p in enumerate(like)
    )


def layer(
    layer: tuple[LayerParams, ...],
    x: Array,
    h0: Array,
    c0: Array,
    lengths: Array | None,
    *,
    reference: Any,
) -> tuple[Array, Array, Array]:
    """One layer, every direction, in cuDNN; as :func:`jaxlstm._scan.scan_layer`.

    Args:
        layer: ``D`` :class:`LayerParams` without projection, float32.
        x: ``(L, N, H_in)`` float32, zero past each length.
        h0, c0: ``(D, N, H)``.
        lengths: ``(N,)`` integer valid lengths in ``[0, L]``, or ``None``.
        reference: the layer in plain JAX, :func:`jaxlstm._scan._scanned`'s signature
            (``x, w_ih, b, w_hh, h0, c0, lengths, matmul_dtype``, weights per direction,
            ``b = b_ih + b_hh``): forward mode and second order run it.

    Returns:
        ``(y (L, N, D*H), h_n (D, N, H), c_n (D, N, H))``.
    """
    seq_len, batch, size = x.shape
    spec = _Spec(size, h0.shape[-1], len(layer) == 2, _tf32(), reference)
    if lengths is None:
        full = jnp.full((batch,), seq_len, jnp.int32)
        return _layer((x, layer, h0, c0, full), spec)
    # cuDNN never sees a length of 0 (module docstring): one step, masked out below
    y, h_n, c_n = _layer((x, layer, h0, c0, jnp.maximum(lengths, 1).astype(jnp.int32)), spec)
    valid = jnp.arange(seq_len)[:, None] < lengths[None, :]  # (L, N)
    empty = (lengths == 0)[None, :, None]  # (1, N, 1)
    y = jnp.where(valid[..., None], y, 0)
    return y, jnp.where(empty, h0, h_n), jnp.where(empty, c0, c_n)


class _Spec(NamedTuple):
    """What a cuDNN call computes, beyond its operands (static, hashable)."""

    input_size: int
    hidden_size: int
    bidirectional: bool
    allow_tf32: bool
    reference: Any  # the layer in plain JAX (see :func:`layer`)

    def params(self) -> dict[str, Any]:
        """The parameters of ``rnn_fwd`` and ``rnn_bwd``: one layer, no dropout."""
        return dict(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=1,
            dropout=0.0,
            bidirectional=self.bidirectional,
            cudnn_allow_tf32=self.allow_tf32,
        )

    def plain(self, x, layer, h0, c0, lengths):
        """:attr:`reference` on :class:`LayerParams`: ``(y (L, N, D*H), h_n, c_n)``."""
        b = None if layer[0].b_ih is None else tuple(p.b_ih + p.b_hh for p in layer)
        w_ih, w_hh = tuple(p.w_ih for p in layer), tuple(p.w_hh for p in layer)
        return self.reference(x, w_ih, b, w_hh, h0, c0, lengths, None)


def _bind(primitive, *operands, **params) -> list[Array]:
    """``primitive.bind(*operands, **params)``, once per member under ``jax.vmap`` (jax's
    cuDNN primitives have no batching rule)."""
    return sequential_vmap(lambda *args: primitive.bind(*args, **params))(*operands)


def _forward(operands, spec, save: bool):
    """cuDNN's forward pass over ``operands = (x (L, N, H_in), layer, h0, c0, lengths)``.

    Returns:
        ``(y (L, N, D*H), h_n (D, N, H), c_n (D, N, H))``, with ``save`` also what its
        backward pass reads: the flat weights ``w``, the batch-major output
        ``(N, L, D*H)`` and the reserve space (float32, cuDNN's size).
    """
    x, layer, h0, c0, lengths = operands
    w = flatten(layer)
    x_bm = jnp.swapaxes(x, 0, 1)  # (L, N, H_in) -> (N, L, H_in): the binding's layout
    y_bm, h_n, c_n, reserve = _bind(rnn.rnn_fwd_p, x_bm, h0, c0, w, lengths, **spec.params())
    out = (jnp.swapaxes(y_bm, 0, 1), h_n, c_n)  # y (N, L, D*H) -> (L, N, D*H)
    return (out, (w, y_bm, reserve)) if save else out


def _backward(residuals, cotangents, spec):
    """cuDNN's backward pass: the cotangents of ``(x, layer, h0, c0)`` from those of
    ``(y (L, N, D*H), h_n, c_n)``."""
    (x, layer, h0, c0, lengths), (w, y_bm, reserve) = residuals
    d_y, d_hn, d_cn = cotangents
    d_x, d_h0, d_c0, d_w = _bind(
        rnn.rnn_bwd_p,
        jnp.swapaxes(d_y, 0, 1),  # (L, N, D*H) -> (N, L, D*H)
        d_hn,
        d_cn,
        jnp.swapaxes(x, 0, 1),  # (L, N, H_in) -> (N, L, H_in)
        h0,
        c0,
        w,
        y_bm,
        reserve,
        lengths,
        **spec.params(),
    )
    return jnp.swapaxes(d_x, 0, 1), unflatten(d_w, layer), d_h0, d_c0  # d_x (L, N, H_in)


# The layer in cuDNN, ``_layer((x, layer, h0, c0, lengths at least 1), spec) -> (y, h_n,
# c_n)``: forward mode the scan path's, reverse mode cuDNN's backward pass.
_layer = accelerated(
    "jaxlstm_cudnn_tangent",
    _forward,
    _backward,
    lambda operands, spec: spec.plain(*operands),
    linear=4,
)
