"""The progress bar on stderr: ``tqdm`` when installed, else a minimal text bar."""

from __future__ import annotations

import sys
from typing import Any


class _TextBar:
    """A minimal stand-in for ``tqdm`` (which jaxlstm does not require), on stderr."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def _draw(self) -> None:
        done = 30 * self.n // max(self.total, 1)
        sys.stderr.write(f"\r{self.desc[:40]:<40} [{'#' * done:<30}] {self.n}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def progress_bar(total: int) -> Any:
    """A bar of ``total`` steps with ``set_description``, ``update`` and ``close``."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, "jaxlstm-bench")
    return tqdm(total=total, desc="jaxlstm-bench", unit="step", file=sys.stderr, leave=False)
