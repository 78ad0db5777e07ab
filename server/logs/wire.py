"""Packed repeated scalar fields in protobuf's wire format, straight from numpy arrays.

Filling a repeated field with `extend` converts every element on its own (about 40 ns each:
most of the columnar history's conversion cost). These functions encode a whole array at
once, as the protobuf encoding spec defines packed fields (a length-delimited record of
little-endian fixed-width values or varints); `message.MergeFromString` then reads them into
the message, which is the same as having extended its fields with the values.
"""

from __future__ import annotations

import numpy as np

_LEN = 2  # wire type of length-delimited records (packed repeated fields)
_LOW = np.uint64(0x7F)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_STEPS = np.uint64(1) << _SHIFTS[1:]  # 2**7, 2**14 ... 2**63: a value at least this needs more


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varints(values: np.ndarray) -> bytes:
    """Base-128 varints of non-negative integers (uint64), one after another."""
    v = np.asarray(values).astype(np.uint64)
    if not len(v):
        return b""
    if int(v.max()) < 0x80:
        return v.astype(np.uint8).tobytes()
    sizes = 1 + (v[:, None] >= _STEPS).sum(axis=1)  # bytes of each value
    width = int(sizes.max())
    column = np.arange(width)
    groups = ((v[:, None] >> _SHIFTS[:width]) & _LOW).astype(np.uint8)  # 7 bits a byte
    groups |= (column < sizes[:, None] - 1).astype(np.uint8) << 7  # "more bytes follow"
    return groups[column < sizes[:, None]].tobytes()  # row by row: value by value


def zigzag(values: np.ndarray) -> np.ndarray:
    """sint32/sint64 encoding: 0, -1, 1, -2 ... become 0, 1, 2, 3 ..."""
    n = np.asarray(values).astype(np.int64)
    return ((n << 1) ^ (n >> 63)).astype(np.uint64)


def packed(field_number: int, payload: bytes) -> bytes:
    """A packed repeated field holding `payload` (nothing at all when it is empty)."""
    if not payload:
        return b""
    return _varint(field_number << 3 | _LEN) + _varint(len(payload)) + payload


def packed_varints(field_number: int, values: np.ndarray) -> bytes:
    """int32, int64 (non-negative values), uint32/64, bool and enum fields."""
    return packed(field_number, varints(values))


def packed_sint(field_number: int, values: np.ndarray) -> bytes:
    """sint32 and sint64 fields."""
    return packed(field_number, varints(zigzag(values)))


def packed_doubles(field_number: int, values: np.ndarray) -> bytes:
    """double fields."""
    return packed(field_number, np.asarray(values, dtype="<f8").tobytes())
