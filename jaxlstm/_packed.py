"""``PackedSequence``: PyTorch's packed batch, emulated with a mask and static shapes.

PyTorch's ``PackedSequence`` stores ``sum(lengths)`` rows, a shape known only from the
values of the lengths, which ``jax.jit`` cannot compile. Here a packed sequence keeps
the padded, time-major array and the lengths (both PyTree leaves, so it passes through
``jit``, ``grad`` and ``vmap`` with static shapes), and shows PyTorch's view of it
(``.data``, ``.batch_sizes``, ``.sorted_indices``, ``.unsorted_indices``) computed from
them, equal element for element to what PyTorch gives.

PyTorch's own ``torch.nn.utils.rnn.PackedSequence`` converts to this one with
:func:`as_packed` (duck-typed: torch is never imported), which every function that takes
a packed sequence calls first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._checks import concrete, from_torch, is_torch

Array = jax.Array


def _converter(dtype: Any, note: str = "") -> Callable[[PackedSequence], PackedSequence]:
    """A ``PackedSequence`` method converting the data to ``dtype`` (``.to(dtype)``)."""

    def convert(self: PackedSequence) -> PackedSequence:
        return self.to(dtype)

    convert.__doc__ = f"The data as {jnp.dtype(dtype).name}{note}; the lengths kept."
    return convert


@jax.tree_util.register_pytree_node_class
class PackedSequence:
    """A batch of variable-length sequences (``torch.nn.utils.rnn.PackedSequence``).

    Make one with :func:`~jaxlstm.rnn.pack_sequence` or
    :func:`~jaxlstm.rnn.pack_padded_sequence`; feed it to :func:`~jaxlstm.lstm` or
    :class:`~jaxlstm.LSTM`, which give one back; unpack it with
    :func:`~jaxlstm.rnn.pad_packed_sequence`.

    Attributes:
        padded: ``(L, N, *)`` time-major data, zero past each length. ``L`` is
            ``max(lengths)`` whenever the lengths were concrete at packing time.
        lengths: ``(N,)`` integer lengths in the caller's batch order.
        enforce_sorted: static; ``True`` when packed with ``enforce_sorted=True``
            (lengths already in decreasing order; PyTorch then has no ``sorted_indices``).

    PyTorch's view is computed from these: :attr:`data`, :attr:`batch_sizes`,
    :attr:`sorted_indices`, :attr:`unsorted_indices`. The first two have shapes that
    depend on the lengths' values, so they need concrete lengths (not under ``jit``).
    As PyTorch's named tuple, it unpacks (``data, batch_sizes, sorted_indices,
    unsorted_indices = packed``) and indexes (``packed[0]`` is ``data``).

    PyTorch's conversions return a new one whose data (``padded``) is converted and whose
    lengths are kept: :meth:`to` (a dtype, a ``jax.Device`` or sharding, or both),
    :meth:`cpu`, :meth:`cuda`, and :meth:`double`, :meth:`float`, :meth:`half`,
    :meth:`bfloat16`, :meth:`long`, :meth:`int`, :meth:`short`, :meth:`char`,
    :meth:`byte`, :meth:`bool`. Dtypes follow JAX: without ``jax_enable_x64``,
    ``double()`` and ``long()`` give 32-bit data (JAX warns).
    """

    def __init__(self, padded: Array, lengths: Array, *, enforce_sorted: bool = False):
        self.padded = from_torch(padded)  # torch tensors as numpy; anything else kept
        self.lengths = from_torch(lengths)  # (PyTree unflattening passes non-arrays too)
        self.enforce_sorted = enforce_sorted

    def tree_flatten(self):
        return (self.padded, self.lengths), self.enforce_sorted

    @classmethod
    def tree_unflatten(cls, enforce_sorted: bool, children):
        return cls(*children, enforce_sorted=enforce_sorted)

    def __repr__(self) -> str:
        shape = tuple(getattr(self.padded, "shape", ()))
        return (
            f"PackedSequence(padded_shape={shape}, lengths={self.lengths}, "
            f"enforce_sorted={self.enforce_sorted})"
        )

    def _concrete_lengths(self, attr: str) -> np.ndarray:
        lengths = concrete(self.lengths)
        if lengths is None:
            raise ValueError(
                f"PackedSequence.{attr} has a shape that depends on the values of the "
                "lengths, which are traced here (inside jax.jit or a transformation). "
                "Use .padded and .lengths, or pad_packed_sequence, inside the transformation."
            )
        return lengths

    @property
    def sorted_indices(self) -> Array | None:
        """``(N,)``: the batch order by decreasing length (stable), or ``None`` when
        ``enforce_sorted``, as PyTorch."""
        if self.enforce_sorted:
            return None
        return jnp.argsort(-jnp.asarray(self.lengths), stable=True)

    @property
    def unsorted_indices(self) -> Array | None:
        """``(N,)``: the inverse permutation of :attr:`sorted_indices`, or ``None``."""
        if self.enforce_sorted:
            return None
        return jnp.argsort(self.sorted_indices)

    @property
    def batch_sizes(self) -> Array:
        """``(max(lengths),)``: how many sequences are longer than each step."""
        lengths = self._concrete_lengths("batch_sizes")
        steps = np.arange(lengths.max(initial=0))
        return jnp.asarray((lengths[None, :] > steps[:, None]).sum(axis=1))

    @property
    def data(self) -> Array:
        """``(sum(lengths), *)``: the valid rows step by step, each step's rows in
        decreasing length order (ties in the caller's order), as PyTorch packs them."""
        lengths = self._concrete_lengths("data")
        order = np.argsort(-lengths, kind="stable")
        steps = np.arange(self.padded.shape[0])
        rows = steps[:, None] < lengths[order][None, :]  # (L, N) in decreasing-length order
        return jnp.asarray(self.padded)[:, order][rows]  # (sum(lengths), *)

    def __iter__(self) -> Iterator[Array | None]:
        """Unpacks like PyTorch's named tuple: ``data, batch_sizes, sorted, unsorted``."""
        yield from (self.data, self.batch_sizes, self.sorted_indices, self.unsorted_indices)

    def __len__(self) -> int:
        return 4  # PyTorch's named tuple has four fields

    def __getitem__(self, index: int | slice) -> Any:
        """PyTorch's named-tuple indexing: ``packed[0]`` is :attr:`data`, ..."""
        return tuple(self)[index]

    def to(self, *args: Any, dtype: Any = None, device: Any = None) -> PackedSequence:
        """PyTorch's ``PackedSequence.to``: the data converted, the lengths kept.

        Args:
            *args: a dtype and/or a device, in any order, as PyTorch's ``.to(dtype)``,
                ``.to(device)``, ``.to(device, dtype)``.
            dtype: the data's new dtype: anything ``jnp.dtype`` takes, or a torch dtype
                (read by name).
            device: a ``jax.Device`` or ``jax.sharding.Sharding`` (the data is
                ``jax.device_put`` there), or a platform name as PyTorch's (``"cpu"``,
                ``"cuda"``, ``"cuda:1"``, ``"gpu"``, ``"tpu"``, or a ``torch.device``).

        Returns:
            ``self`` when nothing changes (as PyTorch), else a new
            :class:`PackedSequence` with the same lengths.
        """
        for arg in args:
            if _is_device(arg):
                device = arg
            else:
                dtype = arg
        padded = jnp.asarray(self.padded)
        if dtype is not None:
            padded = padded.astype(_as_dtype(dtype))
        if device is not None:
            device = _as_device(device)
            if isinstance(device, jax.sharding.Sharding):
                there = padded.sharding == device
            else:
                there = padded.devices() == {device}
            if not there:
                padded = jax.device_put(padded, device)
        if padded is self.padded:
            return self
        return PackedSequence(padded, self.lengths, enforce_sorted=self.enforce_sorted)

    def cpu(self) -> PackedSequence:
        """The data on the first CPU device (PyTorch's ``.cpu()``)."""
        return self.to(device="cpu")

    def cuda(self, device: int | None = None) -> PackedSequence:
        """The data on GPU ``device`` (default the first; PyTorch's ``.cuda()``)."""
        return self.to(device="cuda" if device is None else f"cuda:{device}")

    @property
    def is_cuda(self) -> bool:
        """Whether the data is on a GPU (PyTorch's ``is_cuda``)."""
        return any(d.platform == "gpu" for d in jnp.asarray(self.padded).devices())

    # PyTorch's dtype conversions (and bfloat16, bool), last: they shadow builtins' names.
    double = _converter(jnp.float64, " (float32 without jax_enable_x64)")
    float = _converter(jnp.float32)
    half = _converter(jnp.float16)
    bfloat16 = _converter(jnp.bfloat16, " (PyTorch has it on tensors only)")
    long = _converter(jnp.int64, " (int32 without jax_enable_x64)")
    int = _converter(jnp.int32)
    short = _converter(jnp.int16)
    char = _converter(jnp.int8)
    byte = _converter(jnp.uint8)
    bool = _converter(jnp.bool_, " (PyTorch has it on tensors only)")


def _is_device(arg: Any) -> bool:
    """Whether a ``.to()`` argument names a device rather than a dtype."""
    if isinstance(arg, (jax.Device, jax.sharding.Sharding)):
        return True
    if is_torch(arg):
        return type(arg).__name__ == "device"
    return isinstance(arg, str) and arg.partition(":")[0] in _PLATFORMS


_PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "tpu": "tpu"}


def _as_device(device: Any) -> Any:
    """A ``jax.Device`` or sharding from a ``.to()`` device argument."""
    if isinstance(device, (jax.Device, jax.sharding.Sharding)):
        return device
    platform, _, index = str(device).partition(":")
    if platform not in _PLATFORMS:
        raise ValueError(
            "device must be a jax.Device, a jax.sharding.Sharding or one of "
            f"'cpu', 'cuda[:i]', 'gpu[:i]', 'tpu[:i]', got {device!r}"
        )
    return jax.devices(_PLATFORMS[platform])[int(index or 0)]


def _as_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype from anything ``jnp.dtype`` takes, or a torch dtype (by its name)."""
    if is_torch(dtype):
        dtype = str(dtype).removeprefix("torch.")
    try:
        return jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a dtype (e.g. jnp.float64 or 'float64'), got {dtype!r}"
        ) from None


def as_packed(sequence: Any) -> Any:
    """PyTorch's ``torch.nn.utils.rnn.PackedSequence`` as a :class:`PackedSequence`
    (same sequences, same order, ``enforce_sorted`` when it has no ``sorted_indices``);
    anything else as it is. Duck-typed: torch is never imported."""
    if not (is_torch(sequence) and type(sequence).__name__ == "PackedSequence"):
        return sequence
    data = from_torch(sequence.data)  # (sum(lengths), *), step by step, longest first
    batch_sizes = from_torch(sequence.batch_sizes)  # (T,)
    batch = int(batch_sizes[0]) if batch_sizes.size else 0
    rows = np.arange(batch)[None, :] < batch_sizes[:, None]  # (T, N): valid, sorted order
    padded = np.zeros(rows.shape + data.shape[1:], data.dtype)  # (T, N, *)
    padded[rows] = data
    lengths = rows.sum(axis=0)  # (N,), sorted order
    if sequence.unsorted_indices is not None:
        unsorted = from_torch(sequence.unsorted_indices)
        padded, lengths = padded[:, unsorted], lengths[unsorted]  # the caller's order
    return PackedSequence(
        jnp.asarray(padded),
        jnp.asarray(lengths, jnp.int32),
        enforce_sorted=sequence.sorted_indices is None,
    )
