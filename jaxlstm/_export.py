"""jaxlstm's PyTrees registered for ``jax.export`` serialisation.

An exported function's artifact stores the structure of its inputs and outputs, and
``jax.export`` serialises a NamedTuple or a custom PyTree node only once it is
registered under a stable name. :func:`register` (run when :mod:`jaxlstm` is imported)
registers :class:`~jaxlstm.LayerParams`, :class:`~jaxlstm.CellParams`,
:class:`~jaxlstm.PackedSequence`, :class:`~jaxlstm.LSTM` and :class:`~jaxlstm.LSTMCell`,
each as ``"jaxlstm.<class name>"``, so that a function exported with any of them among
its inputs or outputs serialises, and deserialises in a process that imports
:mod:`jaxlstm`. Their static data travels as JSON: ``PackedSequence.enforce_sorted``,
and a facade's options (a dtype by its name).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxlstm._module import LSTM, LSTMCell, _CellOptions, _LSTMOptions
from jaxlstm._packed import PackedSequence
from jaxlstm._params import CellParams, LayerParams


def _options_codec(options_type: type[NamedTuple]) -> tuple[Callable, Callable]:
    """``(serialize, deserialize)`` of a facade's static options: a NamedTuple of JSON
    values and numpy dtypes (``matmul_dtype``), a dtype as ``{"dtype": name}``."""

    def serialize(options: Any) -> bytes:
        return json.dumps(options._asdict(), default=lambda dtype: {"dtype": dtype.name}).encode()

    def deserialize(data: bytes) -> Any:
        def dtype(obj: dict) -> Any:
            return jnp.dtype(obj["dtype"]) if obj.keys() == {"dtype"} else obj

        return options_type(**json.loads(data, object_hook=dtype))

    return serialize, deserialize


def register() -> None:
    """Registers jaxlstm's PyTrees with ``jax.export``, where this jax has its registry.

    Idempotent: a type or name registered already (jaxlstm's modules run a second time,
    e.g. by ``importlib.reload``) is left as it is.
    """
    export = getattr(jax, "export", None)
    if export is None or not hasattr(export, "register_pytree_node_serialization"):
        return  # a jax without export serialisation: nothing to register with
    codecs = {
        PackedSequence: (lambda enforce_sorted: json.dumps(enforce_sorted).encode(), json.loads),
        LSTM: _options_codec(_LSTMOptions),
        LSTMCell: _options_codec(_CellOptions),
    }
    registrations = [
        partial(export.register_namedtuple_serialization, namedtuple)
        for namedtuple in (LayerParams, CellParams)
    ] + [
        partial(
            export.register_pytree_node_serialization,
            node,
            serialize_auxdata=serialize,
            deserialize_auxdata=deserialize,
        )
        for node, (serialize, deserialize) in codecs.items()
    ]
    for register_node in registrations:
        with contextlib.suppress(ValueError):  # "Duplicate serialization registration"
            register_node(serialized_name=f"jaxlstm.{register_node.args[0].__name__}")
