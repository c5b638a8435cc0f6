"""Lazy, memory-mapped reading of (possibly sharded) safetensors checkpoints.

Format: 8-byte little-endian header length, a JSON header mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header),
then the raw little-endian data. Reading it directly keeps conversion free of torch (NumPy
has no bfloat16) and lets each tensor be paged in only while it is converted.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from .convert_vocab import ConvertError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class _Shard:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.f = open(path, "rb")
            head = self.f.read(8)
            if len(head) != 8:
                raise ConvertError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 2**20:
                raise ConvertError(f"{path}: implausible safetensors header length {n}")
            self.header = json.loads(self.f.read(n))
            self.data_start = 8 + n
            size = path.stat().st_size
            self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: cannot read safetensors: {e}") from None
        self.header.pop("__metadata__", None)
        self.size = size

    def close(self):
        if self.map is not None:
            self.map.close()
        self.f.close()


def _drop_pages(m: mmap.mmap, start: int, length: int) -> None:
    """Releases the mapped pages of data already converted: otherwise every page read stays
    resident and peak RSS grows to the size of the checkpoint."""
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED") and length > 0:
        a = start - start % mmap.PAGESIZE
        m.madvise(mmap.MADV_DONTNEED, a, start + length - a)


class Checkpoint:
    """Tensor names, shapes and float32 data of every shard of a checkpoint folder."""

    def __init__(self, shards: list[_Shard]):
        self.shards = shards
        self.where: dict[str, _Shard] = {}
        for s in shards:
            for name in s.header:
                if name in self.where:
                    raise ConvertError(f"tensor '{name}' appears in two shards")
                self.where[name] = s

    def names(self) -> list[str]:
        return list(self.where)

    def _info(self, name: str) -> dict:
        return self.where[name].header[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in self._info(name)["shape"])

    def load_f32(self, name: str, row0: int = 0, row1: int | None = None) -> np.ndarray:
        """The tensor (or rows row0:row1 of its first dimension) as a new float32 array."""
        s, info = self.where[name], self._info(name)
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ConvertError(f"tensor '{name}': dtype {info['dtype']} is not supported")
        begin, end = info["data_offsets"]
        shape = self.shape(name)
        count = int(np.prod(shape, dtype=np.int64))
        item = np.dtype(dt).itemsize
        if end - begin != count * item or s.data_start + end > s.size:
            raise ConvertError(f"{s.path}: tensor '{name}' has inconsistent offsets")
        rows = shape[0] if shape else 1
        row1 = rows if row1 is None else row1
        per_row = count // rows if rows else 0
        shape = (row1 - row0, *shape[1:]) if shape else shape
        start = s.data_start + begin + row0 * per_row * item
        n = (row1 - row0) * per_row
        raw = np.frombuffer(s.map, dtype=dt, count=n, offset=start)
        if info["dtype"] == "BF16":
            # bfloat16 is the top half of a float32 (little-endian: the odd uint16).
            out = np.zeros(n, dtype=np.float32)
            out.view(np.uint16)[1::2] = raw
        else:
            out = raw.astype(np.float32)
        del raw
        _drop_pages(s.map, start, n * item)
        return out.reshape(shape)

    def close(self):
        for s in self.shards:
            s.close()


def open_checkpoint(folder: Path) -> Checkpoint:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ConvertError(f"{index}: {e}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise ConvertError(f"{folder}: shard(s) listed in the index are missing: {missing}")
        paths = [folder / f for f in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise ConvertError(f"{folder}: no *.safetensors files (PyTorch .bin is not supported)")
    shards = []
    try:
        for p in paths:
            shards.append(_Shard(p))
    except ConvertError:
        for s in shards:
            s.close()
        raise
    return Checkpoint(shards)
