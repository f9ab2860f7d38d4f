"""The scripts in ``docs/examples/`` run, in their ``--fast`` mode, and print good numbers.

Each script runs as a subprocess (as a user runs it); the three start together, once
per module, so that their imports and compilations overlap. The tests judge the
numbers each prints on its last lines. The full modes are slower and are run by hand
(``python docs/examples/train_digits.py`` reaches a test accuracy of at least 0.95).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
SCRIPTS = ("train_digits.py", "streaming.py", "port_from_pytorch.py")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """Runs every example with ``--fast``, concurrently; results by script name."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--fast"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return results


def output_of(runs: dict, name: str) -> str:
    run = runs[name]
    assert run.returncode == 0, f"{name} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run.stdout


def last_number(text: str, label: str) -> float:
    """The number after ``label:`` on the last line that has it."""
    values = re.findall(rf"^{re.escape(label)}: ([-+0-9.e]+)\s*$", text, re.MULTILINE)
    assert values, f"no line '{label}: <number>' in:\n{text}"
    return float(values[-1])


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


def test_train_digits(runs):
    out = output_of(runs, "train_digits.py")
    assert out.rstrip().splitlines()[-1].startswith("test accuracy: ")
    accuracy = last_number(out, "test accuracy")
    assert 0.5 < accuracy <= 1.0  # a few epochs; the full run reaches >= 0.95


def test_streaming(runs):
    out = output_of(runs, "streaming.py")
    assert "chunks of" in out
    assert last_number(out, "max abs difference") <= 1e-5


def test_port_from_pytorch(runs):
    out = output_of(runs, "port_from_pytorch.py")
    assert "PyTorch -> JAX" in out and "JAX -> PyTorch" in out
    assert last_number(out, "max abs difference") <= 1e-5
