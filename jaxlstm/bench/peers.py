"""The systems under test (:data:`PEERS`), each built from jaxlstm's weights into a
:class:`Runner` on the run's device.

Every peer converts the same jaxlstm float32 weights (PyTorch's layout and gate order)
into its own layout. On a GPU, PyTorch runs ``torch.nn.LSTM`` on ``cuda`` (cuDNN) and
``jax-rnn`` runs ``jax.experimental.rnn.lstm``, JAX's cuDNN binding, on the flat weights
in cuDNN's layout (:func:`cudnn_weights`); on CPU ``jax-rnn`` is its plain-JAX
``lstm_ref``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl
from jaxlstm import _cudnn
from jaxlstm.bench.check import TOLERANCE
from jaxlstm.bench.configs import PASSES, SEED, Config
from jaxlstm.bench.devices import (
    Device,
    cudnn_full_float32,
    torch_synchronizer,
    torch_unavailable,
)


class Problem(NamedTuple):
    """What every system of one config computes on.

    Attributes:
        params: jaxlstm float32 weights (``params[layer][direction]``), the shared truth.
        x: the input ``(L, N, I)``, float32 numpy.
        lengths: ``(N,)`` int32 numpy, or None for full-length sequences.
        dtype: the dtype the JAX systems compute in (PyTorch: ``device.torch_dtype``).
        device: where every system runs.
        exact: float32 matrix products in full float32, as the check builds them on a
            GPU (whose float32 products default to TF32); False keeps each framework's
            default, which is full float32 on CPU.
    """

    params: Any
    x: np.ndarray
    lengths: np.ndarray | None
    dtype: Any
    device: Device
    exact: bool = False


class Runner(NamedTuple):
    """One system built for one problem, ready to time.

    Attributes:
        forward: runs the forward pass to completion (its device work done); returns
            the output ``(L, N, D*H)`` (zero past each sequence's length).
        forward_backward: runs the forward and backward passes to completion (all
            weight and input gradients); returns the input gradient ``(L, N, I)``.
        compile_s: seconds spent compiling each pass; empty for an eager system.
    """

    forward: Callable[[], Any]
    forward_backward: Callable[[], Any]
    compile_s: dict[str, float]


def _supports_all(config: Config, device: Device, dtype: str) -> str | None:
    return None


def _runs_anywhere(device: Device) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Peer:
    """A system under test.

    Attributes:
        name: what the table and ``--peers`` call it.
        framework: ``"jax"`` or ``"torch"``: whose matmul peak it is measured against.
        module: the module that must import for the peer to run.
        dist: the distribution whose version is reported.
        description: how it is built, for the report.
        build: ``build(config, problem) -> Runner``, converting jaxlstm's weights.
        unsupported: ``unsupported(config, device, dtype)`` says why the peer cannot
            express ``config`` on ``device`` in ``dtype`` (reported as n/a), or None.
        tolerance: relative tolerance of its check against jaxlstm (float32).
        gpu_description: how it is built on a GPU, where that differs.
        unavailable: ``unavailable(device)`` says why the peer, imported, cannot run on
            ``device`` at all (it is then skipped), or returns None.
    """

    name: str
    framework: str
    module: str
    dist: str
    description: str
    build: Callable[[Config, Problem], Runner]
    unsupported: Callable[[Config, Device, str], str | None] = _supports_all
    tolerance: float = TOLERANCE
    gpu_description: str | None = None
    unavailable: Callable[[Device], str | None] = _runs_anywhere

    def import_error(self) -> str | None:
        """None when :attr:`module` imports, else why not."""
        try:
            importlib.import_module(self.module)
        except Exception as error:  # not installed, or broken by its dependencies
            return f"{type(error).__name__}: {error}"
        return None

    def version(self) -> str:
        """The installed version of :attr:`dist` (else the module's ``__version__``)."""
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:  # e.g. run from a source tree
            return getattr(importlib.import_module(self.module), "__version__", "unknown")

    def describe(self, device: Device) -> str:
        """:attr:`description`, or :attr:`gpu_description` on a GPU where there is one."""
        if device.kind == "gpu" and self.gpu_description:
            return self.gpu_description
        return self.description

    def dtype(self, device: Device, dtype: str) -> str:
        """The dtype it computes in when the run's ``--dtype`` is ``dtype``."""
        return device.torch_dtype(dtype) if self.framework == "torch" else dtype


def _jax_runner(fn: Callable[..., jax.Array], params: Any, problem: Problem) -> Runner:
    """Compiles ``fn(params, x, lengths) -> output (L, N, D*H)`` and its gradient, on
    ``problem.device``; each pass blocks until every one of its outputs is ready."""

    def loss(params, x, lengths):
        return jnp.sum(fn(params, x, lengths), dtype=jnp.float32)

    def put(a):
        return jax.device_put(a, problem.device.jax_device)

    args = (
        put(jax.tree.map(lambda a: jnp.asarray(a, problem.dtype), params)),
        put(jnp.asarray(problem.x, problem.dtype)),
        None if problem.lengths is None else put(jnp.asarray(problem.lengths)),
    )
    compiled, compile_s = {}, {}
    with jax.default_matmul_precision("float32" if problem.exact else None):
        for pass_name, f in zip(PASSES, (fn, jax.grad(loss, argnums=(0, 1))), strict=True):
            start = time.perf_counter()
            compiled[pass_name] = jax.jit(f).lower(*args).compile()
            compile_s[pass_name] = time.perf_counter() - start
    return Runner(
        forward=lambda: jax.block_until_ready(compiled["forward"](*args)),
        forward_backward=lambda: jax.block_until_ready(compiled["forward+backward"](*args))[1],
        compile_s=compile_s,
    )


def _gates(a: jax.Array) -> list[jax.Array]:
    """Splits PyTorch's stacked gate rows ``(4H, ...)`` into ``[i, f, g, o]``, each ``(H, ...)``."""
    return jnp.split(a, 4, axis=0)


def _zero_past_lengths(y: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """``y (L, N, F)`` with zeros from each sequence's length on, as PyTorch (and
    jaxlstm) have there; ``y`` itself for full-length sequences."""
    if lengths is None:
        return y
    valid = jnp.arange(y.shape[0])[:, None] < lengths[None, :]  # (L, N)
    return jnp.where(valid[..., None], y, 0)


def _stack_layers(run_direction: Callable[[int, int, jax.Array], jax.Array], x, config: Config):
    """Layers and directions by hand: ``run_direction(layer, direction, x (L, N, H_in))``
    gives ``(L, N, H)``; direction 1 runs reversed; outputs concatenate on features."""
    for layer in range(config.num_layers):
        x = jnp.concatenate(
            [run_direction(layer, d, x) for d in range(config.num_directions)], axis=-1
        )  # (L, N, D*H)
    return x


def _build_jaxlstm(
    config: Config, problem: Problem, matmul_dtype: Any = None, impl: str = "auto"
) -> Runner:
    def forward(params, x, lengths):
        return jl.lstm(params, x, lengths=lengths, matmul_dtype=matmul_dtype, impl=impl)[0]

    return _jax_runner(forward, problem.params, problem)


def _build_torch(config: Config, problem: Problem) -> Runner:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    device = problem.device.torch_device
    dtype = getattr(torch, problem.device.torch_dtype(jnp.dtype(problem.dtype).name))
    model = torch.nn.LSTM(
        config.input_size,
        config.hidden_size,
        config.num_layers,
        bidirectional=config.bidirectional,
    )
    model.load_state_dict(
        {
            k: torch.from_numpy(np.array(v, np.float32))
            for k, v in jl.params_to_torch(problem.params).items()
        }
    )
    model.to(device=device, dtype=dtype)
    weights = list(model.parameters())
    x = torch.from_numpy(problem.x).to(device=device, dtype=dtype)
    x_leaf = x.clone().requires_grad_()
    # pack_padded_sequence takes its lengths on CPU, whatever the device.
    lengths = None if problem.lengths is None else torch.from_numpy(problem.lengths)
    precision = cudnn_full_float32 if problem.exact else contextlib.nullcontext
    synchronize = torch_synchronizer(problem.device)

    def run(x):
        if lengths is None:
            return model(x)[0]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return pad_packed_sequence(model(packed)[0], total_length=config.seq_len)[0]

    def forward():
        with torch.inference_mode(), precision():
            y = run(x)
            synchronize()
        return y

    def forward_backward():
        with precision():
            grads = torch.autograd.grad(run(x_leaf).sum(), [x_leaf, *weights])
            synchronize()
        return grads[0]

    return Runner(forward, forward_backward, compile_s={})


def _build_flax(config: Config, problem: Problem) -> Runner:
    import flax.linen as nn

    class FlaxLSTM(nn.Module):
        """``nn.RNN`` over ``nn.OptimizedLSTMCell`` per layer, ``nn.Bidirectional`` for D=2."""

        @nn.compact
        def __call__(self, x, seq_lengths):
            for layer in range(config.num_layers):
                rnns = [
                    nn.RNN(
                        nn.OptimizedLSTMCell(
                            config.hidden_size,
                            param_dtype=problem.dtype,
                            name=f"layer{layer}_dir{d}",
                        ),
                        time_major=True,
                    )
                    for d in range(config.num_directions)
                ]
                if config.bidirectional:
                    x = nn.Bidirectional(*rnns, time_major=True)(x, seq_lengths=seq_lengths)
                else:
                    x = rnns[0](x, seq_lengths=seq_lengths)
            return x

    def cell_params(p):
        bias = _gates(p.b_ih + p.b_hh)
        return {
            **{f"i{g}": {"kernel": w.T} for g, w in zip("ifgo", _gates(p.w_ih), strict=True)},
            **{
                f"h{g}": {"kernel": w.T, "bias": b}
                for g, w, b in zip("ifgo", _gates(p.w_hh), bias, strict=True)
            },
        }

    variables = {
        "params": {
            f"layer{layer}_dir{d}": cell_params(p)
            for layer, ps in enumerate(problem.params)
            for d, p in enumerate(ps)
        }
    }
    model = FlaxLSTM()

    def forward(variables, x, lengths):
        # flax leaves garbage past each length; PyTorch (and jaxlstm) have zeros there.
        return _zero_past_lengths(model.apply(variables, x, lengths), lengths)  # (L, N, D*H)

    return _jax_runner(forward, variables, problem)


def _build_equinox(config: Config, problem: Problem) -> Runner:
    import equinox as eqx

    def cell(p):
        c = eqx.nn.LSTMCell(p.w_ih.shape[1], config.hidden_size, key=jax.random.key(SEED))
        return eqx.tree_at(
            lambda c: (c.weight_ih, c.weight_hh, c.bias), c, (p.w_ih, p.w_hh, p.b_ih + p.b_hh)
        )

    cells = tuple(tuple(cell(p) for p in ps) for ps in problem.params)

    def forward(cells, x, lengths):
        def run_direction(layer, direction, x):
            c = cells[layer][direction]

            def sequence(xs):  # (L, H_in) -> (L, H)
                zeros = jnp.zeros(config.hidden_size, xs.dtype)

                def step(carry, x_t):
                    carry = c(x_t, carry)
                    return carry, carry[0]

                return jax.lax.scan(step, (zeros, zeros), xs, reverse=bool(direction))[1]

            return jax.vmap(sequence, in_axes=1, out_axes=1)(x)

        return _stack_layers(run_direction, x, config)

    return _jax_runner(forward, cells, problem)


def _build_haiku(config: Config, problem: Problem) -> Runner:
    import haiku as hk

    def unroll(x):
        def run_direction(layer, direction, x):
            core = hk.LSTM(config.hidden_size, name=f"layer{layer}_dir{direction}")
            state = jax.tree.map(lambda a: a.astype(x.dtype), core.initial_state(config.batch))
            return hk.dynamic_unroll(core, x, state, reverse=bool(direction))[0]

        return _stack_layers(run_direction, x, config)

    model = hk.without_apply_rng(hk.transform(unroll))

    def linear(p):
        # haiku: [x, h] @ w with gates i, g, f, o, and sigmoid(f + 1) for the forget gate.
        i, f, g, o = _gates(jnp.concatenate([p.w_ih, p.w_hh], axis=1))  # each (H, I+H)
        bi, bf, bg, bo = _gates(p.b_ih + p.b_hh)
        return {
            "w": jnp.concatenate([i, g, f, o], axis=0).T,  # (I+H, 4H)
            "b": jnp.concatenate([bi, bg, bf - 1, bo]),
        }

    params = {
        f"layer{layer}_dir{d}/linear": linear(p)
        for layer, ps in enumerate(problem.params)
        for d, p in enumerate(ps)
    }
    return _jax_runner(lambda params, x, lengths: model.apply(params, x), params, problem)


def cudnn_weights(params: Any) -> jax.Array:
    """jaxlstm's ``params[layer][direction]`` as cuDNN's flat weight vector, the layout
    of ``jax.experimental.rnn.lstm`` (its ``unpack_lstm_weights`` inverts this): every
    pseudo-layer's (``layer * D + direction``) ``w_ih`` then ``w_hh``, row-major, then
    every pseudo-layer's ``b_ih`` then ``b_hh``; gates ``i, f, g, o`` as in PyTorch. It is
    the layout of one layer's directions (:func:`jaxlstm._cudnn.flatten`) over all of them.
    """
    return _cudnn.flatten(tuple(p for ps in params for p in ps))


def _build_jax_rnn(config: Config, problem: Problem) -> Runner:
    """``lstm_ref`` on per-pseudo-layer weights on CPU; the cuDNN ``lstm`` on the flat
    weights on a GPU. Both are batch-first and take every sequence's length."""
    from jax.experimental import rnn

    flat = [p for ps in problem.params for p in ps]  # pseudo-layer layer*D + direction
    full = jnp.full((config.batch,), config.seq_len, jnp.int32)
    sizes = (config.input_size, config.hidden_size, config.num_layers, 0.0, config.bidirectional)
    if problem.device.kind == "gpu":
        weights = cudnn_weights(problem.params)

        def lstm(x, h_0, c_0, weights, seq_lengths):
            # precision None: TF32 unless jax.default_matmul_precision says otherwise.
            return rnn.lstm(x, h_0, c_0, weights, seq_lengths, *sizes, None)
    else:
        weights = tuple(
            {k: getattr(p, field) for k, p in enumerate(flat)}
            for field in ("w_ih", "w_hh", "b_ih", "b_hh")
        )

        def lstm(x, h_0, c_0, weights, seq_lengths):
            return rnn.lstm_ref(x, h_0, c_0, *weights, seq_lengths, *sizes)

    def forward(weights, x, lengths):
        zeros = jnp.zeros((len(flat), config.batch, config.hidden_size), x.dtype)
        seq_lengths = full if lengths is None else lengths
        y, _, _ = lstm(x.transpose(1, 0, 2), zeros, zeros, weights, seq_lengths)  # (N, L, I)
        return y.transpose(1, 0, 2)  # (L, N, D*H)

    return _jax_runner(forward, weights, problem)


def _no_lengths(peer: str) -> Callable[[Config, Device, str], str | None]:
    def unsupported(config: Config, device: Device, dtype: str) -> str | None:
        return f"{peer} has no per-sequence lengths" if config.varlen else None

    return unsupported


def _same_as_jaxlstm_off_cpu(device: Device) -> str | None:
    return None if device.kind == "cpu" else "off CPU jaxlstm's default is the lax.scan path"


def _cudnn_float32_only(config: Config, device: Device, dtype: str) -> str | None:
    if device.kind == "gpu" and dtype != "float32":
        return "jax.experimental.rnn.lstm (cuDNN) computes in float32 only"
    return None


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("jaxlstm", "jax", "jaxlstm", "jaxlstm", "jaxlstm.lstm", _build_jaxlstm),
        Peer(
            "jaxlstm-bf16mm",
            "jax",
            "jaxlstm",
            "jaxlstm",
            "jaxlstm.lstm(matmul_dtype=bfloat16): the opt-in mode, bfloat16 matmul operands, "
            "float32 accumulation, state, gates and results",
            functools.partial(_build_jaxlstm, matmul_dtype=jnp.bfloat16),
            tolerance=3e-2,
        ),
        Peer(
            "jaxlstm-scan",
            "jax",
            "jaxlstm",
            "jaxlstm",
            "jaxlstm.lstm(impl='scan'): the lax.scan path, jaxlstm's where its CPU kernel "
            "does not run",
            functools.partial(_build_jaxlstm, impl="scan"),
            unavailable=_same_as_jaxlstm_off_cpu,
        ),
        Peer(
            "torch",
            "torch",
            "torch",
            "torch",
            "torch.nn.LSTM on CPU, float32; varlen via pack_padded_sequence",
            _build_torch,
            gpu_description="torch.nn.LSTM on CUDA (cuDNN), in --dtype; varlen via "
            "pack_padded_sequence",
            unavailable=torch_unavailable,
        ),
        Peer(
            "flax",
            "jax",
            "flax.linen",
            "flax",
            "linen nn.RNN(nn.OptimizedLSTMCell), nn.Bidirectional; varlen via "
            "seq_lengths, outputs masked past each length",
            _build_flax,
        ),
        Peer(
            "equinox",
            "jax",
            "equinox",
            "equinox",
            "eqx.nn.LSTMCell + lax.scan, vmapped over batch; layers and directions by hand",
            _build_equinox,
            _no_lengths("equinox.nn.LSTMCell"),
        ),
        Peer(
            "haiku",
            "jax",
            "haiku",
            "dm-haiku",
            "hk.LSTM + hk.dynamic_unroll; layers and directions by hand",
            _build_haiku,
            _no_lengths("hk.dynamic_unroll"),
        ),
        Peer(
            "jax-rnn",
            "jax",
            "jax.experimental.rnn",
            "jax",
            "jax.experimental.rnn.lstm_ref",
            _build_jax_rnn,
            _cudnn_float32_only,
            gpu_description="jax.experimental.rnn.lstm (cuDNN), float32, flat weights in "
            "cuDNN's layout",
        ),
    )
}
"""The systems, by name. jaxlstm is the reference every other is checked against."""
