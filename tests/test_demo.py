"""`make demo`'s program (python -m arrowbridge.demo) runs its three transports and says so."""

import subprocess
import sys

from conftest import PLUGIN, ROOT

IPC_VIEW = ROOT / "target" / "release" / "examples" / "ipc_view"


def test_the_demo_runs_every_part_and_each_check_holds():
    out = subprocess.run(
        [sys.executable, "-m", "arrowbridge.demo", "--plugin", PLUGIN, "--ipc-view", IPC_VIEW],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    # In-process: the Arrow values are the NumPy array's memory.
    assert "shared" in out
    # IPC: the array read back is a view of the file's mapping; the Rust reader mapped it.
    assert "embeddings is a view of the file's mapping: True" in out
    assert "Rust (examples/ipc_view) mapped embeddings: float32" in out
    # Flight: each of the three transports returned what was put.
    assert out.count("get returned the array put: True") == 3
    assert "ran on the server: True" in out
    assert "a plain pyarrow.flight client lists ['x']" in out
    # The plugin's kernels, in-process and over Flight.
    assert "the plugin returned a view" in out
    assert "over Flight, call('pairwise_distances') -> shape (3, 2)" in out
    assert "False" not in out, out
