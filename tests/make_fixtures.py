"""Writes the IPC files that the Rust tests read (crates/arrowbridge/tests/data/).

They are written by pyarrow, so the Rust side is tested against another implementation:

    python tests/make_fixtures.py
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

OUT = Path(__file__).resolve().parent.parent / "crates" / "arrowbridge" / "tests" / "data"


def table() -> pa.Table:
    embeddings = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3) / 10
    return pa.table(
        {
            "embeddings": pa.FixedShapeTensorArray.from_numpy_ndarray(embeddings),
            "labels": pa.array(np.arange(5, dtype=np.int64) * 7),
            "when": pa.array(np.arange(5).astype("datetime64[ms]")),
        }
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    t = table()
    with (
        pa.OSFile(str(OUT / "pyarrow_file.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, t.schema) as w,
    ):
        w.write_table(t)
    with (
        pa.OSFile(str(OUT / "pyarrow_stream.arrows"), "wb") as sink,
        pa.ipc.new_stream(sink, t.schema) as w,
    ):
        w.write_table(t, max_chunksize=2)
    feather.write_feather(t, str(OUT / "pyarrow_lz4.feather"), compression="lz4")


if __name__ == "__main__":
    main()
