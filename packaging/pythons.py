"""The CPython interpreters arrowbridge supports (3.10-3.13) found on this machine.

Prints one path per line: ``python3.X`` on PATH when it runs, else pyenv's
``$PYENV_ROOT/versions/3.X.*/bin/python3.X``. ``--others`` leaves out the version of the
interpreter running this script; ``--missing`` prints the versions not found instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


def runs(python: str, version: str) -> bool:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def find(version: str) -> str | None:
    """A working interpreter of CPython `version`, or None."""
    on_path = shutil.which(f"python{version}")
    if on_path and runs(on_path, version):
        return on_path
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted(root.glob(f"versions/{version}.*/bin/python{version}"), reverse=True):
        if runs(str(candidate), version):
            return str(candidate)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--others", action="store_true", help="leave out this interpreter's version"
    )
    parser.add_argument("--missing", action="store_true", help="print the versions not found")
    args = parser.parse_args()
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for version in SUPPORTED:
        if args.others and version == this:
            continue
        found = find(version)
        if args.missing and found is None:
            print(version)
        elif not args.missing and found is not None:
            print(found)


if __name__ == "__main__":
    main()
