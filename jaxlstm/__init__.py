"""jaxlstm: PyTorch's LSTM, every option and every number, as pure jit-compiled JAX.

Functional core: :func:`init_params`, :func:`lstm`, :func:`init_cell_params`,
:func:`lstm_cell`. Packing (also as :mod:`jaxlstm.rnn`): :class:`PackedSequence`,
:func:`pack_sequence`, :func:`pack_padded_sequence`, :func:`pad_packed_sequence`,
:func:`pad_sequence`, :func:`unpack_sequence`, :func:`unpad_sequence`. Facades:
:class:`LSTM`, :class:`LSTMCell`, built with a ``key`` for their initial weights
(``jl.LSTM(5, 3, key=jax.random.key(0))``). PyTorch weights:
:func:`params_from_torch`, :func:`params_to_torch`. Checked traced lengths:
:func:`checked_lengths`. This machine's setup: :func:`show_config` (``python -m jaxlstm``).
"""

from jaxlstm import _export, rnn
from jaxlstm._cell import lstm_cell
from jaxlstm._checks import checked_lengths
from jaxlstm._lstm import lstm
from jaxlstm._module import LSTM, LSTMCell
from jaxlstm._params import (
    CellParams,
    LayerParams,
    init_cell_params,
    init_params,
    params_from_torch,
    params_to_torch,
)
from jaxlstm._show import show_config
from jaxlstm.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)

__version__ = "0.1.0"

_export.register()  # jax.export serialises jaxlstm's PyTrees by name

__all__ = [
    "LSTM",
    "CellParams",
    "LSTMCell",
    "LayerParams",
    "PackedSequence",
    "__version__",
    "checked_lengths",
    "init_cell_params",
    "init_params",
    "lstm",
    "lstm_cell",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "params_from_torch",
    "params_to_torch",
    "rnn",
    "show_config",
    "unpack_sequence",
    "unpad_sequence",
]
