"""Fuzzes arrowbridge's IPC reader with atheris: every input must give arrays or an
ArrowBridgeError, never a crash, a hang or another exception.

    python fuzz/fuzz_ipc.py -atheris_runs=100000          # or: make fuzz
    python fuzz/fuzz_ipc.py -max_total_time=60

atheris guides its mutations by coverage of the Python code only (the Rust decoder is not
instrumented), so the harness is structure-aware instead: each input is read as a program of
edits (bit flips, overwrites, insertions, truncation) applied to one of several valid files of
every layout, so every run reaches deep into the decoder. The Rust test
`mutated_files_never_panic` covers the decoder in-process too.
"""

import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports():
    import arrowbridge

SCRATCH = (
    Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)) / "input.arrow"
)
CORPUS = Path(__file__).resolve().parent / "corpus"


def seed_corpus() -> None:
    """Valid files of every layout, so that mutations start from real Arrow data."""
    CORPUS.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = {
        "rows.arrow": (
            {"e": rng.standard_normal((4, 3)).astype(np.float32), "l": np.arange(4)},
            {},
        ),
        "elements.arrow": (
            {"a": np.eye(2), "b": np.arange(3, dtype=np.int8), "s": np.array(1.5)},
            {},
        ),
        "stream.arrows": (
            {"z": np.array([1 + 2j, 3 - 4j]), "t": np.arange(2).astype("datetime64[ms]")},
            {"format": "stream"},
        ),
        "lz4.arrow": ({"x": np.zeros((16, 16))}, {"compression": "lz4"}),
        "bool.arrow": ({"b": np.array([[True, False], [False, True]])}, {}),
    }
    for name, (arrays, options) in seeds.items():
        if not (CORPUS / name).exists():
            arrowbridge.write_ipc(CORPUS / name, arrays, **options)


SEEDS: list[bytes] = []


def mutate(data: bytes) -> bytes:
    """Applies the edits that `data` describes to one of the seed files."""
    fdp = atheris.FuzzedDataProvider(data)
    out = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        op = fdp.ConsumeIntInRange(0, 3)
        pos = fdp.ConsumeIntInRange(0, max(0, len(out) - 1))
        if op == 0 and out:
            out[pos] ^= 1 << fdp.ConsumeIntInRange(0, 7)
        elif op == 1:
            out[pos : pos + 4] = fdp.ConsumeBytes(4)
        elif op == 2:
            out[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        else:
            del out[pos:]
    return bytes(out)


def test_one_input(data: bytes) -> None:
    SCRATCH.write_bytes(mutate(data))
    for mmap in (True, False):
        try:
            arrays = arrowbridge.read_ipc(SCRATCH, mmap=mmap)
        except arrowbridge.ArrowBridgeError:
            continue
        for x in arrays.values():
            # Touch every byte: a view that reached outside the file would fault here.
            np.ascontiguousarray(x).tobytes()


def main() -> None:
    seed_corpus()
    SEEDS.extend(p.read_bytes() for p in sorted(CORPUS.iterdir()))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
