"""``jaxlstm.show_config()`` and ``python -m jaxlstm``: versions, and which path
:func:`jaxlstm.lstm` takes on this machine, and why."""

from __future__ import annotations

import os
import platform
import sys

import jax
import numpy as np

from jaxlstm import _kernel


def config_lines() -> list[str]:
    """What :func:`show_config` prints, one line each."""
    import jaxlstm

    ext = _kernel._extension
    lines = [
        f"jaxlstm {jaxlstm.__version__}",
        f"python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {jax.lib.__version__}, numpy {np.__version__}",
        f"backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}",
        "fused CPU kernel: "
        + ("built (" + os.path.basename(ext.__file__) + ")" if ext else "not built")
        + f"; JAXLSTM_CPU_KERNEL={os.environ.get('JAXLSTM_CPU_KERNEL', '(unset)')}",
    ]
    if ext is not None:
        lines.append(f"fused CPU kernel: {_kernel.describe_builds()}")
    auto = _kernel.available()
    if auto:
        path = f"the fused CPU kernel ({auto})"
    else:
        why = _kernel.missing() or "JAXLSTM_CPU_KERNEL=0 turns it off"
        path = f"the lax.scan path: {why}"
    lines.append(f'float32 layers without projection, impl="auto": {path}')
    lines.append("everything else (float64, proj_size, GPU, several devices): the lax.scan path")
    return lines


def show_config(file=None) -> None:
    """Prints jaxlstm's, JAX's and numpy's versions, the backend, whether the fused CPU
    kernel is built, and which path :func:`jaxlstm.lstm` takes here and why (also
    ``python -m jaxlstm``)."""
    print("\n".join(config_lines()), file=file or sys.stdout)
