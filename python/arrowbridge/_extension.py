"""pyarrow's view of arrowbridge's complex tensor types (fixed and variable shape).

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
COMPLEX_RAGGED_EXTENSION = "arrowbridge.complex_variable_shape_tensor"


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


class ComplexRaggedType(pa.ExtensionType):
    """Complex tensors of varying shapes: the storage of ``arrow.variable_shape_tensor``
    (``struct<data: list<float32|float64>, shape: fixed_size_list<int32>[ndim]>``), each
    element two floats (re, im) of ``data``; the metadata of ``arrow.variable_shape_tensor``
    (``dim_names``, ``permutation``, ``uniform_shape``), kept as it is."""

    def __init__(self, value_type, ndim, metadata=b""):
        value_type = (
            pa.from_numpy_dtype(value_type)
            if not isinstance(value_type, pa.DataType)
            else value_type
        )
        if value_type not in (pa.float32(), pa.float64()):
            raise TypeError(f"complex tensors store float32 or float64 values, not {value_type}")
        self.value_type = value_type
        self.ndim = int(ndim)
        self.metadata = bytes(metadata)
        storage = pa.struct(
            [
                pa.field("data", pa.list_(pa.field("item", value_type))),
                pa.field("shape", pa.list_(pa.field("item", pa.int32()), self.ndim)),
            ]
        )
        super().__init__(storage, COMPLEX_RAGGED_EXTENSION)

    def __arrow_ext_serialize__(self) -> bytes:
        return self.metadata

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        data = storage_type.field("data").type
        shape = storage_type.field("shape").type
        return cls(data.value_type, shape.list_size, serialized)

    def __reduce__(self):
        return ComplexRaggedType, (self.value_type, self.ndim, self.metadata)


def register() -> None:
    """Registers :class:`ComplexTensorType` and :class:`ComplexRaggedType` with pyarrow (once
    per process)."""
    for ext in (ComplexTensorType(pa.float64(), []), ComplexRaggedType(pa.float64(), 1)):
        try:
            pa.register_extension_type(ext)
        except pa.ArrowKeyError:
            pass  # already registered, e.g. after importlib.reload
