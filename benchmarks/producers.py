"""Array producers the benchmarks hand to arrowbridge and to its alternatives alike."""

import numpy as np


class DLPackProducer:
    """A producer that speaks DLPack only (as JAX and PyTorch arrays do), over `x`."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __dlpack__(self, **kwargs):
        return self.x.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.x.__dlpack_device__()
