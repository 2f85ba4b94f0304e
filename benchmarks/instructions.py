"""Instruction counts of the hot paths, under callgrind: a regression gate that does not flake.

    python benchmarks/instructions.py            # check against benchmarks/instructions.json
    python benchmarks/instructions.py --record   # measure and write the baselines

Wall-clock time depends on the machine and its neighbours; the number of instructions a call
executes does not. Each path is called a few times to warm up, then `N` times inside
`arrowbridge_testing.measured_region`, the one function callgrind counts (``--toggle-collect``); its
counts are dumped after each region (``--dump-after``), so one process measures every path.
A count more than 10 % above its committed baseline fails the check (exit status 1); the
rust-numpy rows are references (what the same call costs written with rust-numpy) and are
reported, not gated.

Counts include everything the call executes: CPython calling the function, PyO3's argument
handling, arrowbridge and NumPy. They are per call, averaged over `N` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINES = Path(__file__).with_name("instructions.json")
PLUGIN = ROOT / "target" / "release" / "libarrowbridge_example_kernels.so"
REGION = "arrowbridge_measured_region"
N = 200
TOLERANCE = 0.10
IDENTITY, SUM = 'call("identity"), 1 KiB', 'call("sum", axis=0), 1 KiB'
DLPACK = "to_numpy(a DLPack producer), 1 KiB"
EXTENSION = "extension function with an ArrayArg, 1 KiB"
REFERENCES = {
    IDENTITY: "rust-numpy identity, 1 KiB (reference)",
    SUM: "rust-numpy sum(axis=0), 1 KiB (reference)",
    DLPACK: "np.from_dlpack of the same producer, 1 KiB (reference)",
    EXTENSION: "the same function with PyReadonlyArray, 1 KiB (reference)",
}


def paths(tmp: Path) -> dict[str, object]:
    """The measured calls, by name, in the order they run. Each is a callable of no arguments."""
    import arrowbridge_testing
    import numpy as np
    import rowstats
    from producers import DLPackProducer

    import arrowbridge

    x = np.random.default_rng(0).standard_normal((1, 128))  # 1 KiB
    t = arrowbridge.to_arrow(x)
    arrowbridge.load_kernels(PLUGIN)
    one_batch = tmp / "one-batch.arrow"
    arrowbridge.write_ipc(one_batch, {"x": x})
    return {
        IDENTITY: partial(arrowbridge.call, "identity", x),
        REFERENCES[IDENTITY]: partial(arrowbridge_testing.rust_numpy_identity, x),
        SUM: partial(arrowbridge.call, "sum", x, axis=0),
        REFERENCES[SUM]: partial(arrowbridge_testing.rust_numpy_sum, x, axis=0),
        'call("head"), plugin kernel, 1 KiB': partial(arrowbridge.call, "head", x, n=1),
        "to_arrow, 1 KiB": partial(arrowbridge.to_arrow, x),
        "to_numpy, 1 KiB": partial(arrowbridge.to_numpy, t),
        "read_ipc, one batch of 1 KiB (mmap)": partial(arrowbridge.read_ipc, one_batch),
        "read_ipc, one batch of 1 KiB (mmap=False)": partial(
            arrowbridge.read_ipc, one_batch, mmap=False
        ),
        DLPACK: partial(arrowbridge.to_numpy, DLPackProducer(x)),
        REFERENCES[DLPACK]: partial(np.from_dlpack, DLPackProducer(x)),
        EXTENSION: partial(rowstats.total, x),
        REFERENCES[EXTENSION]: partial(rowstats.total_numpy, x),
    }


def child() -> None:
    """Runs under callgrind: warms each path up, then calls it N times in a measured region."""
    import arrowbridge_testing

    with tempfile.TemporaryDirectory() as tmp:
        cases = paths(Path(tmp))
        for fn in cases.values():
            for _ in range(20):
                fn()  # first calls initialize caches, type objects and interned strings
            arrowbridge_testing.measured_region(fn, N)
    print(json.dumps(list(cases)))


def measure() -> dict[str, float]:
    """Instructions per call of every path, from one process under callgrind."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            f"--toggle-collect={REGION}",
            f"--dump-after={REGION}",
            f"--callgrind-out-file={out}/cg.out",
            sys.executable,
            __file__,
            "--child",
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            sys.exit(f"callgrind run failed ({done.returncode}):\n{done.stderr[-4000:]}")
        names = json.loads(done.stdout.strip().splitlines()[-1])
        dumps = sorted(Path(out).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(dumps) != len(names):
            sys.exit(f"expected {len(names)} callgrind dumps, found {len(dumps)}")
        counts = {}
        for name, dump in zip(names, dumps, strict=True):
            totals = re.search(r"^(?:totals|summary): (\d+)", dump.read_text(), re.MULTILINE)
            if totals is None:
                sys.exit(f"no totals in {dump}")
            counts[name] = int(totals.group(1)) / N
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the baselines")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    counts = measure()
    if args.record:
        BASELINES.write_text(json.dumps({k: round(v) for k, v in counts.items()}, indent=2) + "\n")
        for name, count in counts.items():
            print(f"{count:>10,.0f}  {name}")
        print(f"wrote {BASELINES.relative_to(ROOT)}")
        return
    baselines = json.loads(BASELINES.read_text())
    failed = []
    print(f"{'instructions':>12} {'baseline':>10} {'change':>8}  path")
    for name, count in counts.items():
        base = baselines.get(name)
        if base is None:
            failed.append(f"{name}: no baseline (run with --record)")
            print(f"{count:>12,.0f} {'-':>10} {'-':>8}  {name}")
            continue
        change = count / base - 1
        print(f"{count:>12,.0f} {base:>10,} {change:>+8.1%}  {name}")
        if change > TOLERANCE and not name.endswith("(reference)"):
            failed.append(
                f"{name}: {count:,.0f} instructions per call, {change:+.1%} over {base:,}"
            )
    for ours, reference in REFERENCES.items():
        print(f"{ours} / {reference}: {counts[ours] / counts[reference]:.2f}x the instructions")
    if failed:
        sys.exit("instruction counts rose more than 10 %:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
