"""Builds jaxlstm's optional fused CPU kernel (an XLA FFI custom call, ``jaxlstm/_cpu_kernel.cc``).

Everything else is in ``pyproject.toml``. The kernel needs only the XLA FFI headers that
jaxlib ships; where it cannot be built (no C++17 compiler, not x86-64), jaxlstm installs
without it and runs its pure-XLA path.
"""

import importlib.util
import os
import platform

from setuptools import Extension, setup


def _ffi_include() -> str:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(next(iter(spec.submodule_search_locations)), "include")


_X86 = platform.machine().lower() in ("x86_64", "amd64")

setup(
    ext_modules=[
        Extension(
            "jaxlstm._cpu_kernel",
            sources=["jaxlstm/_cpu_kernel.cc"],
            include_dirs=[_ffi_include()],
            language="c++",
            extra_compile_args=[
                "-std=c++17",
                "-O3",
                "-fvisibility=hidden",
                "-Wno-maybe-uninitialized",
            ],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
    if _X86
    else [],
)
