"""Flax adapters: jaxlstm as a flax layer whose weights train, in nnx and in linen.

``import jaxlstm.flax`` needs flax (the ``flax`` extra: ``pip install "jaxlstm[flax]"``);
``import jaxlstm`` never imports it. Each layer calls :func:`jaxlstm.lstm` (or
:func:`jaxlstm.lstm_cell`), so its numbers are PyTorch's, and keeps its weights where
flax trains them, under PyTorch's names and shapes (``weight_ih_l0``, ``bias_hh_l1``,
``weight_hr_l0_reverse``, ...; see :class:`jaxlstm.LayerParams`), initialised as
:func:`jaxlstm.init_params`:

- :class:`LSTM` and :class:`LSTMCell` (flax nnx): ``nnx.Module``s whose weights are
  ``nnx.Param`` attributes, with ``torch.nn``'s ``state_dict()``/``load_state_dict()``.
- :class:`LinenLSTM` (flax linen): an ``nn.Module`` whose weights are ``self.param``
  entries of the ``params`` collection, named as PyTorch's ``state_dict`` keys.

The PyTree facades :class:`jaxlstm.LSTM`/:class:`jaxlstm.LSTMCell` do not belong in an
nnx Module: their arrays are not ``nnx.Param``s, so ``nnx.data(jaxlstm.LSTM(...))`` is
never trained (``nnx.grad`` and ``nnx.Optimizer(..., wrt=nnx.Param)`` skip it). The
facades are for equinox and plain JAX/optax, where every array of a PyTree trains.

Dropout follows each flax's convention. nnx: a ``deterministic`` attribute (``False``
by default, PyTorch's ``train()``), set by ``model.eval()``/``model.train()``,
``nnx.view(model, deterministic=...)`` or per call, and the ``dropout`` stream of the
``rngs`` given at construction (or per call). linen: ``deterministic`` as an attribute
or call argument (exactly one of the two, as ``nn.Dropout``) and the ``dropout`` rng
collection of ``apply``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    from flax import linen, nnx
except ModuleNotFoundError as error:  # flax is an optional extra
    raise ImportError(
        "jaxlstm.flax needs flax, which is an optional dependency of jaxlstm; install it "
        'with: pip install "jaxlstm[flax]"'
    ) from error

from jaxlstm._cell import lstm_cell
from jaxlstm._checks import check_dropout, check_matmul_dtype, check_sizes
from jaxlstm._lstm import State, lstm
from jaxlstm._module import IncompatibleKeys
from jaxlstm._packed import PackedSequence
from jaxlstm._params import (
    CellParams,
    Config,
    LayerParams,
    Params,
    _expected_shapes,
    _torch_key,
    check_state_dict,
    init_cell_params,
    init_params,
    params_from_torch,
    params_to_torch,
)

Array = jax.Array

__all__ = ["LSTM", "LSTMCell", "LinenLSTM"]

# ((field, PyTorch name, shape), ...) of each layer and direction: layout[layer][direction]
Layout = tuple[tuple[tuple[tuple[str, str, tuple[int, ...]], ...], ...], ...]


def _layout(cfg: Config) -> Layout:
    """Where each array of ``cfg``'s params lives: its field, PyTorch name and shape."""
    return tuple(
        tuple(
            tuple(
                (field, _torch_key(field, k, d), shape)
                for field, shape in _expected_shapes(cfg, k).items()
            )
            for d in range(cfg.num_directions)
        )
        for k in range(cfg.num_layers)
    )


def _config(
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    bidirectional: bool,
    proj_size: int,
) -> Config:
    return Config(
        input_size, hidden_size, num_layers, 2 if bidirectional else 1, bool(bias), proj_size
    )


# ------------------------------------------------------------------------------ nnx


class _TorchWeights(nnx.Module):
    """``state_dict``/``load_state_dict`` over the ``nnx.Param``s named as PyTorch's."""

    def _torch_params(self) -> dict[str, nnx.Param]:
        """PyTorch name to ``nnx.Param``, in PyTorch's order."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """PyTorch's ``state_dict``: PyTorch names to numpy arrays (copies)."""
        return {name: np.array(param[...]) for name, param in self._torch_params().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> IncompatibleKeys:
        """Loads PyTorch-named arrays in place, strictly, cast to this layer's dtype.

        Args:
            state_dict: PyTorch names to numpy arrays, JAX arrays or torch tensors, e.g.
                ``torch_lstm.state_dict()``.

        Returns:
            ``IncompatibleKeys([], [])``, as PyTorch's strict load.

        Raises:
            ValueError: on a missing, unexpected or mis-shaped key (named).
        """
        params = self._torch_params()
        check_state_dict(state_dict, {name: param.shape for name, param in params.items()})
        arrays = params_to_torch(params_from_torch(state_dict))
        for name, param in params.items():
            param[...] = jnp.asarray(arrays[name], param.dtype)
        return IncompatibleKeys([], [])


def _check_rngs(rngs: Any) -> None:
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(
            f"rngs must be a flax.nnx.Rngs, e.g. rngs=nnx.Rngs(0), got {type(rngs).__name__}"
        )


def _dropout_key(rngs: Any) -> Array:
    """A dropout key from an ``nnx.Rngs`` (its ``dropout`` stream), a stream, or a key."""
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise TypeError(
        "rngs must be a flax.nnx.Rngs, an nnx.RngStream or a jax.random key, got "
        f"{type(rngs).__name__}"
    )


class LSTM(_TorchWeights):
    """``torch.nn.LSTM`` as a flax ``nnx.Module`` whose weights are ``nnx.Param``s.

    The weights are attributes with PyTorch's names and shapes (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``,
    ``..._l1``, ...), drawn as :func:`jaxlstm.init_params` does from
    ``rngs.params()``; ``nnx.state(model, nnx.Param)``, ``nnx.grad`` and
    ``nnx.Optimizer`` see and train them. Calls run :func:`jaxlstm.lstm`.

    Args:
        input_size: ``H_in``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        bias: whether to have ``b_ih`` and ``b_hh``.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: dropout probability on the outputs of every layer but the last,
            applied unless deterministic.
        bidirectional: run each layer both ways (``D = 2``).
        proj_size: ``P > 0`` projects ``h`` to size ``P``.
        rngs: ``nnx.Rngs``: its ``params`` stream draws the weights; with
            ``dropout > 0`` its ``dropout`` stream is forked and kept for the masks.
        dtype: dtype of the weights (flax's ``param_dtype``).
        matmul_dtype: opt-in reduced-precision matmuls, e.g. ``jnp.bfloat16`` (see
            :func:`jaxlstm.lstm`); ``None`` computes PyTorch's numbers.
        deterministic: ``True`` turns dropout off (PyTorch's ``eval()``); set by
            ``model.eval()``/``model.train()`` and ``nnx.view``.

    Example:
        >>> layer = LSTM(5, 3, num_layers=2, rngs=nnx.Rngs(0))
        >>> out, (h_n, c_n) = layer(jnp.ones((10, 4, 5)))
        >>> out.shape, layer.weight_ih_l1.shape
        ((10, 4, 3), (12, 3))
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
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        matmul_dtype: Any = None,
        deterministic: bool = False,
    ):
        _check_rngs(rngs)
        check_sizes(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            proj_size=proj_size,
        )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout, num_layers)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self.matmul_dtype = check_matmul_dtype(matmul_dtype)
        self.deterministic = bool(deterministic)
        self.rngs = rngs["dropout"].fork() if self.dropout else None
        params = init_params(
            rngs.params(),
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            bidirectional=bidirectional,
            proj_size=proj_size,
            dtype=dtype,
        )
        for layer, layer_layout in zip(params, self._layout(), strict=True):
            for p, arrays in zip(layer, layer_layout, strict=True):
                for field, name, _ in arrays:
                    setattr(self, name, nnx.Param(getattr(p, field)))

    def _layout(self) -> Layout:
        return _layout(
            _config(
                self.input_size,
                self.hidden_size,
                self.num_layers,
                self.bias,
                self.bidirectional,
                self.proj_size,
            )
        )

    def _torch_params(self) -> dict[str, nnx.Param]:
        return {
            name: getattr(self, name)
            for layer in self._layout()
            for arrays in layer
            for _, name, _ in arrays
        }

    @property
    def params(self) -> Params:
        """The weights as :func:`jaxlstm.lstm` takes them: ``params[layer][direction]``."""
        return tuple(
            tuple(
                LayerParams(**{field: getattr(self, name)[...] for field, name, _ in arrays})
                for arrays in layer
            )
            for layer in self._layout()
        )

    def __call__(
        self,
        input: Array | PackedSequence,
        hx: State | None = None,
        *,
        lengths: Array | None = None,
        checkpoint_every: int | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
    ) -> tuple[Array | PackedSequence, State]:
        """Runs :func:`jaxlstm.lstm` with this layer's weights and options.

        Args:
            input: ``(L, N, H_in)`` (``(N, L, H_in)`` if ``batch_first``), ``(L, H_in)``
                unbatched, or a :class:`jaxlstm.PackedSequence`.
            hx: optional ``(h_0 (D*num_layers, N, H_out), c_0 (D*num_layers, N, H))``.
            lengths: optional ``(N,)`` valid lengths (see :func:`jaxlstm.lstm`).
            checkpoint_every: bounded-memory gradients (see :func:`jaxlstm.lstm`).
            deterministic: overrides the ``deterministic`` attribute for this call.
            rngs: the dropout randomness for this call, instead of the stream kept at
                construction: an ``nnx.Rngs`` (its ``dropout`` stream), an
                ``nnx.RngStream`` or a ``jax.random`` key.

        Returns:
            ``(output, (h_n, c_n))`` as :func:`jaxlstm.lstm`.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        if self.dropout and not deterministic:
            key = _dropout_key(self.rngs if rngs is None else rngs)
        return lstm(
            self.params,
            input,
            hx,
            lengths=lengths,
            batch_first=self.batch_first,
            dropout=self.dropout if key is not None else 0.0,
            key=key,
            matmul_dtype=self.matmul_dtype,
            checkpoint_every=checkpoint_every,
        )

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``.

        Args:
            deterministic: ``True`` turns dropout off.
        """
        if deterministic is not None:
            self.deterministic = deterministic


class LSTMCell(_TorchWeights):
    """``torch.nn.LSTMCell`` as a flax ``nnx.Module`` whose weights are ``nnx.Param``s.

    Attributes ``weight_ih (4H, H_in)``, ``weight_hh (4H, H)``, ``bias_ih``,
    ``bias_hh (4H,)``, drawn as :func:`jaxlstm.init_cell_params` does from
    ``rngs.params()``. Calls run :func:`jaxlstm.lstm_cell` (carry ``(h, c)``, as
    PyTorch; not flax's ``(c, h)``).

    Args:
        input_size: ``H_in``.
        hidden_size: ``H``.
        bias: whether to have ``b_ih`` and ``b_hh``.
        rngs: ``nnx.Rngs``; its ``params`` stream draws the weights.
        dtype: dtype of the weights (flax's ``param_dtype``).

    Example:
        >>> cell = LSTMCell(10, 20, rngs=nnx.Rngs(0))
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
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        _check_rngs(rngs)
        check_sizes(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bool(bias)
        params = init_cell_params(rngs.params(), input_size, hidden_size, bias=bias, dtype=dtype)
        for field, value in params._asdict().items():
            if value is not None:
                setattr(self, _torch_key(field, None), nnx.Param(value))

    def _torch_params(self) -> dict[str, nnx.Param]:
        fields = CellParams._fields if self.bias else ("w_ih", "w_hh")
        return {_torch_key(f, None): getattr(self, _torch_key(f, None)) for f in fields}

    @property
    def params(self) -> CellParams:
        """The weights as :func:`jaxlstm.lstm_cell` takes them."""
        return CellParams(*(param[...] for param in self._torch_params().values()))

    def __call__(self, input: Array, hx: State | None = None) -> State:
        """One step: ``input (N, H_in)`` or ``(H_in,)`` -> ``(h_1, c_1)``, each ``(N, H)``."""
        return lstm_cell(self.params, input, hx)


# ---------------------------------------------------------------------------- linen


class LinenLSTM(linen.Module):
    """``torch.nn.LSTM`` as a flax linen ``nn.Module``.

    Its weights are the ``params`` collection, keyed by PyTorch's ``state_dict`` names
    (``weight_ih_l0``, ...), each drawn from ``U(-1/sqrt(H), 1/sqrt(H))`` as
    :func:`jaxlstm.init_params`. So ``{"params": torch_lstm.state_dict()}`` (as arrays)
    is a valid ``variables`` argument, and ``variables["params"]`` loads into
    ``torch.nn.LSTM.load_state_dict``. Calls run :func:`jaxlstm.lstm`.

    Attributes:
        input_size: ``H_in``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        bias: whether to have ``b_ih`` and ``b_hh``.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: dropout probability on the outputs of every layer but the last.
        bidirectional: run each layer both ways (``D = 2``).
        proj_size: ``P > 0`` projects ``h`` to size ``P``.
        deterministic: with ``dropout > 0``, ``True`` turns it off; give it here or to
            the call (exactly one, as ``nn.Dropout``). When ``False``, ``apply`` needs a
            ``dropout`` rng: ``rngs={"dropout": key}``.
        dtype: dtype of the weights (flax's ``param_dtype``).
        matmul_dtype: opt-in reduced-precision matmuls (see :func:`jaxlstm.lstm`).

    Example:
        >>> layer = LinenLSTM(5, 3)
        >>> variables = layer.init(jax.random.key(0), jnp.ones((10, 4, 5)))
        >>> out, (h_n, c_n) = layer.apply(variables, jnp.ones((10, 4, 5)))
        >>> out.shape, variables["params"]["weight_ih_l0"].shape
        ((10, 4, 3), (12, 5))
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    deterministic: bool | None = None
    dtype: Any = jnp.float32
    matmul_dtype: Any = None

    def __post_init__(self) -> None:
        check_sizes(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            proj_size=self.proj_size,
        )
        check_dropout(self.dropout, self.num_layers)
        check_matmul_dtype(self.matmul_dtype)
        super().__post_init__()

    @linen.compact
    def __call__(
        self,
        input: Array | PackedSequence,
        hx: State | None = None,
        *,
        lengths: Array | None = None,
        checkpoint_every: int | None = None,
        deterministic: bool | None = None,
    ) -> tuple[Array | PackedSequence, State]:
        """Runs :func:`jaxlstm.lstm` with this module's weights and options.

        Args:
            input: ``(L, N, H_in)`` (``(N, L, H_in)`` if ``batch_first``), ``(L, H_in)``
                unbatched, or a :class:`jaxlstm.PackedSequence`.
            hx: optional ``(h_0 (D*num_layers, N, H_out), c_0 (D*num_layers, N, H))``.
            lengths: optional ``(N,)`` valid lengths (see :func:`jaxlstm.lstm`).
            checkpoint_every: bounded-memory gradients (see :func:`jaxlstm.lstm`).
            deterministic: with ``dropout > 0``, whether dropout is off, when the
                attribute is not set.

        Returns:
            ``(output, (h_n, c_n))`` as :func:`jaxlstm.lstm`.
        """
        cfg = _config(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.proj_size,
        )
        bound = 1.0 / math.sqrt(self.hidden_size)

        def uniform(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        params = tuple(
            tuple(
                LayerParams(
                    **{
                        field: self.param(name, uniform, shape, self.dtype)
                        for field, name, shape in arrays
                    }
                )
                for arrays in layer
            )
            for layer in _layout(cfg)
        )
        key = None
        if self.dropout and not linen.merge_param(
            "deterministic", self.deterministic, deterministic
        ):
            key = self.make_rng("dropout")
        return lstm(
            params,
            input,
            hx,
            lengths=lengths,
            batch_first=self.batch_first,
            dropout=self.dropout if key is not None else 0.0,
            key=key,
            matmul_dtype=self.matmul_dtype,
            checkpoint_every=checkpoint_every,
        )
