"""Packing helpers that mirror ``torch.nn.utils.rnn``, with static shapes.

Code written as ``import torch.nn.utils.rnn as rnn`` ports as ``import jaxlstm.rnn as
rnn``. A :class:`PackedSequence` here holds padded, time-major data plus the lengths, so
every function below runs under ``jax.jit`` when its output shape does not depend on the
lengths' values; where the values are concrete, the results equal PyTorch's element for
element.

Differences from PyTorch, all deliberate:

* Length 0 is allowed (PyTorch refuses it): the sequence adds no rows to ``.data``,
  unpacks to an empty ``(0, *)`` array, and pads to ``padding_value``.
* Sorting by length is stable (ties keep the caller's order), as PyTorch's is whenever
  the lengths are distinct or ``N <= 16``.
* Torch tensors are accepted wherever an array is, and PyTorch's own ``PackedSequence``
  wherever a packed sequence is (converted; torch is never imported otherwise); the
  results are JAX arrays and jaxlstm ``PackedSequence``s.
* Under ``jax.jit`` (traced lengths) the padded length of :func:`pad_packed_sequence`
  is the packed sequence's padded length, which equals ``max(lengths)`` whenever the
  lengths were concrete at packing time; ``enforce_sorted`` and range checks need
  concrete lengths and are skipped on traced ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._checks import (
    as_array,
    check_int,
    check_lengths,
    check_number,
    concrete,
)
from jaxlstm._packed import PackedSequence, as_packed

Array = jax.Array

__all__ = [
    "PackedSequence",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "unpack_sequence",
    "unpad_sequence",
]


def _valid(seq_len: int, lengths: Array) -> Array:
    """``(L, N)`` mask, ``True`` at step ``t`` of sequence ``n`` when ``t < lengths[n]``."""
    return jnp.arange(seq_len)[:, None] < lengths[None, :]


def _where_valid(x: Array, lengths: Array, value: Any) -> Array:
    """``x (L, N, *)`` with every step past its sequence's length set to ``value``."""
    valid = _valid(x.shape[0], lengths).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
    return jnp.where(valid, x, jnp.asarray(value, x.dtype))


def pack_padded_sequence(
    input: Array, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """Packs a padded batch of variable-length sequences.

    Args:
        input: ``(L, N, *)``, or ``(N, L, *)`` with ``batch_first``. ``N = 0`` or an
            empty ``*`` is refused (PyTorch's ``Cannot pack empty tensors.``); ``L = 0``
            is a batch of length-0 sequences, allowed as length 0 is.
        lengths: ``(N,)`` integers (list, array or torch tensor) in ``[0, L]``, in the
            batch's order.
        batch_first: whether ``input`` is batch-major.
        enforce_sorted: when ``True``, ``lengths`` must be in decreasing order (checked
            when concrete) and ``sorted_indices`` is ``None``, as in PyTorch.

    Returns:
        A :class:`PackedSequence` (padded to ``max(lengths)`` when ``lengths`` is concrete).

    Example:
        >>> packed = pack_padded_sequence(jnp.ones((4, 2, 5)), [4, 2])
        >>> packed.data.shape, packed.batch_sizes.tolist()
        ((6, 5), [2, 2, 1, 1])
    """
    x = as_array("input", input)
    if x.ndim < 2:
        raise ValueError(
            f"input must have at least 2 dimensions (L, N, *), got {x.ndim}D of shape {x.shape}"
        )
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (N, L, *) -> (L, N, *)
    if x.shape[1] == 0 or 0 in x.shape[2:]:  # no sequences, or no features: PyTorch's words
        raise ValueError("Cannot pack empty tensors.")
    lengths = check_lengths(lengths, batch=x.shape[1], max_len=x.shape[0])
    values = concrete(lengths)
    if values is not None:
        if enforce_sorted and np.any(np.diff(values) > 0):
            raise ValueError(
                "`lengths` array must be sorted in decreasing order when `enforce_sorted` "
                "is True. You can pass `enforce_sorted=False` to pack_padded_sequence and/or "
                "pack_sequence to sidestep this requirement."
            )
        x = x[: values.max(initial=0)]  # (max(lengths), N, *), as PyTorch's packed view
    return PackedSequence(_where_valid(x, lengths, 0), lengths, enforce_sorted=enforce_sorted)


def pad_packed_sequence(
    sequence: PackedSequence,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[Array, Array]:
    """Unpacks a :class:`PackedSequence` into a padded batch (the inverse of packing).

    Args:
        sequence: the packed batch (jaxlstm's, or PyTorch's, converted).
        batch_first: return ``(N, T, *)`` instead of ``(T, N, *)``.
        padding_value: the value past each length.
        total_length: pad to this many steps; at least the longest length.

    Returns:
        ``(padded, lengths)``: ``padded (T, N, *)`` (or ``(N, T, *)``) with
        ``T = total_length or max(lengths)``, and ``lengths (N,)`` in the caller's order.
    """
    sequence = as_packed(sequence)
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"sequence must be a PackedSequence, got {type(sequence).__name__}")
    check_number("padding_value", padding_value)
    x, lengths = jnp.asarray(sequence.padded), sequence.lengths
    values = concrete(lengths)
    longest = x.shape[0] if values is None else int(values.max(initial=0))
    if total_length is not None:
        check_int("total_length", total_length, minimum=None)
        if total_length < longest:  # negative ones too, as PyTorch
            raise ValueError(
                "Expected total_length to be at least the length of the longest sequence "
                f"in input, but got total_length={total_length} and max sequence length "
                f"being {longest}"
            )
        longest = total_length
    x = x[:longest]
    if longest > x.shape[0]:
        pad = [(0, longest - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
        x = jnp.pad(x, pad)  # (T, N, *)
    x = _where_valid(x, lengths, padding_value)
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (T, N, *) -> (N, T, *)
    return x, lengths


def pad_sequence(
    sequences: Iterable[Array] | Array,
    batch_first: bool = False,
    padding_value: float = 0.0,
    padding_side: str = "right",
) -> Array:
    """Stacks variable-length sequences into one padded array.

    Args:
        sequences: ``N`` arrays of shape ``(L_i, *)`` with the same trailing shape (any
            iterable), or one ``(N, L, *)`` array, iterated over its first axis, as PyTorch.
        batch_first: return ``(N, L, *)`` instead of ``(L, N, *)``; ``L = max(L_i)``.
        padding_value: the value of the padding.
        padding_side: ``"right"`` (padding after each sequence) or ``"left"`` (before).

    Returns:
        ``(L, N, *)``, or ``(N, L, *)`` with ``batch_first``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(
            f"Expected padding_side to be one of left or right, but got {padding_side}."
        )
    check_number("padding_value", padding_value)
    seqs = _as_sequence_list(sequences)
    longest = max(s.shape[0] for s in seqs)
    dtype = jnp.result_type(*seqs)

    def pad(s: Array) -> Array:
        gap = (0, longest - s.shape[0]) if padding_side == "right" else (longest - s.shape[0], 0)
        return jnp.pad(
            s.astype(dtype), [gap] + [(0, 0)] * (s.ndim - 1), constant_values=padding_value
        )

    return jnp.stack([pad(s) for s in seqs], axis=0 if batch_first else 1)


def pack_sequence(
    sequences: Iterable[Array] | Array, enforce_sorted: bool = True
) -> PackedSequence:
    """Packs a list of variable-length sequences ``(L_i, *)`` (or an ``(N, L, *)`` array).

    Equivalent to ``pack_padded_sequence(pad_sequence(sequences), [len(s) for s in
    sequences], enforce_sorted=enforce_sorted)``.

    Example:
        >>> packed = pack_sequence([jnp.ones((10, 5)), jnp.ones((8, 5))])
        >>> packed.data.shape, packed.batch_sizes.shape
        ((18, 5), (10,))
    """
    seqs = _as_sequence_list(sequences)
    return pack_padded_sequence(
        pad_sequence(seqs), [s.shape[0] for s in seqs], enforce_sorted=enforce_sorted
    )


def unpack_sequence(packed_sequences: PackedSequence) -> list[Array]:
    """The list of sequences ``(L_i, *)`` in a :class:`PackedSequence` (jaxlstm's or
    PyTorch's), in the caller's order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)


def unpad_sequence(padded_sequences: Array, lengths: Any, batch_first: bool = False) -> list[Array]:
    """Splits a padded batch into its sequences ``(L_i, *)`` (needs concrete lengths).

    Args:
        padded_sequences: ``(L, N, *)``, or ``(N, L, *)`` with ``batch_first``.
        lengths: ``(N,)`` integers in ``[0, L]``.
        batch_first: whether ``padded_sequences`` is batch-major.
    """
    x = as_array("padded_sequences", padded_sequences)
    if x.ndim < 2:
        raise ValueError(f"padded_sequences must have at least 2 dimensions, got {x.ndim}D")
    if not batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (L, N, *) -> (N, L, *)
    checked = check_lengths(lengths, batch=x.shape[0], max_len=x.shape[1])
    values = concrete(checked)
    if values is None:
        raise ValueError(
            "unpad_sequence returns arrays whose shapes are the lengths' values, so it needs "
            "concrete lengths (not traced inside jax.jit)"
        )
    return [x[i, :n] for i, n in enumerate(values.tolist())]


def _as_sequence_list(sequences: Any) -> list[Array]:
    """The sequences of a list (any iterable) of arrays or of one stacked array."""
    if isinstance(sequences, PackedSequence):
        raise TypeError(
            "sequences must be a list of arrays (L_i, *), got a PackedSequence (unpack it "
            "with unpack_sequence or pad_packed_sequence)"
        )
    if not isinstance(sequences, Iterable):
        raise TypeError(  # PyTorch's words
            "pad_sequence: Expected iterable for input sequences, but got arg of type: "
            f"{type(sequences)}"
        )
    # A list, any iterable, or one (N, L, *) array (iterated over its rows, as PyTorch).
    seqs = [as_array(f"sequences[{i}]", s) for i, s in enumerate(sequences)]
    if not seqs:
        raise ValueError("received an empty list of sequences")  # PyTorch's words
    trailing = {s.shape[1:] for s in seqs}
    if any(s.ndim < 1 for s in seqs) or len(trailing) != 1:
        raise ValueError(
            "sequences must all have shape (L_i, *) with the same trailing shape *, got "
            f"{[tuple(s.shape) for s in seqs]}"
        )
    return seqs
