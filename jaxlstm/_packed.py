"""``PackedSequence``: PyTorch's packed batch, emulated with a mask and static shapes.

PyTorch's ``PackedSequence`` stores ``sum(lengths)`` rows, a shape known only from the
values of the lengths, which ``jax.jit`` cannot compile. Here a packed sequence keeps
the padded, time-major array and the lengths (both PyTree leaves, so it passes through
``jit``, ``grad`` and ``vmap`` with static shapes), and shows PyTorch's view of it
(``.data``, ``.batch_sizes``, ``.sorted_indices``, ``.unsorted_indices``) computed from
them, equal element for element to what PyTorch gives.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._checks import concrete

Array = jax.Array


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
    """

    def __init__(self, padded: Array, lengths: Array, *, enforce_sorted: bool = False):
        self.padded = padded
        self.lengths = lengths
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
