"""A run: the matmul peaks, then per config every peer built, checked and timed."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm as jl
from jaxlstm.bench.check import OutputMismatchError, check_outputs, results
from jaxlstm.bench.configs import PASSES, SEED, Config
from jaxlstm.bench.devices import Device
from jaxlstm.bench.peaks import PEAK_REPS, matmul_peaks
from jaxlstm.bench.peers import Peer, Problem, Runner
from jaxlstm.bench.progress import progress_bar
from jaxlstm.bench.report import Row
from jaxlstm.bench.timing import time_round_robin


def run_suite(
    configs: Sequence[Config],
    peers: Sequence[Peer],
    *,
    device: Device,
    dtype: str,
    reps: int | None,
    peak_size: int,
    settle: bool = True,
) -> tuple[list[Row], dict[str, float]]:
    """Checks and times every peer on every config.

    Args:
        configs: the problems.
        peers: the systems; the first must be jaxlstm, the reference.
        device: where every system runs.
        dtype: ``"float32"`` or ``"bfloat16"``, for the JAX systems (PyTorch:
            ``device.torch_dtype(dtype)``).
        reps: timed repetitions per system and pass, or None for each config's own.
        peak_size: the side of the square matmul that measures the peaks.
        settle: call each system's pass once untimed when another was timed just before
            (see :func:`time_round_robin`).

    Returns:
        The rows (per config, pass, system) and the matmul peaks in GFLOP/s by framework.

    Raises:
        OutputMismatchError: if a peer computes something other than jaxlstm.
    """
    frameworks = {p.framework for p in peers}
    plan = [(c, [p for p in peers if p.unsupported(c, device, dtype) is None]) for c in configs]
    total = len(frameworks) * (1 + PEAK_REPS) + sum(
        len(ps) * (1 + len(PASSES) * (reps or c.reps)) for c, ps in plan
    )
    progress = progress_bar(total)
    try:
        progress.set_description("matmul peaks")
        peaks = matmul_peaks(
            frameworks, size=peak_size, dtype=dtype, device=device, progress=progress
        )
        rows = []
        for config, supported in plan:
            rows += _run_config(
                config, supported, peers, device, dtype, reps, peaks, progress, settle
            )
    finally:
        progress.close()
    return rows, peaks


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).partition(chr(10))[0]}"


def _run_config(
    config: Config,
    supported: Sequence[Peer],
    peers: Sequence[Peer],
    device: Device,
    dtype: str,
    reps: int | None,
    peaks: dict[str, float],
    progress: Any,
    settle: bool,
) -> list[Row]:
    """Builds, checks and times the ``supported`` peers on ``config``; n/a rows for the
    other ``peers``, and for a peer other than jaxlstm that fails to build or run here
    (its error in the note)."""
    params = jl.init_params(
        jax.random.key(SEED),
        config.input_size,
        config.hidden_size,
        config.num_layers,
        bidirectional=config.bidirectional,
    )
    x = np.random.default_rng(SEED).standard_normal(
        (config.seq_len, config.batch, config.input_size), np.float32
    )
    # The check computes in float32 with full float32 products (not a GPU's TF32); the
    # timed build in --dtype at each framework's defaults. On CPU in float32 they coincide.
    check = Problem(params, x, config.lengths(), jnp.dtype(jnp.float32), device)
    check = check._replace(exact=device.kind == "gpu")
    timed = check._replace(dtype=jnp.dtype(dtype), exact=False)
    # Every runner has run each pass once before it is timed: the check, or a warm-up.
    runners: dict[str, Runner] = {}
    na = {p.name: p.unsupported(config, device, dtype) for p in peers if p not in supported}
    for peer in supported:
        progress.set_description(f"{config.name}: {peer.name} check+compile")
        try:
            runner = peer.build(config, check)
            if peer.name == "jaxlstm":
                want = results(runner)
            else:
                check_outputs(peer.name, config, runner, want, peer.tolerance)
            if timed.exact != check.exact or peer.dtype(device, dtype) != "float32":
                runner = peer.build(config, timed)
                results(runner)
            runners[peer.name] = runner
        except OutputMismatchError:
            raise
        except Exception as error:
            if peer.name == "jaxlstm":
                raise
            na[peer.name] = f"failed here: {_first_line(error)}"
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
            row = functools.partial(
                Row, peer.name, config.name, config.shape, pass_name, peer.dtype(device, dtype)
            )
            if peer.name not in runners:
                rows.append(row(note=f"n/a: {na[peer.name]}"))
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
