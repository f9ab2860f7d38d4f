"""Round-robin timing of blocking thunks."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_round_robin(
    thunks: dict[Any, Callable[[], Any]],
    *,
    reps: int,
    warmup: int,
    progress: Any,
    settle: bool = False,
) -> dict[Any, np.ndarray]:
    """Times each thunk ``reps`` times, interleaved, after ``warmup`` untimed calls each.

    Round ``r`` calls the thunks in their order rotated by ``r``, so a slow spell of the
    machine falls on all of them and no thunk always runs first. The garbage collector
    is paused while timing. Each thunk must block until its work is done, on the device
    too (``jax.block_until_ready``, ``torch.cuda.synchronize``: see ``devices.py``).

    With ``settle``, a thunk that is not the one timed just before it is first called once
    untimed: each system's pass is timed in its own steady state, as in a loop of its own
    calls, not in the wake of another's. (PyTorch's libgomp workers spin on a core for
    milliseconds after their work, which slowed the next system's call by up to 60%, and
    go to sleep when not called, which slows PyTorch's next call; a large XLA program's
    clean-up slowed the next one by up to 40%; settled per system only, jaxlstm's and
    PyTorch's typical forward+backward, timed right after their own forward, ran 10% and
    5-9% slower.)

    Args:
        thunks: the callables to time, by key.
        reps: timed calls of each.
        warmup: untimed calls of each, first.
        progress: a progress bar, advanced once per timed call.
        settle: call a thunk once untimed before its timed call when another thunk was
            timed just before it.

    Returns:
        Milliseconds per call, ``(reps,)`` per key.
    """
    for thunk in thunks.values():
        for _ in range(warmup):
            thunk()
            progress.update()
    keys = list(thunks)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    previous = None
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                if settle and key != previous:
                    thunks[key]()  # settle: the first call after another thunk's
                previous = key
                start = time.perf_counter()
                thunks[key]()
                times[key].append((time.perf_counter() - start) * 1e3)
                progress.update()
    finally:
        gc.enable()
    return {k: np.asarray(v) for k, v in times.items()}
