"""GGUF reader: crafted valid and malformed files, and the real SmolLM2 model
checked against the `gguf` package's GGUFReader."""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from pathlib import Path

import gguf_craft as gc
import numpy as np
import pytest
from gguf_craft import kv, tensor_info, u32, u64

core = pytest.importorskip("kvrt._core")

TOKENS = ["<unk>", "<s>", "</s>", "a", "b"]
TENSORS = [("tok_embd", [64, 5], gc.Q8_0), ("norm", [64], gc.F32), ("w", [32, 2, 3], gc.F16)]


def base_kvs() -> list[bytes]:
    return [
        kv("general.architecture", gc.STRING, "llama"),
        kv("tokenizer.ggml.tokens", gc.ARRAY, (gc.STRING, TOKENS)),
        kv("tokenizer.ggml.bos_token_id", gc.UINT32, 1),
        kv("tokenizer.ggml.eos_token_id", gc.UINT32, 2),
    ]


def valid_bytes(**kw) -> bytes:
    infos, data, _ = gc.layout(TENSORS)
    return gc.gguf_bytes(base_kvs(), infos, data, **kw)


def write(tmp_path, data: bytes, name: str = "x.gguf") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def load(tmp_path, data: bytes):
    return core.GGUFFile(write(tmp_path, data))


def expect_error(tmp_path, data: bytes, *fragments: str) -> str:
    with pytest.raises(RuntimeError) as e:
        load(tmp_path, data)
    msg = str(e.value)
    assert msg.startswith("gguf: ") and "x.gguf" in msg, msg
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


@pytest.fixture
def fast_tmp(tmp_path):
    """A RAM-backed directory when there is one: these tests write thousands of files."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield Path(d)


def one_tensor(ne, ttype, offset=0, data_len=None, n_dims=None, alignment=32, kvs=None) -> bytes:
    info = tensor_info("t", ne, ttype, offset, n_dims=n_dims)
    data = b"\1" * (4096 if data_len is None else data_len)
    return gc.gguf_bytes(base_kvs() if kvs is None else kvs, [info], data, alignment=alignment)


# ---- valid files ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_valid_crafted_file(tmp_path, version):
    infos, data, offsets = gc.layout(TENSORS)
    f = load(tmp_path, gc.gguf_bytes(base_kvs(), infos, data, version=version))
    assert f.version == version and f.alignment == 32
    assert f.metadata["tokenizer.ggml.tokens"] == TOKENS
    got = f.tensors
    assert [t["name"] for t in got] == [n for n, _, _ in TENSORS]
    for t, (name, ne, ttype), off in zip(got, TENSORS, offsets):
        assert t["shape"] == ne and t["type"] == ttype and t["offset"] == off
        assert t["nbytes"] == gc.nbytes(ne, ttype)
        assert bytes(f.tensor_data(name)) == data[off : off + t["nbytes"]]
    assert [t["type_name"] for t in got] == ["Q8_0", "F32", "F16"]
    with pytest.raises(RuntimeError, match="no tensor named 'nope'"):
        f.tensor_data("nope")


def test_every_value_type_roundtrips(tmp_path):
    nested = (gc.ARRAY, [(gc.INT32, [1, -2]), (gc.INT32, []), (gc.STRING, ["x"])])
    kvs = [
        kv("u8", gc.UINT8, 255), kv("i8", gc.INT8, -128),
        kv("u16", gc.UINT16, 65535), kv("i16", gc.INT16, -32768),
        kv("u32", gc.UINT32, 2**32 - 1), kv("i32", gc.INT32, -(2**31)),
        kv("u64", gc.UINT64, 2**64 - 1), kv("i64", gc.INT64, -(2**63)),
        kv("f32", gc.FLOAT32, 0.1), kv("f64", gc.FLOAT64, math.pi),
        kv("t", gc.BOOL, 1), kv("f", gc.BOOL, 0),
        kv("s", gc.STRING, "héllo\n✓"), kv("empty", gc.STRING, ""),
        kv("arr_f32", gc.ARRAY, (gc.FLOAT32, [1.5, -2.25])),
        kv("arr_bool", gc.ARRAY, (gc.BOOL, [1, 0])),
        kv("arr_empty", gc.ARRAY, (gc.UINT64, [])),
        kv("nested", gc.ARRAY, nested),
    ]
    m = load(tmp_path, gc.gguf_bytes(kvs)).metadata
    expected = {
        "u8": 255, "i8": -128, "u16": 65535, "i16": -32768,
        "u32": 2**32 - 1, "i32": -(2**31), "u64": 2**64 - 1, "i64": -(2**63),
        "f32": float(np.float32(0.1)), "f64": math.pi, "t": True, "f": False,
        "s": "héllo\n✓", "empty": "",
        "arr_f32": [1.5, -2.25], "arr_bool": [True, False], "arr_empty": [],
        "nested": [[1, -2], [], ["x"]],
    }
    assert m == expected
    assert list(m) == list(expected)  # file order kept
    assert type(m["t"]) is bool and type(m["u8"]) is int and type(m["f32"]) is float


def test_value_string(tmp_path):
    kvs = [
        kv("name", gc.STRING, "it's"), kv("n", gc.INT32, -3), kv("b", gc.BOOL, 1),
        kv("x", gc.FLOAT32, 0.5), kv("few", gc.ARRAY, (gc.UINT8, [1, 2])),
        kv("toks", gc.ARRAY, (gc.STRING, [f"t{i}" for i in range(10)] + ["a\nb"])),
        kv("nested", gc.ARRAY, (gc.ARRAY, [(gc.INT8, [1, 2, 3]), (gc.INT8, [])])),
    ]
    f = load(tmp_path, gc.gguf_bytes(kvs))
    assert f.value_string("name") == "it's"
    assert [f.value_string(k) for k in ("n", "b", "x", "few")] == ["-3", "true", "0.5", "[1, 2]"]
    assert f.value_string("toks", 3) == "['t0', 't1', 't2', ... (11 items)]"
    assert f.value_string("toks", 0) == "[... (11 items)]"
    assert f.value_string("toks", 20).endswith("'t9', 'a\\nb']")
    assert f.value_string("nested", 2) == "[[1, 2, ... (3 items)], []]"
    with pytest.raises(RuntimeError, match="no key 'nope'"):
        f.value_string("nope")


def test_custom_alignment_and_no_tensors(tmp_path):
    infos, data, offsets = gc.layout(TENSORS, alignment=64)
    kvs = base_kvs() + [kv("general.alignment", gc.UINT32, 64)]
    f = load(tmp_path, gc.gguf_bytes(kvs, infos, data, alignment=64))
    assert f.alignment == 64 and [t["offset"] for t in f.tensors] == offsets
    assert bytes(f.tensor_data("w")) == data[offsets[2] :]
    empty = load(tmp_path, gc.gguf_bytes())
    assert empty.metadata == {} and empty.tensors == []


def test_zero_sized_dimension_is_allowed(tmp_path):
    f = load(tmp_path, one_tensor([0, 7], gc.F32, data_len=0))
    assert f.tensors[0]["shape"] == [0, 7] and f.tensors[0]["nbytes"] == 0
    assert f.tensor_data("t").shape == (0,)


def test_special_token_id_minus_one_means_none(tmp_path):
    kvs = base_kvs() + [kv("tokenizer.ggml.padding_token_id", gc.INT32, -1)]
    assert load(tmp_path, gc.gguf_bytes(kvs)).metadata["tokenizer.ggml.padding_token_id"] == -1


# ---- header --------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RuntimeError, match=r"gguf: .*nope\.gguf: cannot open: No such file"):
        core.GGUFFile(str(tmp_path / "nope.gguf"))
    with pytest.raises(RuntimeError, match="cannot open: not a regular file"):
        core.GGUFFile(str(tmp_path))


def test_empty_and_short_files(tmp_path):
    expect_error(tmp_path, b"", "file is empty")
    expect_error(tmp_path, b"GG", "bad magic")
    expect_error(tmp_path, b"GGUF" + u32(3) + u64(0),
                 "file too short for the GGUF header (16 bytes")


def test_bad_magic(tmp_path):
    expect_error(tmp_path, valid_bytes(magic=b"GGML"), "bad magic (not a GGUF file)")


@pytest.mark.parametrize("version,fragment", [
    (0, "unsupported GGUF version 0"), (1, "GGUF version 1 is not supported"),
    (4, "unsupported GGUF version 4"), (0x03000000, "big-endian"),
])
def test_bad_version(tmp_path, version, fragment):
    expect_error(tmp_path, valid_bytes(version=version), fragment)


@pytest.mark.parametrize("count", [2**60, 2**64 - 1, 10**6])
def test_huge_counts_fail_fast(tmp_path, count):
    t0 = time.perf_counter()
    expect_error(tmp_path, valid_bytes(n_kv=count), f"key-value count {count} is too large")
    expect_error(tmp_path, valid_bytes(n_tensors=count), f"tensor count {count} is too large")
    assert time.perf_counter() - t0 < 0.5


def test_tensor_count_bounded_by_bytes_after_metadata(tmp_path):
    # 50 infos fit the bytes after the header (3.2 kB of metadata follows it),
    # but not the bytes left once the metadata has been read.
    kvs = [kv("pad", gc.STRING, "x" * 3200)]
    expect_error(tmp_path, gc.gguf_bytes(kvs, n_tensors=50),
                 "tensor count 50 is too large for the bytes left after the metadata")


# ---- metadata ------------------------------------------------------------------------


def test_key_string_length_past_end(tmp_path):
    data = gc.gguf_bytes([gc.string("general.name", length=2**40) + u32(gc.STRING)], n_kv=1)
    expect_error(tmp_path, data, "key 0: key: string length 1099511627776",
                 "past the end of the file")


def test_value_string_length_past_end(tmp_path):
    bad = gc.string("k") + u32(gc.STRING) + gc.string("abc", length=2**63)
    expect_error(tmp_path, gc.gguf_bytes([bad]), "key 'k': string value: string length",
                 "past the end of the file")


def test_array_length_past_end(tmp_path):
    bad = kv("tokenizer.ggml.scores", gc.ARRAY, (gc.FLOAT32, [1.0], 2**60))
    expect_error(tmp_path, gc.gguf_bytes([bad]), "key 'tokenizer.ggml.scores'",
                 f"array length {2**60} of float32", "past the end of the file")


def test_metadata_value_cap(fast_tmp):
    n = 2**24 + 1  # present in the file, but past the in-memory budget for values
    big = gc.string("big") + u32(gc.ARRAY) + u32(gc.UINT8) + u64(n) + b"\0" * n
    expect_error(fast_tmp, gc.gguf_bytes([big]), "key 'big': array length 16777217",
                 "past 16777216 values in all")
    ok = gc.string("ok") + u32(gc.ARRAY) + u32(gc.UINT8) + u64(1000) + b"\7" * 1000
    assert load(fast_tmp, gc.gguf_bytes([ok])).metadata["ok"] == [7] * 1000


def test_string_in_array_past_end_names_the_element(tmp_path):
    bad = gc.string("toks") + u32(gc.ARRAY) + u32(gc.STRING) + u64(2) + gc.string("a")
    bad += gc.string("bbbb", length=1000)
    expect_error(tmp_path, gc.gguf_bytes([bad]), "key 'toks'[1]: string value: string length 1000")


def test_invalid_value_types(tmp_path):
    bad = gc.string("k") + u32(13) + u32(0)
    expect_error(tmp_path, gc.gguf_bytes([bad]), "key 'k': invalid value type 13")
    bad = gc.string("k") + u32(gc.ARRAY) + u32(0xFFFFFFFF) + u64(0)
    expect_error(tmp_path, gc.gguf_bytes([bad]), "key 'k': invalid array element type 4294967295")
    expect_error(tmp_path, gc.gguf_bytes([kv("k", gc.BOOL, 2)]), "key 'k': bool value 2")


def test_arrays_nested_too_deep(tmp_path):
    v = (gc.INT8, [1])
    for _ in range(9):
        v = (gc.ARRAY, [v])
    expect_error(tmp_path, gc.gguf_bytes([kv("deep", gc.ARRAY, v)]), "nested deeper than 8")


def test_duplicate_key(tmp_path):
    kvs = base_kvs() + [kv("general.architecture", gc.STRING, "gpt2")]
    expect_error(tmp_path, gc.gguf_bytes(kvs), "key 'general.architecture': duplicate key")


def test_hostile_key_stays_on_one_line(tmp_path):
    kvs = [kv(b"a\nb", gc.UINT8, 1), kv(b"a\nb", gc.UINT8, 1)]
    expect_error(tmp_path, gc.gguf_bytes(kvs), "key 'a\\nb': duplicate key")
    # Invalid UTF-8 is escaped, valid multi-byte text kept, so Python can decode the message.
    kvs = [kv(b"\xff\xc3\xa9", gc.UINT8, 1), kv(b"\xff\xc3\xa9", gc.UINT8, 1)]
    expect_error(tmp_path, gc.gguf_bytes(kvs), "key '\\xff\u00e9': duplicate key")


def test_invalid_utf8_strings_are_readable(tmp_path):
    kvs = [kv(b"k\x80", gc.STRING, b"v\xc3"), kv("arr", gc.ARRAY, (gc.STRING, [b"\xfe"]))]
    infos = [tensor_info(b"t\xff", [8], gc.F32, 0)]
    f = load(tmp_path, gc.gguf_bytes(kvs, infos, b"\0" * 32))
    assert f.metadata == {"k\ufffd": "v\ufffd", "arr": ["\ufffd"]}
    assert f.tensors[0]["name"] == "t\ufffd"


@pytest.mark.parametrize("vtype,val,fragment", [
    (gc.UINT32, 0, "alignment 0 is not a nonzero power of two"),
    (gc.UINT32, 48, "alignment 48 is not a nonzero power of two"),
    (gc.UINT64, 32, "alignment must be a uint32, not uint64"),
    (gc.INT32, 32, "alignment must be a uint32, not int32"),
    (gc.STRING, "32", "alignment must be a uint32, not string"),
])
def test_bad_alignment(tmp_path, vtype, val, fragment):
    kvs = base_kvs() + [kv("general.alignment", vtype, val)]
    expect_error(tmp_path, gc.gguf_bytes(kvs), "key 'general.alignment'", fragment)


@pytest.mark.parametrize("key", [
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.separator_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
])
def test_special_token_past_vocab(tmp_path, key):
    kvs = [k for k in base_kvs() if key.encode() not in k]
    ok = load(tmp_path, gc.gguf_bytes(kvs + [kv(key, gc.UINT32, len(TOKENS) - 1)]))
    assert ok.metadata[key] == len(TOKENS) - 1
    expect_error(tmp_path, gc.gguf_bytes(kvs + [kv(key, gc.UINT32, len(TOKENS))]),
                 f"key '{key}': token id 5 is past the vocabulary (5 tokens)")


def test_special_token_wrong_type_or_negative(tmp_path):
    kvs = base_kvs() + [kv("tokenizer.ggml.eot_token_id", gc.STRING, "3")]
    expect_error(tmp_path, gc.gguf_bytes(kvs),
                 "eot_token_id': token id must be an integer, not string")
    kvs = base_kvs() + [kv("tokenizer.ggml.eot_token_id", gc.INT64, -7)]
    expect_error(tmp_path, gc.gguf_bytes(kvs), "eot_token_id': token id -7 is negative")
    kvs = [kv("tokenizer.ggml.tokens", gc.UINT32, 5)]
    expect_error(tmp_path, gc.gguf_bytes(kvs),
                 "tokenizer.ggml.tokens': must be an array, not uint32")


# ---- tensor infos and data -----------------------------------------------------------


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(tmp_path, n_dims):
    expect_error(tmp_path, one_tensor([32], gc.F32, n_dims=n_dims),
                 f"tensor 't': n_dims {n_dims} is not in 1..4")


def test_negative_dimension(tmp_path):
    expect_error(tmp_path, one_tensor([32, -2], gc.F32), "tensor 't': dimension 1 is negative (-2)")


@pytest.mark.parametrize("ne", [[2**32, 2**32], [0, 2**40, 2**40], [2**62, 1, 2], [2**63 - 1, 2]])
def test_overflowing_dimensions(tmp_path, ne):
    expect_error(tmp_path, one_tensor(ne, gc.F32), "tensor 't': dimensions overflow int64")


def test_data_size_overflow(tmp_path):
    # 2^62 elements fit int64, but 4 bytes each do not fit uint64.
    expect_error(tmp_path, one_tensor([2**31, 2**31], gc.F32), "tensor 't': data size overflows")


@pytest.mark.parametrize("ttype,fragment", [
    (4, "unknown tensor type 4"), (64, "unknown tensor type 64"), (99, "unknown tensor type 99"),
    (2**32 - 1, "unknown tensor type 4294967295"),
    (gc.Q2_K, "unsupported tensor type Q2_K (10)"),
])
def test_bad_tensor_type(tmp_path, ttype, fragment):
    expect_error(tmp_path, one_tensor([256], ttype), "tensor 't': " + fragment)


def test_ne0_not_multiple_of_block(tmp_path):
    expect_error(tmp_path, one_tensor([33, 2], gc.Q8_0),
                 "tensor 't': ne[0] = 33 is not a multiple of the Q8_0 block size 32")
    expect_error(tmp_path, one_tensor([128], gc.Q4_K), "Q4_K block size 256")


def test_misaligned_offset(tmp_path):
    expect_error(tmp_path, one_tensor([8], gc.F32, offset=4),
                 "tensor 't': offset 4 is not a multiple of the alignment 32")


@pytest.mark.parametrize("offset", [4096, 2**40, 2**64 - 32])
def test_offset_past_end(tmp_path, offset):
    expect_error(tmp_path, one_tensor([8], gc.F32, offset=offset),
                 f"tensor 't': data (offset {offset}, 32 bytes", "past the end of the file")


def test_truncated_tensor_data(tmp_path):
    full = valid_bytes()
    load(tmp_path, full)
    expect_error(tmp_path, full[:-1], "tensor 'w': data", "past the end of the file", "truncated")


def test_duplicate_tensor_name(tmp_path):
    infos = [tensor_info("a", [8], gc.F32, 0), tensor_info("a", [8], gc.F32, 32)]
    expect_error(tmp_path, gc.gguf_bytes(base_kvs(), infos, b"\0" * 64),
                 "tensor 'a': duplicate tensor name")


def test_overlapping_tensors(tmp_path):
    infos = [tensor_info("a", [16], gc.F32, 0), tensor_info("b", [8], gc.F32, 32)]
    expect_error(tmp_path, gc.gguf_bytes(base_kvs(), infos, b"\0" * 128),
                 "tensor 'b': data at offset 32 overlaps tensor 'a' (offset 0, 64 bytes)")


def test_tensor_name_past_end(tmp_path):
    info = gc.string("t", length=2**50)
    expect_error(tmp_path, gc.gguf_bytes(base_kvs(), [info], n_tensors=1),
                 "tensor 0: name: string length")


# ---- robustness ----------------------------------------------------------------------


def test_every_truncation_fails_cleanly(fast_tmp):
    full = valid_bytes()
    for n in range(len(full)):
        with pytest.raises(RuntimeError, match=r"^gguf: "):
            load(fast_tmp, full[:n])


def test_random_corruption_fails_cleanly(fast_tmp):
    full = bytearray(valid_bytes())
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        b = bytearray(full)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        try:
            f = load(fast_tmp, bytes(b))
            assert isinstance(f.metadata, dict)
            for t in f.tensors:
                assert f.tensor_data(t["name"]).nbytes == t["nbytes"]
            outcomes["ok"] += 1
        except RuntimeError as e:
            assert str(e).startswith("gguf: ") and "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


# ---- the real model ------------------------------------------------------------------


def field_value(field):
    import gguf

    v = field.contents()
    if field.types and field.types[0] == gguf.GGUFValueType.BOOL and not isinstance(v, list):
        return bool(v)
    if isinstance(v, list):
        return [x.item() if isinstance(x, np.generic) else x for x in v]
    return v.item() if isinstance(v, np.generic) else v


def test_smollm2_matches_gguf_reader(model_path):
    gguf = pytest.importorskip("gguf")
    t0 = time.perf_counter()
    f = core.GGUFFile(str(model_path))
    meta = f.metadata
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"loading took {elapsed:.3f}s"

    ref = gguf.GGUFReader(str(model_path))
    ref_fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
    assert f.version == int(ref.fields["GGUF.version"].parts[0][0])
    assert list(meta) == list(ref_fields)
    for key, field in ref_fields.items():
        assert meta[key] == field_value(field), key
    assert len(meta["tokenizer.ggml.tokens"]) == 49152
    assert len(meta["tokenizer.ggml.merges"]) == 48900

    tensors = f.tensors
    assert len(tensors) == len(ref.tensors) == 272
    for t, r in zip(tensors, ref.tensors):
        assert t["name"] == r.name
        assert t["type"] == int(r.tensor_type)
        assert t["type_name"] == r.tensor_type.name
        assert t["shape"] == [int(d) for d in r.shape]
        assert ref.data_offset + t["offset"] == r.data_offset
        assert t["nbytes"] == r.n_bytes
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight",
                 "output_norm.weight"]:
        r = next(r for r in ref.tensors if r.name == name)
        got = f.tensor_data(name)
        assert got.dtype == np.uint8 and not got.flags.writeable
        assert np.array_equal(got, np.frombuffer(np.ascontiguousarray(r.data).tobytes(), np.uint8))
