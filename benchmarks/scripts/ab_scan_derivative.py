"""Interleaved A/B of the ``lax.scan`` path's derivative: a git revision's against the
working tree's, in one process (``python benchmarks/scripts/ab_scan_derivative.py REV
[config ...]``; ``REPS`` in the environment sets the timed rounds, default 15).

The revision's ``jaxlstm/_scan.py`` and ``jaxlstm/_cell.py`` are loaded as modules of
their own beside the installed jaxlstm; each round calls every function once, in turn,
so that both sides see the same machine. Prints the median and p10-p90 of each, and the
largest relative difference of their gradients.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm
from jaxlstm import _scan as new

CONFIGS = {  # L, N, H_in, H, directions, per-sequence lengths
    "typical": (100, 32, 128, 256, 1, False),
    "long": (1000, 8, 64, 128, 1, False),
    "bidir-varlen": (100, 32, 128, 256, 2, True),
}


def _load_revision(rev: str):
    """The revision's ``_scan`` module (its ``_cell`` under another name)."""
    folder = Path(tempfile.mkdtemp())
    for name in ("_scan", "_cell"):
        text = subprocess.run(
            ["git", "show", f"{rev}:jaxlstm/{name}.py"], capture_output=True, text=True, check=True
        ).stdout
        text = text.replace("from jaxlstm._cell import", "from jaxlstm._cell_rev import")
        (folder / f"{name}.py").write_text(text)
    modules = {}
    for name in ("_cell", "_scan"):
        spec = importlib.util.spec_from_file_location(f"jaxlstm.{name}_rev", folder / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = modules[name]
        spec.loader.exec_module(modules[name])
    return modules["_scan"]


def _functions(mod, h0, lengths):
    """The forward pass and the gradient of ``mod.scan_layer``."""

    def fwd(p, x):
        return mod.scan_layer(p, x, h0, h0, lengths)

    def loss(p, x):
        return sum(a.sum() for a in fwd(p, x))

    return fwd, jax.grad(loss, argnums=(0, 1))


def main(rev: str, names: list[str]) -> None:
    old = _load_revision(rev)
    reps = int(os.environ.get("REPS", 15))
    for name in names or list(CONFIGS):
        seq_len, batch, inputs, hidden, dirs, varlen = CONFIGS[name]
        params = jaxlstm.init_params(jax.random.key(0), inputs, hidden, bidirectional=dirs == 2)[0]
        x = jax.random.normal(jax.random.key(1), (seq_len, batch, inputs))
        h0 = jnp.zeros((dirs, batch, hidden))
        lengths = (
            jax.random.randint(jax.random.key(2), (batch,), 1, seq_len + 1) if varlen else None
        )
        fns = {}
        for tag, mod in ((rev, old), ("tree", new)):
            fwd, grad = _functions(mod, h0, lengths)
            fns[f"{tag} fwd"], fns[f"{tag} fwd+bwd"] = jax.jit(fwd), jax.jit(grad)
        grads = [jax.tree.leaves(fns[f"{t} fwd+bwd"](params, x)) for t in (rev, "tree")]
        err = max(
            float(jnp.abs(a - b).max() / (jnp.abs(a).max() + 1e-30))
            for a, b in zip(*grads, strict=True)
        )
        times = {k: [] for k in fns}
        for f in fns.values():
            for _ in range(2):
                jax.block_until_ready(f(params, x))
        for _ in range(reps):
            for k, f in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(f(params, x))
                times[k].append(time.perf_counter() - start)
        load = os.getloadavg()[0]
        print(f"{name}: gradients' largest relative difference {err:.1e}; load {load:.1f}")
        for k, v in times.items():
            v = np.array(v) * 1e3
            p10, p90 = np.percentile(v, [10, 90])
            print(f"  {k:16s} median {np.median(v):7.2f} ms  p10-p90 {p10:7.2f}-{p90:7.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
