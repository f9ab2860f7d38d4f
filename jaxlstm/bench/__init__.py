"""``jaxlstm-bench``: jaxlstm against PyTorch and the JAX LSTMs, on shared weights.

Run ``jaxlstm-bench`` (or ``python -m jaxlstm.bench``) for the default suite, or
``jaxlstm-bench --quick`` for a smoke run; ``--help`` lists the flags.

What it does, per configuration (``configs.py``: :data:`CONFIGS`, or a custom
``T:N:I:H`` spec), on one device (``devices.py``: ``--device``, by default the GPU
when JAX's first device is one):

1. Draws one set of weights with :func:`jaxlstm.init_params` and one input, and
   converts the weights into every peer's layout (``peers.py``: :data:`PEERS`). On a
   GPU, PyTorch runs on CUDA (cuDNN) and ``jax-rnn`` is JAX's cuDNN binding.
2. Checks every peer's output and input gradient against jaxlstm's, in float32 (full
   float32 matrix products, also on a GPU), and stops with :class:`OutputMismatchError`
   when one differs beyond :data:`TOLERANCE` (``check.py``): a peer that computes
   something else is never timed. A peer that fails to build or run on this machine is
   reported n/a with its error.
3. Compiles the JAX systems ahead of time (``jax.jit(f).lower(...).compile()``, timed
   and reported on its own). Every system has run each pass once before it is timed
   (the check, or a warm-up call of the build that is timed); the repetitions then go
   round robin over systems and passes (``timing.py``), so that machine noise hits all
   of them alike. Each timed call returns only when its device work is done.

Two passes are timed: ``forward`` (the output) and ``forward+backward`` (the gradient
of the sum of the outputs with respect to the weights and the input). It reports
(``report.py``, ``plot.py``) the median and the 10th-90th percentiles in milliseconds,
the ratio of the median to PyTorch's, the matmul GFLOP/s and their fraction of a matmul
peak measured in the same run on the same device (``peaks.py``: a square ``jnp.dot``
for the JAX systems, ``torch.mm`` for PyTorch).

FLOPs count the LSTM's matrix products only: per layer, direction and valid step,
``2*N*4H*(H_in + H)`` (no configuration here has a projection, whose ``2*N*P*H`` would
add to it). The backward pass counts twice the forward, so ``forward+backward`` is three
times ``forward``. With per-sequence lengths only the valid steps count.
"""

from jaxlstm.bench.check import TOLERANCE, OutputMismatchError, check_outputs, results
from jaxlstm.bench.cli import main
from jaxlstm.bench.configs import (
    CONFIGS,
    PASSES,
    SUITES,
    Config,
    default_configs,
    parse_config,
)
from jaxlstm.bench.devices import Device, select_device
from jaxlstm.bench.peaks import matmul_peaks
from jaxlstm.bench.peers import PEERS, Peer, Problem, Runner, cudnn_weights
from jaxlstm.bench.plot import write_plot
from jaxlstm.bench.report import Row, format_report, machine_info
from jaxlstm.bench.suite import run_suite
from jaxlstm.bench.timing import time_round_robin

__all__ = [
    "CONFIGS",
    "PASSES",
    "PEERS",
    "SUITES",
    "TOLERANCE",
    "Config",
    "Device",
    "OutputMismatchError",
    "Peer",
    "Problem",
    "Row",
    "Runner",
    "check_outputs",
    "cudnn_weights",
    "default_configs",
    "format_report",
    "machine_info",
    "main",
    "matmul_peaks",
    "parse_config",
    "results",
    "run_suite",
    "select_device",
    "time_round_robin",
    "write_plot",
]
