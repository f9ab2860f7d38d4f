"""jaxlstm's fused CPU kernel (``jaxlstm/_kernel.py``, ``jaxlstm/csrc/``).

The kernel runs every float32 layer without projection on x86-64 CPUs with AVX2 or
AVX-512 (the machines CI runs on), so the float32 tests elsewhere already go through it
at their tiny sizes. Here: sizes that reach its other code paths (two threads, batch rows beyond a
register tile, hidden sizes that leave partial 16- and 64-unit tiles, one sequence,
both directions, several layers), judged against PyTorch in float64 and against the
``lax.scan`` path; which calls take it; transforms and concurrent calls.
"""

import multiprocessing
import os
import pathlib
import platform
import re
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import KERNEL_BACKWARD, assert_in_kernel, needs_kernel

import jaxlstm as jl
from jaxlstm import _kernel

# (L, N, H_in, H, num_layers, bidirectional, bias)
CONFIGS = {
    "two-threads": (9, 32, 16, 256, 1, False, True),
    "partial-tiles-bidirectional": (7, 13, 5, 70, 2, True, True),
    "one-sequence-no-bias": (12, 1, 3, 20, 1, True, False),
    "rows-tail-two-layers": (6, 7, 33, 128, 2, False, True),
    "padded-row-blocks": (5, 20, 9, 48, 1, True, True),  # AMX: 20 rows in two blocks of 16
    "odd-hidden": (4, 3, 7, 37, 1, True, True),  # bfloat16 pairs across a weight row's end
    "chunked-input-part": (6, 3, 520, 256, 1, True, True),  # panels beyond L2: chunks of 4
}


_MISSING = _kernel.missing()


def _cpu_flags() -> set[str]:
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _inputs(config, seed=0):
    seq_len, batch, input_size, hidden, layers, bidirectional, bias = config
    params = jl.init_params(
        jax.random.key(seed),
        input_size,
        hidden,
        num_layers=layers,
        bidirectional=bidirectional,
        bias=bias,
    )
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    x = rng.standard_normal((seq_len, batch, input_size)).astype(np.float32)
    h0, c0 = (
        0.5 * rng.standard_normal((layers * dirs, batch, hidden)).astype(np.float32)
        for _ in range(2)
    )
    y_cot = rng.standard_normal((seq_len, batch, dirs * hidden)).astype(np.float32)
    state_cot = rng.standard_normal((2, layers * dirs, batch, hidden)).astype(np.float32)
    lengths = rng.integers(1, seq_len + 1, batch)
    lengths[0] = seq_len  # PyTorch's packed output keeps the full length
    return params, x, (h0, c0), (y_cot, state_cot), lengths


def _loss(params, x, hx, cotangents, lengths, matmul_dtype=None):
    y, (h_n, c_n) = jl.lstm(params, x, hx, lengths=lengths, matmul_dtype=matmul_dtype)
    y_cot, state_cot = cotangents
    return jnp.sum(y * y_cot) + jnp.sum(h_n * state_cot[0]) + jnp.sum(c_n * state_cot[1])


_value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1, 2)))


def _torch_float64(params, x, hx, cotangents, lengths):
    """The loss and its gradients from ``torch.nn.LSTM`` in float64, packed by lengths."""
    layers = len(params)
    module = torch.nn.LSTM(
        x.shape[-1],
        params[0][0].w_hh.shape[1],
        num_layers=layers,
        bidirectional=len(params[0]) == 2,
        bias=params[0][0].b_ih is not None,
    ).double()
    module.load_state_dict(
        {
            k: torch.from_numpy(np.asarray(v, np.float64))
            for k, v in jl.params_to_torch(params).items()
        }
    )
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    th = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in hx]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        tx, torch.tensor(lengths), enforce_sorted=False
    )
    out, (h_n, c_n) = module(packed, tuple(th))
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    y_cot, state_cot = (torch.tensor(c, dtype=torch.float64) for c in cotangents)
    loss = (y * y_cot).sum() + (h_n * state_cot[0]).sum() + (c_n * state_cot[1]).sum()
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return loss.item(), grads, tx.grad.numpy(), [t.grad.numpy() for t in th]


def test_kernel_is_built_and_used_where_the_cpu_has_avx2():
    """On an x86-64 CPU with AVX2 and FMA (CI's machines) the extension is built and on:
    its AVX-512 build where the CPU has AVX-512, the bfloat16 kernels where it has
    AVX512_BF16, in AMX tiles where it has AMX-BF16 (Linux grants AMX to any process that
    asks); its AVX2 build on the others."""
    flags = _cpu_flags()
    avx512 = {"avx512f", "avx512dq", "avx512bw", "avx512vl", "fma"} <= flags
    avx2 = {"avx2", "fma"} <= flags
    assert _kernel._extension.isas() == ["avx512"] * avx512 + ["avx2"] * avx2
    bf16 = avx512 and "avx512_bf16" in flags
    assert _kernel._extension.supported_bf16() == bf16
    amx = bf16 and {"amx_tile", "amx_bf16"} <= flags
    expected = "amx" if amx else "avx512" if avx512 else "avx2" if avx2 else ""
    assert _kernel.available() == expected, (sorted(flags), _kernel._extension)


@needs_kernel
@pytest.mark.parametrize("name", CONFIGS)
def test_kernel_matches_torch_float64(name):
    params, x, hx, cotangents, lengths = _inputs(CONFIGS[name])
    text = assert_in_kernel(_value_and_grad, params, x, hx, cotangents, lengths)
    assert KERNEL_BACKWARD.search(text)
    loss, (d_params, d_x, d_hx) = _value_and_grad(params, x, hx, cotangents, lengths)
    want_loss, want_params, want_x, want_hx = _torch_float64(params, x, hx, cotangents, lengths)
    scale = 1 + abs(want_loss)
    np.testing.assert_allclose(float(loss), want_loss, rtol=2e-5, atol=2e-5 * scale)
    for key, value in jl.params_to_torch(d_params).items():
        np.testing.assert_allclose(value, want_params[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(d_x, want_x, rtol=1e-4, atol=1e-4, err_msg="input")
    for i, (got, want) in enumerate(zip(d_hx, want_hx, strict=True)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"hx[{i}]")


def _outputs_and_grads(params, x, hx, cotangents, lengths):
    outputs = jax.jit(lambda p, x, hx, n: jl.lstm(p, x, hx, lengths=n))(params, x, hx, lengths)
    return outputs, _value_and_grad(params, x, hx, cotangents, lengths)


def _empty_last(x, lengths):
    """The last sequence made empty (which PyTorch's packing refuses), where it is not
    the only one."""
    if len(lengths) > 1:
        lengths[-1] = 0
        x[:, -1] = 0  # its padding


@needs_kernel
@pytest.mark.parametrize("name", CONFIGS)
def test_kernel_matches_the_scan_path(name, monkeypatch):
    """Zero lengths too: the kernel and the ``lax.scan`` path agree to float32 rounding on
    outputs, final states and gradients."""
    params, x, hx, cotangents, lengths = _inputs(CONFIGS[name], seed=1)
    _empty_last(x, lengths)
    assert_in_kernel(_value_and_grad, params, x, hx, cotangents, lengths)
    kernel = _outputs_and_grads(params, x, hx, cotangents, lengths)
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "0")
    scan = _outputs_and_grads(params, x, hx, cotangents, lengths)
    for got, want in zip(jax.tree.leaves(kernel), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


needs_both_builds = pytest.mark.skipif(
    bool(_MISSING) or "avx512" not in _kernel._isas(),
    reason=f"only one build of the kernel runs here: {_MISSING or 'this CPU lacks AVX-512'}",
)


@needs_both_builds
@pytest.mark.parametrize("name", CONFIGS)
def test_the_avx2_and_avx512_builds_agree(name, monkeypatch):
    """On a CPU with AVX-512 the AVX2 build (``JAXLSTM_CPU_KERNEL=avx2``) runs too, and
    agrees with the AVX-512 build to float32 rounding on outputs, states and gradients."""
    params, x, hx, cotangents, lengths = _inputs(CONFIGS[name], seed=4)
    _empty_last(x, lengths)
    results = {}
    for isa in ("avx512", "avx2"):
        monkeypatch.setenv("JAXLSTM_CPU_KERNEL", isa)
        text = assert_in_kernel(_value_and_grad, params, x, hx, cotangents, lengths)
        assert f"jaxlstm_{isa}_lstm_backward" in text
        results[isa] = _outputs_and_grads(params, x, hx, cotangents, lengths)
    pairs = zip(jax.tree.leaves(results["avx2"]), jax.tree.leaves(results["avx512"]), strict=True)
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def _bfloat16_results(name, seed, modes):
    """Loss and gradients of config ``name`` (its last sequence empty): in float32, then
    with ``matmul_dtype=bfloat16`` under each ``JAXLSTM_CPU_KERNEL`` value of ``modes``."""
    params, x, hx, cotangents, lengths = _inputs(CONFIGS[name], seed=seed)
    _empty_last(x, lengths)
    loss = jax.value_and_grad(
        lambda p, x, hx, md: _loss(p, x, hx, cotangents, lengths, md), argnums=(0, 1, 2)
    )
    results = [jax.tree.leaves(jax.jit(loss, static_argnums=3)(params, x, hx, None))]
    with pytest.MonkeyPatch.context() as env:
        for mode in modes:
            env.setenv("JAXLSTM_CPU_KERNEL", mode)
            if mode != "0":
                text = assert_in_kernel(loss, params, x, hx, md=jnp.bfloat16)
                build = _kernel.build(_kernel.available(), jnp.bfloat16)
                assert f"jaxlstm_{build}_lstm_forward_save_bf16" in text
                assert ("amx = true" in text) == (mode == "1" and _kernel._amx_granted())
            results.append(
                jax.tree.leaves(jax.jit(loss, static_argnums=3)(params, x, hx, jnp.bfloat16))
            )
    return results


def _relative_errors(got, want) -> list[float]:
    """Per result, the largest error relative to the largest value."""
    return [
        float(jnp.max(jnp.abs(g - w))) / (1e-3 + float(jnp.max(jnp.abs(w))))
        for g, w in zip(got, want, strict=True)
    ]


def _assert_bfloat16_error(got, want) -> None:
    """Two-sided: within bfloat16's error of float32, and not float32's own (a
    ``matmul_dtype`` that changed nothing would give 0 or float32 rounding, ~1e-7)."""
    errors = _relative_errors(got, want)
    assert max(errors) < 2e-2, errors
    assert min(errors) > 1e-5 and max(errors) > 1e-3, errors


@pytest.mark.parametrize("name", CONFIGS)
def test_bfloat16_matmuls_on_the_scan_path(name):
    """``matmul_dtype=bfloat16`` on the ``lax.scan`` path (every CPU): bfloat16's error,
    bounded from both sides."""
    float32, scan = _bfloat16_results(name, 3, ["0"])
    _assert_bfloat16_error(scan, float32)


needs_amx = pytest.mark.skipif(
    bool(_MISSING) or not _kernel._amx_granted(),
    reason="no AMX here: JAXLSTM_CPU_KERNEL=avx512 runs the default's kernel (its rows run)",
)


@needs_kernel
@pytest.mark.parametrize("kernel", ["1", pytest.param("avx512", marks=needs_amx)])
@pytest.mark.parametrize("name", CONFIGS)
def test_bfloat16_matmuls_match_the_scan_path(name, kernel):
    """``matmul_dtype=bfloat16`` in the kernel (bfloat16 operands, float32 sums and state;
    in AMX tiles where the CPU has them, unless ``JAXLSTM_CPU_KERNEL=avx512``) and on the
    ``lax.scan`` path round alike: each is within bfloat16's error of float32 (and not
    float32's), and they differ from each other by about as much."""
    float32, fused, scan = _bfloat16_results(name, 3, [kernel, "0"])
    _assert_bfloat16_error(fused, float32)
    _assert_bfloat16_error(scan, float32)
    assert max(_relative_errors(fused, scan)) < 2e-2


@needs_amx
@pytest.mark.parametrize("name", CONFIGS)
def test_amx_and_avx512_bfloat16_kernels_agree(name):
    """The AMX products round the same bfloat16 operands as AVX512_BF16's dot products and
    sum in float32 in another order: the two kernels agree to float32 rounding, carried
    through the recurrence."""
    _, amx, avx512 = _bfloat16_results(name, 6, ["1", "avx512"])
    for got, want in zip(amx, avx512, strict=True):
        scale = 1e-3 + float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got - want))) / scale < 1e-4


def _lowers_to_kernel(fn, *args, isa=r"avx512|avx2", **kwargs) -> bool:
    text = jax.jit(fn, static_argnames=tuple(kwargs)).lower(*args, **kwargs).as_text()
    return re.search(rf"jaxlstm_({isa})_lstm_forward", text) is not None


def test_which_calls_take_the_kernel(monkeypatch):
    params = jl.init_params(jax.random.key(0), 3, 8)
    x = jnp.ones((5, 2, 3))
    kernel = _kernel.available()
    on = bool(kernel)
    assert _lowers_to_kernel(lambda p, x: jl.lstm(p, x), params, x) == on
    assert (
        _lowers_to_kernel(lambda p, x: jax.grad(lambda p: jl.lstm(p, x)[0].sum())(p), params, x)
        == on
    )
    projected = jl.init_params(jax.random.key(0), 3, 8, proj_size=4)
    assert not _lowers_to_kernel(lambda p, x: jl.lstm(p, x), projected, x)
    assert _lowers_to_kernel(lambda p, x: jl.lstm(p, x, matmul_dtype=jnp.bfloat16), params, x) == on
    text = jax.jit(lambda p, x: jl.lstm(p, x, matmul_dtype=jnp.bfloat16)).lower(params, x)
    assert ("amx = true" in text.as_text()) == (kernel == "amx")
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "avx512")
    text = jax.jit(lambda p, x: jl.lstm(p, x, matmul_dtype=jnp.bfloat16)).lower(params, x)
    assert "amx = true" not in text.as_text()
    assert not _lowers_to_kernel(lambda p, x: jl.lstm(p, x, checkpoint_every=2), params, x)
    assert _lowers_to_kernel(lambda p, x: jl.lstm(p, x, checkpoint_every=5), params, x) == on
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        assert not _lowers_to_kernel(lambda p, x: jl.lstm(p, x), params64, x.astype(jnp.float64))
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "avx2")  # the AVX2 build, also on AVX-512 CPUs
    assert _lowers_to_kernel(lambda p, x: jl.lstm(p, x), params, x, isa="avx2") == on
    assert not _lowers_to_kernel(lambda p, x: jl.lstm(p, x), params, x, isa="avx512")
    bf16 = lambda p, x: jl.lstm(p, x, matmul_dtype=jnp.bfloat16)  # noqa: E731
    assert _lowers_to_kernel(bf16, params, x, isa="avx2") == on  # widened to float32 for FMAs
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "0")
    assert not _lowers_to_kernel(lambda p, x: jl.lstm(p, x), params, x)


@needs_kernel
def test_vmap_over_params_runs_each_member():
    """``vmap`` over an ensemble of parameters runs the kernel once per member."""
    members = [jl.init_params(jax.random.key(i), 4, 20, bidirectional=True) for i in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    x = jax.random.normal(jax.random.key(9), (6, 5, 4))
    lengths = jnp.array([6, 1, 0, 4, 5])
    f = lambda p: jl.lstm(p, x, lengths=lengths)  # noqa: E731
    assert_in_kernel(jax.vmap(f), stacked)
    batched = jax.jit(jax.vmap(f))(stacked)
    for i, member in enumerate(members):
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(f(member)), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("matmul_dtype", [None, jnp.bfloat16], ids=["f32", "bf16"])
def test_concurrent_calls_agree_with_serial_ones(matmul_dtype):
    """Independent kernel calls in one program and from several Python threads at once
    (each sharing XLA's intra-op threads, which configure their AMX tiles per call) give
    the results of serial calls."""
    params, x, hx, cotangents, lengths = _inputs(CONFIGS["two-threads"], seed=2)
    other = jl.init_params(jax.random.key(5), x.shape[-1], 256)

    def two(x):
        return (
            jl.lstm(params, x, hx, lengths=lengths, matmul_dtype=matmul_dtype)[0],
            jl.lstm(other, x[::-1], matmul_dtype=matmul_dtype)[0],
        )

    assert_in_kernel(two, x)
    for got, want in zip(jax.jit(two)(x), two(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    grads = jax.jit(
        jax.value_and_grad(
            lambda p, x: _loss(p, x, hx, cotangents, lengths, matmul_dtype), argnums=(0, 1)
        )
    )
    results = [None] * 4
    expected = [grads(params, x * (i + 1)) for i in range(4)]

    def work(i):
        results[i] = grads(params, x * (i + 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)


def test_switch_is_read_at_each_call(monkeypatch):
    """``JAXLSTM_CPU_KERNEL`` is a static argument: flipping it recompiles, never reuses."""
    params = jl.init_params(jax.random.key(0), 3, 8)
    x = jnp.ones((5, 2, 3))
    first = jl.lstm(params, x)[0]
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "0")
    assert not _kernel.available()
    np.testing.assert_allclose(jl.lstm(params, x)[0], first, rtol=1e-6, atol=1e-6)
    monkeypatch.delenv("JAXLSTM_CPU_KERNEL")
    assert bool(_kernel.available()) == bool(_kernel._extension and _kernel._extension.isas())
    assert os.environ.get("JAXLSTM_CPU_KERNEL") is None


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@needs_kernel
@pytest.mark.parametrize(
    "name, matmul_dtype",
    [("two-threads", None), ("two-threads", jnp.bfloat16), ("chunked-input-part", None)],
)
def test_results_are_bitwise_the_same_on_busy_cores(name, matmul_dtype):
    """With other processes spinning on every core, the kernel's threads are descheduled in
    the middle of their work (AMX tiles included), and steps are finished by whichever
    thread gets there (a step's part may then run twice): the results stay bitwise those
    of a quiet run."""
    params, x, hx, cotangents, lengths = _inputs(CONFIGS[name], seed=4)
    forward = jax.jit(lambda p, x, hx, n: jl.lstm(p, x, hx, lengths=n, matmul_dtype=matmul_dtype))
    grads = jax.jit(
        jax.value_and_grad(lambda p, x: _loss(p, x, hx, cotangents, lengths, matmul_dtype))
    )
    assert_in_kernel(grads, params, x)
    quiet = (forward(params, x, hx, lengths), grads(params, x))
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, args=(3.0,)) for _ in range(os.cpu_count() or 2)]
    for p in spinners:
        p.start()
    try:
        for _ in range(10):
            busy = (forward(params, x, hx, lengths), grads(params, x))
            for a, b in zip(jax.tree.leaves(busy), jax.tree.leaves(quiet), strict=True):
                np.testing.assert_array_equal(a, b)
    finally:
        for p in spinners:
            p.join()


@needs_kernel
def test_nan_and_inf_in_the_input_act_as_on_the_scan_path(monkeypatch):
    """A NaN in a sequence's input makes its outputs NaN from that step on, as on the
    ``lax.scan`` path and in PyTorch (the kernel's exp does not clamp NaN to a number);
    infinities saturate the gates alike."""
    params, x, hx, _, lengths = _inputs(CONFIGS["partial-tiles-bidirectional"], seed=5)
    x[2, 0, 1] = np.nan
    x[3, 1, :] = np.inf
    x[4, 2, 0] = -np.inf
    forward = jax.jit(lambda p, x, hx, n: jl.lstm(p, x, hx, lengths=n))
    assert_in_kernel(forward, params, x, hx, lengths)
    kernel = forward(params, x, hx, lengths)
    assert np.isnan(kernel[0][2:, 0, 0]).all()  # forward direction, from step 2 on
    monkeypatch.setenv("JAXLSTM_CPU_KERNEL", "0")
    scan = forward(params, x, hx, lengths)
    for got, want in zip(jax.tree.leaves(kernel), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)  # NaN == NaN here
