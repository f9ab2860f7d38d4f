"""The documentation's code runs, so it cannot rot.

Every ```` ```python ```` block of every page in ``docs/`` is executed, in page order, in
one namespace per page; the blocks carry their own assertions on shapes and values.

Convention: a block that must not run (a file listing included from
``docs/examples/``, which ``tests/test_examples.py`` runs; a multi-host snippet) is
preceded by the line ``<!-- docs-test: skip -->``. Fences must start at column 0
(not nested in an admonition), which :func:`python_blocks` checks, so that no block
escapes the test by its indentation.

Each page runs in its own Python process, as a reader would run it: a fresh JAX,
``docs/distributed.md`` on the 8 simulated CPU devices it describes
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), and the pages concurrently,
since their time is compilation, which is single-threaded. Run one page by hand with
``python tests/test_docs.py docs/tutorial.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- docs-test: skip -->"
DEVICES = {"distributed.md": 8}  # page -> simulated CPU devices (default 1)
PAGES_WITH_CODE = {
    "index.md",
    "tutorial.md",
    "migration.md",
    "functional.md",
    "flax.md",
    "lengths.md",
    "precision.md",
    "distributed.md",
    "export.md",
    "performance.md",
    "recipes.md",
}
TIMEOUT_S = 600
# The pages compile many small programs and run them once: LLVM's optimisations cost
# more than they save there, and change none of what the pages assert.
XLA_FLAGS = "--xla_backend_optimization_level=0"

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, source)`` of each runnable ``python`` block of ``path``."""
    text = path.read_text(encoding="utf-8")
    blocks, skipped = [], 0
    for match in _FENCE.finditer(text):
        previous = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        if previous.strip() == SKIP_MARK:
            skipped += 1
            continue
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    fences = len(re.findall(r"^\s*```python", text, re.MULTILINE))
    if fences != len(blocks) + skipped:
        raise ValueError(
            f"{path}: {fences} ```python fences but {len(blocks) + skipped} found at column 0; "
            "un-indent the others so that they are tested"
        )
    return blocks


def run_page(path: Path) -> None:
    """Executes the page's blocks in order in one namespace; errors point at the page."""
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for line, source in python_blocks(path):
        # Padding keeps the line numbers of tracebacks those of the Markdown file.
        code = compile("\n" * (line - 1) + source, str(path), "exec")
        exec(code, namespace)


def _run_in_subprocess(page: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    flags = [env.get("XLA_FLAGS", ""), XLA_FLAGS]
    if page.name in DEVICES:
        flags.append(f"--xla_force_host_platform_device_count={DEVICES[page.name]}")
    env["XLA_FLAGS"] = " ".join(f for f in flags if f)
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, __file__, str(page)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


PAGES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p))


@pytest.fixture(scope="module")
def page_runs():
    """Starts every page's run, ``os.cpu_count()`` at a time; futures by page name."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs: dict[str, Future] = {p.name: pool.submit(_run_in_subprocess, p) for p in PAGES}
        yield runs


def test_pages_with_code():
    assert {p.name for p in PAGES} == PAGES_WITH_CODE


def test_skip_marks_are_deliberate():
    """Every skip mark precedes a block, and only example listings and the multi-host
    snippet are skipped."""
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        blocks = re.findall(re.escape(SKIP_MARK) + r"\n```python\n(.*?)^```", text, re.M | re.S)
        assert len(blocks) == text.count(SKIP_MARK), f"{page.name}: a skip mark without a block"
        for body in blocks:
            assert body.startswith("--8<-- ") or "jax.distributed.initialize(" in body, page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs(page_runs, page: Path):
    proc = page_runs[page.name].result()
    assert proc.returncode == 0, f"{page.name} failed:\n{proc.stdout}\n{proc.stderr}"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        run_page(Path(name))
