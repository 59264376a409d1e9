"""The dtypes symgraph supports and NumPy 2 promotion over them (NEP 50 weak scalars)."""
from __future__ import annotations

import numpy as np

from .errors import DTypeError

SUPPORTED = tuple(np.dtype(t) for t in ("bool", "int32", "int64", "float32", "float64"))
_SUPPORTED_SET = frozenset(SUPPORTED)

# A weak Python scalar is represented by its Python type (bool, int or float), which is
# how NumPy's resolve_dtypes/result_type accept "weak" operands under NEP 50.
WEAK_TYPES = (bool, int, float)


def as_dtype(value, *, what: str = "dtype") -> np.dtype:
    """A supported numpy dtype from anything numpy understands as a dtype."""
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise DTypeError(f"{what}: {value!r} is not a dtype") from exc
    return check_supported(dtype, what=what)


def check_supported(dtype: np.dtype, *, what: str = "dtype", hint: str | None = None) -> np.dtype:
    """Return the native-byte-order dtype, or raise if symgraph cannot compute with it."""
    if dtype.byteorder not in "=|":
        dtype = dtype.newbyteorder("=")
    if dtype not in _SUPPORTED_SET:
        names = ", ".join(str(d) for d in SUPPORTED)
        raise DTypeError(f"{what} {dtype} is not supported (supported: {names})", hint=hint)
    return dtype


def is_float(dtype) -> bool:
    return dtype.kind == "f"


def is_int(dtype) -> bool:
    return dtype.kind == "i"


def is_bool(dtype) -> bool:
    return dtype.kind == "b"


def weak_type(value) -> type:
    """The weak type of a Python scalar (bool before int: bool is an int subclass)."""
    if isinstance(value, (bool, np.bool_)):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    raise DTypeError(f"{value!r} is not a Python bool, int or float")


def default_dtype(kind: type) -> np.dtype:
    """The dtype a weak scalar takes when nothing strong is around it (NumPy's defaults)."""
    return np.dtype({bool: "bool", int: "int64", float: "float64"}[kind])


def scalar_fits(value, dtype: np.dtype) -> bool:
    """Whether a Python int converts to `dtype` without overflow (NumPy 2 raises otherwise)."""
    if dtype.kind != "i" or isinstance(value, bool):
        return True
    info = np.iinfo(dtype)
    return info.min <= value <= info.max
