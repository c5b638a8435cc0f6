"""Tensor-type kernels against gguf-py (llama.cpp's reference) and each other.

- dequantize == gguf.quants.dequantize on the real model's tensors and on
  blocks of every supported type;
- quantize == gguf.quants.quantize byte for byte (Q8_1 / Q8_K, which gguf-py
  lacks, against numpy transcriptions of quantize_row_q8_1/q8_K_ref);
- vec_dot == dot(dequantize(x), dequantize(y)) and SIMD == scalar;
- gemm_tile == vec_dot for small tiles;
- the C++ SIMD-vs-scalar program, natively and (when a cross compiler and
  qemu are present) on arm64 NEON under qemu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants as gq
from kvrt import _core as kq

REPO = Path(__file__).resolve().parent.parent

BLOCK_TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
GGUF_QUANTIZABLE = [Q.F16, Q.BF16, *BLOCK_TYPES]
K_TYPES = [Q.Q4_K, Q.Q5_K, Q.Q6_K]
DOT_TYPES = [Q.F32, Q.F16, Q.BF16, *BLOCK_TYPES, *K_TYPES]


@pytest.fixture(autouse=True)
def _simd_default():
    yield
    kq.set_impl("simd")


def block_size(t: Q) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian data with the awkward cases quantizers get wrong: zero blocks,
    single outliers, constant blocks, exact ties of +/- max, tiny values."""
    x = rng.standard_normal(n).astype(np.float32)
    nb = n // 32
    if nb >= 8:
        x[0:32] = 0.0
        x[32:64] *= 1e-6
        x[64 + 5] = 100.0
        x[96:128] = 0.75
        x[128:160] = rng.integers(-8, 8, 32).astype(np.float32)  # exact codes, .5 ties
        x[160] = -3.0
        x[161] = 3.0
        x[192:224] = rng.integers(-127, 128, 32).astype(np.float32) / 2.0
    return x


def kq_quantize(t: Q, x: np.ndarray) -> np.ndarray:
    return kq.quantize(int(t), np.ascontiguousarray(x, dtype=np.float32))


def gguf_quantize(t: Q, x: np.ndarray) -> np.ndarray:
    return np.asarray(gq.quantize(x.reshape(1, -1), t)).view(np.uint8).ravel()


# ---------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def reader(model_path):
    return gguf.GGUFReader(model_path)


def _tensor_rows(t, max_rows: int) -> tuple[np.ndarray, int]:
    """Raw bytes of the first max_rows rows of a tensor, and elements per row."""
    data = np.asarray(t.data)
    n_per_row = int(t.shape[0])
    rows = data.reshape(-1, data.shape[-1])[:max_rows] if data.ndim > 1 else data.reshape(1, -1)
    return np.ascontiguousarray(rows).view(np.uint8), n_per_row


def test_dequantize_real_tensors(reader):
    seen = set()
    for t in reader.tensors:
        qt = Q(t.tensor_type)
        if qt in seen and not t.name.startswith("token_embd"):
            continue
        seen.add(qt)
        raw, n = _tensor_rows(t, 512)
        ref = gq.dequantize(raw.reshape(raw.shape[0], -1), qt).reshape(-1)
        got = kq.dequantize(int(qt), raw.ravel(), ref.size)
        np.testing.assert_array_equal(got, ref, err_msg=t.name)
    assert {Q.Q4_1, Q.Q8_0, Q.F32} <= seen


def test_dequantize_all_q4_1_tensors(reader):
    """Every Q4_1 weight of the model, whole."""
    n = 0
    for t in reader.tensors:
        if t.tensor_type != Q.Q4_1:
            continue
        raw = np.asarray(t.data).view(np.uint8)
        ref = gq.dequantize(raw, Q.Q4_1).ravel()
        np.testing.assert_array_equal(kq.dequantize(int(Q.Q4_1), raw.ravel(), ref.size), ref)
        n += 1
    assert n == 210


@pytest.mark.parametrize("qt", GGUF_QUANTIZABLE, ids=lambda t: t.name)
def test_requantize_real_weights(reader, qt):
    """Real weights (dequantized Q4_1 / Q8_0) requantized to every type."""
    names = ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight"]
    by_name = {t.name: t for t in reader.tensors}
    for impl in ("scalar", "simd"):
        kq.set_impl(impl)
        for name in names:
            raw, n = _tensor_rows(by_name[name], 96)
            x = gq.dequantize(raw.reshape(raw.shape[0], -1), Q(by_name[name].tensor_type)).ravel()
            # scale up a little so values land off the source grid
            x = (x * np.float32(1.37)).astype(np.float32)
            np.testing.assert_array_equal(kq_quantize(qt, x), gguf_quantize(qt, x), err_msg=name)


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("impl", ["scalar", "simd"])
@pytest.mark.parametrize("qt", GGUF_QUANTIZABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [32, 256, 576, 1536, 32 * 1001])
def test_quantize_matches_gguf(qt, n, impl):
    kq.set_impl(impl)
    rng = np.random.default_rng(n)
    x = random_rows(rng, n)
    np.testing.assert_array_equal(kq_quantize(qt, x), gguf_quantize(qt, x))


@pytest.mark.parametrize("qt", GGUF_QUANTIZABLE, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qt):
    rng = np.random.default_rng(3)
    x = random_rows(rng, 4096)
    b = gguf_quantize(qt, x)
    ref = gq.dequantize(b.reshape(1, -1), qt).ravel()
    np.testing.assert_array_equal(kq.dequantize(int(qt), b, x.size), ref)


def random_k_blocks(rng: np.random.Generator, qt: Q, nb: int) -> np.ndarray:
    """Valid K-quant blocks built byte-wise: random codes and scales, finite
    f16 super-scales (gguf-py cannot quantize K types)."""
    size = gguf.GGML_QUANT_SIZES[qt][1]
    b = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    d = (rng.standard_normal(nb) * 0.01).astype(np.float16).view(np.uint8).reshape(nb, 2)
    dmin = (np.abs(rng.standard_normal(nb)) * 0.01).astype(np.float16).view(np.uint8).reshape(nb, 2)
    if qt == Q.Q6_K:
        b[:, 208:210] = d  # ql[128] qh[64] scales[16] d
    else:
        b[:, 0:2] = d
        b[:, 2:4] = dmin
    return b.ravel()


@pytest.mark.parametrize("qt", K_TYPES, ids=lambda t: t.name)
def test_dequantize_k_matches_gguf(qt):
    rng = np.random.default_rng(int(qt))
    b = random_k_blocks(rng, qt, 37)
    ref = gq.dequantize(b.reshape(37, -1), qt).ravel()
    np.testing.assert_array_equal(kq.dequantize(int(qt), b, 37 * 256), ref)


def _np_roundf(x: np.ndarray) -> np.ndarray:
    return gq.np_roundf(x)


def ref_q8_1(x: np.ndarray) -> np.ndarray:
    """numpy transcription of quantize_row_q8_1_ref."""
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        idv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = _np_roundf(blocks * idv).astype(np.int8)
    s = (qs.astype(np.int32).sum(-1, keepdims=True).astype(np.float32) * d).astype(np.float16)
    return np.concatenate(
        [d.astype(np.float16).view(np.uint8), s.view(np.uint8), qs.view(np.uint8)], axis=-1
    ).ravel()


def ref_q8_K(x: np.ndarray) -> np.ndarray:
    """numpy transcription of quantize_row_q8_K_ref (nearest_int rounds half to even)."""
    out = []
    for blk in x.reshape(-1, 256):
        amax_i = int(np.argmax(np.abs(blk)))  # first of equal magnitudes
        mx = blk[amax_i]
        if mx == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(-127.0) / mx
        qs = np.minimum(127, np.rint(iscale * blk)).astype(np.int8)
        bsums = qs.astype(np.int16).reshape(16, 16).sum(-1).astype(np.int16)
        d = np.array([np.float32(1) / iscale], np.float32)
        out.append(np.concatenate([d.view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


@pytest.mark.parametrize("impl", ["scalar", "simd"])
@pytest.mark.parametrize("n", [256, 1536, 256 * 77])
def test_quantize_activations(n, impl):
    kq.set_impl(impl)
    rng = np.random.default_rng(n + 1)
    x = random_rows(rng, n)
    x[512 + 7 : 512 + 9] = [-5.0, 5.0] if n > 1024 else x[512 + 7 : 512 + 9]
    np.testing.assert_array_equal(kq_quantize(Q.Q8_1, x), ref_q8_1(x))
    np.testing.assert_array_equal(kq_quantize(Q.Q8_K, x), ref_q8_K(x))


# ---------------------------------------------------------------- dot products


def weight_bytes(rng: np.random.Generator, qt: Q, n_rows: int, n: int) -> np.ndarray:
    if qt in K_TYPES:
        return random_k_blocks(rng, qt, n_rows * n // 256)
    x = rng.standard_normal(n_rows * n).astype(np.float32)
    if qt == Q.F32:
        return x.view(np.uint8)
    return gguf_quantize(qt, x)


def act_bytes(rng: np.random.Generator, qt: Q, n_cols: int, n: int) -> np.ndarray:
    vt = kq.vec_dot_type(int(qt))
    y = rng.standard_normal(n_cols * n).astype(np.float32)
    return np.concatenate([kq.quantize(vt, y[c * n : (c + 1) * n]) for c in range(n_cols)])


def sizes_for(qt: Q) -> list[int]:
    base = [256, 512, 1536, 2560, 256 * 33] if qt in K_TYPES else [32, 96, 576, 1536, 32 * 129]
    return base


@pytest.mark.parametrize("qt", DOT_TYPES, ids=lambda t: t.name)
def test_vec_dot_scalar_matches_dequantized(qt):
    rng = np.random.default_rng(int(qt) + 100)
    kq.set_impl("scalar")
    vt = kq.vec_dot_type(int(qt))
    for n in sizes_for(qt):
        x = weight_bytes(rng, qt, 1, n)
        y = act_bytes(rng, qt, 1, n)
        ref = np.dot(
            kq.dequantize(int(qt), x, n).astype(np.float64), kq.dequantize(vt, y, n).astype(np.float64)
        )
        got = kq.vec_dot(int(qt), x, y, n)
        scale = np.sqrt(n) * np.abs(kq.dequantize(int(qt), x, n)).max() * np.abs(kq.dequantize(vt, y, n)).max()
        # f32 accumulation over n terms: relative to the typical magnitude
        assert abs(got - ref) <= 2e-6 * scale + 1e-5 * abs(ref), (n, got, ref)


@pytest.mark.parametrize("qt", DOT_TYPES, ids=lambda t: t.name)
def test_vec_dot_simd_matches_scalar(qt):
    """Integer sums are exact on both paths; only the float accumulation order
    differs, so agreement is to a few ulps of the sum of |terms|."""
    rng = np.random.default_rng(int(qt) + 200)
    vt = kq.vec_dot_type(int(qt))
    for n in sizes_for(qt):
        x = weight_bytes(rng, qt, 1, n)
        y = act_bytes(rng, qt, 1, n)
        kq.set_impl("scalar")
        ref = kq.vec_dot(int(qt), x, y, n)
        kq.set_impl("simd")
        got = kq.vec_dot(int(qt), x, y, n)
        mag = np.abs(kq.dequantize(int(qt), x, n).astype(np.float64) * kq.dequantize(vt, y, n)).sum()
        assert abs(got - ref) <= 1e-6 * mag, (n, got, ref, mag)


@pytest.mark.parametrize("impl", ["scalar", "simd"])
@pytest.mark.parametrize("qt", DOT_TYPES, ids=lambda t: t.name)
def test_gemm_tile_matches_vec_dot(qt, impl):
    kq.set_impl(impl)
    rng = np.random.default_rng(int(qt) + 300)
    n = 512 if qt in K_TYPES else 576
    rb = kq.row_size(int(qt), n)
    yb = kq.row_size(kq.vec_dot_type(int(qt)), n)
    x = weight_bytes(rng, qt, 7, n)
    y = act_bytes(rng, qt, 7, n)
    for nr in (1, 2, 3, 4, 5, 7):
        for nc in (1, 2, 3, 4, 5, 7):
            out = kq.gemm_tile(int(qt), x, y, n, nr, nc).reshape(nc, nr)
            for c in range(nc):
                for r in range(nr):
                    ref = kq.vec_dot(int(qt), x[r * rb : (r + 1) * rb], y[c * yb : (c + 1) * yb], n)
                    assert out[c, r] == pytest.approx(ref, rel=1e-5, abs=1e-5), (nr, nc, r, c)


def test_vec_dot_real_rows(reader):
    """Rows of the real Q8_0 embedding (49152 x 576) and a Q4_1 ffn weight
    against activations quantized from a real hidden-like vector."""
    by_name = {t.name: t for t in reader.tensors}
    rng = np.random.default_rng(7)
    for name, rows in (("token_embd.weight", 49152), ("blk.3.ffn_gate.weight", 1536)):
        t = by_name[name]
        qt = Q(t.tensor_type)
        data = np.asarray(t.data)
        n = int(t.shape[0])
        pick = rng.choice(rows, 64, replace=False)
        y = act_bytes(rng, qt, 1, n)
        yv = kq.dequantize(kq.vec_dot_type(int(qt)), y, n).astype(np.float64)
        for r in pick:
            raw = np.ascontiguousarray(data[r]).view(np.uint8)
            ref = np.dot(gq.dequantize(raw.reshape(1, -1), qt).ravel().astype(np.float64), yv)
            for impl in ("scalar", "simd"):
                kq.set_impl(impl)
                got = kq.vec_dot(int(qt), raw, y, n)
                assert got == pytest.approx(ref, rel=1e-4, abs=1e-4), (name, r, impl)


KVRT_Q16 = 64  # kvrt's 16-bit activation format (cpp/quant_blocks.h)


@pytest.mark.parametrize("impl", ["scalar", "simd"])
def test_q16_activation_roundtrip(impl):
    """Activations of the 32-element types keep 16-bit codes: the error of each
    element is at most half a step, amax / 65534 (plus the float rounding of
    x / d, ~2^-9 of a step at codes near 32767), and s = d * sum(codes)."""
    kq.set_impl(impl)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(32 * 40) * np.repeat(rng.uniform(0.01, 30, 40), 32)).astype(np.float32)
    x[:32] = 0.0
    y = kq.quantize(KVRT_Q16, x)
    assert len(y) == 40 * 72
    back = kq.dequantize(KVRT_Q16, y, len(x))
    amax = np.abs(x.reshape(-1, 32)).max(-1, keepdims=True)
    assert np.all(np.abs(back - x).reshape(-1, 32) <= amax / 65534 * 1.01 + 1e-30)
    blocks = y.reshape(-1, 72)
    d = blocks[:, 0:4].copy().view(np.float32).ravel()
    s = blocks[:, 4:8].copy().view(np.float32).ravel()
    codes = blocks[:, 8:].copy().view(np.int16).astype(np.int64)
    np.testing.assert_allclose(s, d * codes.sum(-1), rtol=1e-6)
    assert np.abs(codes).max() == 32767


def test_row_size_and_types():
    assert kq.row_size(int(Q.Q4_1), 576) == 18 * 20
    assert kq.row_size(int(Q.Q8_K), 256) == 292
    assert kq.vec_dot_type(int(Q.Q4_1)) == KVRT_Q16
    assert kq.vec_dot_type(int(Q.Q8_0)) == KVRT_Q16
    assert kq.row_size(KVRT_Q16, 576) == 18 * 72
    assert kq.vec_dot_type(int(Q.Q6_K)) == int(Q.Q8_K)
    assert kq.vec_dot_type(int(Q.F16)) == int(Q.F32)
    assert kq.simd_name() in ("AVX2", "NEON", "scalar")
    with pytest.raises(RuntimeError):
        kq.row_size(int(Q.Q4_1), 33)
    with pytest.raises(RuntimeError):
        kq.quantize(int(Q.Q4_K), np.zeros(256, np.float32))
    with pytest.raises(RuntimeError):
        kq.dequantize(int(Q.Q8_0), np.zeros(10, np.uint8), 32)


# ---------------------------------------------------------------- C++ programs


def _build_dir() -> Path | None:
    # _core is a real file in <build>/kvrt (the .py files there are links).
    d = Path(kq.__file__).resolve().parent.parent
    return d if (d / "CMakeCache.txt").is_file() else None


def test_cpp_simd_vs_scalar():
    d = _build_dir()
    exe = d / "test_quants_simd" if d else None
    if exe is None or not exe.is_file():
        pytest.skip("test_quants_simd not built next to kvrt._core")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout


NEON_SOURCES = [
    "cpp/quants.cpp",
    "cpp/cpu/quants_ref.cpp",
    "cpp/cpu/quants_neon.cpp",
    "cpp/cpu/quants_avx2.cpp",
    "cpp/cpu/quants_scalar_only.cpp",
    "tests/cpp/test_quants_simd.cpp",
]


def test_neon_under_qemu(tmp_path):
    cxx = shutil.which("aarch64-linux-gnu-g++")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if not cxx or not qemu:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64")
    results = {}
    for march in ("armv8.2-a+dotprod", "armv8-a"):
        exe = tmp_path / f"test_quants_simd_{march.replace('+', '_')}"
        cmd = [cxx, "-std=c++17", "-O2", f"-march={march}", "-static", "-Icpp", "-o", str(exe)]
        subprocess.run(cmd + NEON_SOURCES, cwd=REPO, check=True, timeout=600)
        r = subprocess.run(
            [qemu, str(exe), "--quick"], capture_output=True, text=True, timeout=600,
            env={**os.environ, "QEMU_CPU": "max"},
        )
        results[march] = r
        assert r.returncode == 0, march + "\n" + r.stdout + r.stderr
        assert "simd=NEON" in r.stdout, r.stdout
