"""Griffe extension (see mkdocs.yml): renders jaxlstm's Sphinx-flavoured docstrings.

The library's docstrings are Google style with Sphinx cross-reference roles
(``:func:`~jaxlstm.lstm```) and ``Example:`` sections of ``>>>`` lines. mkdocstrings
shows roles literally and reads an ``Example:`` section as prose, so before parsing:

* a role whose target is a public name (``jaxlstm.X`` or ``jaxlstm.rnn.X``) becomes an
  autorefs link to ``jaxlstm.X`` (the page documents every public name once, at the top
  level); a role to anything else (private helpers) becomes inline code;
* ``Example:`` becomes ``Examples:``, which griffe renders as a code block.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`(~?)([\w.]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


def _public_names() -> set[str]:
    """``jaxlstm.__all__``, read without importing jaxlstm (nor JAX)."""
    init = Path(__file__).resolve().parents[1] / "jaxlstm" / "__init__.py"
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value)) - {"__version__"}
    raise RuntimeError(f"no __all__ in {init}")


_PUBLIC = _public_names()


def _link(match: re.Match[str]) -> str:
    short, target = match.group(1) == "~", match.group(2)
    text = target.rsplit(".", 1)[-1] if short else target
    name = target.rsplit(".", 1)[-1]
    if target == "jaxlstm.rnn":
        return f"[`{text}`][jaxlstm.rnn]"
    if name in _PUBLIC and target in (name, f"jaxlstm.{name}", f"jaxlstm.rnn.{name}"):
        return f"[`{text}`][jaxlstm.{name}]"
    return f"`{text}`"


class SphinxRoles(griffe.Extension):
    """Rewrites roles and ``Example:`` headers in every docstring (see module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_link, obj.docstring.value)
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", value)
