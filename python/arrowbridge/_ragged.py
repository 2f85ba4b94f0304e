"""Which Python lists are ragged data: lists of arrays, not of numbers."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_array(x: object) -> bool:
    """Whether a list's element makes the list ragged data: an array of one or more
    dimensions (0-d arrays keep ``np.asarray``'s meaning) or an array producer."""
    if isinstance(x, np.ndarray):
        return x.ndim > 0
    kind = type(x)
    return (
        hasattr(kind, "__dlpack__")
        or hasattr(kind, "__arrow_c_array__")
        or hasattr(kind, "__arrow_c_stream__")
    )


def is_ragged_list(x: Any) -> bool:
    """A non-empty ``list`` whose first element is an array: one array per row."""
    return type(x) is list and len(x) > 0 and is_array(x[0])
