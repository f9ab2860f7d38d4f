"""LSTM parameters: PyTorch's arrays, PyTorch's shapes, PyTorch's names.

Shape letters: ``H_in`` input size, ``H`` hidden size, ``P`` projection size,
``H_out = P if P > 0 else H``, ``D = 2 if bidirectional else 1``.

``params`` for :func:`jaxlstm.lstm` is ``tuple[tuple[LayerParams, ...], ...]``, indexed
``params[layer][direction]`` (direction 0 forward, 1 reverse). Each ``LayerParams``
holds, with the gate rows stacked in PyTorch's order ``i, f, g, o``:

=========  ============================  =============================  =====================
field      shape                         PyTorch name                   absent when
=========  ============================  =============================  =====================
``w_ih``   ``(4H, H_in)`` (layer 0),     ``weight_ih_l{k}{sfx}``
           ``(4H, D*H_out)`` (others)
``w_hh``   ``(4H, H_out)``               ``weight_hh_l{k}{sfx}``
``b_ih``   ``(4H,)``                     ``bias_ih_l{k}{sfx}``          ``bias=False``
``b_hh``   ``(4H,)``                     ``bias_hh_l{k}{sfx}``          ``bias=False``
``w_hr``   ``(P, H)``                    ``weight_hr_l{k}{sfx}``        ``proj_size=0``
=========  ============================  =============================  =====================

``sfx`` is ``""`` for the forward direction and ``"_reverse"`` for the reverse one.
A cell (:class:`CellParams`) has the same arrays without ``w_hr`` and without the
layer suffix: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``.

The configuration (layers, directions, sizes, bias, projection) is read from this
structure (:func:`config_of`); it is never passed twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm._checks import as_array, check_bool, check_sizes, from_torch

Array = jax.Array


class LayerParams(NamedTuple):
    """One layer, one direction of :func:`jaxlstm.lstm` (PyTorch shapes, gates ``i,f,g,o``).

    Attributes:
        w_ih: ``(4H, H_in)`` for layer 0, ``(4H, D*H_out)`` above.
        w_hh: ``(4H, H_out)``.
        b_ih: ``(4H,)`` or ``None`` (``bias=False``).
        b_hh: ``(4H,)`` or ``None`` (``bias=False``).
        w_hr: ``(P, H)`` or ``None`` (``proj_size=0``).
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array | None = None
    b_hh: Array | None = None
    w_hr: Array | None = None


class CellParams(NamedTuple):
    """Parameters of :func:`jaxlstm.lstm_cell` (``torch.nn.LSTMCell``'s arrays).

    Attributes:
        w_ih: ``(4H, H_in)``.
        w_hh: ``(4H, H)``.
        b_ih: ``(4H,)`` or ``None`` (``bias=False``).
        b_hh: ``(4H,)`` or ``None`` (``bias=False``).
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array | None = None
    b_hh: Array | None = None


Params = tuple[tuple[LayerParams, ...], ...]


class Config(NamedTuple):
    """The configuration that a ``params`` PyTree encodes (hashable, static)."""

    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    bias: bool
    proj_size: int

    @property
    def output_size(self) -> int:
        """``H_out``: the size of ``h`` (``P`` with a projection, else ``H``)."""
        return self.proj_size or self.hidden_size


def config_of(params: Params) -> Config:
    """Reads the configuration off the structure and shapes of ``params``.

    Raises:
        TypeError: if ``params`` is not a non-empty tuple of tuples of ``LayerParams``.
    """
    if (
        not isinstance(params, (tuple, list))
        or not params
        or not all(isinstance(layer, (tuple, list)) and layer for layer in params)
        or not all(isinstance(p, LayerParams) for layer in params for p in layer)
    ):
        raise TypeError(
            "params must be a tuple over layers of tuples over directions of "
            f"jaxlstm.LayerParams (as made by jaxlstm.init_params), got {_describe(params)}"
        )
    for k, layer in enumerate(params):
        for d, p in enumerate(layer):
            _check_leaves(f"params[{k}][{d}]", p, required=("w_ih", "w_hh"))
    first = params[0][0]
    cfg = Config(
        input_size=first.w_ih.shape[1] if first.w_ih.ndim == 2 else -1,
        hidden_size=first.w_ih.shape[0] // 4,
        num_layers=len(params),
        num_directions=len(params[0]),
        bias=first.b_ih is not None,
        proj_size=0 if first.w_hr is None else first.w_hr.shape[0],
    )
    for k, layer in enumerate(params):
        if len(layer) != cfg.num_directions:
            raise ValueError(
                f"params[{k}] must hold {cfg.num_directions} directions like params[0], "
                f"got {len(layer)}"
            )
        expected = _expected_shapes(cfg, k)
        for d, p in enumerate(layer):
            for field, value in p._asdict().items():
                got = None if value is None else tuple(value.shape)
                if got != expected.get(field):
                    want = expected.get(field)
                    raise ValueError(
                        f"params[{k}][{d}].{field} must be "
                        f"{'None' if want is None else f'of shape {want}'} for an LSTM with "
                        f"input_size={cfg.input_size}, hidden_size={cfg.hidden_size}, "
                        f"proj_size={cfg.proj_size}, bias={cfg.bias}, got "
                        f"{'None' if got is None else f'shape {got}'}"
                    )
    return cfg


def as_arrays(params: Any, name: str = "params") -> Any:
    """``params`` (any PyTree) with every leaf as a JAX array: array-likes such as numpy
    arrays, flax ``nnx.Param`` variables and torch tensors are converted; a leaf
    ``jnp.asarray`` refuses is a ``TypeError`` that names its place (``params[0][1].w_hh``).
    An array-like that is itself a PyTree (``nnx.Param``) is converted whole, so no wrapper
    reaches what takes arrays only (the CPU kernel's custom call)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: as_array(name + jax.tree_util.keystr(path), leaf),
        params,
        is_leaf=lambda leaf: hasattr(leaf, "__jax_array__"),
    )


def _check_leaves(name: str, p: LayerParams | CellParams, required: tuple[str, ...]) -> None:
    """Every field of ``p`` is ``None`` or a floating array; ``required`` ones are arrays."""
    for field, value in p._asdict().items():
        if value is None:
            if field in required:
                raise TypeError(f"{name}.{field} must be an array, got None")
            continue
        dtype = getattr(value, "dtype", None)
        if not hasattr(value, "shape") or dtype is None:
            raise TypeError(f"{name}.{field} must be an array, got {type(value).__name__}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}.{field} must be floating point, got dtype {dtype}")


def check_cell_params(params: Any) -> tuple[int, int]:
    """Checks ``torch.nn.LSTMCell``-shaped parameters; returns ``(H_in, H)``.

    Raises:
        TypeError: not :class:`CellParams`, or a field that is not a floating array.
        ValueError: a field of the wrong shape, or only one of the two biases.
    """
    if not isinstance(params, CellParams):
        raise TypeError(
            "params must be jaxlstm.CellParams (as made by jaxlstm.init_cell_params), got "
            f"{type(params).__name__}"
        )
    _check_leaves("params", params, required=("w_ih", "w_hh"))
    if params.w_ih.ndim != 2 or params.w_ih.shape[0] % 4:
        raise ValueError(
            "params.w_ih must have shape (4*hidden_size, input_size), got "
            f"{tuple(params.w_ih.shape)}"
        )
    four_h, input_size = params.w_ih.shape
    expected = {"w_hh": (four_h, four_h // 4), "b_ih": (four_h,), "b_hh": (four_h,)}
    if (params.b_ih is None) != (params.b_hh is None):
        raise ValueError("params.b_ih and params.b_hh must both be arrays or both be None")
    for field, shape in expected.items():
        value = getattr(params, field)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"params.{field} must have shape {shape} for input_size={input_size}, "
                f"hidden_size={four_h // 4}, got {tuple(value.shape)}"
            )
    return input_size, four_h // 4


def _describe(x: Any) -> str:
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)} ({', '.join(type(e).__name__ for e in x[:3])}...)"
    return type(x).__name__


def _expected_shapes(cfg: Config, layer: int) -> dict[str, tuple[int, ...]]:
    """PyTorch shapes of one layer-direction's arrays, keyed by ``LayerParams`` field."""
    h, h_out = cfg.hidden_size, cfg.output_size
    in_size = cfg.input_size if layer == 0 else cfg.num_directions * h_out
    shapes = {"w_ih": (4 * h, in_size), "w_hh": (4 * h, h_out)}
    if cfg.bias:
        shapes |= {"b_ih": (4 * h,), "b_hh": (4 * h,)}
    if cfg.proj_size:
        shapes["w_hr"] = (cfg.proj_size, h)
    return shapes


def init_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
    dtype: Any = jnp.float32,
) -> Params:
    """Initialises :func:`jaxlstm.lstm` parameters as PyTorch does.

    Every array is drawn from ``U(-1/sqrt(H), 1/sqrt(H))``, ``H = hidden_size``.

    Args:
        key: a ``jax.random`` key.
        input_size: ``H_in``, the feature size of the input.
        hidden_size: ``H``, the size of the cell state.
        num_layers: stacked layers; layer ``k > 0`` reads layer ``k-1``'s output.
        bias: whether to have ``b_ih`` and ``b_hh``.
        bidirectional: whether each layer also runs in reverse (``D = 2``).
        proj_size: ``P``; when > 0, ``h`` is projected to size ``P`` by ``w_hr``.
        dtype: floating dtype of every array.

    Returns:
        ``params[layer][direction]``, a tuple of tuples of :class:`LayerParams`.

    Example:
        >>> params = init_params(jax.random.key(0), 5, 3, num_layers=2)
        >>> params[1][0].w_ih.shape
        (12, 3)
    """
    check_sizes(
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        proj_size=proj_size,
    )
    check_bool("bias", bias)
    check_bool("bidirectional", bidirectional)
    cfg = Config(input_size, hidden_size, num_layers, 2 if bidirectional else 1, bias, proj_size)
    bound = 1.0 / math.sqrt(hidden_size)
    keys = iter(jax.random.split(key, num_layers * cfg.num_directions * 5))
    return tuple(
        tuple(
            LayerParams(
                **{
                    field: jax.random.uniform(next(keys), shape, dtype, -bound, bound)
                    for field, shape in _expected_shapes(cfg, layer).items()
                }
            )
            for _ in range(cfg.num_directions)
        )
        for layer in range(num_layers)
    )


def init_cell_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    dtype: Any = jnp.float32,
) -> CellParams:
    """Initialises :func:`jaxlstm.lstm_cell` parameters as ``torch.nn.LSTMCell`` does.

    Args:
        key: a ``jax.random`` key.
        input_size: ``H_in``.
        hidden_size: ``H``.
        bias: whether to have ``b_ih`` and ``b_hh``.
        dtype: floating dtype of every array.

    Returns:
        :class:`CellParams` with ``w_ih (4H, H_in)``, ``w_hh (4H, H)``, biases ``(4H,)``.
    """
    (layer,) = init_params(key, input_size, hidden_size, bias=bias, dtype=dtype)
    return CellParams(*layer[0][:4])


# ---------------------------------------------------------------- PyTorch state dicts

_FIELD_TO_TORCH = {
    "w_ih": "weight_ih",
    "w_hh": "weight_hh",
    "b_ih": "bias_ih",
    "b_hh": "bias_hh",
    "w_hr": "weight_hr",
}
_LAYER_KEY = re.compile(r"_l(\d+)(_reverse)?$")
TORCH_NAME = re.compile(r"(weight|bias)_(ih|hh|hr)(_l\d+(_reverse)?)?")
"""Matches every PyTorch parameter name of an LSTM or LSTMCell (``weight_ih_l0``, ...)."""


def _torch_key(field: str, layer: int | None, direction: int = 0) -> str:
    if layer is None:
        return _FIELD_TO_TORCH[field]
    return f"{_FIELD_TO_TORCH[field]}_l{layer}{'_reverse' if direction else ''}"


def named_arrays(params: Params | CellParams) -> dict[str, Array]:
    """``params``' arrays under PyTorch's names, in PyTorch's order (``named_parameters``).

    Returns:
        ``dict[str, Array]``: ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
        ``bias_hh_l0``, ``weight_hr_l0``, then ``..._l0_reverse`` and the next layers (only
        the arrays that exist); for :class:`CellParams`, ``weight_ih``, ``weight_hh``,
        ``bias_ih``, ``bias_hh``. The arrays themselves, not copies.
    """
    if isinstance(params, CellParams):
        check_cell_params(params)
        return {_torch_key(f, None): v for f, v in params._asdict().items() if v is not None}
    config_of(params)
    return {
        _torch_key(f, k, d): v
        for k, layer in enumerate(params)
        for d, p in enumerate(layer)
        for f, v in p._asdict().items()
        if v is not None
    }


def params_to_torch(params: Params | CellParams) -> dict[str, np.ndarray]:
    """PyTorch ``state_dict`` of ``params`` (``torch.nn.LSTM`` or ``torch.nn.LSTMCell``).

    Returns:
        ``dict[str, numpy.ndarray]`` with PyTorch's names (``weight_ih_l0``,
        ``weight_hh_l0_reverse``, ``bias_ih_l1``, ``weight_hr_l0``, ... or, for
        :class:`CellParams`, ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), in
        PyTorch's order. Load into PyTorch with
        ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    return {name: np.array(v) for name, v in named_arrays(params).items()}


def params_from_torch(state_dict: Mapping[str, Any]) -> Params | CellParams:
    """Parameters from a PyTorch ``torch.nn.LSTM`` or ``torch.nn.LSTMCell`` state dict.

    The configuration is inferred from the names and shapes; the dtype is kept (within
    what JAX allows: float64 needs ``jax_enable_x64``). Values may be numpy arrays, JAX
    arrays or torch tensors; torch is never imported here.

    Args:
        state_dict: PyTorch names to arrays, e.g. ``torch_lstm.state_dict()``.

    Returns:
        :data:`Params` for an LSTM state dict, :class:`CellParams` for an ``LSTMCell`` one.

    Raises:
        ValueError: on a missing, unexpected or mis-shaped key, named in the message.
    """
    arrays = _state_arrays(state_dict)
    if "weight_ih" in arrays:
        return _cell_from_torch(arrays)
    layers = sorted(int(m.group(1)) for k in arrays if (m := _LAYER_KEY.search(k)))
    missing = [k for k in ("weight_ih_l0", "weight_hh_l0") if k not in arrays]
    if not layers or missing:
        raise ValueError(
            "Error(s) in loading state_dict: not a torch.nn.LSTM (or LSTMCell) state dict: "
            f"Missing key(s) in state_dict: {', '.join(map(repr, missing or ['weight_ih']))}; "
            f"got keys {sorted(arrays)}"
        )
    w_ih, w_hh = arrays["weight_ih_l0"], arrays["weight_hh_l0"]
    if w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[0] % 4:
        raise ValueError(
            "state_dict['weight_ih_l0'] must have shape (4*hidden_size, input_size) and "
            f"'weight_hh_l0' (4*hidden_size, hidden_size or proj_size), got "
            f"{tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    proj = arrays.get("weight_hr_l0")
    cfg = Config(
        input_size=w_ih.shape[1],
        hidden_size=w_ih.shape[0] // 4,
        num_layers=max(layers) + 1,
        num_directions=2 if any(k.endswith("_reverse") for k in arrays) else 1,
        bias="bias_ih_l0" in arrays,
        proj_size=0 if proj is None or proj.ndim != 2 else proj.shape[0],
    )
    expected = {
        _torch_key(f, k, d): (k, d, f, shape)
        for k in range(cfg.num_layers)
        for d in range(cfg.num_directions)
        for f, shape in _expected_shapes(cfg, k).items()
    }
    check_state_dict(arrays, {k: v[3] for k, v in expected.items()})
    fields: dict[tuple[int, int], dict[str, Array]] = {}
    for name, (k, d, f, _) in expected.items():
        fields.setdefault((k, d), {})[f] = jnp.asarray(arrays[name])
    return tuple(
        tuple(LayerParams(**fields[k, d]) for d in range(cfg.num_directions))
        for k in range(cfg.num_layers)
    )


def _cell_from_torch(arrays: dict[str, np.ndarray]) -> CellParams:
    w_ih = arrays["weight_ih"]
    if w_ih.ndim != 2 or w_ih.shape[0] % 4:
        raise ValueError(
            "state_dict['weight_ih'] must have shape (4*hidden_size, input_size), got "
            f"{tuple(w_ih.shape)}"
        )
    h4, n_in = w_ih.shape
    expected = {"weight_ih": (h4, n_in), "weight_hh": (h4, h4 // 4)}
    if "bias_ih" in arrays or "bias_hh" in arrays:
        expected |= {"bias_ih": (h4,), "bias_hh": (h4,)}
    check_state_dict(arrays, expected)
    return CellParams(*(jnp.asarray(arrays[k]) for k in expected))


def _state_arrays(state_dict: Any) -> dict[str, np.ndarray]:
    """The state dict's values as numpy arrays; refuses what is not a str-keyed mapping."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
    for k in state_dict:
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be PyTorch's names (str), got {k!r}")
    return {k: np.asarray(from_torch(v)) for k, v in state_dict.items()}


def check_state_dict(
    state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Refuses missing, unexpected, mis-shaped or non-floating keys, by name (PyTorch's words).

    Args:
        state_dict: PyTorch names to arrays (numpy, JAX or torch).
        expected: PyTorch names to the shapes they must have.
        strict: as PyTorch's ``load_state_dict``: when ``False``, missing and unexpected
            keys are returned instead of refused (the keys present are still checked).

    Returns:
        ``(missing_keys, unexpected_keys)``, both empty when ``strict``.
    """
    arrays = _state_arrays(state_dict)
    missing = [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    if strict and (missing or unexpected):
        raise ValueError(
            "Error(s) in loading state_dict: "
            + "; ".join(
                f"{what} key(s) in state_dict: {', '.join(repr(k) for k in keys)}"
                for what, keys in (("Missing", missing), ("Unexpected", unexpected))
                if keys
            )
        )
    for k, shape in expected.items():
        if k not in arrays:
            continue
        if tuple(arrays[k].shape) != shape:
            raise ValueError(
                f"size mismatch for {k}: copying a param with shape {tuple(arrays[k].shape)} "
                f"from checkpoint, the shape in current model is {shape}."
            )
        if not jnp.issubdtype(arrays[k].dtype, jnp.floating):
            raise TypeError(f"state_dict[{k!r}] must be floating point, got {arrays[k].dtype}")
    return missing, unexpected
