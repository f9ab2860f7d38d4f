"""The ``jaxlstm-bench`` command's plumbing, on tiny configs. No timing is judged.

The GPU code paths run here on the CPU, on a stand-in GPU (:func:`fake_gpu`): the device
choice and the GPU suite from a patched ``jax.devices``; PyTorch's CUDA synchronisation
and ``jax.experimental.rnn.lstm`` (cuDNN) replaced by recorders that compute the same
thing on CPU, so that the peers' GPU adapters are checked against jaxlstm for real.
"""

import json
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import rnn

import jaxlstm as jl
from jaxlstm import bench
from jaxlstm.bench import cli, peaks

TINY = "4:2:3:5"  # T:N:I:H, every peer can express it
TINY_VARLEN = "6:3:4:5:varlen"
ROW_KEYS = {
    "system",
    "config",
    "pass",
    "dtype",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "ratio_to_torch",
    "gflops",
    "peak_fraction",
    "compile_s",
    "platform",
    "cpu",
    "jax_version",
    "torch_version",
}


SMALL_PEAK = {kind: {False: 64, True: 64} for kind in peaks.PEAK_SIZE}


@pytest.fixture(autouse=True)
def _small_matmul_peak(monkeypatch):
    monkeypatch.setattr(cli, "PEAK_SIZE", SMALL_PEAK)


# The test extra installs every peer and matplotlib: every peer runs here, none is skipped.
INSTALLED = list(bench.PEERS)


@pytest.fixture(scope="module")
def every_peer(tmp_path_factory):
    """One run of every installed peer on TINY, with --json and --plot."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--configs", TINY, "--reps", "2", "--json", str(out / "rows.json")]
    argv += ["--plot", str(out / "bars.png")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "PEAK_SIZE", SMALL_PEAK)
        bench.main(argv)
    return out


def test_json_has_a_row_per_system_and_pass(every_peer):
    rows = json.loads((every_peer / "rows.json").read_text())
    assert {(r["system"], r["pass"]) for r in rows} == {
        (p, pass_name) for p in INSTALLED for pass_name in bench.PASSES
    }
    for r in rows:
        assert r.keys() >= ROW_KEYS
        assert r["config"] == TINY
        assert r["dtype"] == "float32"
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["gflops"] > 0
        assert r["peak_fraction"] > 0
        assert (r["compile_s"] is None) == (r["system"] == "torch")
    assert all(r["ratio_to_torch"] == 1 for r in rows if r["system"] == "torch")


def test_plot_is_a_png(every_peer):
    assert (every_peer / "bars.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_peers_filter_bfloat16_na_rows_and_no_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the fallback progress bar
    path = tmp_path / "rows.json"
    argv = ["--quick", "--configs", TINY_VARLEN, "--peers", "torch,equinox"]
    bench.main([*argv, "--dtype", "bfloat16", "--json", str(path)])
    rows = json.loads(path.read_text())
    assert [(r["system"], r["pass"]) for r in rows] == [
        (s, p) for p in bench.PASSES for s in ("jaxlstm", "torch", "equinox")
    ]
    assert {(r["system"], r["dtype"]) for r in rows} == {
        ("jaxlstm", "bfloat16"),
        ("torch", "float32"),
        ("equinox", "bfloat16"),
    }
    equinox = [r for r in rows if r["system"] == "equinox"]
    assert all(r["median_ms"] is None and r["note"].startswith("n/a") for r in equinox)
    out, err = capsys.readouterr()
    assert "equinox on 6:3:4:5:varlen is n/a: " in out
    assert "PyTorch stays float32 as the reference" in out
    assert "flax" not in out
    assert re.search(r"\] \d+/\d+", err)  # the text bar drew


def test_load_average_is_the_one_before_the_run(tmp_path, monkeypatch):
    """The report's load average is other work's, read before the bench loads the machine."""
    load = [0.25]
    run_suite = bench.run_suite

    def loading_run(*args, **kwargs):
        load[0] = 1.75  # the bench's own work
        return run_suite(*args, **kwargs)

    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    monkeypatch.setattr(cli, "run_suite", loading_run)
    path = tmp_path / "rows.json"
    bench.main(["--quick", "--configs", TINY, "--peers", "torch", "--json", str(path)])
    assert {r["load_average"] for r in json.loads(path.read_text())} == {0.25}


def test_busy_cores_spin_while_the_systems_run(tmp_path, monkeypatch, capsys):
    """``--busy N``: N spinning processes (children of the bench) live through the timed
    run and are gone after it; the report and the JSON say so."""
    me = os.getpid()
    children = f"/proc/{me}/task/{me}/children"
    seen = []
    run_suite = bench.run_suite

    def watched_run(*args, **kwargs):
        with open(children) as f:
            seen.extend(f.read().split())
        return run_suite(*args, **kwargs)

    monkeypatch.setattr(cli, "run_suite", watched_run)
    path = tmp_path / "rows.json"
    bench.main(["--quick", "--configs", TINY, "--peers", "jaxlstm-scan", "--busy", "2"])
    bench.main(["--quick", "--configs", TINY, "--busy", "2", "--json", str(path)])
    assert len(seen) >= 4
    with open(children) as f:
        assert not set(seen) & set(f.read().split())  # killed and reaped
    assert "2 core(s) kept busy by spinning processes throughout" in capsys.readouterr().out
    assert {r["busy_cores"] for r in json.loads(path.read_text())} == {2}


def test_a_wrong_peer_is_refused(monkeypatch):

    def reversed_gates(config, problem):
        params = jax.tree.map(lambda a: jnp.concatenate(jnp.split(a, 4)[::-1]), problem.params)
        return bench.PEERS["torch"].build(config, problem._replace(params=params))

    wrong = bench.Peer("wrong", "torch", "torch", "torch", "gates reversed", reversed_gates)
    monkeypatch.setitem(bench.PEERS, "wrong", wrong)
    with pytest.raises(SystemExit) as excinfo:
        bench.main(["--quick", "--configs", "3:2:3:4", "--peers", "wrong"])
    message = str(excinfo.value.code)
    assert "wrong disagrees with jaxlstm on config '3:2:3:4'" in message
    assert "output max |difference|" in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "typical,nope"], "unknown config 'nope'"),
        (["--configs", "4:2:3"], "unknown config '4:2:3'"),
        (["--configs", "4:2:3:0"], "unknown config '4:2:3:0'"),
        (["--peers", "torch,pytorch"], "unknown peer 'pytorch'"),
        (["--reps", "0"], "expected a positive integer, got '0'"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
        (["--busy", "-1"], "expected a number of cores >= 0, got -1"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        bench.main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_is_refused(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit):
        bench.main(["--plot", "x.png"])
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_custom_configs_parse():
    config = bench.parse_config("20:4:8:16:3:bidir:varlen")
    assert (config.seq_len, config.batch, config.input_size, config.hidden_size) == (20, 4, 8, 16)
    assert (config.num_layers, config.bidirectional, config.varlen) == (3, True, True)
    lengths = config.lengths()
    assert lengths.shape == (4,)
    assert lengths.min() >= 2
    assert lengths.max() <= 20
    assert bench.parse_config("typical") is bench.CONFIGS["typical"]


def test_flops_count_the_matmuls():
    typical = bench.CONFIGS["typical"]  # T=100 N=32 I=128 H=256
    assert typical.flops("forward") == 100 * 32 * 2 * 4 * 256 * (128 + 256)
    assert typical.flops("forward+backward") == 3 * typical.flops("forward")
    bidir2 = bench.CONFIGS["bidir2"]  # the same, 2 layers, bidirectional
    layer1 = 100 * 32 * 2 * 4 * 256 * (2 * 256 + 256)
    assert bidir2.flops("forward") == 2 * (typical.flops("forward") + layer1)
    varlen = bench.CONFIGS["varlen"]  # valid steps only
    assert varlen.flops("forward") == typical.flops("forward") * varlen.lengths().sum() / 3200


class _Count:
    def __init__(self):
        self.n = 0

    def update(self):
        self.n += 1


def test_round_robin_rotates_the_order():
    calls = []
    thunks = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    progress = _Count()
    times = bench.time_round_robin(thunks, reps=3, warmup=1, progress=progress)
    assert calls == [*"abc", *"abc", *"bca", *"cab"]
    assert {k: v.shape for k, v in times.items()} == {k: (3,) for k in "abc"}
    assert progress.n == 12


def test_round_robin_settles_each_change_of_thunk():
    calls = []
    thunks = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = bench.time_round_robin(thunks, reps=2, warmup=0, progress=_Count(), settle=True)
    # round 0: a, b, c; round 1: b, c, a; each settled by an untimed call of its own
    assert calls == [*"aabbcc", *"bbccaa"]
    assert {k: v.shape for k, v in times.items()} == {k: (2,) for k in "abc"}


# ------------------------------------------------------------------------------- GPU


class _FakeGpu:
    """What ``jax.devices()[0]`` is on a GPU machine, as far as the device choice looks."""

    platform = "gpu"
    device_kind = "NVIDIA H200"


def _devices_with_gpu(backend=None):
    return jax.local_devices(backend="cpu") if backend == "cpu" else [_FakeGpu()]


def test_the_gpu_is_the_default_device_when_jax_has_one(monkeypatch):
    assert bench.select_device(None) == bench.Device("cpu", jax.devices("cpu")[0], "cpu")
    monkeypatch.setattr(jax, "devices", _devices_with_gpu)
    gpu = bench.select_device(None)
    assert gpu.kind == "gpu"
    assert isinstance(gpu.jax_device, _FakeGpu)
    assert (gpu.torch_device, gpu.torch_dtype("bfloat16")) == ("cuda", "bfloat16")
    cpu = bench.select_device("cpu")
    assert cpu == bench.Device("cpu", jax.local_devices(backend="cpu")[0], "cpu")
    assert (cpu.torch_device, cpu.torch_dtype("bfloat16")) == ("cpu", "float32")


def test_gpu_without_one_is_refused(capsys):
    with pytest.raises(SystemExit) as excinfo:
        bench.main(["--device", "gpu", "--configs", TINY])
    assert excinfo.value.code == 2
    assert "--device gpu: JAX sees no GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], [*bench.SUITES["gpu"]]),
        (["--device", "cpu"], [*bench.SUITES["cpu"]]),
        (["--quick"], ["typical"]),
    ],
)
def test_the_default_suite_is_the_devices(argv, want, monkeypatch):
    """On a GPU the suite adds ``large``; the run is cut short once its plan is known."""
    monkeypatch.setattr(jax, "devices", _devices_with_gpu)
    ran = {}

    def plan_only(configs, peers, *, device, **kwargs):
        ran.update(configs=[c.name for c in configs], device=device.kind)
        raise bench.OutputMismatchError("stop")

    monkeypatch.setattr(cli, "run_suite", plan_only)
    monkeypatch.setattr(cli, "machine_info", lambda peers, device: {})
    with pytest.raises(SystemExit):
        bench.main([*argv, "--peers", "equinox"])
    assert ran == {"configs": want, "device": "cpu" if "cpu" in argv else "gpu"}
    assert "large" in bench.SUITES["gpu"]
    assert "large" not in bench.SUITES["cpu"]
    large = bench.CONFIGS["large"]
    assert (large.seq_len, large.batch, large.input_size, large.hidden_size) == (
        512,
        256,
        1024,
        1024,
    )


def test_cudnn_weights_are_what_jax_rnn_unpacks():
    params = jl.init_params(jax.random.key(1), 3, 4, 2, bidirectional=True)
    flat = bench.cudnn_weights(params)
    assert flat.shape == (rnn.get_num_params_in_lstm(3, 4, 2, True),)
    unpacked = rnn.unpack_lstm_weights(flat, 3, 4, 2, True)
    pseudo = [p for ps in params for p in ps]  # layer * D + direction
    for field, by_layer in zip(("w_ih", "w_hh", "b_ih", "b_hh"), unpacked, strict=True):
        assert sorted(by_layer) == list(range(4))
        for k, p in enumerate(pseudo):
            np.testing.assert_array_equal(by_layer[k], getattr(p, field))


def test_jax_passes_block_on_every_output_gradients_included(monkeypatch):
    blocked = []

    def recording_block(tree):
        blocked.append(len(jax.tree.leaves(tree)))
        return tree

    config = bench.parse_config(TINY)
    params = jl.init_params(jax.random.key(0), 3, 5)
    x = np.zeros((4, 2, 3), np.float32)
    problem = bench.Problem(params, x, None, jnp.dtype("float32"), bench.select_device("cpu"))
    runner = bench.PEERS["jaxlstm"].build(config, problem)
    monkeypatch.setattr(jax, "block_until_ready", recording_block)
    runner.forward()
    runner.forward_backward()
    assert blocked == [1, len(jax.tree.leaves(params)) + 1]  # the output; weights and input


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU run on the CPU: the device kind is "gpu", its JAX and PyTorch devices the CPU.

    ``torch.cuda.synchronize`` records cuDNN's and cuBLAS's float32 settings at each
    call; ``jax.experimental.rnn.lstm`` is the cuDNN binding's contract computed by its
    ``lstm_ref`` (through ``unpack_lstm_weights``), recording JAX's matmul precision
    while traced. Returns the records.
    """
    record = types.SimpleNamespace(syncs=[], lstm_precisions=[])
    device = bench.Device("gpu", jax.devices("cpu")[0], "cpu")
    monkeypatch.setattr(cli, "select_device", lambda requested: device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake H200 (torch)")

    def synchronize():
        matmul = torch.get_float32_matmul_precision()
        record.syncs.append((torch.backends.cudnn.allow_tf32, matmul))

    def lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, *rest):
        dropout, bidirectional, precision = rest
        assert precision is None
        record.lstm_precisions.append(jax.config.jax_default_matmul_precision)
        unpacked = rnn.unpack_lstm_weights(
            weights, input_size, hidden_size, num_layers, bidirectional
        )
        return rnn.lstm_ref(
            x,
            h_0,
            c_0,
            *unpacked,
            seq_lengths,
            input_size,
            hidden_size,
            num_layers,
            dropout,
            bidirectional,
        )

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(rnn, "lstm", lstm)
    return record


def test_a_gpu_run_checks_exactly_times_at_the_defaults_and_synchronises(
    fake_gpu, tmp_path, capsys
):
    configs = f"{TINY},5:3:4:5:2:bidir:varlen"
    path = tmp_path / "rows.json"
    bench.main(
        ["--configs", configs, "--peers", "torch,jax-rnn", "--reps", "2", "--json", str(path)]
    )
    rows = json.loads(path.read_text())
    assert {(r["system"], r["config"]) for r in rows if r["median_ms"] is None} == set()
    assert {(r["system"], r["dtype"]) for r in rows} == {
        (s, "float32") for s in ("jaxlstm", "torch", "jax-rnn")
    }
    cpu_kind = jax.devices("cpu")[0].device_kind
    assert {(r["gpu"], r["torch_gpu"]) for r in rows} == {(cpu_kind, "Fake H200 (torch)")}
    # The peak: torch.mm at cuDNN's TF32 default. Every checked call: TF32 off; timed: on.
    settings = set(fake_gpu.syncs)
    assert settings == {(True, "high"), (False, "highest"), (True, "highest")}
    assert fake_gpu.syncs[0] == (True, "high")
    assert fake_gpu.syncs.count((False, "highest")) == 2 * 2  # 2 passes, 2 configs
    # jax-rnn's cuDNN binding, traced for the check in float32, for timing at the default.
    assert fake_gpu.lstm_precisions == ["float32", "float32", None, None] * 2
    out = capsys.readouterr().out
    assert out.startswith(f"jaxlstm-bench on {cpu_kind} (GPU; host ")
    assert "torch.nn.LSTM on CUDA (cuDNN)" in out
    assert "jax.experimental.rnn.lstm (cuDNN)" in out
    assert "the check before timing computed them in full float32" in out


def test_a_gpu_run_in_bfloat16(fake_gpu, tmp_path, capsys):
    path = tmp_path / "rows.json"
    argv = ["--quick", "--configs", TINY, "--peers", "torch,jax-rnn", "--dtype", "bfloat16"]
    bench.main([*argv, "--json", str(path)])
    rows = json.loads(path.read_text())
    assert {(r["system"], r["dtype"], r["median_ms"] is None) for r in rows} == {
        ("jaxlstm", "bfloat16", False),
        ("torch", "bfloat16", False),  # cuDNN in bfloat16, not the float32 reference
        ("jax-rnn", "bfloat16", True),
    }
    out = capsys.readouterr().out
    assert "jax-rnn on 4:2:3:5 is n/a: jax.experimental.rnn.lstm (cuDNN) computes in " in out
    assert "torch bfloat16" in out  # its matmul peak
    assert "PyTorch (cuDNN) compute in bfloat16" in out


def test_torch_without_cuda_is_skipped_on_a_gpu(monkeypatch):
    gpu = bench.Device("gpu", jax.devices("cpu")[0], "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no CUDA device" in bench.PEERS["torch"].unavailable(gpu)
    assert bench.PEERS["torch"].unavailable(bench.select_device("cpu")) is None


def test_a_peer_that_fails_here_is_na_with_its_error(monkeypatch, tmp_path):
    def broken(config, problem):
        raise RuntimeError("no kernel for this device\nmore detail")

    peer = bench.Peer("broken", "jax", "jax", "jax", "always fails", broken)
    monkeypatch.setitem(bench.PEERS, "broken", peer)
    path = tmp_path / "rows.json"
    bench.main(["--quick", "--configs", TINY, "--peers", "broken", "--json", str(path)])
    notes = {r["note"] for r in json.loads(path.read_text()) if r["system"] == "broken"}
    assert notes == {"n/a: failed here: RuntimeError: no kernel for this device"}
