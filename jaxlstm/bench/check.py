"""The correctness gate: a peer whose output or input gradient differs from jaxlstm's
is stopped, never timed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jaxlstm.bench.configs import Config
    from jaxlstm.bench.peers import Runner

TOLERANCE = 1e-4
"""Largest float32 difference from jaxlstm accepted, relative to ``max(1, max|jaxlstm|)``."""


class OutputMismatchError(RuntimeError):
    """A peer's output or input gradient differs from jaxlstm's beyond :data:`TOLERANCE`."""


def results(runner: Runner) -> tuple[np.ndarray, np.ndarray]:
    """Runs both passes once: the output and the input gradient, as float32 numpy."""

    def numpy(a: Any) -> np.ndarray:
        if hasattr(a, "detach"):  # a PyTorch tensor, perhaps bfloat16, perhaps on a GPU
            a = a.detach().float().cpu().numpy()
        return np.asarray(a, np.float32)

    return numpy(runner.forward()), numpy(runner.forward_backward())


def check_outputs(
    peer: str,
    config: Config,
    got: Runner,
    want: tuple[np.ndarray, np.ndarray],
    tolerance: float = TOLERANCE,
) -> None:
    """Checks a peer's output and input gradient against jaxlstm's.

    Args:
        peer: the peer's name, for the message.
        config: the configuration, for the message.
        got: the peer, built in float32 (full float32 matrix products).
        want: jaxlstm's :func:`results` in float32 on the same weights and input.
        tolerance: relative tolerance (of ``max(1, max|jaxlstm|)``).

    Raises:
        OutputMismatchError: on a shape mismatch, or a difference above
            ``tolerance * max(1, max|jaxlstm|)``.
    """
    for what, g, w in zip(("output", "input gradient"), results(got), want, strict=True):
        if g.shape != w.shape:
            raise OutputMismatchError(
                f"{peer} disagrees with jaxlstm on config {config.name!r} ({config.shape}): "
                f"{what} shape {g.shape}, jaxlstm's {w.shape}"
            )
        error = float(np.max(np.abs(g - w)))
        bound = tolerance * max(1.0, float(np.max(np.abs(w))))
        if not error <= bound:
            raise OutputMismatchError(
                f"{peer} disagrees with jaxlstm on config {config.name!r} ({config.shape}): "
                f"{what} max |difference| {error:.3g} > tolerance {bound:.3g} (float32). "
                "Its weight conversion or its semantics differ, so it is not timed."
            )
