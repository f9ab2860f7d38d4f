"""The fused CPU kernel never breaks a call (``jaxlstm/_kernel.py``).

Each way the kernel can fail here is simulated: not built, built but refused by the
loader, a CPU without AVX-512, the FFI handlers refused at registration, a kernel that
raises when run (an XLA whose FFI API version is older than the handlers'), and one that
computes wrong numbers. In each, a float32 call computes what the ``lax.scan`` path
computes, one :class:`jaxlstm._kernel.KernelWarning` names the cause, and
``impl="cpu_kernel"`` refuses with the same cause. The machine's own state is checked
in a fresh process.
"""

import re
import subprocess
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm as jl
from jaxlstm import _kernel

ABI_MISMATCH = (
    "INVALID_ARGUMENT: FFI handler's API version (0.3) is incompatible with the "
    "framework's API version (0.1)"
)


@pytest.fixture
def fresh(monkeypatch):
    """The kernel's once-per-process findings forgotten, before and after the test."""
    monkeypatch.delenv("JAXLSTM_CPU_KERNEL", raising=False)
    monkeypatch.setattr(_kernel, "_warned", False)
    _kernel._broken.cache_clear()
    jax.clear_caches()
    yield monkeypatch
    _kernel._broken.cache_clear()
    jax.clear_caches()


def _built(monkeypatch, *, supported=True):
    """A stand-in extension that says this CPU runs it."""
    extension = types.SimpleNamespace(
        isas=lambda: ["avx512", "avx2"] if supported else [],
        supported_bf16=lambda: False,
        supported_amx=lambda: False,
        handlers=dict,
        __file__="stand-in",
    )
    monkeypatch.setattr(_kernel, "_extension", extension)
    monkeypatch.setattr(_kernel, "_amx_granted", lambda: False)
    monkeypatch.setattr(_kernel, "_isas", lambda: tuple(extension.isas()))


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def _wrong_forward(x, w_ih, b, w_hh, h0, c0, lengths, mode, isa, *, save):
    y = jnp.zeros((*x.shape[:2], len(w_hh), w_hh[0].shape[1]), jnp.float32)
    return y, h0 + 1, c0


def _not_built(monkeypatch):
    monkeypatch.setattr(_kernel, "_extension", None)
    monkeypatch.setattr(_kernel, "_LOAD_ERROR", "")


def _load_error(monkeypatch):
    monkeypatch.setattr(_kernel, "_extension", None)
    monkeypatch.setattr(
        _kernel, "_LOAD_ERROR", "ImportError: _cpu_kernel.so: undefined symbol: PyFoo"
    )


def _no_avx2(monkeypatch):
    _built(monkeypatch, supported=False)


def _registration_refused(monkeypatch):
    _built(monkeypatch)
    monkeypatch.setattr(_kernel, "_register", _raise(ValueError("unknown FFI type")))


def _run_refused(monkeypatch):
    _built(monkeypatch)
    monkeypatch.setattr(_kernel, "_register", lambda: None)
    monkeypatch.setattr(_kernel, "_forward", _raise(RuntimeError(ABI_MISMATCH)))


def _wrong_numbers(monkeypatch):
    _built(monkeypatch)
    monkeypatch.setattr(_kernel, "_register", lambda: None)
    monkeypatch.setattr(_kernel, "_forward", _wrong_forward)


FAILURES = {
    "not-built": (_not_built, "no C++17 compiler"),
    "load-error": (_load_error, "undefined symbol: PyFoo"),
    "no-avx2": (_no_avx2, "lacks AVX2"),
    "registration-refused": (_registration_refused, "registering its XLA FFI handlers failed"),
    "abi-mismatch": (_run_refused, "API version (0.3) is incompatible"),
    "wrong-numbers": (_wrong_numbers, "computed wrong numbers"),
}


def _problem():
    params = jl.init_params(jax.random.key(0), 3, 8, bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (5, 2, 3))
    return params, x, jnp.array([5, 2])


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failing_kernel_falls_back_with_one_warning(failure, fresh):
    simulate, cause = FAILURES[failure]
    params, x, lengths = _problem()
    want = jl.lstm(params, x, lengths=lengths, impl="scan")
    simulate(fresh)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = jl.lstm(params, x, lengths=lengths)
        grads = jax.grad(lambda p: jl.lstm(p, x, lengths=lengths)[0].sum())(params)
    said = [w for w in caught if issubclass(w.category, _kernel.KernelWarning)]
    assert len(said) == 1, [str(w.message) for w in caught]
    message = str(said[0].message)
    assert cause in message and "lax.scan path" in message
    assert said[0].filename == __file__  # points at the caller's line
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    want_grads = jax.grad(lambda p: jl.lstm(p, x, lengths=lengths, impl="scan")[0].sum())(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cannot run here: .*" + re.escape(cause)):
        jl.lstm(params, x, impl="cpu_kernel")
    assert cause in "\n".join(jl._show.config_lines())


def test_the_warning_points_at_the_users_line_under_jit(fresh):
    """A ``jax.jit``-compiled function that calls ``jl.lstm`` warns at the user's call of
    the compiled function, not inside JAX's tracing."""
    _no_avx2(fresh)
    params, x, _ = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.jit(jl.lstm)(params, x)
    said = [w for w in caught if issubclass(w.category, _kernel.KernelWarning)]
    assert [w.filename for w in said] == [__file__]


def test_turned_off_on_purpose_says_nothing(fresh):
    _no_avx2(fresh)
    fresh.setenv("JAXLSTM_CPU_KERNEL", "0")
    params, x, _ = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jl.lstm(params, x)


def test_a_working_kernel_passes_its_self_test(fresh):
    """The self-test accepts a kernel that computes the layer (here the scan path standing
    in for it), so it can only turn a kernel off for a reason."""
    from jaxlstm import _scan

    def forward(x, w_ih, b, w_hh, h0, c0, lengths, mode, isa, *, save):
        y, h_n, c_n = _scan._scanned(x, w_ih, b, w_hh, h0, c0, lengths, None)
        return y.reshape(*x.shape[:2], len(w_hh), -1), h_n, c_n

    _built(fresh)
    fresh.setattr(_kernel, "_register", lambda: None)
    fresh.setattr(_kernel, "_forward", forward)
    assert _kernel.missing() == ""
    assert _kernel.available() == "avx512"


def test_the_self_tests_reference_is_the_lstm():
    """The self-test's NumPy loop is the layer the scan path computes (float64)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5))
    layer = [
        jl.LayerParams(*(0.3 * rng.standard_normal(s) for s in ((16, 5), (16, 4), (16,), (16,))))
        for _ in range(2)
    ]
    lengths = np.array([4, 1, 3], np.int32)
    y, h_n, c_n = _kernel._numpy_layer(
        x,
        tuple(p.w_ih for p in layer),
        tuple(p.b_ih + p.b_hh for p in layer),
        tuple(p.w_hh for p in layer),
        lengths,
    )
    with jax.enable_x64(True):
        want, (want_h, want_c) = jl.lstm([layer], x, lengths=lengths)
    np.testing.assert_allclose(y.reshape(4, 3, 8), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n, want_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n, want_c, rtol=1e-12, atol=1e-12)


def test_this_machine_says_why_once_in_a_fresh_process():
    """Here, for real: where the kernel cannot run, the first float32 call warns once with
    the reason (which ``python -m jaxlstm`` also prints); where it runs, nothing."""
    code = (
        "import jax, jax.numpy as jnp, jaxlstm as jl\n"
        "p = jl.init_params(jax.random.key(0), 3, 4)\n"
        "for _ in range(3): jl.lstm(p, jnp.ones((2, 1, 3)))\n"
        "from jaxlstm import _kernel; print(repr(_kernel.missing()))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAXLSTM_CPU_KERNEL"}
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    reason = eval(proc.stdout.strip().splitlines()[-1])
    assert proc.stderr.count("KernelWarning") == (1 if reason else 0), proc.stderr
    if reason:
        assert reason in proc.stderr
