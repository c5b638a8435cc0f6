"""Raw GGUF byte writer for crafting valid and deliberately malformed files.

Unlike the `gguf` package's writer, nothing here validates: every count, length,
type id and offset is whatever the test passes, so tests can forge the exact
defect they check the reader rejects.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12

F32, F16, Q4_0, Q4_1, Q8_0, Q2_K, Q4_K, BF16 = 0, 1, 2, 3, 8, 10, 12, 30
TYPE_SIZE = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34)}

_SCALAR = {
    UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
    FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d",
}


def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def i64(x: int) -> bytes:
    return struct.pack("<q", x)


def string(s: str | bytes, length: int | None = None) -> bytes:
    """u64 length + bytes; `length` forges the length field."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def value(vtype: int, v: Any) -> bytes:
    """A value without its type id. Arrays: v = (elem_type, items[, forged count]);
    nested array items are (elem_type, items) tuples themselves."""
    if vtype == STRING:
        return string(v)
    if vtype == ARRAY:
        elem, items, *count = v
        n = count[0] if count else len(items)
        return u32(elem) + u64(n) + b"".join(value(elem, x) for x in items)
    return struct.pack(_SCALAR[vtype], v)


def kv(key: str | bytes, vtype: int, v: Any) -> bytes:
    return string(key) + u32(vtype) + value(vtype, v)


def tensor_info(name: str | bytes, ne: Sequence[int], ttype: int, offset: int,
                n_dims: int | None = None) -> bytes:
    """`n_dims` forges the dimension count (the dims written are always `ne`)."""
    dims = b"".join(i64(d) for d in ne)
    n = len(ne) if n_dims is None else n_dims
    return string(name) + u32(n) + dims + u32(ttype) + u64(offset)


def nbytes(ne: Sequence[int], ttype: int) -> int:
    block, size = TYPE_SIZE[ttype]
    n = ne[0] // block * size
    for d in ne[1:]:
        n *= d
    return n


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def gguf_bytes(kvs: Sequence[bytes] = (), infos: Sequence[bytes] = (), data: bytes = b"",
               *, version: int = 3, alignment: int = 32, n_kv: int | None = None,
               n_tensors: int | None = None, magic: bytes = b"GGUF") -> bytes:
    """Header + kvs + tensor infos, padded to `alignment`, then `data`."""
    head = magic + u32(version)
    head += u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    return body + b"\0" * (align(len(body), alignment) - len(body)) + data


def layout(tensors: Sequence[tuple[str, Sequence[int], int]], alignment: int = 32):
    """Tensor infos packed back to back at aligned offsets, with deterministic
    data; returns (infos, data, offsets)."""
    infos, data, offsets = [], b"", []
    for i, (name, ne, ttype) in enumerate(tensors):
        off = align(len(data), alignment)
        data += b"\0" * (off - len(data))
        data += bytes((i * 37 + j) & 255 for j in range(nbytes(ne, ttype)))
        infos.append(tensor_info(name, ne, ttype, off))
        offsets.append(off)
    return infos, data, offsets
