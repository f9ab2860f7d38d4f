"""The ``jaxlstm-bench`` command's plumbing, on tiny configs. No timing is judged."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxlstm import bench

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


@pytest.fixture(autouse=True)
def _small_matmul_peak(monkeypatch):
    monkeypatch.setattr(bench, "_PEAK_SIZE", {False: 64, True: 64})


# The test extra installs every peer and matplotlib: every peer runs here, none is skipped.
INSTALLED = list(bench.PEERS)


@pytest.fixture(scope="module")
def every_peer(tmp_path_factory):
    """One run of every installed peer on TINY, with --json and --plot."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--configs", TINY, "--reps", "2", "--json", str(out / "rows.json")]
    argv += ["--plot", str(out / "bars.png")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "_PEAK_SIZE", {False: 64, True: 64})
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

    monkeypatch.setattr(bench.os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    monkeypatch.setattr(bench, "run_suite", loading_run)
    path = tmp_path / "rows.json"
    bench.main(["--quick", "--configs", TINY, "--peers", "torch", "--json", str(path)])
    assert {r["load_average"] for r in json.loads(path.read_text())} == {0.25}


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
