"""Builds jaxlstm's optional fused CPU kernel (an XLA FFI custom call, ``jaxlstm/csrc/``).

Everything else is in ``pyproject.toml``. The kernel is built against the XLA FFI headers
vendored in ``jaxlstm/csrc/third_party`` (those of the oldest supported jaxlib: see the
README there), so the build downloads nothing and its binary runs with every supported
jaxlib. It uses only CPython's limited API (one ``abi3`` wheel for every Python >= 3.10).
Where it cannot be built (no C++17 compiler, not x86-64), the install goes on without it,
says so in one line, and jaxlstm runs its ``lax.scan`` path (``python -m jaxlstm`` says
which path runs and why).
"""

import platform
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_X86 = platform.machine().lower() in ("x86_64", "amd64")
_LIMITED_API = "0x030A0000"  # Python 3.10


class _OptionalBuild(build_ext):
    """Builds the kernel, or reports in one plain line why it could not."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, a compiler error: jaxlstm works without
            self._report(error)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self._report(error)

    @staticmethod
    def _report(error: Exception) -> None:
        print(
            f"jaxlstm: the fused CPU kernel was not built ({type(error).__name__}: {error}); "
            "jaxlstm works without it, on its lax.scan path. For the kernel, install a C++17 "
            "compiler (g++ >= 9 or clang++ >= 10) and reinstall jaxlstm.",
            file=sys.stderr,
        )


setup(
    cmdclass={"build_ext": _OptionalBuild},
    ext_modules=[
        Extension(
            "jaxlstm._cpu_kernel",
            sources=sorted(glob("jaxlstm/csrc/*.cc")),
            include_dirs=["jaxlstm/csrc/third_party"],
            # a rebuild follows any change of these (setuptools compares timestamps)
            depends=sorted(glob("jaxlstm/csrc/**/*.h", recursive=True)),
            language="c++",
            define_macros=[("Py_LIMITED_API", _LIMITED_API)],
            py_limited_api=True,
            extra_compile_args=[
                "-std=c++17",
                "-O3",
                "-g0",  # a release build: no debug info (4.5 MB -> ~0.2 MB)
                "-fvisibility=hidden",
                "-Wno-maybe-uninitialized",
            ],
            extra_link_args=["-pthread", "-s"],
        )
    ]
    if _X86
    else [],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
