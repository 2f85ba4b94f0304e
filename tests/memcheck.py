"""Runs Python tests under valgrind memcheck and fails on any error in arrowbridge's code.

    python tests/memcheck.py [pytest arguments]

CPython and the libraries it loads report errors of their own under valgrind (reads of bytes
from getrandom that valgrind does not see initialized, and the like); they are counted but do
not fail the run. An error whose stack passes through arrowbridge's extension, a kernel
plugin or arrowbridge's Rust code fails it. Leaks are not judged here: CPython and pyarrow keep
allocations until exit by design (the RSS tests in tests/test_roundtrip.py judge leaks).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

OURS = re.compile(r"lib_native|_native\.cpython|libarrowbridge|arrowbridge(_py|_flight)?::")
ERROR = re.compile(
    r"^==\d+== (Invalid|Conditional|Use of uninitialised|Syscall param|Mismatched|"
    r"Source and destination|Argument)"
)


def records(log: str) -> list[list[str]]:
    """The error records of a valgrind log: runs of lines separated by bare `==pid==` lines."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in log.splitlines():
        if re.fullmatch(r"==\d+==\s*", line):
            if current:
                out.append(current)
            current = []
        else:
            current.append(line)
    if current:
        out.append(current)
    return [r for r in out if ERROR.match(r[0])]


def main(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "valgrind.log"
        env = dict(os.environ, PYTHONMALLOC="malloc", ARROW_DEFAULT_MEMORY_POOL="system")
        command = [
            "valgrind",
            "--leak-check=no",
            "--num-callers=40",
            f"--log-file={log_file}",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ]
        tests = subprocess.run(command, env=env)
        errors = records(log_file.read_text())
    ours = [r for r in errors if any(OURS.search(line) for line in r)]
    for record in ours:
        print("\n".join(record), end="\n\n")
    print(
        f"memcheck: pytest exit {tests.returncode}; {len(errors)} valgrind error record(s), "
        f"{len(ours)} in arrowbridge's code"
    )
    return 1 if ours or tests.returncode else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
