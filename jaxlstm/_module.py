"""``LSTM`` and ``LSTMCell``: ``torch.nn``-shaped facades over the pure functions.

Each is a PyTree whose only leaves are its parameters; the configuration is static
auxiliary data, so ``jax.jit(lambda m, x: m(x))(module, x)`` and ``jax.grad`` over a
module work, and a new module with the same configuration does not retrace.

Construction needs a ``key`` for the initial weights (JAX's convention, as in equinox
and flax nnx), where PyTorch draws from its global generator: a fixed default would give
two same-shaped layers the same weights, so a missing key is a ``TypeError`` that shows
the fix. Internal constructions (``tree_unflatten``, ``jax.export``) bypass ``__init__``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._cell import lstm_cell
from jaxlstm._checks import check_bool, check_dropout, check_matmul_dtype, check_sizes
from jaxlstm._lstm import State, lstm
from jaxlstm._packed import PackedSequence
from jaxlstm._params import (
    TORCH_NAME,
    CellParams,
    Params,
    check_state_dict,
    init_cell_params,
    init_params,
    named_arrays,
    params_from_torch,
    params_to_torch,
)

Array = jax.Array


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as PyTorch: the keys it did not load (with
    ``strict=False``; always empty when strict)."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"  # PyTorch's
        return (
            f"IncompatibleKeys(missing_keys={self.missing_keys!r}, "
            f"unexpected_keys={self.unexpected_keys!r})"
        )


def _key(key: Array | None, example: str) -> Array:
    """The key for a facade's initial weights; a missing one is refused with the fix."""
    if key is None:
        name = example.split("(", 1)[0]
        raise TypeError(
            f"{name} needs a key for its initial weights: jl.{example} (a fixed default "
            "would give two same-shaped layers the same weights)"
        )
    return key


class _Module:
    """State-dict plumbing shared by :class:`LSTM` and :class:`LSTMCell`."""

    params: Any
    _static_fields: tuple[str, ...] = ()  # the options, read as attributes

    def state_dict(self) -> dict[str, np.ndarray]:
        """PyTorch's ``state_dict``: PyTorch names to numpy arrays."""
        return params_to_torch(self.params)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Loads PyTorch-named arrays in place, cast to this module's dtype (PyTorch's
        ``load_state_dict``; the one way to set weights by their PyTorch names).

        Args:
            state_dict: PyTorch names to numpy arrays, JAX arrays or torch tensors.
            strict: when ``True`` (default), a missing or unexpected key is refused;
                when ``False``, the keys that match are loaded, the others are reported.

        Returns:
            ``IncompatibleKeys(missing_keys, unexpected_keys)``, as PyTorch's.

        Raises:
            ValueError: on a mis-shaped key, or (``strict``) a missing or unexpected one
                (named).
        """
        check_bool("strict", strict)
        current = params_to_torch(self.params)
        missing, unexpected = check_state_dict(
            state_dict, {k: v.shape for k, v in current.items()}, strict=strict
        )
        loaded = {k: state_dict.get(k, v) for k, v in current.items()}
        dtype = next(iter(current.values())).dtype
        self.params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params_from_torch(loaded))
        return IncompatibleKeys(missing, unexpected)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """PyTorch's ``named_parameters()``: ``(name, array)`` in PyTorch's order.

        Args:
            prefix: prepended to each name with a dot (``"lstm"`` -> ``"lstm.weight_ih_l0"``).

        Yields:
            ``(name, array)``: ``weight_ih_l0 (4H, H_in)``, ``weight_hh_l0 (4H, H_out)``, ...,
            the JAX arrays of :attr:`params` (read-only views: set weights with
            :meth:`load_state_dict` or by replacing ``params``).
        """
        for name, array in named_arrays(self.params).items():
            yield (f"{prefix}.{name}" if prefix else name), array

    def parameters(self) -> Iterator[Array]:
        """PyTorch's ``parameters()``: the arrays of :meth:`named_parameters`, same order."""
        for _, array in self.named_parameters():
            yield array

    def __getattr__(self, name: str) -> Any:
        """The options (``hidden_size``, ...) and the weights by PyTorch's names
        (``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``, ``weight_ih``, ...)."""
        if name in self._static_fields:
            return getattr(self._static, name)
        if not name.startswith("_") and name != "params":
            weights = named_arrays(self.params)
            if name in weights:
                return weights[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._static_fields or TORCH_NAME.fullmatch(name):
            raise AttributeError(
                f"{type(self).__name__}.{name} is read-only: the module is an immutable "
                "PyTree configuration; load weights by PyTorch name with "
                "load_state_dict({...}, strict=False), or replace .params "
                "(params[layer][direction].w_ih, ...)"
            )
        object.__setattr__(self, name, value)

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
        key: a ``jax.random`` key for the initial weights (required, keyword-only:
            ``key=jax.random.key(0)``; give two layers two keys). Without it, a
            ``TypeError`` shows the fix.
        dtype: dtype of the weights.
        matmul_dtype: opt-in reduced-precision matmuls, e.g. ``jnp.bfloat16`` (see
            :func:`~jaxlstm.lstm`); ``None`` computes PyTorch's numbers.

    ``bias``, ``batch_first`` and ``bidirectional`` must be of type ``bool`` (PyTorch's
    ``TypeError: bias should be of type bool, got: str``).

    Attributes:
        params: ``params[layer][direction]`` of :class:`~jaxlstm.LayerParams`, the only
            PyTree leaves.
        weight_ih_l0: and every other PyTorch name (``weight_hh_l0_reverse``,
            ``bias_ih_l1``, ``weight_hr_l0``, ...): that array of :attr:`params`,
            read-only (see also :meth:`named_parameters` and :attr:`all_weights`).

    Example:
        >>> lstm = LSTM(input_size=5, hidden_size=3, key=jax.random.key(0))
        >>> hs, (h_n, c_n) = lstm(jnp.ones((10, 1, 5)))
        >>> hs.shape
        (10, 1, 3)
    """

    _static_fields = _LSTMOptions._fields

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
        check_bool("bias", bias)  # PyTorch's checks, in PyTorch's order
        check_bool("batch_first", batch_first)
        check_bool("bidirectional", bidirectional)  # PyTorch takes any truthy value here
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
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            matmul_dtype,
        )
        self.params: Params = init_params(
            _key(key, f"LSTM({input_size}, {hidden_size}, key=jax.random.key(0))"),
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

    @property
    def all_weights(self) -> list[list[Array]]:
        """PyTorch's ``all_weights``: per layer and direction, its arrays in PyTorch's order
        (``w_ih, w_hh[, b_ih, b_hh][, w_hr]``)."""
        return [[a for a in p if a is not None] for layer in self.params for p in layer]


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
        key: a ``jax.random`` key for the weights (required, keyword-only; without it,
            a ``TypeError`` shows the fix).
        dtype: dtype of the weights.

    Attributes:
        params: :class:`~jaxlstm.CellParams`.
        weight_ih: and ``weight_hh``, ``bias_ih``, ``bias_hh``: PyTorch's names for the
            arrays of :attr:`params`, read-only.

    Example:
        >>> cell = LSTMCell(10, 20, key=jax.random.key(0))
        >>> h, c = cell(jnp.ones((3, 10)))
        >>> h.shape
        (3, 20)
    """

    _static_fields = _CellOptions._fields

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        key: Array | None = None,
        dtype: Any = jnp.float32,
    ):
        check_bool("bias", bias)  # PyTorch takes any truthy value here
        check_sizes(input_size=input_size, hidden_size=hidden_size)
        self._static = _CellOptions(input_size, hidden_size, bias)
        self.params: CellParams = init_cell_params(
            _key(key, f"LSTMCell({input_size}, {hidden_size}, key=jax.random.key(0))"),
            input_size,
            hidden_size,
            bias=bias,
            dtype=dtype,
        )

    def __call__(self, input: Array, hx: State | None = None) -> State:
        """One step: ``input (N, H_in)`` or ``(H_in,)`` -> ``(h_1, c_1)``, each ``(N, H)``."""
        return lstm_cell(self.params, input, hx)

    def _repr_fields(self):
        yield f"{self._static.input_size}, {self._static.hidden_size}"
        if not self._static.bias:
            yield "bias=False"
