"""``jaxlstm-bench``: jaxlstm against PyTorch and the JAX LSTMs, on shared weights.

Run ``jaxlstm-bench`` (or ``python -m jaxlstm.bench``) for the default suite, or
``jaxlstm-bench --quick`` for a smoke run; ``--help`` lists the flags.

What it does, per configuration (:data:`CONFIGS`, or a custom ``T:N:I:H`` spec):

1. Draws one set of weights with :func:`jaxlstm.init_params` and one input, and
   converts the weights into every peer's layout (:data:`PEERS`).
2. Checks every peer's output and input gradient against jaxlstm's, in float32, and
   stops with :class:`OutputMismatchError` when one differs beyond :data:`TOLERANCE`:
   a peer that computes something else is never timed.
3. Compiles the JAX systems ahead of time (``jax.jit(f).lower(...).compile()``, timed
   and reported on its own). Every system has run each pass once before it is timed
   (the check, or a warm-up call for a bfloat16 build); the repetitions then go round
   robin over systems and passes, so that machine noise hits all of them alike.

Two passes are timed: ``forward`` (the output) and ``forward+backward`` (the gradient
of the sum of the outputs with respect to the weights and the input). It reports the
median and the 10th-90th percentiles in milliseconds, the ratio of the median to
PyTorch's, the matmul GFLOP/s and their fraction of a matmul peak measured in the same
run (a square ``jnp.dot`` for the JAX systems, ``torch.mm`` for PyTorch).

FLOPs count the LSTM's matrix products only: per layer, direction and valid step,
``2*N*4H*(H_in + H)`` (no configuration here has a projection, whose ``2*N*P*H`` would
add to it). The backward pass counts twice the forward, so ``forward+backward`` is three
times ``forward``. With per-sequence lengths only the valid steps count.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl

PASSES = ("forward", "forward+backward")
"""The timed passes; ``forward+backward`` also computes the weight and input gradients."""

TOLERANCE = 1e-4
"""Largest float32 difference from jaxlstm accepted, relative to ``max(1, max|jaxlstm|)``."""

_BACKWARD_FLOP_FACTOR = {"forward": 1, "forward+backward": 3}
_QUICK_CONFIGS = ("typical",)
_QUICK_REPS = 3
_PEAK_SIZE = {False: 2048, True: 1024}  # by --quick
_PEAK_REPS = 5
_SEED = 0


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark problem, in PyTorch's shape letters.

    Attributes:
        name: what the table and ``--configs`` call it.
        seq_len: ``T`` (``L``), the padded sequence length.
        batch: ``N``.
        input_size: ``I`` (``H_in``).
        hidden_size: ``H``.
        num_layers: stacked layers.
        bidirectional: whether each layer also runs in reverse (``D = 2``).
        varlen: whether sequences have their own lengths, drawn in ``[T // 10, T]``
            (at least 1) with a fixed seed.
        reps: default timed repetitions (``--reps`` overrides), sized so that the
            default suite takes about two minutes on two CPU cores.
    """

    name: str
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    varlen: bool = False
    reps: int = 10

    @property
    def num_directions(self) -> int:
        """``D``: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def shape(self) -> str:
        """The sizes and options in words, e.g. ``T=100 N=32 I=128 H=256 layers=2 bidir``."""
        words = [
            f"T={self.seq_len}",
            f"N={self.batch}",
            f"I={self.input_size}",
            f"H={self.hidden_size}",
        ]
        if self.num_layers > 1:
            words.append(f"layers={self.num_layers}")
        if self.bidirectional:
            words.append("bidir")
        if self.varlen:
            words.append(f"lengths {self._min_length}..{self.seq_len}")
        return " ".join(words)

    def lengths(self) -> np.ndarray | None:
        """The per-sequence lengths ``(N,)`` int32 (fixed seed), or None when not varlen."""
        if not self.varlen:
            return None
        rng = np.random.default_rng(_SEED)
        return rng.integers(self._min_length, self.seq_len + 1, self.batch).astype(np.int32)

    @property
    def _min_length(self) -> int:
        return max(1, self.seq_len // 10)

    def flops(self, pass_name: str) -> float:
        """Matmul FLOPs of one ``pass_name`` (see the module docstring for the count)."""
        lengths = self.lengths()
        steps = self.seq_len * self.batch if lengths is None else int(lengths.sum())
        gates = 4 * self.hidden_size
        per_step = 0
        for layer in range(self.num_layers):
            h_in = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            per_step += self.num_directions * 2 * gates * (h_in + self.hidden_size)
        return float(steps * per_step * _BACKWARD_FLOP_FACTOR[pass_name])


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("typical", 100, 32, 128, 256, reps=10),
        Config("small", 50, 1, 32, 64, reps=20),
        Config("long", 1000, 8, 64, 128, reps=5),
        Config("big", 200, 64, 512, 512, reps=3),
        Config("bidir2", 100, 32, 128, 256, num_layers=2, bidirectional=True, reps=3),
        Config("varlen", 100, 32, 128, 256, varlen=True, reps=5),
    )
}
"""The named configurations, in the default suite's order."""


def parse_config(spec: str) -> Config:
    """A named config, or a custom one written ``T:N:I:H[:layers][:bidir][:varlen]``.

    Args:
        spec: a key of :data:`CONFIGS`, or e.g. ``"20:4:8:16:2:bidir"``.

    Raises:
        ValueError: if ``spec`` is neither.

    Example:
        >>> parse_config("20:4:8:16:2:bidir").shape
        'T=20 N=4 I=8 H=16 layers=2 bidir'
    """
    if spec in CONFIGS:
        return CONFIGS[spec]
    parts = spec.split(":")
    options = parts[4:]
    flags = {"bidir", "varlen"}
    layers = [p for p in options if p not in flags]
    try:
        if len(parts) < 4 or len(layers) > 1 or len(set(options)) != len(options):
            raise ValueError
        sizes = [int(p) for p in parts[:4] + layers]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"unknown config {spec!r}: choose from {', '.join(CONFIGS)}, or give "
            "T:N:I:H[:layers][:bidir][:varlen] with positive integers, e.g. 20:4:8:16:2:bidir"
        ) from None
    return Config(
        spec,
        *sizes[:4],
        num_layers=sizes[4] if layers else 1,
        bidirectional="bidir" in options,
        varlen="varlen" in options,
    )


# ------------------------------------------------------------------------------- peers


class Problem(NamedTuple):
    """What every system of one config computes on.

    Attributes:
        params: jaxlstm float32 weights (``params[layer][direction]``), the shared truth.
        x: the input ``(L, N, I)``, float32 numpy.
        lengths: ``(N,)`` int32 numpy, or None for full-length sequences.
        dtype: the dtype a JAX system computes in; PyTorch always computes in float32.
    """

    params: Any
    x: np.ndarray
    lengths: np.ndarray | None
    dtype: Any


class Runner(NamedTuple):
    """One system built for one problem, ready to time.

    Attributes:
        forward: runs the forward pass to completion; returns the output ``(L, N, D*H)``
            (zero past each sequence's length).
        forward_backward: runs the forward and backward passes to completion (all
            weight and input gradients); returns the input gradient ``(L, N, I)``.
        compile_s: seconds spent compiling each pass; empty for an eager system.
    """

    forward: Callable[[], Any]
    forward_backward: Callable[[], Any]
    compile_s: dict[str, float]


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
        unsupported: ``unsupported(config)`` says why the peer cannot express ``config``
            (reported as n/a), or returns None.
        tolerance: relative tolerance of its check against jaxlstm (float32).
    """

    name: str
    framework: str
    module: str
    dist: str
    description: str
    build: Callable[[Config, Problem], Runner]
    unsupported: Callable[[Config], str | None] = lambda config: None
    tolerance: float = TOLERANCE

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


def _jax_runner(fn: Callable[..., jax.Array], params: Any, problem: Problem) -> Runner:
    """Compiles ``fn(params, x, lengths) -> output (L, N, D*H)`` and its gradient."""

    def loss(params, x, lengths):
        return jnp.sum(fn(params, x, lengths), dtype=jnp.float32)

    args = (
        jax.tree.map(lambda a: jnp.asarray(a, problem.dtype), params),
        jnp.asarray(problem.x, problem.dtype),
        None if problem.lengths is None else jnp.asarray(problem.lengths),
    )
    compiled, compile_s = {}, {}
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


def _stack_layers(run_direction: Callable[[int, int, jax.Array], jax.Array], x, config: Config):
    """Layers and directions by hand: ``run_direction(layer, direction, x (L, N, H_in))``
    gives ``(L, N, H)``; direction 1 runs reversed; outputs concatenate on features."""
    for layer in range(config.num_layers):
        x = jnp.concatenate(
            [run_direction(layer, d, x) for d in range(config.num_directions)], axis=-1
        )  # (L, N, D*H)
    return x


def _build_jaxlstm(config: Config, problem: Problem, matmul_dtype: Any = None) -> Runner:
    def forward(params, x, lengths):
        return jl.lstm(params, x, lengths=lengths, matmul_dtype=matmul_dtype)[0]

    return _jax_runner(forward, problem.params, problem)


def _build_torch(config: Config, problem: Problem) -> Runner:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
    weights = list(model.parameters())
    x = torch.from_numpy(problem.x)
    x_leaf = x.clone().requires_grad_()
    lengths = None if problem.lengths is None else torch.from_numpy(problem.lengths)

    def run(x):
        if lengths is None:
            return model(x)[0]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return pad_packed_sequence(model(packed)[0], total_length=config.seq_len)[0]

    def forward():
        with torch.inference_mode():
            return run(x)

    def forward_backward():
        return torch.autograd.grad(run(x_leaf).sum(), [x_leaf, *weights])[0]

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
        out = model.apply(variables, x, lengths)  # (L, N, D*H)
        if lengths is None:
            return out
        # flax leaves garbage past each length; PyTorch (and jaxlstm) have zeros there.
        valid = jnp.arange(config.seq_len)[:, None] < lengths[None, :]  # (L, N)
        return jnp.where(valid[..., None], out, 0)

    return _jax_runner(forward, variables, problem)


def _build_equinox(config: Config, problem: Problem) -> Runner:
    import equinox as eqx

    def cell(p):
        c = eqx.nn.LSTMCell(p.w_ih.shape[1], config.hidden_size, key=jax.random.key(_SEED))
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


def _build_jax_rnn(config: Config, problem: Problem) -> Runner:
    from jax.experimental import rnn

    flat = [p for ps in problem.params for p in ps]  # pseudo-layer layer*D + direction
    weights = tuple(
        {k: getattr(p, field) for k, p in enumerate(flat)}
        for field in ("w_ih", "w_hh", "b_ih", "b_hh")
    )
    full = jnp.full((config.batch,), config.seq_len, jnp.int32)

    def forward(weights, x, lengths):
        zeros = jnp.zeros((len(flat), config.batch, config.hidden_size), x.dtype)
        y, _, _ = rnn.lstm_ref(
            x.transpose(1, 0, 2),  # (N, L, I): lstm_ref is batch-first
            zeros,
            zeros,
            *weights,
            full if lengths is None else lengths,
            config.input_size,
            config.hidden_size,
            config.num_layers,
            0.0,
            config.bidirectional,
        )
        return y.transpose(1, 0, 2)  # (L, N, D*H)

    return _jax_runner(forward, weights, problem)


def _no_lengths(peer: str) -> Callable[[Config], str | None]:
    return lambda config: f"{peer} has no per-sequence lengths" if config.varlen else None


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
            "torch",
            "torch",
            "torch",
            "torch",
            "torch.nn.LSTM on CPU, float32; varlen via pack_padded_sequence",
            _build_torch,
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
        ),
    )
}
"""The systems, by name. jaxlstm is the reference every other is checked against."""


class OutputMismatchError(RuntimeError):
    """A peer's output or input gradient differs from jaxlstm's beyond :data:`TOLERANCE`."""


def results(runner: Runner) -> tuple[np.ndarray, np.ndarray]:
    """Runs both passes once: the output and the input gradient, as float32 numpy."""

    def numpy(a: Any) -> np.ndarray:
        return np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, np.float32)

    return numpy(runner.forward()), numpy(runner.forward_backward())


def check_outputs(
    peer: str,
    config: Config,
    got: Runner,
    want: tuple[np.ndarray, np.ndarray],
    tolerance: float = TOLERANCE,
) -> None:
    """Checks a peer's output and input gradient against jaxlstm's.

    Args:
        peer: the peer's name, for the message.
        config: the configuration, for the message.
        got: the peer, built in float32.
        want: jaxlstm's :func:`results` in float32 on the same weights and input.
        tolerance: relative tolerance (of ``max(1, max|jaxlstm|)``).

    Raises:
        OutputMismatchError: on a shape mismatch, or a difference above
            ``TOLERANCE * max(1, max|jaxlstm|)``.
    """
    for what, g, w in zip(("output", "input gradient"), results(got), want, strict=True):
        if g.shape != w.shape:
            raise OutputMismatchError(
                f"{peer} disagrees with jaxlstm on config {config.name!r} ({config.shape}): "
                f"{what} shape {g.shape}, jaxlstm's {w.shape}"
            )
        error = float(np.max(np.abs(g - w)))
        bound = tolerance * max(1.0, float(np.max(np.abs(w))))
        if not error <= bound:
            raise OutputMismatchError(
                f"{peer} disagrees with jaxlstm on config {config.name!r} ({config.shape}): "
                f"{what} max |difference| {error:.3g} > tolerance {bound:.3g} (float32). "
                "Its weight conversion or its semantics differ, so it is not timed."
            )


# ------------------------------------------------------------------------------ timing


def time_round_robin(
    thunks: dict[Any, Callable[[], Any]],
    *,
    reps: int,
    warmup: int,
    progress: Any,
    settle: bool = False,
) -> dict[Any, np.ndarray]:
    """Times each thunk ``reps`` times, interleaved, after ``warmup`` untimed calls each.

    Round ``r`` calls the thunks in their order rotated by ``r``, so a slow spell of the
    machine falls on all of them and no thunk always runs first. The garbage collector
    is paused while timing. Each thunk must block until its work is done.

    With ``settle``, a thunk that is not the one timed just before it is first called once
    untimed: each system's pass is timed in its own steady state, as in a loop of its own
    calls, not in the wake of another's. (PyTorch's libgomp workers spin on a core for
    milliseconds after their work, which slowed the next system's call by up to 60%, and
    go to sleep when not called, which slows PyTorch's next call; a large XLA program's
    clean-up slowed the next one by up to 40%; settled per system only, jaxlstm's and
    PyTorch's typical forward+backward, timed right after their own forward, ran 10% and
    5-9% slower.)

    Args:
        thunks: the callables to time, by key.
        reps: timed calls of each.
        warmup: untimed calls of each, first.
        progress: a progress bar, advanced once per timed call.
        settle: call a thunk once untimed before its timed call when another thunk was
            timed just before it.

    Returns:
        Milliseconds per call, ``(reps,)`` per key.
    """
    for thunk in thunks.values():
        for _ in range(warmup):
            thunk()
            progress.update()
    keys = list(thunks)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    previous = None
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                if settle and key != previous:
                    thunks[key]()  # settle: the first call after another thunk's
                previous = key
                start = time.perf_counter()
                thunks[key]()
                times[key].append((time.perf_counter() - start) * 1e3)
                progress.update()
    finally:
        gc.enable()
    return {k: np.asarray(v) for k, v in times.items()}


def matmul_peaks(
    frameworks: Iterable[str], *, size: int, dtype: Any, progress: Any
) -> dict[str, float]:
    """Best GFLOP/s of a ``size x size`` matmul: jitted ``jnp.dot`` in ``dtype`` (key
    ``"jax"``) and float32 ``torch.mm`` (key ``"torch"``), for the frameworks asked."""
    thunks: dict[str, Callable[[], Any]] = {}
    if "jax" in frameworks:
        a = jnp.ones((size, size), dtype)
        dot = jax.jit(jnp.dot).lower(a, a).compile()
        thunks["jax"] = lambda: jax.block_until_ready(dot(a, a))
    if "torch" in frameworks:
        import torch

        t = torch.ones(size, size)
        thunks["torch"] = lambda: torch.mm(t, t)
    times = time_round_robin(thunks, reps=_PEAK_REPS, warmup=1, progress=progress)
    return {k: 2 * size**3 / (float(np.min(ms)) * 1e-3) / 1e9 for k, ms in times.items()}


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Row:
    """One system x config x pass. Times in ms; None where it does not apply.

    ``ratio_to_torch`` is this median over PyTorch's (below 1: faster than PyTorch);
    ``peak_fraction`` is ``gflops`` over its framework's matmul peak; ``note`` says why
    a row is n/a.
    """

    system: str
    config: str
    shape: str
    pass_name: str
    dtype: str
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    ratio_to_torch: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    compile_s: float | None = None
    note: str | None = None

    def as_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        """The row for ``--json``: its fields (``pass_name`` as ``pass``) plus ``machine``."""
        row = {("pass" if k == "pass_name" else k): v for k, v in dataclasses.asdict(self).items()}
        return {**row, **machine}


class _TextBar:
    """A minimal stand-in for ``tqdm`` (which jaxlstm does not require), on stderr."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def _draw(self) -> None:
        done = 30 * self.n // max(self.total, 1)
        sys.stderr.write(f"\r{self.desc[:40]:<40} [{'#' * done:<30}] {self.n}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _progress_bar(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, "jaxlstm-bench")
    return tqdm(total=total, desc="jaxlstm-bench", unit="step", file=sys.stderr, leave=False)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(peers: Sequence[Peer]) -> dict[str, Any]:
    """Platform, CPU, the JAX device, the 1-minute load average (other work on the
    machine skews every timing) and the versions of the systems under test."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jax_device": str(jax.devices()[0]),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    for peer in peers:
        info[f"{peer.dist.replace('-', '_')}_version"] = peer.version()
    if any(p.name == "torch" for p in peers):
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


def run_suite(
    configs: Sequence[Config],
    peers: Sequence[Peer],
    *,
    dtype: str,
    reps: int | None,
    peak_size: int,
    settle: bool = True,
) -> tuple[list[Row], dict[str, float]]:
    """Checks and times every peer on every config.

    Args:
        configs: the problems.
        peers: the systems; the first must be jaxlstm, the reference.
        dtype: ``"float32"`` or ``"bfloat16"``, for the JAX systems (PyTorch: float32).
        reps: timed repetitions per system and pass, or None for each config's own.
        peak_size: the side of the square matmul that measures the peaks.
        settle: call each system's pass once untimed when another was timed just before
            (see :func:`time_round_robin`).

    Returns:
        The rows (per config, pass, system) and the matmul peaks in GFLOP/s by framework.

    Raises:
        OutputMismatchError: if a peer computes something other than jaxlstm.
    """
    jax_dtype = jnp.dtype(dtype)
    frameworks = {p.framework for p in peers}
    plan = [(c, [p for p in peers if p.unsupported(c) is None]) for c in configs]
    total = len(frameworks) * (1 + _PEAK_REPS) + sum(
        len(ps) * (1 + len(PASSES) * (reps or c.reps)) for c, ps in plan
    )
    progress = _progress_bar(total)
    try:
        progress.set_description("matmul peaks")
        peaks = matmul_peaks(frameworks, size=peak_size, dtype=jax_dtype, progress=progress)
        rows = []
        for config, supported in plan:
            rows += _run_config(config, supported, peers, jax_dtype, reps, peaks, progress, settle)
    finally:
        progress.close()
    return rows, peaks


def _run_config(
    config: Config,
    supported: Sequence[Peer],
    peers: Sequence[Peer],
    jax_dtype: np.dtype,
    reps: int | None,
    peaks: dict[str, float],
    progress: Any,
    settle: bool,
) -> list[Row]:
    """Builds, checks and times the ``supported`` peers on ``config``; n/a rows for the
    other ``peers``."""
    params = jl.init_params(
        jax.random.key(_SEED),
        config.input_size,
        config.hidden_size,
        config.num_layers,
        bidirectional=config.bidirectional,
    )
    x = np.random.default_rng(_SEED).standard_normal(
        (config.seq_len, config.batch, config.input_size), np.float32
    )
    f32 = Problem(params, x, config.lengths(), jnp.dtype(jnp.float32))
    # Every runner has run each pass once before it is timed: the check, or a warm-up.
    runners: dict[str, Runner] = {}
    for peer in supported:
        progress.set_description(f"{config.name}: {peer.name} check+compile")
        runner = peer.build(config, f32)
        if peer.name == "jaxlstm":
            want = results(runner)
        else:
            check_outputs(peer.name, config, runner, want, peer.tolerance)
        if peer.framework == "jax" and jax_dtype != jnp.float32:
            runner = peer.build(config, f32._replace(dtype=jax_dtype))
            results(runner)
        runners[peer.name] = runner
        progress.update()

    progress.set_description(f"{config.name}: timing")
    thunks = {
        (name, pass_name): getattr(runner, pass_name.replace("+", "_"))
        for name, runner in runners.items()
        for pass_name in PASSES
    }
    times = time_round_robin(
        thunks, reps=reps or config.reps, warmup=0, progress=progress, settle=settle
    )

    rows = []
    for pass_name in PASSES:
        torch_ms = float(np.median(times["torch", pass_name])) if "torch" in runners else None
        for peer in peers:
            dtype = "float32" if peer.framework == "torch" else jax_dtype.name
            row = functools.partial(Row, peer.name, config.name, config.shape, pass_name, dtype)
            if peer.name not in runners:
                rows.append(row(note=f"n/a: {peer.unsupported(config)}"))
                continue
            ms = times[peer.name, pass_name]
            median = float(np.median(ms))
            gflops = config.flops(pass_name) / (median * 1e-3) / 1e9
            rows.append(
                row(
                    median_ms=median,
                    p10_ms=float(np.percentile(ms, 10)),
                    p90_ms=float(np.percentile(ms, 90)),
                    ratio_to_torch=None if torch_ms is None else median / torch_ms,
                    gflops=gflops,
                    peak_fraction=gflops / peaks[peer.framework],
                    compile_s=runners[peer.name].compile_s.get(pass_name),
                )
            )
    return rows


# ------------------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(
    rows: Sequence[Row],
    peaks: dict[str, float],
    *,
    peers: Sequence[Peer],
    configs: Sequence[Config],
    machine: dict[str, Any],
    skipped: Sequence[str],
    dtype: str,
    peak_size: int,
) -> str:
    """The plain-text report: machine, systems, configs, the aligned table, notes."""
    lines = [
        f"jaxlstm-bench on {machine['cpu']} ({machine['cpu_count']} cores), "
        f"{machine['platform']}, JAX device {machine['jax_device']}, "
        f"load average {_fmt(machine['load_average'], '.2f')} before the run"
        + (
            ", each system's pass called once untimed before its timed call after another's"
            if machine.get("settling_calls")
            else ", back to back"
        ),
        "matmul peak ({0}x{0}): {1}".format(
            peak_size,
            ", ".join(
                f"{k} {dtype if k == 'jax' else 'float32'} {v:.1f} GFLOP/s"
                for k, v in peaks.items()
            ),
        ),
        "systems:",
        *(f"  {p.name:<8} {p.version():<10} {p.description}" for p in peers),
        "configs:",
        *(f"  {c.name:<8} {c.shape}" for c in configs),
        "",
    ]
    header = (
        "config",
        "pass",
        "system",
        "median ms",
        "p10-p90 ms",
        "vs torch",
        "GFLOP/s",
        "peak",
        "compile s",
    )
    table = [header]
    for row in rows:
        if row.median_ms is None:
            table.append((row.config, row.pass_name, row.system, "n/a", *[""] * 5))
            continue
        table.append(
            (
                row.config,
                row.pass_name,
                row.system,
                f"{row.median_ms:.2f}",
                f"{row.p10_ms:.2f}-{row.p90_ms:.2f}",
                _fmt(row.ratio_to_torch, ".2f"),
                f"{row.gflops:.1f}",
                f"{row.peak_fraction:.0%}",
                _fmt(row.compile_s, ".2f"),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for k, r in enumerate(table):
        if k > 1 and r[0] != table[k - 1][0]:
            lines.append("")  # between configs
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "vs torch: median / PyTorch's median (below 1 is faster); peak: GFLOP/s over the "
        "matmul peak of the same framework; compile s: jit lower+compile (- for eager).",
    ]
    if dtype != "float32":
        lines.append(
            f"dtype {dtype}: jaxlstm and the JAX peers compute in {dtype}; PyTorch stays "
            "float32 as the reference. Outputs were checked in float32."
        )
    notes = dict.fromkeys(f"{r.system} on {r.config} is {r.note}" for r in rows if r.note)
    lines += [*notes, *skipped]
    return "\n".join(lines)


def write_plot(rows: Sequence[Row], path: str, *, title: str) -> None:
    """Grouped bar chart of the medians (log scale, p10-p90 whiskers), one group per
    config and pass, one bar per system, saved as a PNG at ``path``."""
    from matplotlib.figure import Figure

    timed = [r for r in rows if r.median_ms is not None]
    groups = list(dict.fromkeys((r.config, r.pass_name) for r in timed))
    systems = list(dict.fromkeys(r.system for r in timed))
    width = 0.8 / len(systems)
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups)), 4.5), layout="constrained")
    ax = fig.subplots()
    for k, system in enumerate(systems):
        mine = {(r.config, r.pass_name): r for r in timed if r.system == system}
        xs = [g for g, key in enumerate(groups) if key in mine]
        rs = [mine[groups[g]] for g in xs]
        ax.bar(
            [g + (k - (len(systems) - 1) / 2) * width for g in xs],
            [r.median_ms for r in rs],
            width,
            yerr=[[r.median_ms - r.p10_ms for r in rs], [r.p90_ms - r.median_ms for r in rs]],
            label=system,
        )
    ax.set_xticks(range(len(groups)), [f"{c}\n{p}" for c, p in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (p10-p90), lower is faster")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------- CLI


def _config_list(text: str) -> list[Config]:
    try:
        return [parse_config(spec) for spec in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _peer_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)}"
        )
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxlstm-bench",
        description="Time jaxlstm against PyTorch's nn.LSTM and the installed JAX LSTMs "
        "(flax, equinox, haiku, jax.experimental.rnn) on shared weights, after checking "
        "that they all compute the same thing.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run of about 20 s: {','.join(_QUICK_CONFIGS)} only (unless --configs), "
        f"{_QUICK_REPS} repetitions, a smaller matmul peak",
    )
    parser.add_argument(
        "--configs",
        type=_config_list,
        metavar="LIST",
        help=f"comma-separated configs among {','.join(CONFIGS)}, or custom "
        "T:N:I:H[:layers][:bidir][:varlen] (default: all named ones)",
    )
    parser.add_argument(
        "--peers",
        type=_peer_list,
        metavar="LIST",
        help=f"comma-separated peers among {','.join(p for p in PEERS if p != 'jaxlstm')} "
        "(default: every installed one); jaxlstm always runs",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype of jaxlstm and the JAX peers; PyTorch stays float32 (default: float32)",
    )
    parser.add_argument(
        "--reps", type=_positive_int, metavar="N", help="timed repetitions per system and pass"
    )
    parser.add_argument(
        "--back-to-back",
        action="store_true",
        help="time each call right after the previous one, with no untimed call of its "
        "own first (PyTorch's spinning OpenMP workers and large XLA programs' clean-up "
        "then slow whatever runs next)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The ``jaxlstm-bench`` command. See ``jaxlstm-bench --help``.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` when None.

    Raises:
        SystemExit: on a bad argument (status 2), or when a peer's output differs from
            jaxlstm's (status 1, with the difference).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    configs = args.configs or [CONFIGS[n] for n in (_QUICK_CONFIGS if args.quick else CONFIGS)]
    reps = args.reps or (_QUICK_REPS if args.quick else None)
    peak_size = _PEAK_SIZE[args.quick]

    wanted = {"jaxlstm", *(args.peers or PEERS)}
    peers, skipped = [], []
    for peer in PEERS.values():
        if peer.name not in wanted:
            continue
        error = peer.import_error()
        if error is None:
            peers.append(peer)
        else:
            skipped.append(f"{peer.name}: skipped, {peer.module} does not import ({error})")

    machine = machine_info(peers)  # before the run: its load average is other work's
    machine["settling_calls"] = not args.back_to_back
    try:
        rows, peaks = run_suite(
            configs,
            peers,
            dtype=args.dtype,
            reps=reps,
            peak_size=peak_size,
            settle=not args.back_to_back,
        )
    except OutputMismatchError as error:
        sys.exit(f"jaxlstm-bench: error: {error}")
    print(
        format_report(
            rows,
            peaks,
            peers=peers,
            configs=configs,
            machine=machine,
            skipped=skipped,
            dtype=args.dtype,
            peak_size=peak_size,
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([row.as_json(machine) for row in rows], f, indent=1)
    if args.plot:
        write_plot(rows, args.plot, title=f"jaxlstm-bench, {args.dtype}, {machine['cpu']}")


if __name__ == "__main__":
    main()
