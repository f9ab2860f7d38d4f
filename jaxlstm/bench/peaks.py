"""The matmul peaks that the LSTMs' GFLOP/s are a fraction of, measured in the same run,
on the run's device, in the dtype each framework computes in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm.bench.devices import Device, torch_matmuls_as_cudnn, torch_synchronizer
from jaxlstm.bench.timing import time_round_robin

PEAK_REPS = 5
"""Timed calls of each framework's matmul; the best one counts."""

PEAK_SIZE = {"cpu": {False: 2048, True: 1024}, "gpu": {False: 8192, True: 4096}}
"""The side of the square matmul, by device kind and ``--quick``: on a GPU, large enough
that the launch is a small part of the time."""


def matmul_peaks(
    frameworks: Iterable[str], *, size: int, dtype: str, device: Device, progress: Any
) -> dict[str, float]:
    """Best GFLOP/s of a ``size x size`` matmul on ``device``.

    Args:
        frameworks: ``"jax"`` (a jitted ``jnp.dot`` in ``dtype``) and/or ``"torch"``
            (``torch.mm`` in ``device.torch_dtype(dtype)``).
        size: the side of the square matrices.
        dtype: the run's ``--dtype``.
        device: where the products run. On a GPU, float32 products take each
            framework's LSTM default, TF32 (:func:`torch_matmuls_as_cudnn` for
            ``torch.mm``).
        progress: a progress bar, advanced once per call.

    Returns:
        GFLOP/s by framework.
    """
    thunks: dict[str, Callable[[], Any]] = {}
    if "jax" in frameworks:
        a = jax.device_put(jnp.ones((size, size), dtype), device.jax_device)
        dot = jax.jit(jnp.dot).lower(a, a).compile()
        thunks["jax"] = lambda: jax.block_until_ready(dot(a, a))
    if "torch" in frameworks:
        import torch

        t = torch.ones(
            size, size, device=device.torch_device, dtype=getattr(torch, device.torch_dtype(dtype))
        )
        synchronize = torch_synchronizer(device)

        def mm():
            torch.mm(t, t)
            synchronize()

        thunks["torch"] = mm
    gpu_torch = "torch" in frameworks and device.kind == "gpu"
    with torch_matmuls_as_cudnn() if gpu_torch else contextlib.nullcontext():
        times = time_round_robin(thunks, reps=PEAK_REPS, warmup=1, progress=progress)
    return {k: 2 * size**3 / (float(np.min(ms)) * 1e-3) / 1e9 for k, ms in times.items()}
