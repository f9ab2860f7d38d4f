"""Where the benchmark runs: the device choice, and what makes a PyTorch call blocking.

On a GPU every system runs there: jaxlstm and the JAX peers on JAX's first GPU,
PyTorch on ``cuda`` (cuDNN). Kernels are launched asynchronously there, so a timed
call returns only once its device work is done: ``jax.block_until_ready`` on every
output for JAX (see ``peers.py``), :func:`torch_synchronizer` for PyTorch.

On a GPU, float32 matrix products default to TF32 on tensor cores, in JAX and in cuDNN
alike; the correctness check computes them in full float32 instead
(:func:`cudnn_full_float32` for PyTorch, ``jax.default_matmul_precision`` for JAX).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax

DEVICE_KINDS = ("cpu", "gpu")
"""The choices of ``--device``."""


class Device(NamedTuple):
    """The device every system runs on.

    Attributes:
        kind: ``"cpu"`` or ``"gpu"``.
        jax_device: the ``jax.Device`` that the JAX systems' inputs are put on.
        torch_device: PyTorch's name for it, ``"cuda"`` or ``"cpu"``.
    """

    kind: str
    jax_device: Any
    torch_device: str

    def torch_dtype(self, dtype: str) -> str:
        """The dtype PyTorch computes in when the JAX systems compute in ``dtype``.

        On CPU PyTorch stays the float32 reference (its CPU LSTM is not a bfloat16
        contender); on a GPU it computes in ``dtype``, as cuDNN does.
        """
        return dtype if self.kind == "gpu" else "float32"


def select_device(requested: str | None) -> Device:
    """The device of ``--device``: ``requested``, or the GPU when JAX's first device is one.

    Args:
        requested: ``"cpu"``, ``"gpu"``, or None for the default.

    Raises:
        ValueError: if ``"gpu"`` is asked for and JAX sees none.
    """
    first = jax.devices()[0]
    kind = requested or ("gpu" if first.platform == "gpu" else "cpu")
    if kind == "cpu":
        return Device("cpu", jax.devices("cpu")[0], "cpu")
    if first.platform != "gpu":
        raise ValueError(
            f"--device gpu: JAX sees no GPU (its devices: {jax.devices()}); install a CUDA "
            "build of jaxlib (e.g. pip install 'jax[cuda12]') or run with --device cpu"
        )
    return Device("gpu", first, "cuda")


def torch_unavailable(device: Device) -> str | None:
    """Why PyTorch cannot run on ``device`` (a CPU-only build on a GPU machine), or None."""
    import torch

    if device.kind == "gpu" and not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available())"
    return None


def torch_synchronizer(device: Device) -> Callable[[], None]:
    """What a PyTorch call on ``device`` ends with to return only when its work is done:
    ``torch.cuda.synchronize`` on a GPU, nothing on CPU (where PyTorch is synchronous)."""
    if device.kind == "gpu":
        import torch

        return torch.cuda.synchronize
    return lambda: None


@contextlib.contextmanager
def cudnn_full_float32() -> Iterator[None]:
    """Inside, cuDNN computes float32 in full float32 (``torch.backends.cudnn.allow_tf32``
    off); the setting is restored on exit."""
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def torch_matmuls_as_cudnn() -> Iterator[None]:
    """Inside, ``torch.mm`` computes float32 as cuDNN's LSTM does: TF32 (float32 matmul
    precision ``"high"``) while ``torch.backends.cudnn.allow_tf32`` is on, its default;
    the setting is restored on exit."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if torch.backends.cudnn.allow_tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
