"""Data parallelism: jaxlstm under ``jax.jit`` with the batch sharded over a device mesh.

On 8 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), the
same ``jl.lstm``/``jl.LSTM`` calls run with the batch axis of the input (and of the
lengths and initial states) sharded over a one-axis mesh and the parameters
replicated. For each case this checks that:

* outputs, final states and gradients equal those of one device;
* outputs and final states stay batch-sharded (each device holds ``N / 8`` rows);
* the input gradient is batch-sharded and the parameter gradients replicated;
* the compiled forward pass has no cross-device communication at all (no all-gather,
  all-reduce, collective-permute, all-to-all, reduce-scatter): each device runs the
  recurrence on its own rows. A control (a sum over the batch axis) shows that the
  check does see collectives.

The main test process has already initialised JAX with one device, so the checks run
in a subprocess: this file run as a script, which prints one JSON report that the
tests below judge.
"""

from __future__ import annotations

import json
import sys

import pytest

DEVICES = 8
BATCH = 16  # two rows per device
SEQ_LEN = 7
INPUT_SIZE = 3
HIDDEN_SIZE = 8
TIMEOUT_S = 600
TOL = 1e-5  # float32, relative to the largest entry: gradients sum over devices
COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "collective-permute",
    "all-to-all",
    "reduce-scatter",
    "collective-broadcast",
)
CASES = {
    # name/mesh axis type: what the case runs
    "lstm-2layer-bidir-lengths/auto": "jl.lstm, time-major, per-sequence lengths (some 0)",
    "LSTM-proj-batch_first-hx-lengths/auto": "jl.LSTM: proj_size, batch_first, sharded hx",
    # jax.make_mesh's default in recent JAX: shardings are part of the array types
    "lstm-2layer-bidir-lengths/explicit": "the same on an AxisType.Explicit mesh",
    "LSTM-proj-batch_first-hx-lengths/explicit": "the same on an AxisType.Explicit mesh",
}


# --------------------------------------------------------------------- child process


def _collectives(hlo: str) -> list[str]:
    return sorted({name for name in COLLECTIVES if name in hlo})


def _float_leaves(tree) -> list:
    """The floating-point leaves (gradients of integer lengths are ``float0``: skipped)."""
    import jax
    import jax.numpy as jnp

    return [a for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def _max_diff(actual, expected) -> float:
    """Largest ``|actual - expected| / max(1, max|expected|)`` over the float leaves."""
    import numpy as np

    return max(
        float(np.max(np.abs(np.asarray(a) - b), initial=0.0) / max(1.0, np.max(np.abs(b))))
        for a, b in zip(
            _float_leaves(actual), map(np.asarray, _float_leaves(expected)), strict=True
        )
    )


def _case_inputs(name: str, mesh):
    """``(model, inputs, input shardings, forward)`` for one case."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxlstm as jl

    def sharded(*spec):
        return NamedSharding(mesh, P(*spec))

    keys = jax.random.split(jax.random.key(0), 4)
    lengths = jnp.array([7, 3, 0, 5, 7, 1, 6, 2, 7, 4, 0, 7, 5, 3, 6, 1])  # (N,)
    if name == "lstm-2layer-bidir-lengths":
        model = jl.init_params(keys[0], INPUT_SIZE, HIDDEN_SIZE, 2, bidirectional=True)
        x = jax.random.normal(keys[1], (SEQ_LEN, BATCH, INPUT_SIZE))
        inputs = {"x": x, "lengths": lengths}
        shardings = {"x": sharded(None, "batch"), "lengths": sharded("batch")}

        def forward(model, inputs):
            out, (h_n, c_n) = jl.lstm(model, inputs["x"], lengths=inputs["lengths"])
            return out, h_n, c_n

        return model, inputs, shardings, forward, 1
    if name == "LSTM-proj-batch_first-hx-lengths":
        model = jl.LSTM(INPUT_SIZE, HIDDEN_SIZE, proj_size=4, batch_first=True, key=keys[0])
        inputs = {
            "x": jax.random.normal(keys[1], (BATCH, SEQ_LEN, INPUT_SIZE)),
            "h0": jax.random.normal(keys[2], (1, BATCH, 4)),
            "c0": jax.random.normal(keys[3], (1, BATCH, HIDDEN_SIZE)),
            "lengths": lengths,
        }
        shardings = {
            "x": sharded("batch"),
            "h0": sharded(None, "batch"),
            "c0": sharded(None, "batch"),
            "lengths": sharded("batch"),
        }

        def forward(model, inputs):
            hx = (inputs["h0"], inputs["c0"])
            out, (h_n, c_n) = model(inputs["x"], hx, lengths=inputs["lengths"])
            return out, h_n, c_n

        return model, inputs, shardings, forward, 0
    raise KeyError(name)


def _check_case(name: str, mesh) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    model, inputs, shardings, forward, out_batch_axis = _case_inputs(name, mesh)
    shapes = jax.eval_shape(forward, model, inputs)
    cot_keys = jax.random.split(jax.random.key(1), 3)
    cotangents = tuple(
        jax.random.normal(k, s.shape, s.dtype) for k, s in zip(cot_keys, shapes, strict=True)
    )

    def loss(model, inputs, cotangents):
        results = forward(model, inputs)
        return sum(jnp.sum(r * g) for r, g in zip(results, cotangents, strict=True)), results

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True, allow_int=True)

    # One device: everything on device 0.
    one = jax.devices()[0]
    single = jax.device_put((model, inputs, cotangents), one)
    (_, ref_out), ref_grads = jax.jit(value_and_grad)(*single)

    # The mesh: batch axes sharded, parameters replicated.
    cot_shardings = (
        NamedSharding(mesh, P(*([None] * out_batch_axis), "batch")),
        NamedSharding(mesh, P(None, "batch")),
        NamedSharding(mesh, P(None, "batch")),
    )
    model_s = jax.device_put(model, NamedSharding(mesh, P()))
    inputs_s = jax.device_put(inputs, shardings)
    cot_s = jax.device_put(cotangents, cot_shardings)

    compiled = jax.jit(forward).lower(model_s, inputs_s).compile()
    out_s = compiled(model_s, inputs_s)
    (_, out_under_grad), grads_s = jax.jit(value_and_grad)(model_s, inputs_s, cot_s)

    def shard_rows(array, axis):
        return sorted({s.data.shape[axis] for s in array.addressable_shards})

    grad_x = grads_s[1]["x"]
    return {
        "forward_collectives": _collectives(compiled.as_text()),
        "output_diff": _max_diff(out_s, ref_out),
        "output_under_grad_diff": _max_diff(out_under_grad, ref_out),
        "grad_diff": _max_diff(grads_s, ref_grads),
        "output_rows_per_device": shard_rows(out_s[0], out_batch_axis),
        "state_rows_per_device": shard_rows(out_s[1], 1) + shard_rows(out_s[2], 1),
        "grad_input_rows_per_device": shard_rows(grad_x, out_batch_axis),
        "param_grads_replicated": all(
            g.sharding.is_fully_replicated for g in _float_leaves(grads_s[0])
        ),
        "devices": len(out_s[0].sharding.device_set),
    }


def _control(mesh) -> list[str]:
    """Collectives of a function that must communicate: a sum over the sharded batch."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = jax.device_put(jnp.ones((SEQ_LEN, BATCH)), NamedSharding(mesh, P(None, "batch")))
    return _collectives(jax.jit(lambda x: x.sum(axis=1)).lower(x).compile().as_text())


def main(names: list[str]) -> None:
    """Prints the JSON report of the control and of the cases ``names``."""
    import jax
    from jax.sharding import AxisType

    if jax.device_count() != DEVICES:
        raise SystemExit(f"expected {DEVICES} devices, got {jax.devices()}; set XLA_FLAGS")
    mesh = jax.make_mesh((DEVICES,), ("batch",), axis_types=(AxisType.Auto,))
    report = {"control": _control(mesh)}
    for name in names:
        case, axis_type = name.split("/")
        types = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
        case_mesh = jax.make_mesh((DEVICES,), ("batch",), axis_types=(types[axis_type],))
        report[name] = _check_case(case, case_mesh)
    print(json.dumps(report))


# --------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def report() -> dict:
    """The merged report of one subprocess per case, run concurrently."""
    from conftest import device_report  # not at the top: the subprocesses run this file

    return device_report(__file__, list(CASES), DEVICES, TIMEOUT_S)


def test_collective_check_sees_collectives(report):
    assert report["control"], "a sum over the sharded batch should communicate"


@pytest.mark.parametrize("name", CASES)
def test_forward_has_no_cross_device_communication(report, name):
    assert report[name]["forward_collectives"] == []


@pytest.mark.parametrize("name", CASES)
def test_outputs_equal_one_device(report, name):
    case = report[name]
    assert case["output_diff"] <= TOL
    assert case["output_under_grad_diff"] <= TOL


@pytest.mark.parametrize("name", CASES)
def test_gradients_equal_one_device(report, name):
    assert report[name]["grad_diff"] <= TOL


@pytest.mark.parametrize("name", CASES)
def test_results_stay_batch_sharded(report, name):
    case = report[name]
    rows = BATCH // DEVICES
    assert case["devices"] == DEVICES
    assert case["output_rows_per_device"] == [rows]
    assert case["state_rows_per_device"] == [rows, rows]
    assert case["grad_input_rows_per_device"] == [rows]
    assert case["param_grads_replicated"]


if __name__ == "__main__":
    main(sys.argv[1:])
