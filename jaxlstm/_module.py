"""``LSTM`` and ``LSTMCell``: ``torch.nn``-shaped facades over the pure functions.

Each is a PyTree whose only leaves are its parameters; the configuration is static
auxiliary data, so ``jax.jit(lambda m, x: m(x))(module, x)`` and ``jax.grad`` over a
module work, and a new module with the same configuration does not retrace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._cell import lstm_cell
from jaxlstm._checks import check_dropout, check_matmul_dtype, check_sizes
from jaxlstm._lstm import State, lstm
from jaxlstm._packed import PackedSequence
from jaxlstm._params import (
    CellParams,
    Params,
    check_state_dict,
    init_cell_params,
    init_params,
    params_from_torch,
    params_to_torch,
)

Array = jax.Array

DEFAULT_KEY = 0
"""Seed of the key used when a module is built with ``key=None`` (so examples run)."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as PyTorch (always empty: loading is strict)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _key(key: Array | None) -> Array:
    return jax.random.key(DEFAULT_KEY) if key is None else key


class _Module:
    """State-dict plumbing shared by :class:`LSTM` and :class:`LSTMCell`."""

    params: Any

    def state_dict(self) -> dict[str, np.ndarray]:
        """PyTorch's ``state_dict``: PyTorch names to numpy arrays."""
        return params_to_torch(self.params)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> IncompatibleKeys:
        """Loads PyTorch-named arrays in place, strictly, cast to this module's dtype.

        Raises:
            ValueError: on a missing, unexpected or mis-shaped key (named).
        """
        current = params_to_torch(self.params)
        check_state_dict(state_dict, {k: v.shape for k, v in current.items()})
        dtype = next(iter(current.values())).dtype
        self.params = jax.tree_util.tree_map(
            lambda a: a.astype(dtype), params_from_torch(state_dict)
        )
        return IncompatibleKeys([], [])

    def tree_flatten(self):
        return (self.params,), self._static

    @classmethod
    def tree_unflatten(cls, static, children):
        module = object.__new__(cls)
        module._static = static
        (module.params,) = children
        return module

    def __repr__(self) -> str:
        return type(self).__name__ + "(" + ", ".join(self._repr_fields()) + ")"

    # Not an array. Reading it as one (``nnx.Param(lstm)[...]``) means it sits in a flax
    # nnx Module, where it does not train: say so, and what does.
    def __getitem__(self, index: Any) -> Any:
        name = type(self).__name__
        raise TypeError(
            f"'{name}' object is not subscriptable. In a flax nnx Module use "
            f"jaxlstm.flax.{name}, whose weights are nnx.Params; this PyTree facade does "
            "not train there (nnx.data(...) freezes it; nnx.Param(...) fails in "
            "nnx.Optimizer with optax.adam)"
        )

    __iter__ = None  # __getitem__ must not make it iterable


class _LSTMOptions(NamedTuple):
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int
    matmul_dtype: Any


@jax.tree_util.register_pytree_node_class
class LSTM(_Module):
    """``torch.nn.LSTM`` as a PyTree: same constructor, same call, same shapes.

    Its parameters train wherever every array of a PyTree does (``jax.grad``, optax,
    equinox). In flax, use :class:`jaxlstm.flax.LSTM` (nnx) or :class:`jaxlstm.flax.LinenLSTM`:
    an nnx Module trains only its ``nnx.Param``s, which this facade's arrays are not.

    Args:
        input_size: ``H_in``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        bias: whether to have ``b_ih`` and ``b_hh``.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: dropout probability on the outputs of every layer but the last,
            applied only when the call is given a ``key`` (PyTorch's ``train()``).
        bidirectional: run each layer both ways (``D = 2``).
        proj_size: ``P > 0`` projects ``h`` to size ``P``.
        key: a ``jax.random`` key for the initial weights; ``None`` uses
            ``jax.random.key(DEFAULT_KEY)`` (``0``).
        dtype: dtype of the weights.
        matmul_dtype: opt-in reduced-precision matmuls, e.g. ``jnp.bfloat16`` (see
            :func:`~jaxlstm.lstm`); ``None`` computes PyTorch's numbers.

    Attributes:
        params: ``params[layer][direction]`` of :class:`~jaxlstm.LayerParams`, the only
            PyTree leaves.

    Example:
        >>> lstm = LSTM(input_size=5, hidden_size=3)
        >>> hs, (h_n, c_n) = lstm(jnp.ones((10, 1, 5)))
        >>> hs.shape
        (10, 1, 3)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        key: Array | None = None,
        dtype: Any = jnp.float32,
        matmul_dtype: Any = None,
    ):
        check_sizes(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            proj_size=proj_size,
        )
        if matmul_dtype is not None:
            matmul_dtype = check_matmul_dtype(matmul_dtype)
        dropout = check_dropout(dropout, num_layers)
        self._static = _LSTMOptions(
            input_size,
            hidden_size,
            num_layers,
            bool(bias),
            bool(batch_first),
            dropout,
            bool(bidirectional),
            proj_size,
            matmul_dtype,
        )
        self.params: Params = init_params(
            _key(key),
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            bidirectional=bidirectional,
            proj_size=proj_size,
            dtype=dtype,
        )

    def __call__(
        self,
        input: Array | PackedSequence,
        hx: State | None = None,
        *,
        lengths: Array | None = None,
        key: Array | None = None,
        checkpoint_every: int | None = None,
        impl: str = "auto",
    ) -> tuple[Array | PackedSequence, State]:
        """Runs :func:`~jaxlstm.lstm` with this module's parameters and options.

        Args:
            input: ``(L, N, H_in)`` (``(N, L, H_in)`` if ``batch_first``), ``(L, H_in)``
                unbatched, or a :class:`~jaxlstm.PackedSequence`.
            hx: optional ``(h_0 (D*num_layers, N, H_out), c_0 (D*num_layers, N, H))``.
            lengths: optional ``(N,)`` valid lengths (see :func:`~jaxlstm.lstm`).
            key: dropout key; ``None`` means no dropout (PyTorch's ``eval()``).
            checkpoint_every: bounded-memory gradients (see :func:`~jaxlstm.lstm`).
            impl: ``"auto"``, ``"scan"`` or ``"cpu_kernel"`` (see :func:`~jaxlstm.lstm`).

        Returns:
            ``(output, (h_n, c_n))`` as :func:`~jaxlstm.lstm`.
        """
        o = self._static
        return lstm(
            self.params,
            input,
            hx,
            lengths=lengths,
            batch_first=o.batch_first,
            dropout=o.dropout if key is not None else 0.0,
            key=key,
            matmul_dtype=o.matmul_dtype,
            checkpoint_every=checkpoint_every,
            impl=impl,
        )

    def _repr_fields(self):
        o = self._static
        defaults = _LSTMOptions(0, 0, 1, True, False, 0.0, False, 0, None)
        yield f"{o.input_size}, {o.hidden_size}"
        for name in (
            "proj_size",
            "num_layers",
            "bias",
            "batch_first",
            "dropout",
            "bidirectional",
            "matmul_dtype",
        ):  # PyTorch's order
            if getattr(o, name) != getattr(defaults, name):
                yield f"{name}={getattr(o, name)}"

    def __getattr__(self, name: str) -> Any:
        if name in _LSTMOptions._fields:
            return getattr(self._static, name)
        raise AttributeError(f"'LSTM' object has no attribute {name!r}")


class _CellOptions(NamedTuple):
    input_size: int
    hidden_size: int
    bias: bool


@jax.tree_util.register_pytree_node_class
class LSTMCell(_Module):
    """``torch.nn.LSTMCell`` as a PyTree (in flax nnx, use :class:`jaxlstm.flax.LSTMCell`).

    Args:
        input_size: ``H_in``.
        hidden_size: ``H``.
        bias: whether to have ``b_ih`` and ``b_hh``.
        key: a ``jax.random`` key for the weights; ``None`` uses
            ``jax.random.key(DEFAULT_KEY)``.
        dtype: dtype of the weights.

    Attributes:
        params: :class:`~jaxlstm.CellParams`.

    Example:
        >>> cell = LSTMCell(10, 20)
        >>> h, c = cell(jnp.ones((3, 10)))
        >>> h.shape
        (3, 20)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: Array | None = None,
        dtype: Any = jnp.float32,
    ):
        check_sizes(input_size=input_size, hidden_size=hidden_size)
        self._static = _CellOptions(input_size, hidden_size, bool(bias))
        self.params: CellParams = init_cell_params(
            _key(key), input_size, hidden_size, bias=bias, dtype=dtype
        )

    def __call__(self, input: Array, hx: State | None = None) -> State:
        """One step: ``input (N, H_in)`` or ``(H_in,)`` -> ``(h_1, c_1)``, each ``(N, H)``."""
        return lstm_cell(self.params, input, hx)

    def _repr_fields(self):
        yield f"{self._static.input_size}, {self._static.hidden_size}"
        if not self._static.bias:
            yield "bias=False"

    def __getattr__(self, name: str) -> Any:
        if name in _CellOptions._fields:
            return getattr(self._static, name)
        raise AttributeError(f"'LSTMCell' object has no attribute {name!r}")
