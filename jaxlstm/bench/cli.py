"""The ``jaxlstm-bench`` command: its flags, and :func:`main`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxlstm.bench.busy import busy_cores
from jaxlstm.bench.check import OutputMismatchError
from jaxlstm.bench.configs import CONFIGS, QUICK, SUITES, Config, default_configs, parse_config
from jaxlstm.bench.devices import DEVICE_KINDS, select_device
from jaxlstm.bench.peaks import PEAK_SIZE
from jaxlstm.bench.peers import PEERS
from jaxlstm.bench.plot import write_plot
from jaxlstm.bench.report import format_report, hardware, machine_info
from jaxlstm.bench.suite import run_suite

QUICK_REPS = 3
"""Timed repetitions of ``--quick``."""


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
        help=f"a smoke run of about 20 s: {','.join(QUICK)} only (unless --configs), "
        f"{QUICK_REPS} repetitions, a smaller matmul peak",
    )
    parser.add_argument(
        "--configs",
        type=_config_list,
        metavar="LIST",
        help=f"comma-separated configs among {','.join(CONFIGS)}, or custom "
        "T:N:I:H[:layers][:bidir][:varlen] (default: the device's suite, "
        f"{','.join(SUITES['cpu'])} on CPU, also "
        f"{','.join(c for c in SUITES['gpu'] if c not in SUITES['cpu'])} on a GPU)",
    )
    parser.add_argument(
        "--peers",
        type=_peer_list,
        metavar="LIST",
        help=f"comma-separated peers among {','.join(p for p in PEERS if p != 'jaxlstm')} "
        "(default: every installed one); jaxlstm always runs",
    )
    parser.add_argument(
        "--device",
        choices=DEVICE_KINDS,
        help="where every system runs (default: gpu when JAX's first device is a GPU, else "
        "cpu); on a GPU PyTorch runs on CUDA (cuDNN), jax-rnn is jax.experimental.rnn.lstm "
        "(cuDNN)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype of jaxlstm and the JAX peers, and of PyTorch on a GPU; PyTorch on CPU "
        "stays float32 (default: float32)",
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
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="keep N cores busy with spinning processes while timing, as on a shared machine "
        "(default: 0)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The ``jaxlstm-bench`` command. See ``jaxlstm-bench --help``.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` when None.

    Raises:
        SystemExit: on a bad argument or ``--device gpu`` without a GPU (status 2), or
            when a peer's output differs from jaxlstm's (status 1, with the difference).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.busy < 0:
        parser.error(f"argument --busy: expected a number of cores >= 0, got {args.busy}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    try:
        device = select_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    configs = args.configs or default_configs(device.kind, quick=args.quick)
    reps = args.reps or (QUICK_REPS if args.quick else None)
    peak_size = PEAK_SIZE[device.kind][args.quick]

    wanted = {"jaxlstm", *(args.peers or PEERS)}
    peers, skipped = [], []
    for peer in PEERS.values():
        if peer.name not in wanted:
            continue
        error = peer.import_error()
        if error is not None:
            skipped.append(f"{peer.name}: skipped, {peer.module} does not import ({error})")
        elif (reason := peer.unavailable(device)) is not None:
            skipped.append(f"{peer.name}: skipped, {reason}")
        else:
            peers.append(peer)

    machine = machine_info(peers, device)  # before the run: its load average is other work's
    machine["settling_calls"] = not args.back_to_back
    machine["busy_cores"] = args.busy
    try:
        with busy_cores(args.busy):
            rows, peaks = run_suite(
                configs,
                peers,
                device=device,
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
            device=device,
            dtype=args.dtype,
            peak_size=peak_size,
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([row.as_json(machine) for row in rows], f, indent=1)
    if args.plot:
        write_plot(rows, args.plot, title=f"jaxlstm-bench, {args.dtype}, {hardware(machine)}")
