"""A DLPack producer written with ctypes, after the DLPack 1.1 header (dlpack.h): it exports
any memory with any dtype code, device, strides and byte offset, as a versioned or legacy
capsule, and counts the calls of its deleter. NumPy, JAX and PyTorch make only tensors they
support; this one makes the hostile and the unusual ones too."""

import ctypes

import numpy as np


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


LegacyDeleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", LegacyDeleter),
]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    pass


VersionedDeleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))
DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", VersionedDeleter),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", DLTensor),
]

FLAG_READ_ONLY = 1
CPU, CUDA = 1, 2
INT, UINT, FLOAT, BFLOAT, COMPLEX, BOOL, FLOAT8_E4M3FN = 0, 1, 2, 4, 5, 6, 10

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

_CODES = {"i": INT, "u": UINT, "f": FLOAT, "c": COMPLEX, "b": BOOL}


class Producer:
    """Exports `base`'s memory (a NumPy array kept alive until the deleter runs) as a DLPack
    tensor with `shape` and `strides` (in elements, as DLPack counts them) starting
    `byte_offset` bytes into it. `dtype` is `(code, bits)`, NumPy's by default.

    `data` overrides the address (for hostile tensors); `deleted` counts the deleter's
    calls; `versioned=False` makes a producer from before DLPack 1.0, whose `__dlpack__`
    takes no `max_version`.
    """

    def __init__(
        self,
        base: np.ndarray,
        shape=None,
        strides=None,
        byte_offset=0,
        dtype=None,
        device=(CPU, 0),
        versioned=True,
        read_only=False,
        data=None,
    ):
        self.base = base
        self.data = base.ctypes.data if data is None else data
        self.shape = base.shape if shape is None else tuple(shape)
        itemsize = base.dtype.itemsize
        self.strides = (
            tuple(s // itemsize for s in base.strides) if strides is None else tuple(strides)
        )
        self.byte_offset = byte_offset
        self.dtype = dtype or (_CODES[base.dtype.kind], base.dtype.itemsize * 8)
        self.device = device
        self.versioned = versioned
        self.read_only = read_only
        self.deleted = 0
        self.exported = 0
        self._alive = {}  # what each exported tensor points into, until its deleter runs
        self._callbacks = []  # ctypes callbacks must outlive every call of them

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if not self.versioned and max_version is not None:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        versioned = self.versioned and max_version is not None and max_version[0] >= 1
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        strides = (ctypes.c_int64 * max(ndim, 1))(*self.strides)
        tensor = DLTensor(
            data=self.data,
            device=DLDevice(*self.device),
            ndim=ndim,
            dtype=DLDataType(self.dtype[0], self.dtype[1], 1),
            shape=shape,
            strides=strides,
            byte_offset=self.byte_offset,
        )
        if versioned:
            managed = DLManagedTensorVersioned(
                version=DLPackVersion(1, 1),
                deleter=self._deleter(VersionedDeleter),
                flags=FLAG_READ_ONLY if self.read_only else 0,
                dl_tensor=tensor,
            )
            name = b"dltensor_versioned"
        else:
            managed = DLManagedTensor(dl_tensor=tensor, deleter=self._deleter(LegacyDeleter))
            name = b"dltensor"
        key = ctypes.addressof(managed)
        self._alive[key] = (managed, shape, strides)
        self.exported += 1
        # No capsule destructor: a capsule nobody consumed leaks its tensor, which a test
        # sees as a deleter that never ran.
        return _capsule_new(key, name, None)

    def _deleter(self, kind):
        def delete(managed):
            self.deleted += 1
            self._alive.pop(ctypes.addressof(managed.contents), None)

        callback = kind(delete)
        self._callbacks.append(callback)
        return callback
