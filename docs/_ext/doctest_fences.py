"""A griffe extension for the API reference: the package's docstrings are reStructuredText-ish
prose with doctest examples, which Markdown would read as nested block quotes. This fences each
run of `>>>` lines (with its expected output, up to the next blank line) as `pycon` code, and
turns Sphinx roles (:class:`X`, :func:`~a.b`) into code spans."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`")


def fence_doctests(text: str) -> str:
    out: list[str] = []
    in_fence = in_example = False
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_example and stripped.startswith(">>>"):
            out.append("```pycon")
            in_example = True
        elif in_example and not stripped:
            out.append("```")
            in_example = False
        out.append(line if in_fence or in_example else ROLE.sub(r"`\1`", line))
    if in_example:
        out.append("```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
