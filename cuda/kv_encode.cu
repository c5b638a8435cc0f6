// KV stream encoders on the GPU, byte-identical to the CPU streams' store()
// (cpp/kv_cache.cpp for f32/f16, cpp/kv_formats.cpp for q8_0/q4_0; layouts
// in kv_layout.h; pca in kv_pca.cu). q8_0 / q4_0 first turn each 64-channel block by a plain
// Walsh-Hadamard transform, as the CPU stream does, in the CPU's butterfly
// order; every multiply and add is rounded apart (no FMA contraction) and
// the block quantizers are llama.cpp's reference ones.
#include <algorithm>
#include <string>

#include "common.cuh"
#include "kv_layout.h"

namespace kvrt {

bool cuda_kv_kind_supported(kv_kind k) {
    return k == KV_KIND_F32 || k == KV_KIND_F16 || k == KV_KIND_Q8_0 || k == KV_KIND_Q4_0 ||
           k == KV_KIND_ROT || k == KV_KIND_PCA;
}

const char* cuda_kv_kinds_supported() { return "f32, f16, q8_0, q4_0, rot, pca"; }

cuda_kv_stream cuda_kv_stream_shape(const kv_type& t, int n_head_kv, int head_dim) {
    const kv_kind k = t.kind;
    cuda_kv_stream st;
    st.kind = k;
    st.n_head_kv = n_head_kv;
    st.head_dim = head_dim;
    switch (k) {
        case KV_KIND_F32: st.rec = (size_t)head_dim * 4; break;
        case KV_KIND_F16: st.rec = (size_t)head_dim * 2; break;
        case KV_KIND_Q8_0:
        case KV_KIND_Q4_0:
            if (head_dim % 32 != 0)
                throw error("KV format " + std::string(k == KV_KIND_Q8_0 ? "q8_0" : "q4_0") +
                            " needs head_dim a multiple of 32");
            st.rec = (size_t)head_dim / 32 * (k == KV_KIND_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0));
            st.rot = head_dim % 64 == 0 ? 64 : 0;
            break;
        case KV_KIND_ROT:
            if (head_dim % 32 != 0 || (head_dim & (head_dim - 1)))
                throw error("KV format rot needs a power-of-two head_dim of 32 or more");
            if (t.bits < 1 || t.bits > KV_MAX_BITS) throw error("KV format rot needs 1 to 8 bits");
            st.bits = t.bits;
            st.rec = 4 + (size_t)head_dim / 32 * kv_group_bytes(t.bits);
            st.rot = head_dim;
            break;
        case KV_KIND_PCA: break;  // no records: cuda_pca_stream holds its arrays
        default:
            throw error(std::string("KV format is not supported on CUDA (CUDA has ") +
                        cuda_kv_kinds_supported() + ")");
    }
    return st;
}

namespace {

__global__ void store_float_kernel(kv_kind kind, uint8_t* base, size_t pos_bytes,
                                   const int* pos_dev, const float* x, int64_t total) {
    pdl_begin();
    // [pos][head][dim] of the stream equals [t][head*dim] of x, shifted by pos0.
    if (pos_dev) base += (size_t)*pos_dev * pos_bytes;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        store_kv_elem(base, kind == KV_KIND_F16, i, x[i]);
    }
}

// Blocks start 2-byte aligned (records and block sizes are even).
__device__ inline void put_half(uint8_t* p, float f) {
    const __half h = __float2half_rn(f);
    *reinterpret_cast<__half*>(p) = h;
}

// quantize_row_q8_0_ref: d = amax/127, codes roundf(x/d) (half away from zero).
__device__ void quantize_q8_0(const float* x, uint8_t* blk) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = fmaxf(amax, fabsf(x[j]));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    put_half(blk, d);
    int8_t* qs = reinterpret_cast<int8_t*>(blk + 2);
    for (int j = 0; j < 32; ++j) qs[j] = (int8_t)(int)roundf(__fmul_rn(x[j], id));
}

// quantize_row_q4_0_ref: d from the signed value of largest magnitude (first
// on ties) over -8; codes (int8)(x*id + 8.5) capped at 15.
__device__ void quantize_q4_0(const float* x, uint8_t* blk) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    const float d = __fdiv_rn(max, -8.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    put_half(blk, d);
    uint8_t* qs = blk + 2;
    for (int j = 0; j < 16; ++j) {
        const int a = min(15, (int)(int8_t)(int)__fadd_rn(__fmul_rn(x[j], id), 8.5f));
        const int b = min(15, (int)(int8_t)(int)__fadd_rn(__fmul_rn(x[j + 16], id), 8.5f));
        qs[j] = (uint8_t)(a | (b << 4));
    }
}

// kv_fwht (cpp/cpu/kv_kernels.cpp) in its order, n = 64.
__device__ void fwht64(float* x) {
    for (int len = 1; len < 64; len <<= 1)
        for (int i = 0; i < 64; i += 2 * len)
            for (int j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = __fadd_rn(a, b);
                x[j + len] = __fsub_rn(a, b);
            }
    const float norm = 1.0f / sqrtf(64.0f);
    for (int i = 0; i < 64; ++i) x[i] = __fmul_rn(x[i], norm);
}

// One thread per (token, head, chunk of 64 channels -- 32 without rotation).
__global__ void store_quant_kernel(kv_kind kind, int rot, int n_head_kv, int head_dim,
                                   size_t rec, uint8_t* base, const int* pos_dev, const float* x,
                                   int64_t total) {
    pdl_begin();
    if (pos_dev) base += (size_t)*pos_dev * n_head_kv * rec;
    const int chunk = rot ? 64 : 32;
    const int per_head = head_dim / chunk;
    const size_t bsz = kind == KV_KIND_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % per_head);
        const int64_t th = i / per_head;  // token * n_head_kv + head
        const float* src = x + th * head_dim + c * chunk;
        uint8_t* dst = base + th * rec + (size_t)c * (chunk / 32) * bsz;
        float v[64];
        for (int j = 0; j < chunk; ++j) v[j] = src[j];
        if (rot) fwht64(v);
        for (int b = 0; b < chunk / 32; ++b) {
            if (kind == KV_KIND_Q8_0) quantize_q8_0(v + 32 * b, dst + b * bsz);
            else quantize_q4_0(v + 32 * b, dst + b * bsz);
        }
    }
}

constexpr int kRotThreads = 128;
constexpr int kRotMaxDim = 256;

// rot:b, the CPU's encode_rot: a block per (token, head). y = x * signs, then
// kv_fwht over the whole head (each stage's butterflies are independent, so
// a thread per pair gives the CPU's sums), scaled by 1/sqrt(dim); one scale
// and minimum over the head as halves; codes rint((y - min) / scale) in
// [0, 2^b - 1], packed a thread per 32-channel group.
__global__ void __launch_bounds__(kRotThreads)
    store_rot_kernel(int bits, int n_head_kv, int hd, size_t rec, uint8_t* base, const int* pos_dev,
                     const float* signs, const float* x) {
    pdl_begin();
    if (pos_dev) base += (size_t)*pos_dev * n_head_kv * rec;
    __shared__ float y[kRotMaxDim];
    __shared__ uint8_t codes[kRotMaxDim];
    __shared__ int red[2][kRotThreads / 32];
    const size_t th = blockIdx.x;  // token * n_head_kv + head
    const int tid = threadIdx.x, nt = blockDim.x;
    for (int d = tid; d < hd; d += nt) y[d] = __fmul_rn(x[th * hd + d], signs[d]);
    __syncthreads();
    for (int len = 1; len < hd; len <<= 1) {
        for (int p = tid; p < hd / 2; p += nt) {
            const int j = (p / len) * 2 * len + p % len;
            const float a = y[j], b = y[j + len];
            y[j] = __fadd_rn(a, b);
            y[j + len] = __fsub_rn(a, b);
        }
        __syncthreads();
    }
    const float norm = __fdiv_rn(1.0f, __fsqrt_rn((float)hd));
    for (int d = tid; d < hd; d += nt) y[d] = __fmul_rn(y[d], norm);
    __syncthreads();
    // The CPU's running std::min / std::max from y[0] keep the first of equal
    // values (-0 and +0 among them): the index of the first smallest and of
    // the first largest.
    int ilo = tid < hd ? tid : 0, ihi = ilo;
    for (int d = tid + nt; d < hd; d += nt) {
        if (y[d] < y[ilo]) ilo = d;
        if (y[d] > y[ihi]) ihi = d;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const int jl = __shfl_xor_sync(0xffffffffu, ilo, o), jh = __shfl_xor_sync(0xffffffffu, ihi, o);
        if (y[jl] < y[ilo] || (y[jl] == y[ilo] && jl < ilo)) ilo = jl;
        if (y[jh] > y[ihi] || (y[jh] == y[ihi] && jh < ihi)) ihi = jh;
    }
    if (tid % 32 == 0) {
        red[0][tid / 32] = ilo;
        red[1][tid / 32] = ihi;
    }
    __syncthreads();
    ilo = red[0][0];
    ihi = red[1][0];
    for (int w = 1; w < nt / 32; ++w) {
        const int jl = red[0][w], jh = red[1][w];
        if (y[jl] < y[ilo] || (y[jl] == y[ilo] && jl < ilo)) ilo = jl;
        if (y[jh] > y[ihi] || (y[jh] == y[ihi] && jh < ihi)) ihi = jh;
    }
    const float lo = y[ilo], hi = y[ihi];
    const int qmax = (1 << bits) - 1;
    const __half hsc = __float2half_rn(__fdiv_rn(__fsub_rn(hi, lo), (float)qmax)), hmn = __float2half_rn(lo);
    const float sc = __half2float(hsc), mn = __half2float(hmn);
    const float inv = sc > 0.0f ? __fdiv_rn(1.0f, sc) : 0.0f;
    for (int d = tid; d < hd; d += nt) {
        const float c = rintf(__fmul_rn(__fsub_rn(y[d], mn), inv));
        codes[d] = (uint8_t)fminf(fmaxf(c, 0.0f), (float)qmax);
    }
    __syncthreads();
    uint8_t* r = base + th * rec;
    if (tid == 0) {
        reinterpret_cast<__half*>(r)[0] = hsc;
        reinterpret_cast<__half*>(r)[1] = hmn;
    }
    for (int g = tid; g < hd / 32; g += nt) kv_pack32(codes + 32 * g, bits, r + 4 + (size_t)g * kv_group_bytes(bits));
}

}  // namespace

void cuda_kv_store(const cuda_kv_stream& st, int pos0, int n, const float* x, cudaStream_t s,
                   const int* pos_dev) {
    if (n <= 0) return;
    if (st.kind == KV_KIND_PCA) {
        cuda_kv_store_pca(st.pca, pos0, n, x, s, pos_dev);
        return;
    }
    uint8_t* base = st.d + (size_t)pos0 * st.n_head_kv * st.rec;
    if (st.kind == KV_KIND_ROT) {
        if (!st.signs || st.head_dim > kRotMaxDim) throw error("CUDA rot stream: no signs, or head_dim over 256");
        launch_pdl(store_rot_kernel, (unsigned)((int64_t)n * st.n_head_kv), kRotThreads, 0, s, st.bits,
                   st.n_head_kv, st.head_dim, st.rec, base, pos_dev, st.signs, x);
    } else if (st.kind == KV_KIND_F32 || st.kind == KV_KIND_F16) {
        const int64_t total = (int64_t)n * st.n_head_kv * st.head_dim;
        const int blocks = (int)std::min<int64_t>((total + 255) / 256, 4096);
        launch_pdl(store_float_kernel, blocks, 256, 0, s, st.kind, base, (size_t)st.n_head_kv * st.rec,
                   pos_dev, x, total);
    } else {
        const int64_t total = (int64_t)n * st.n_head_kv * (st.head_dim / (st.rot ? 64 : 32));
        const int blocks = (int)std::min<int64_t>((total + 127) / 128, 4096);
        launch_pdl(store_quant_kernel, blocks, 128, 0, s, st.kind, st.rot, st.n_head_kv, st.head_dim,
                   st.rec, base, pos_dev, x, total);
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
