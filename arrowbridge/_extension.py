"""pyarrow's view of ``arrowbridge.complex_tensor``.

Arrow has no complex type. arrowbridge stores a complex array like a canonical
``arrow.fixed_shape_tensor`` whose every element is two floats (real, imaginary): storage
``fixed_size_list<float32|float64>[2 * prod(shape)]``, metadata ``{"shape": [...],
"permutation": [...]?, "dim_names": [...]?}``. Registering the type lets pyarrow keep it
through the C Data Interface, IPC and Flight, so what arrowbridge writes it reads back as
complex.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

COMPLEX_EXTENSION = "arrowbridge.complex_tensor"


class ComplexTensorType(pa.ExtensionType):
    """Complex tensors of a fixed shape, stored as interleaved (re, im) floats."""

    def __init__(self, value_type, shape, permutation=None, dim_names=None):
        value_type = (
            pa.from_numpy_dtype(value_type)
            if not isinstance(value_type, pa.DataType)
            else value_type
        )
        if value_type not in (pa.float32(), pa.float64()):
            raise TypeError(f"complex tensors store float32 or float64 values, not {value_type}")
        self.value_type = value_type
        self.shape = [int(d) for d in shape]
        self.permutation = None if permutation is None else [int(p) for p in permutation]
        self.dim_names = None if dim_names is None else [str(n) for n in dim_names]
        size = 2 * math.prod(self.shape)
        super().__init__(pa.list_(pa.field("item", value_type), size), COMPLEX_EXTENSION)

    def __arrow_ext_serialize__(self) -> bytes:
        meta: dict[str, list] = {"shape": self.shape}
        if self.dim_names is not None:
            meta["dim_names"] = self.dim_names
        if self.permutation is not None:
            meta["permutation"] = self.permutation
        return json.dumps(meta, separators=(",", ":")).encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        meta = json.loads(serialized.decode())
        return cls(
            storage_type.value_type, meta["shape"], meta.get("permutation"), meta.get("dim_names")
        )

    def __reduce__(self):
        return ComplexTensorType, (self.value_type, self.shape, self.permutation, self.dim_names)


def register() -> None:
    """Registers :class:`ComplexTensorType` with pyarrow (once per process)."""
    try:
        pa.register_extension_type(ComplexTensorType(pa.float64(), []))
    except pa.ArrowKeyError:
        pass  # already registered, e.g. after importlib.reload
