"""The code of the documentation runs: every ```python / ```pycon block of docs/*.md and README.md.

Each page's blocks run in order in one namespace, in a temporary working directory that also
holds a link to the repository's `target/` (so a page may load
`target/release/libarrowbridge_example_kernels.so`, which `make build` builds). A block whose
lines start with `>>>` is a doctest, checked against its output; any other block is executed.
A block that must not run is marked by the line before its fence:

    <!-- docs-test: skip (why) -->

and the test prints how many were skipped and why (keep them few).
"""

from __future__ import annotations

import doctest
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL


@dataclass
class Block:
    page: Path
    line: int
    code: str
    skip: str | None

    @property
    def is_doctest(self) -> bool:
        return self.code.lstrip().startswith(">>>")


def blocks(page: Path) -> list[Block]:
    """The Python blocks of a page, with the skip reason written before any of them."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) not in ("python", "pycon"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 2
        found.append(Block(page, line, match.group(2), skip.group(1) if skip else None))
    return found


def run_page(page: Path) -> tuple[int, list[str]]:
    """Runs a page's blocks in order in one namespace; returns (run, skip reasons)."""
    namespace: dict = {"__name__": "__docs__"}
    ran, skipped = 0, []
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    name = page.relative_to(ROOT).as_posix()
    for block in blocks(page):
        if block.skip:
            skipped.append(f"{name}:{block.line}: {block.skip}")
            continue
        where = f"{name}:{block.line}"
        if block.is_doctest:
            test = parser.get_doctest(block.code, namespace, where, name, block.line - 1)
            # The examples share the page's namespace, not a copy of it.
            test.globs = namespace
            failures = runner.run(test, clear_globs=False).failed
            assert failures == 0, f"{failures} doctest example(s) of {where} failed (above)"
        else:
            # Blank lines first, so that a traceback's line numbers are the page's.
            code = "\n" * (block.line - 1) + block.code
            exec(compile(code, name, "exec"), namespace)
        ran += 1
    return ran, skipped


@pytest.fixture
def in_scratch_dir(tmp_path, monkeypatch):
    """A fresh working directory that sees the repository's build outputs as `target/`."""
    if (ROOT / "target").exists():
        (tmp_path / "target").symlink_to(ROOT / "target")
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def ray_is_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.mark.parametrize(
    "page", [p for p in PAGES if blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_the_pages_code_runs(page, in_scratch_dir, capsys):
    ray_was_running = ray_is_running()
    try:
        ran, skipped = run_page(page)
    finally:
        # A page that started Ray (the cluster's) stops it, as a reader's script would end.
        if ray_is_running() and not ray_was_running:
            sys.modules["ray"].shutdown()
    with capsys.disabled():
        for reason in skipped:
            print(f"\n  skipped {reason}", end="")
    assert ran > 0


def test_few_blocks_are_skipped():
    every = [block for page in PAGES for block in blocks(page)]
    skipped = [block for block in every if block.skip]
    assert len(every) > 30, "the pages lost their examples"
    assert len(skipped) <= 3, [f"{b.page.name}:{b.line}: {b.skip}" for b in skipped]


# Pages whose doctests were checks of their own before they moved here from the README (the
# streams section of test_flight_stream, the ragged section of test_ragged): they keep them.
MIN_DOCTEST_EXAMPLES = {"flight.md": 18, "tensors.md": 15}


@pytest.mark.parametrize("name", sorted(MIN_DOCTEST_EXAMPLES))
def test_the_pages_keep_their_doctests(name):
    parser = doctest.DocTestParser()
    page = ROOT / "docs" / name
    examples = [
        example
        for block in blocks(page)
        if block.is_doctest and not block.skip
        for example in parser.get_examples(block.code)
    ]
    assert len(examples) >= MIN_DOCTEST_EXAMPLES[name], len(examples)


def test_every_page_is_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_the_readme_stays_short_and_its_links_resolve():
    """The README stays short: what it is, install, quick start, features, links."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150, "the README grew: move the details to docs/"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link


def test_a_marked_block_is_skipped_with_its_reason(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- docs-test: skip (serves forever) -->\n"
        "```python\nwhile True: pass\n```\n\n```pycon\n>>> x + 1\n2\n\n```\n"
    )
    found = blocks(page)
    assert [(b.line, b.skip, b.is_doctest) for b in found] == [
        (2, None, False),
        (7, "serves forever", False),
        (11, None, True),
    ]
