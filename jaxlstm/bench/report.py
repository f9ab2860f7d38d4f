"""The results: :class:`Row`, the machine they were measured on, the text report."""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Sequence
from typing import Any

import jax

from jaxlstm.bench.configs import Config
from jaxlstm.bench.devices import Device
from jaxlstm.bench.peers import Peer


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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(peers: Sequence[Peer], device: Device) -> dict[str, Any]:
    """Platform, CPU, the JAX device, the GPU (on a GPU: ``gpu``, JAX's device kind, and
    ``torch_gpu``, PyTorch's name for it), the 1-minute load average (other work on the
    machine skews every timing) and the versions of the systems under test."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jax_device": str(device.jax_device),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.kind == "gpu":
        info["gpu"] = device.jax_device.device_kind
    for peer in peers:
        info[f"{peer.dist.replace('-', '_')}_version"] = peer.version()
    if any(p.name == "torch" for p in peers):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.kind == "gpu":
            info["torch_gpu"] = torch.cuda.get_device_name()
    return info


def hardware(machine: dict[str, Any]) -> str:
    """What the systems ran on, in words: the GPU when there was one, else the CPU."""
    return machine.get("gpu") or machine["cpu"]


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
    device: Device,
    dtype: str,
    peak_size: int,
) -> str:
    """The plain-text report: machine, systems, configs, the aligned table, notes."""
    where = f"{machine['cpu']} ({machine['cpu_count']} cores)"
    if device.kind == "gpu":
        where = f"{hardware(machine)} (GPU; host {where})"
    framework_dtype = {"jax": dtype, "torch": device.torch_dtype(dtype)}
    width = max(8, *(len(p.name) for p in peers))
    lines = [
        f"jaxlstm-bench on {where}, "
        f"{machine['platform']}, JAX device {machine['jax_device']}, "
        f"load average {_fmt(machine['load_average'], '.2f')} before the run"
        + (
            f", {machine['busy_cores']} core(s) kept busy by spinning processes throughout"
            if machine.get("busy_cores")
            else ""
        )
        + (
            ", each system's pass called once untimed before its timed call after another's"
            if machine.get("settling_calls")
            else ", back to back"
        ),
        "matmul peak ({0}x{0}): {1}".format(
            peak_size,
            ", ".join(f"{k} {framework_dtype[k]} {v:.1f} GFLOP/s" for k, v in peaks.items()),
        ),
        "systems:",
        *(f"  {p.name:<{width}} {p.version():<10} {p.describe(device)}" for p in peers),
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
    if dtype != "float32" and device.kind == "gpu":
        lines.append(
            f"dtype {dtype}: jaxlstm, the JAX peers and PyTorch (cuDNN) compute in {dtype}. "
            "Outputs were checked in float32."
        )
    elif dtype != "float32":
        lines.append(
            f"dtype {dtype}: jaxlstm and the JAX peers compute in {dtype}; PyTorch stays "
            "float32 as the reference. Outputs were checked in float32."
        )
    if device.kind == "gpu":
        lines.append(
            "On the GPU, float32 matrix products run at each framework's default, TF32 on "
            "tensor cores (JAX, cuDNN); the check before timing computed them in full float32."
        )
    notes = dict.fromkeys(f"{r.system} on {r.config} is {r.note}" for r in rows if r.note)
    lines += [*notes, *skipped]
    return "\n".join(lines)
