"""Fails when `make build` would compile a dependency twice, with two feature sets.

Cargo resolves a dependency's features once per invocation, and `make build` runs five: the
wheel (arrowbridge-py, by maturin), the example extension and the test hooks (by maturin, one
crate each), the kernel plugin and the Rust reader example (by cargo). When one of them
resolves a dependency with other features than the wheel's build did, that dependency and
everything above it (arrow-rs, tonic) is compiled again: minutes of a cold ``make test``.
crates/workspace-hack asks for the union; this check lists what it misses.

    python packaging/unified.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL = ["-p", "arrowbridge-py"]
OTHERS = {
    "the example extension": ["-p", "rowstats"],
    "the test hooks": ["-p", "arrowbridge-testing"],
    "the kernel plugin": ["-p", "arrowbridge-example-kernels"],
    # Examples build with the package's dev-dependencies.
    "the Rust reader example": ["-p", "arrowbridge", "-e", "dev"],
}


def resolved(args: list[str]) -> set[str]:
    """Each dependency the invocation resolves, as `name version [features]`."""
    tree = ["cargo", "tree", "--locked", "--prefix", "none", "-e", "normal,build"]
    out = subprocess.run(
        [*tree, "-f", "{p} [{f}]", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = {line.replace(" (*)", "").strip() for line in out.splitlines()}
    # Workspace crates are built by their own invocation anyway; only dependencies count.
    return {line for line in lines if line and f"({ROOT}" not in line}


def main() -> int:
    wheel = resolved(WHEEL)
    failed = False
    for what, args in OTHERS.items():
        missing = sorted(resolved(args) - wheel)
        if missing:
            failed = True
            print(f"{what}: dependencies with features the wheel's build lacks:", file=sys.stderr)
            for line in missing:
                print(f"    {line}", file=sys.stderr)
    if failed:
        print("add their features to crates/workspace-hack/Cargo.toml", file=sys.stderr)
        return 1
    print("every crate `make build` compiles shares the wheel's dependency features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
