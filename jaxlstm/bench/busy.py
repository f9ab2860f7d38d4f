"""``--busy N``: cores kept busy by other processes while the systems are timed, as on a
shared machine (each a Python process spinning in a loop at normal priority)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """Keeps ``count`` processes spinning until the block ends (none for 0)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
