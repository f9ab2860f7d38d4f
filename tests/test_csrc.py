"""The fused CPU kernel's C++ unit tests (``jaxlstm/csrc/tests/``), each built with
AddressSanitizer and UndefinedBehaviorSanitizer and run: the thread team (forced thread
counts, more threads than cores, helpers that come late or never), the working memory
(aligned, kept, given back), the nonlinearities against libm in ulp, and the weight
panels and products against element-by-element versions. The programs of an instruction
set run where the CPU has it (the AVX-512 ones are skipped, with the reason, elsewhere).
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "jaxlstm" / "csrc"
# What each instruction set needs of the CPU (/proc/cpuinfo's names), as module.cc asks.
NEEDS = {
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512dq", "avx512bw", "avx512vl", "fma"},
}
PROGRAMS = [
    ("team", None),
    ("scratch", None),
    ("activations", "avx2"),
    ("activations", "avx512"),
    ("pack", "avx2"),
    ("pack", "avx512"),
]


def _cpu_flags() -> set[str]:
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the kernel is x86-64 only"
)
@pytest.mark.skipif(_compiler() is None, reason="no C++ compiler (g++, or $CXX) to build them")
@pytest.mark.parametrize("program, isa", PROGRAMS, ids=[f"{p}-{i or 'any'}" for p, i in PROGRAMS])
def test_cpp_unit_tests_under_sanitizers(program, isa, tmp_path):
    if isa is not None and not NEEDS[isa] <= _cpu_flags():
        pytest.skip(f"this CPU lacks {isa} ({', '.join(sorted(NEEDS[isa] - _cpu_flags()))})")
    binary = tmp_path / program
    build = [
        _compiler(),
        "-std=c++17",
        "-O1",
        "-g",
        "-Wall",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-pthread",
        f"-I{CSRC}",
        f"-I{CSRC / 'tests'}",
        f'-DJAXLSTM_ISA_NAME="{program} {isa or ""}"'.replace(' "', '"'),
        *(["-DJAXLSTM_AVX512"] if isa == "avx512" else []),
        str(CSRC / "tests" / f"test_{program}.cc"),
        *(str(CSRC / unit) for unit in ("team.cc", "tiles.cc", "scratch.cc")),
        "-o",
        str(binary),
    ]
    built = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    ran = subprocess.run([binary], capture_output=True, text=True, timeout=300, env=env)
    print(ran.stdout)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert " 0 failed checks" in ran.stdout and "ok" in ran.stdout
