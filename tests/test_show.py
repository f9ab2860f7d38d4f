"""``jaxlstm.show_config()`` / ``python -m jaxlstm``: versions, and which path
``jl.lstm`` takes on this machine and why, judged against ``jaxlstm._kernel``'s own
answers (and with the kernel's stand-in, ``conftest.fake_kernel``, where this CPU has
none)."""

import io
import os
import subprocess
import sys

import jax

import jaxlstm as jl
from jaxlstm import _kernel

PATH_LINE = 'float32 layers without projection, impl="auto": '


def _run(**env) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlstm"],
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_python_m_jaxlstm_names_versions_and_the_path_with_its_reason():
    out = _run()
    assert f"jaxlstm {jl.__version__}\n" in out
    assert f"jax {jax.__version__}, jaxlib {jax.lib.__version__}" in out
    if _kernel._extension is not None:  # which builds run here, and their bfloat16 products
        assert f"fused CPU kernel: {_kernel.describe_builds()}\n" in out
    if _kernel.available():
        assert f"{PATH_LINE}the fused CPU kernel ({_kernel.available()})" in out
    else:
        assert f"{PATH_LINE}the lax.scan path: {_kernel.missing()}" in out
        assert _kernel.missing()  # a reason, not an empty one


def test_the_switch_off_is_named():
    out = _run(JAXLSTM_CPU_KERNEL="0")
    assert "JAXLSTM_CPU_KERNEL=0" in out
    want = "JAXLSTM_CPU_KERNEL=0 turns it off" if not _kernel.missing() else _kernel.missing()
    assert f"{PATH_LINE}the lax.scan path: {want}" in out


def test_show_config_says_the_kernel_where_it_runs(fake_kernel):
    text = io.StringIO()
    jl.show_config(file=text)
    assert f"{PATH_LINE}the fused CPU kernel (avx512)" in text.getvalue()
