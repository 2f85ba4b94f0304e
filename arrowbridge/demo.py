"""The arrowbridge demo: ``python -m arrowbridge.demo`` (or ``make demo``).

Shows the in-process transport end to end: NumPy arrays handed to Rust kernels and to
pyarrow without copies, proven by data addresses, and the cost of one call.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

import arrowbridge


def _addr(x: np.ndarray) -> str:
    return hex(x.__array_interface__["data"][0])


def _per_call_ns(fn, repeat: int = 20_000) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / repeat)
    return best


def in_process() -> None:
    print("== in-process: NumPy -> Arrow -> Rust ndarray view -> NumPy ==")
    embeddings = np.random.default_rng(0).standard_normal((10_000, 768)).astype(np.float32)
    tensor = arrowbridge.to_arrow(embeddings)
    values = tensor.storage.values.buffers()[1]
    print(f"to_arrow: {tensor.type}")
    print(f"  numpy data at {_addr(embeddings)}, Arrow values at {hex(values.address)}: shared")

    same = arrowbridge.call("identity", embeddings)
    print(f"call('identity'): result at {_addr(same)} (the input's memory, read-only view)")

    fortran = np.asfortranarray(embeddings[:1000])
    print(
        f"Fortran-ordered input at {_addr(fortran)} reaches the kernel as a view: "
        f"identity -> {_addr(arrowbridge.call('identity', fortran))}"
    )

    unit = arrowbridge.call("normalize", embeddings)
    print(f"call('normalize'): row norms now {np.linalg.norm(unit[:3], axis=1).round(6)}")
    scores = arrowbridge.call("matmul", unit[:4], unit[:4].T.copy())
    print(f"call('matmul'): cosine similarities of 4 rows\n{scores.round(3)}")
    print(f"call('sum', axis=0)[:4] = {arrowbridge.call('sum', embeddings, axis=0)[:4]}")

    from_pyarrow = arrowbridge.to_numpy(pa.array(np.arange(5, dtype=np.int64)))
    print(f"to_numpy(pyarrow array) -> {from_pyarrow} (zero-copy, read-only)")

    try:
        arrowbridge.call("matmul", embeddings, embeddings)
    except arrowbridge.ShapeError as err:
        print(f"a clear error: {type(err).__name__}: {err}")

    small = np.ones(128)
    big = np.ones(64 * 1024 * 1024)  # 512 MiB
    t_small = _per_call_ns(lambda: arrowbridge.call("identity", small))
    t_big = _per_call_ns(lambda: arrowbridge.call("identity", big))
    print(
        f"per call('identity'): {t_small:.0f} ns at 1 KiB, {t_big:.0f} ns at 512 MiB "
        "(constant: nothing is copied)"
    )
    print(f"kernels: {', '.join(arrowbridge.kernels())}")


def main() -> None:
    in_process()


if __name__ == "__main__":
    main()
