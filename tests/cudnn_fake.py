"""jax's cuDNN LSTM primitives on a CPU, computed by ``jax.experimental.rnn.lstm_ref``.

:func:`emulated_cudnn` gives ``rnn_fwd`` and ``rnn_bwd`` (the very primitives
:mod:`jaxlstm._cudnn` binds, with no batching rule and no derivative rules of their own,
as on a GPU) a CPU lowering: the forward pass is ``lstm_ref`` on the flat weights
unpacked by ``unpack_lstm_weights``, the backward pass that function's ``jax.vjp``, so
``impl="cudnn"`` runs its whole structure (weight layout, operand order, flat weight
gradient, reserve space, custom JVP, tangent primitive, ``vmap``) on a machine without a
GPU. ``lstm_ref`` stands for what cuDNN computes; the binding is never given a length of
0, where it is wrong (``tests/test_cudnn.py``). Used by ``tests/test_cudnn.py`` and by
``benchmarks/scripts/gpu_check.py --cpu-dry-run``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir
from jax.experimental import rnn
from jax.interpreters.mlir import lower_fun, register_lowering
from jaxlib import gpu_rnn

from jaxlstm import _cudnn

RESERVE = 3  # the emulated reserve space's size (float32 elements)


def reference(x, h0, c0, w, lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """``lstm_ref`` on the flat weights ``w``: ``(y (N, L, D*H), h_n, c_n)``."""
    weights = rnn.unpack_lstm_weights(w, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(
        x, h0, c0, *weights, lengths, input_size, hidden_size, num_layers, 0.0, bidirectional
    )


@contextlib.contextmanager
def emulated_cudnn() -> Iterator[dict[str, int]]:
    """A context in which ``impl="cudnn"`` runs on the CPU (see the module docstring).

    Yields a counter: ``["forward"]`` and ``["backward"]`` count the lowerings of each
    primitive (``["backward"] > 0``: reverse mode took cuDNN's backward pass). JAX's
    caches are cleared on the way in and out.
    """
    calls = {"forward": 0, "backward": 0}

    def forward(x, h0, c0, w, lengths, *, dropout, cudnn_allow_tf32, **sizes):
        calls["forward"] += 1
        y, h_n, c_n = reference(x, h0, c0, w, lengths, **sizes)
        return y, h_n, c_n, jnp.zeros((RESERVE,), jnp.float32)

    def backward(dy, dhn, dcn, x, h0, c0, w, y, reserve, lengths, **params):
        calls["backward"] += 1
        del y, reserve, params["dropout"], params["cudnn_allow_tf32"]
        _, vjp = jax.vjp(lambda *a: reference(*a, lengths, **params), x, h0, c0, w)
        return vjp((dy, dhn, dcn))

    cpu = mlir._platform_specific_lowerings["cpu"]  # to restore: jax has no unregistering
    saved = {p: cpu.get(p) for p in (rnn.rnn_fwd_p, rnn.rnn_bwd_p)}
    sizes = getattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes", None)
    missing = _cudnn.missing
    register_lowering(rnn.rnn_fwd_p, lower_fun(forward, multiple_results=True), platform="cpu")
    register_lowering(rnn.rnn_bwd_p, lower_fun(backward, multiple_results=True), platform="cpu")
    gpu_rnn.compute_rnn_workspace_reserve_space_sizes = lambda *args: (0, RESERVE)
    _cudnn.missing = lambda: ""
    jax.clear_caches()
    try:
        yield calls
    finally:
        jax.clear_caches()
        _cudnn.missing = missing
        if sizes is None:
            del gpu_rnn.compute_rnn_workspace_reserve_space_sizes
        else:
            gpu_rnn.compute_rnn_workspace_reserve_space_sizes = sizes
        for primitive, rule in saved.items():
            if rule is None:
                del cpu[primitive]
            else:
                cpu[primitive] = rule
