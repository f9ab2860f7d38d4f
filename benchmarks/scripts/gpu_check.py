"""Issue 16's checks on a GPU, in one run: ``PYTHONPATH=. python
benchmarks/scripts/gpu_check.py --out DIR`` (about 8 minutes at most on an H200).

Stages, each on its own (one failing keeps the others' results), each written to
``DIR/gpu_check.json`` as soon as it ends, a line each in ``DIR/gpu_check.txt``:

1. ``env``: versions, the device, whether ``impl="cudnn"`` can run and why not.
2. ``parity``: ``impl="cudnn"`` and ``impl="scan"`` against ``torch.nn.LSTM`` on CUDA,
   float32 with TF32 off in both (``jax_default_matmul_precision="highest"``, PyTorch's
   TF32 flags off): 1-2 layers, one or two directions, with and without bias, lengths in
   any order with 0 among them, and full; outputs, ``h_n``/``c_n`` and the gradients of
   ``x``, ``h0``, ``c0`` and every parameter. Also whether cuDNN's custom calls are in
   the compiled programs.
3. ``transforms``: on ``impl="cudnn"`` against ``impl="scan"``: grad, grad of grad
   (MAML), jvp, jacfwd, Hessian-vector products both ways, vmap of grad and of the
   forward pass, ``jax.export`` (refused by default? then with the custom calls
   allowed, ``vjp_order=1``, round trip) and ``jit`` with new lengths (no recompile).
4. ``timing``: forward and forward+backward of ``impl="cudnn"``, ``impl="scan"`` and
   PyTorch's cuDNN LSTM, float32 (TF32 off), medians of device-synchronised calls.
5. ``bench``: ``python -m jaxlstm.bench --device gpu`` (``--bench-args``) with the time
   left, its JSON beside; an older bench without ``--device`` is reported.

A stage starts only if the budget (``--budget`` seconds from the start) leaves it its
minimum. ``--cpu-dry-run`` runs it all on the CPU at tiny sizes, the cuDNN primitives
emulated (``tests/cudnn_fake.py``), PyTorch on the CPU: to know the script runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START = time.monotonic()


class Run:
    """The run's options, sizes and results (written after every stage)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.cpu_dry_run
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"dry_run": self.dry}
        self.lines: list[str] = []
        # L, N, H_in, H and per-sequence lengths (unsorted, zeros among them)
        self.size = (5, 4, 3, 4) if self.dry else (24, 8, 16, 32)
        self.lengths = (2, 5, 0, 3) if self.dry else (24, 3, 0, 17, 24, 1, 0, 9)

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - START)

    def stage(self, name: str, fn: Callable[[Run], dict], minimum: float) -> None:
        """``fn(self)`` recorded under ``name``; skipped below ``minimum`` seconds left."""
        if self.left() < minimum:
            self.results[name] = {"skipped": f"{self.left():.0f} s left, needs {minimum:.0f}"}
        else:
            began = time.monotonic()
            try:
                self.results[name] = fn(self)
            except Exception:
                self.results[name] = {"error": traceback.format_exc()}
            self.results[name]["seconds"] = round(time.monotonic() - began, 1)
        self.say(f"[{name}] {_summary(self.results[name])}")
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")


def _summary(result: dict) -> str:
    if "error" in result:
        return "ERROR " + result["error"].strip().splitlines()[-1]
    if "skipped" in result:
        return "skipped: " + result["skipped"]
    return " ".join(
        f"{k}={v}"
        for k, v in result.items()
        if not isinstance(v, (dict, list)) and len(str(v)) < 200  # the rest: in the JSON
    )


def env(run: Run) -> dict:
    import jax
    import torch

    from jaxlstm import _cudnn

    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "backend": jax.default_backend(),
        "device": str(device.device_kind),
        "client": f"{device.client.platform} {device.client.platform_version}",
        "devices": jax.device_count(),
        "torch_cuda": torch.cuda.is_available(),
        "torch_cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cudnn_missing": _cudnn.missing() or "none: impl='cudnn' can run",
    }


# --- parity against PyTorch -------------------------------------------------------------


def _torch_device(run: Run) -> str:
    return "cpu" if run.dry else "cuda"


def _torch_run(run: Run, state: dict, x, h0, c0, lengths, cotangents) -> dict:
    """PyTorch's results and gradients (numpy), lengths of 0 run as PyTorch can: the
    other sequences packed, a zero one keeping ``h0, c0`` and zero outputs."""
    import numpy as np
    import torch
    from torch.nn.utils import rnn as torch_rnn

    dev = _torch_device(run)
    layers = sum(k.startswith("weight_ih_l") and not k.endswith("_reverse") for k in state)
    bidirectional = "weight_ih_l0_reverse" in state
    module = torch.nn.LSTM(
        state["weight_ih_l0"].shape[1],
        state["weight_hh_l0"].shape[1],
        layers,
        bias="bias_ih_l0" in state,
        bidirectional=bidirectional,
    ).to(dev)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    tx, th0, tc0 = (
        torch.tensor(np.asarray(a), device=dev, requires_grad=True) for a in (x, h0, c0)
    )
    keep = torch.from_numpy(np.flatnonzero(np.asarray(lengths) > 0)).to(dev)
    packed = torch_rnn.pack_padded_sequence(
        tx.index_select(1, keep),
        torch.from_numpy(np.asarray(lengths)[keep.cpu().numpy()].astype(np.int64)),
        enforce_sorted=False,
    )
    out, (h_sub, c_sub) = module(packed, (th0.index_select(1, keep), tc0.index_select(1, keep)))
    out, _ = torch_rnn.pad_packed_sequence(out, total_length=tx.shape[0])
    y = tx.new_zeros((tx.shape[0], tx.shape[1], out.shape[-1])).index_copy(1, keep, out)
    h_n, c_n = th0.index_copy(1, keep, h_sub), tc0.index_copy(1, keep, c_sub)
    results = (y, h_n, c_n)
    loss = sum(
        (r * torch.tensor(np.asarray(t), device=dev)).sum()
        for r, t in zip(results, cotangents, strict=True)
    )
    loss.backward()
    grads = {"x": tx.grad, "h0": th0.grad, "c0": tc0.grad}
    grads.update((name, p.grad) for name, p in module.named_parameters())
    to_np = {k: v.detach().cpu().numpy() for k, v in grads.items()}
    return {"y": results[0], "h_n": h_n, "c_n": c_n} | {"grad_" + k: v for k, v in to_np.items()}


def _jax_run(impl: str):
    """A jitted ``(params, x, h0, c0, lengths, cotangents) -> (results, gradients)``."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    def loss(params, x, h0, c0, lengths, cotangents):
        y, (h_n, c_n) = jl.lstm(params, x, (h0, c0), lengths=lengths, impl=impl)
        value = sum(jnp.vdot(r, t) for r, t in zip((y, h_n, c_n), cotangents, strict=True))
        return value, (y, h_n, c_n)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _named(results, grads) -> dict:
    import numpy as np

    import jaxlstm as jl

    d_params, d_x, d_h0, d_c0 = grads
    named = dict(zip(("y", "h_n", "c_n"), results[1], strict=True))
    named |= {"grad_x": d_x, "grad_h0": d_h0, "grad_c0": d_c0}
    named |= {"grad_" + k: v for k, v in jl.params_to_torch(d_params).items()}
    return {k: np.asarray(v) for k, v in named.items()}


def _worst(got: dict, want: dict) -> tuple[float, str]:
    """The largest error over ``want``'s arrays, relative to each one's largest value
    (at least 1), and where."""
    import numpy as np

    worst, where = 0.0, ""
    for name, w in want.items():
        w = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, np.float64)
        err = float(np.max(np.abs(np.asarray(got[name], np.float64) - w), initial=0))
        err /= max(1.0, float(np.max(np.abs(w), initial=0)))
        if err >= worst:
            worst, where = err, name
    return worst, where


def _inputs(run: Run, layers: int, bidirectional: bool, bias: bool, seed: int = 0):
    import jax
    import numpy as np

    import jaxlstm as jl

    steps, batch, size, hidden = run.size
    params = jl.init_params(
        jax.random.key(seed), size, hidden, layers, bias=bias, bidirectional=bidirectional
    )
    rng = np.random.default_rng(seed)
    slots = layers * (2 if bidirectional else 1)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, h0, c0 = (
        normal(steps, batch, size),
        normal(slots, batch, hidden),
        normal(slots, batch, hidden),
    )
    dirs = 2 if bidirectional else 1
    cotangents = (
        normal(steps, batch, dirs * hidden),
        normal(slots, batch, hidden),
        normal(slots, batch, hidden),
    )
    return params, x, h0, c0, cotangents


def parity(run: Run) -> dict:
    import jax
    import numpy as np

    import jaxlstm as jl

    configs = {
        "1layer-unidir": (1, False, True),
        "1layer-bidir": (1, True, True),
        "2layer-bidir": (2, True, True),
        "2layer-unidir-nobias": (2, False, False),
    }
    patterns = {"unsorted-with-zeros": run.lengths, "full": (run.size[0],) * run.size[1]}
    tol = 2e-4
    rows, passed = {}, True
    runs = {impl: _jax_run(impl) for impl in ("cudnn", "scan")}
    for config, (layers, bidirectional, bias) in configs.items():
        params, x, h0, c0, cot = _inputs(run, layers, bidirectional, bias)
        state = jl.params_to_torch(params)
        for pattern, lengths in patterns.items():
            lengths = np.asarray(lengths, np.int32)
            want = _torch_run(run, state, x, h0, c0, lengths, cot)
            for impl, fn in runs.items():
                got = _named(*fn(params, x, h0, c0, lengths, cot))
                err, where = _worst(got, want)
                ok = bool(err <= tol)
                passed &= ok
                rows[f"{config}/{pattern}/{impl}"] = {"err": err, "where": where, "ok": ok}
    params, x, h0, c0, cot = _inputs(run, 1, True, True)
    args = (params, x, h0, c0, np.asarray(run.lengths, np.int32), cot)
    text = {impl: fn.lower(*args).as_text() for impl, fn in runs.items()}
    lowered = {
        impl: [t for t in ("cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi") if t in s]
        for impl, s in text.items()
    }
    jaxpr = str(jax.make_jaxpr(runs["cudnn"])(*args))
    return {
        "passed": passed,
        "failed": ",".join(name for name, row in rows.items() if not row["ok"]) or "none",
        "tolerance": tol,
        "worst": max(r["err"] for r in rows.values()),
        "binds_rnn_fwd": "rnn_fwd" in jaxpr,
        "custom_calls": lowered,
        "cases": rows,
    }


# --- transformations ---------------------------------------------------------------------


def _transforms(run: Run, impl: str, lengths) -> dict[str, Callable[[], Any]]:
    """Each transformation of ``jl.lstm(..., impl=impl)`` at fixed inputs."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    params, x, *_ = _inputs(run, 1, True, True, seed=3)
    t_params = jax.tree.map(lambda a: jnp.cos(3.0 * a), params)
    t_x = jnp.sin(x)

    def outputs(p, x):
        y, (h_n, c_n) = jl.lstm(p, x, lengths=lengths, impl=impl)
        return jnp.concatenate([y.ravel(), h_n.ravel(), c_n.ravel()])

    def loss(p, x):
        out = outputs(p, x)
        return jnp.sum(out * out * jnp.cos(out))

    def inner(p):
        return jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p, x))

    def vdot(a, b):
        return sum(
            jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    grad = jax.grad(loss)
    return {
        "grad": lambda: jax.grad(loss, argnums=(0, 1))(params, x),
        "grad-of-grad-maml": lambda: jax.grad(lambda p: loss(inner(p), x))(params),
        "jvp": lambda: jax.jvp(outputs, (params, x), (t_params, t_x)),
        "jacfwd": lambda: jax.jacfwd(lambda x: outputs(params, x))(x),
        "hvp-fwd-over-rev": lambda: jax.jvp(lambda p: grad(p, x), (params,), (t_params,))[1],
        "hvp-rev-over-rev": lambda: jax.grad(lambda p: vdot(grad(p, x), t_params))(params),
        "vmap-of-grad": lambda: jax.vmap(grad, in_axes=(None, 0))(params, jnp.stack([x, -x])),
        "vmap-forward": lambda: jax.vmap(outputs, in_axes=(None, 0))(params, jnp.stack([x, -x])),
    }


def _max_diff(a, b) -> float:
    import jax
    import numpy as np

    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)), initial=0))
        / max(1.0, float(np.max(np.abs(np.asarray(v)), initial=0)))
        for u, v in pairs
    )


def transforms(run: Run) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlstm as jl

    lengths = jnp.asarray(run.lengths, jnp.int32)
    tol = 1e-3  # second order through two float32 paths
    cudnn, scan = _transforms(run, "cudnn", lengths), _transforms(run, "scan", lengths)
    params, x, *_ = _inputs(run, 1, True, True, seed=3)

    def compare(name: str) -> dict:
        err = _max_diff(jax.jit(cudnn[name])(), jax.jit(scan[name])())
        return {"err": err, "ok": bool(err <= tol)}

    def new_lengths() -> dict:
        traces = []

        @jax.jit
        def step(x, n):
            traces.append(None)
            return jax.grad(lambda x: jl.lstm(params, x, lengths=n, impl="cudnn")[0].sum())(x)

        for shift in range(3):
            step(x, jnp.asarray(np.roll(run.lengths, shift), jnp.int32)).block_until_ready()
        return {"traces": len(traces), "ok": len(traces) == 1}

    checks = {name: lambda name=name: compare(name) for name in cudnn}
    checks["jit-new-lengths"] = new_lengths
    checks["export"] = lambda: _export(params, x, lengths)
    rows = {}
    for name, check in checks.items():
        try:
            rows[name] = check()
        except Exception as e:  # recorded; the others go on
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:2000], "ok": False}
    return {
        "passed": all(row["ok"] for row in rows.values()),
        "failed": ",".join(name for name, row in rows.items() if not row["ok"]) or "none",
        "tolerance": tol,
        "cases": rows,
    }


def _export(params, x, lengths) -> dict:
    """``jax.export`` of ``impl="cudnn"``: refused by default (cuDNN's custom calls carry
    no compatibility guarantee)? Then a round trip with them allowed, ``vjp_order=1``."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    def fn(p, x, n):
        return jl.lstm(p, x, lengths=n, impl="cudnn")[0]

    result: dict[str, Any] = {}
    try:
        jax.export.export(jax.jit(fn))(params, x, lengths)
        result["default"] = "exported"
    except Exception as e:  # what it says is the finding
        result["default"] = f"refused: {type(e).__name__}: {str(e)[:300]}"
    allowed = [
        jax.export.DisabledSafetyCheck.custom_call(t)
        for t in ("cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi")
    ]
    exported = jax.export.export(jax.jit(fn), disabled_checks=allowed)(params, x, lengths)
    loaded = jax.export.deserialize(exported.serialize(vjp_order=1))
    out, vjp = jax.vjp(lambda x: loaded.call(params, x, lengths), x)
    want, want_vjp = jax.vjp(lambda x: fn(params, x, lengths), x)
    ct = jnp.cos(out)
    result["err"] = max(_max_diff(out, want), _max_diff(vjp(ct), want_vjp(ct)))
    result["ok"] = bool(result["err"] <= 1e-5)
    return result


# --- timing ------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int) -> float:
    import numpy as np

    sync(fn())  # compile / warm up
    sync(fn())
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        sync(fn())
        times.append(1e3 * (time.perf_counter() - began))
    return round(float(np.median(times)), 3)


def _time_config(run: Run, steps: int, batch: int, size: int, hidden: int) -> dict:
    """Median milliseconds of each system's forward and forward+backward pass."""
    import jax
    import numpy as np
    import torch

    import jaxlstm as jl

    reps = 3 if run.dry else 10
    params = jl.init_params(jax.random.key(0), size, hidden)
    x = jax.random.normal(jax.random.key(1), (steps, batch, size))
    row = {}
    for impl in ("cudnn", "scan"):
        fwd = jax.jit(lambda p, x, i=impl: jl.lstm(p, x, impl=i)[0])
        grad = jax.jit(jax.grad(lambda p, x, i=impl: jl.lstm(p, x, impl=i)[0].sum(), (0, 1)))
        for name, fn in (("fwd", fwd), ("fwd_bwd", grad)):
            row[f"{impl}_{name}_ms"] = _median_ms(
                lambda fn=fn: fn(params, x), jax.block_until_ready, reps
            )
    dev = _torch_device(run)
    module = torch.nn.LSTM(size, hidden).to(dev)
    tx = torch.tensor(np.asarray(x), device=dev, requires_grad=True)

    def sync(_):
        if dev == "cuda":
            torch.cuda.synchronize()

    def fwd_bwd():
        module.zero_grad()
        module(tx)[0].sum().backward()

    with torch.no_grad():
        row["torch_fwd_ms"] = _median_ms(lambda: module(tx), sync, reps)
    row["torch_fwd_bwd_ms"] = _median_ms(fwd_bwd, sync, reps)
    row["cudnn_over_torch_fwd_bwd"] = round(row["cudnn_fwd_bwd_ms"] / row["torch_fwd_bwd_ms"], 3)
    return row


def timing(run: Run) -> dict:
    """:func:`_time_config` at the typical and a large size (float32, TF32 off)."""
    configs = (
        {"tiny": (5, 4, 3, 4)}
        if run.dry
        else {
            "typical": (100, 32, 128, 256),
            "large": (512, 256, 1024, 1024),
        }
    )
    rows = {}
    for name, sizes in configs.items():
        if run.left() < (5 if run.dry else 60):
            rows[name] = {"skipped": "budget"}
        else:
            rows[name] = _time_config(run, *sizes)
    return {"precision": "float32, TF32 off", "configs": rows}


def bench(run: Run) -> dict:
    """``python -m jaxlstm.bench --device ...`` with the time left."""
    base = [sys.executable, "-m", "jaxlstm.bench"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if run.dry:
        env["JAX_PLATFORMS"] = "cpu"
    helptext = subprocess.run(
        [*base, "--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    if "--device" not in helptext.stdout:
        return {
            "ran": False,
            "why": "jaxlstm.bench has no --device option",
            "help": helptext.stdout[-1500:] + helptext.stderr[-1500:],
        }
    out = run.out / "bench.json"
    command = [*base, "--device", "cpu" if run.dry else "gpu", "--json", str(out)]
    command += shlex.split(run.args.bench_args)
    limit = max(10.0, run.left() - 15)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=limit
        )
        status = done.returncode
        tail = (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        status = f"stopped after {limit:.0f} s"
        tail = ((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))[
            -4000:
        ]
    (run.out / "bench.txt").write_text(tail)
    return {
        "ran": True,
        "command": shlex.join(command),
        "status": status,
        "json": out.exists(),
        "tail": tail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json/.txt, bench.json")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for everything")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="tiny, on the CPU, cuDNN emulated"
    )
    parser.add_argument("--bench-args", default="--quick", help="more arguments for jaxlstm.bench")
    args = parser.parse_args()
    if args.cpu_dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        sys.path.insert(0, str(ROOT / "tests"))
    import jax
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")  # TF32 off, as PyTorch's below
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    run = Run(args)
    with contextlib.ExitStack() as stack:
        if run.dry:
            from cudnn_fake import emulated_cudnn

            stack.enter_context(emulated_cudnn())
        run.stage("env", env, 0)
        run.stage("parity", parity, 60)
        run.stage("transforms", transforms, 60)
        run.stage("timing", timing, 60)
    run.stage("bench", bench, 45)
    run.say(f"done in {time.monotonic() - START:.0f} s; results in {run.out}")


if __name__ == "__main__":
    main()
