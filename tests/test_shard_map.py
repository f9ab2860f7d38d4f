"""Derivatives of jaxlstm under ``jax.shard_map`` with its default ``check_vma=True``.

Inside ``shard_map`` (with the default ``check_vma=True``) every value has a type that
says over which mesh axes it varies. The batch-sharded input, lengths and initial state
vary over the mesh axis; the replicated parameters do not. Reverse mode then sums a
replicated parameter's gradient over the devices by itself (no ``psum`` is added).

On 4 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``),
each on a one-axis mesh of ``AxisType.Auto`` and of ``AxisType.Explicit``, with the batch
sharded over it and the parameters replicated, this checks that, under ``shard_map``:

* the first-order gradients w.r.t. the parameters, the input and the initial state,
* a Hessian-vector product (``jax.jvp`` of ``jax.grad``) and
* forward mode (``jax.jvp`` of the outputs and final states)

equal those of the same computation without ``shard_map`` on one device. The values
are float32; the tolerance is relative to each result's largest entry. The cases
(a pairwise cover of configuration, mesh axis type and ``impl``):

* 2 layers, bidirectional, time-major, per-sequence lengths (some 0);
* a projection (``proj_size``), ``batch_first``, an initial state ``hx`` sharded on its
  batch axis (axis 1 of ``h0``/``c0``), per-sequence lengths;

each with ``impl="auto"`` on one mesh and ``impl="scan"`` on the other. The main test
process has already initialised JAX with one device, so these checks run in a
subprocess: this file run as a script, which prints one JSON report that the tests
judge.

In the main process, on a one-device mesh: where the fused CPU kernel is available
(simulated here by the ``fake_kernel`` stand-in, see ``conftest.py``), a call under
``shard_map`` takes the ``lax.scan`` path instead (the kernel path's custom calls and
derivative rules do not carry mesh-axis types), with the same gradients; the same call
outside ``shard_map`` does take the kernel path.
"""

from __future__ import annotations

import json
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxlstm as jl

DEVICES = 4
BATCH = 8  # two rows per device
SEQ_LEN = 5
INPUT_SIZE = 3
HIDDEN_SIZE = 4
PROJ_SIZE = 2
LENGTHS = (5, 2, 0, 3, 1, 5, 0, 4)  # (N,), some 0
TIMEOUT_S = 300
TOL = 1e-5  # float32, relative to each result's largest entry
# config -> ((mesh axis type, impl), ...): every pair of the three axes is covered.
CASES = {
    "2layer-bidir-lengths": (("auto", "auto"), ("explicit", "scan")),
    "proj-batch_first-hx-lengths": (("auto", "scan"), ("explicit", "auto")),
}
NAMES = [f"{config}/{mesh}/{impl}" for config, runs in CASES.items() for mesh, impl in runs]
CHECKS = ("grad", "hvp", "jvp")


def _loss(outputs) -> jax.Array:
    """A loss with nonzero second derivatives w.r.t. every output."""
    out, h_n, c_n = outputs
    return (out**2).sum() + (h_n**3).sum() + jnp.sin(c_n).sum()


def _scale_diff(actual, expected) -> float:
    """Largest ``|actual - expected|`` over the leaves, each relative to its expected
    leaf's largest entry (a leaf that is all zero must be exactly zero)."""
    diffs = [0.0]
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, (a.shape, b.shape)
        scale = np.max(np.abs(b), initial=0.0)
        diff = np.max(np.abs(a - b), initial=0.0)
        diffs.append(diff / scale if scale else (0.0 if diff == 0 else np.inf))
    return float(max(diffs))


# --------------------------------------------------------------------- child process


def _varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over inside ``shard_map`` (``aval.vma`` before JAX
    0.10, ``aval.manual_axis_type.varying`` since)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _case(config: str):
    """``(args, specs, batch_first)``: the differentiated arguments ``{"params", "x"[,
    "hx"]}`` and their ``shard_map`` specs (parameters replicated, batch axes sharded)."""
    keys = jax.random.split(jax.random.key(0), 4)
    if config == "2layer-bidir-lengths":
        params = jl.init_params(keys[0], INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
        args = {"params": params, "x": jax.random.normal(keys[1], (SEQ_LEN, BATCH, INPUT_SIZE))}
        specs = {"params": P(), "x": P(None, "b")}
        return args, specs, False
    if config == "proj-batch_first-hx-lengths":
        params = jl.init_params(keys[0], INPUT_SIZE, HIDDEN_SIZE, proj_size=PROJ_SIZE)
        args = {
            "params": params,
            "x": jax.random.normal(keys[1], (BATCH, SEQ_LEN, INPUT_SIZE)),
            "hx": (
                jax.random.normal(keys[2], (1, BATCH, PROJ_SIZE)),
                jax.random.normal(keys[3], (1, BATCH, HIDDEN_SIZE)),
            ),
        }
        specs = {"params": P(), "x": P("b"), "hx": (P(None, "b"), P(None, "b"))}
        return args, specs, True
    raise KeyError(config)


def _derivatives(impl: str, batch_first: bool, seen_vma: list):
    """``f(args, tangents, lengths) -> {"grad", "hvp", "jvp"}`` for one call of
    ``jl.lstm``; ``seen_vma`` collects the mesh axes the input varies over."""

    def outputs(args, lengths):
        seen_vma.append(sorted(_varying_axes(args["x"])))
        out, (h_n, c_n) = jl.lstm(
            args["params"],
            args["x"],
            args.get("hx"),
            lengths=lengths,
            batch_first=batch_first,
            impl=impl,
        )
        return out, h_n, c_n

    def derivatives(args, tangents, lengths):
        grad = jax.grad(lambda a: _loss(outputs(a, lengths)))
        return {
            "grad": grad(args),
            "hvp": jax.jvp(grad, (args,), (tangents,))[1],
            "jvp": jax.jvp(lambda a: outputs(a, lengths), (args,), (tangents,)),
        }

    return derivatives


def _run(config: str) -> dict:
    from jax.sharding import AxisType

    args, specs, batch_first = _case(config)
    leaves, treedef = jax.tree.flatten(args)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    tangents = treedef.unflatten(
        [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    )
    lengths = jnp.array(LENGTHS)
    out_spec = P("b") if batch_first else P(None, "b")
    result_specs = {
        "grad": specs,
        "hvp": specs,
        "jvp": ((out_spec, P(None, "b"), P(None, "b")),) * 2,  # (primals, tangents)
    }
    expected = jax.jit(_derivatives("scan", batch_first, []))(args, tangents, lengths)
    report = {}
    for mesh_kind, impl in CASES[config]:
        axis_type = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[mesh_kind]
        mesh = jax.make_mesh((DEVICES,), ("b",), axis_types=(axis_type,))
        seen_vma: list = []
        sharded = jax.shard_map(  # check_vma: its default (True)
            _derivatives(impl, batch_first, seen_vma),
            mesh=mesh,
            in_specs=(specs, specs, P("b")),
            out_specs=result_specs,
        )
        shardings = jax.tree.map(partial(NamedSharding, mesh), (specs, specs, P("b")))
        inputs = jax.device_put((args, tangents, lengths), shardings)
        got = jax.jit(sharded)(*inputs)
        report[f"{config}/{mesh_kind}/{impl}"] = {
            **{check: _scale_diff(got[check], expected[check]) for check in CHECKS},
            "vma": seen_vma,
            "devices": len(jax.tree.leaves(got["grad"])[0].sharding.device_set),
        }
    return report


def main(configs: list[str]) -> None:
    """Prints the JSON report of the cases of ``configs``."""
    if jax.device_count() != DEVICES:
        raise SystemExit(f"expected {DEVICES} devices, got {jax.devices()}; set XLA_FLAGS")
    report = {}
    for config in configs:
        report.update(_run(config))
    print(json.dumps(report))


# --------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def report() -> dict:
    """The merged report of one subprocess per configuration, run concurrently."""
    from conftest import device_report  # not at the top: the subprocesses run this file

    return device_report(__file__, list(CASES), DEVICES, TIMEOUT_S)


@pytest.mark.parametrize("name", NAMES)
def test_runs_sharded_with_varying_values(report, name):
    """The check is on: the input inside ``shard_map`` varies over the mesh axis, and
    the results lie on all the devices."""
    case = report[name]
    assert case["vma"] and all(vma == ["b"] for vma in case["vma"]), case["vma"]
    assert case["devices"] == DEVICES


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", NAMES)
def test_derivatives_equal_unsharded(report, name, check):
    assert report[name][check] <= TOL


# --------------------------------------------------------------------- one device


def _grads(impl: str):
    """``(params, x, lengths) -> (d params, d x)`` of :func:`_loss` of ``jl.lstm``."""

    def loss(params, x, lengths):
        out, (h_n, c_n) = jl.lstm(params, x, lengths=lengths, impl=impl)
        return _loss((out, h_n, c_n))

    return jax.grad(loss, argnums=(0, 1))


def _run_traced(fn, *args) -> tuple[str, object]:
    """``(jaxpr text, result)`` of ``jax.jit(fn)(*args)``, traced once."""
    traced = jax.jit(fn).trace(*args)
    return str(traced.jaxpr), traced.lower().compile()(*args)


def test_one_device_shard_map_takes_the_scan_path(fake_kernel):
    """With the kernel available, ``shard_map`` (values varying over a mesh axis) routes
    the layers to the ``lax.scan`` path, with the gradients of the kernel-free path; the
    same call outside ``shard_map`` takes the kernel path."""
    params = jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (SEQ_LEN, BATCH, INPUT_SIZE))
    args = (params, x, jnp.array(LENGTHS))
    expected = jax.jit(_grads("scan"))(*args)  # no kernel: the reference
    assert fake_kernel["backward"] == 0

    mesh = jax.make_mesh((1,), ("b",))
    specs = (P(), P(None, "b"), P("b"))
    sharded = jax.shard_map(  # check_vma: its default (True)
        _grads("auto"), mesh=mesh, in_specs=specs, out_specs=(P(), P(None, "b"))
    )
    inputs = jax.device_put(args, jax.tree.map(partial(NamedSharding, mesh), specs))
    jaxpr, got = _run_traced(sharded, *inputs)
    assert "jaxlstm_lstm_tangent" not in jaxpr
    assert fake_kernel["backward"] == 0, "shard_map took the kernel path"
    assert _scale_diff(got, expected) <= TOL

    # Control: outside shard_map the same call takes the (stand-in) kernel path.
    jaxpr, got = _run_traced(_grads("auto"), *args)
    assert "jaxlstm_lstm_tangent" in jaxpr
    assert fake_kernel["backward"] > 0, "the kernel path was not taken outside shard_map"
    assert _scale_diff(got, expected) <= TOL


def test_one_device_shard_map_with_only_the_weights_varying_takes_the_scan_path(fake_kernel):
    """Any operand varying over a mesh axis routes off the kernel, not only the input:
    here the weights vary (sharded on their first axis) and the input is replicated."""
    params = jl.init_params(jax.random.key(0), INPUT_SIZE, HIDDEN_SIZE, bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (SEQ_LEN, BATCH, INPUT_SIZE))
    args = (params, x, jnp.array(LENGTHS))
    expected = jax.jit(_grads("scan"))(*args)

    mesh = jax.make_mesh((1,), ("b",))
    specs = (P("b"), P(), P())
    sharded = jax.shard_map(_grads("auto"), mesh=mesh, in_specs=specs, out_specs=(P("b"), P()))
    inputs = jax.device_put(args, jax.tree.map(partial(NamedSharding, mesh), specs))
    jaxpr, got = _run_traced(sharded, *inputs)
    assert "jaxlstm_lstm_tangent" not in jaxpr
    assert fake_kernel["backward"] == 0, "shard_map took the kernel path"
    assert _scale_diff(got, expected) <= TOL


if __name__ == "__main__":
    main(sys.argv[1:])
