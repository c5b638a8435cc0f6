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
           k == KV_KIND_ROT || k == KV_KIND_AFFINE || k == KV_KIND_PCA;
}

const char* cuda_kv_kinds_supported() { return "f32, f16, q8_0, q4_0, rot, affine, pca"; }

size_t cuda_kv_data_bytes(const cuda_kv_stream& st, int n_ctx) {
    if (st.cmajor) return (size_t)st.n_head_kv * st.n_blocks * st.blk;
    return (size_t)n_ctx * st.n_head_kv * st.rec;
}

size_t cuda_kv_stage_bytes(const cuda_kv_stream& st) {
    return st.cmajor ? (size_t)st.n_head_kv * KV_BLOCK_TOKENS * st.head_dim * sizeof(uint16_t) : 0;
}

cuda_kv_stream cuda_kv_stream_shape(const kv_type& t, int n_head_kv, int head_dim, bool is_key,
                                    int n_ctx) {
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
        case KV_KIND_AFFINE:
            if (head_dim % 32 != 0) throw error("KV format affine needs head_dim a multiple of 32");
            if (t.bits < 1 || t.bits > KV_MAX_BITS) throw error("KV format affine needs 1 to 8 bits");
            st.bits = t.bits;
            if (is_key) {
                st.cmajor = 1;
                st.n_blocks = (n_ctx + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
                st.blk = (size_t)head_dim * (4 + kv_group_bytes(t.bits));
            } else {
                st.rec = (size_t)head_dim / 32 * kv_affine_group_bytes(t.bits);
            }
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

// The affine quantizer over [lo, hi] at `bits`, in the order of the CPU's
// kv_affine_quantize32 and encode_rot: a half scale (hi - lo) / (2^bits - 1)
// and a half minimum, and each value's code rint((x - min) / scale) in
// [0, 2^bits - 1].
struct affine_quant {
    __half hsc, hmn;
    float mn, inv, qmax;
    __device__ affine_quant(float lo, float hi, int bits) {
        qmax = (float)((1 << bits) - 1);
        hmn = __float2half_rn(lo);
        hsc = __float2half_rn(__fdiv_rn(__fsub_rn(hi, lo), qmax));
        mn = __half2float(hmn);
        const float sc = __half2float(hsc);
        inv = sc > 0.0f ? __fdiv_rn(1.0f, sc) : 0.0f;
    }
    __device__ uint8_t code(float x) const {
        return (uint8_t)fminf(fmaxf(rintf(__fmul_rn(__fsub_rn(x, mn), inv)), 0.0f), qmax);
    }
};

// kv_affine_quantize32 (cpp/cpu/kv_kernels.cpp) in its order: 32 values
// x[i * stride] to a half scale and minimum and packed codes; the running
// minimum and maximum keep the first of equal values, as std::min/max do.
__device__ void affine32(const float* x, int stride, int bits, __half* scale, __half* min, uint8_t* g) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < 32; ++i) {
        const float v = x[i * stride];
        if (v < lo) lo = v;
        if (hi < v) hi = v;
    }
    const affine_quant q(lo, hi, bits);
    *min = q.hmn;
    *scale = q.hsc;
    uint8_t codes[32];
    for (int i = 0; i < 32; ++i) codes[i] = q.code(x[i * stride]);
    kv_pack32(codes, bits, g);
}

// affine values: a thread per (token, head, 32-channel group).
__global__ void store_affine_values_kernel(int bits, int n_head_kv, int hd, size_t rec, uint8_t* base,
                                           const int* pos_dev, const float* x, int64_t total) {
    pdl_begin();
    if (pos_dev) base += (size_t)*pos_dev * n_head_kv * rec;
    const int ng = hd / 32;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int g = (int)(i % ng);
        const int64_t th = i / ng;  // token * n_head_kv + head
        uint8_t* grp = base + th * rec + (size_t)g * kv_affine_group_bytes(bits);
        __half* hdr = reinterpret_cast<__half*>(grp);
        affine32(x + th * hd + 32 * g, 1, bits, &hdr[0], &hdr[1], grp + 4);
    }
}

constexpr int kAffMaxDim = 256;

// affine keys, the CPU's kv_stream_affine_keys::store: a block per head, a
// thread per channel, over the 32-token blocks the store touches in order.
// Each token goes into the staging area as a half; a block the store
// completes is quantized per channel from its 32 halves. Tokens of the
// first block before the store come from the staging area, or, where that
// block was quantized already (the last store ended past it), back from its
// codes as halves of min + scale * code (the CPU's unstage, a fused
// multiply-add as GCC contracts it with -march=native).
__global__ void __launch_bounds__(kAffMaxDim)
    store_affine_keys_kernel(cuda_kv_stream st, int pos0, const int* pos_dev, int n, const float* x) {
    pdl_begin();
    __shared__ float xs[KV_BLOCK_TOKENS][kAffMaxDim];
    const int h = blockIdx.x, c = threadIdx.x, hd = st.head_dim, bits = st.bits;
    const int base = pos0 + (pos_dev ? *pos_dev : 0), end = base + n, last = *st.len;
    __half* stage = reinterpret_cast<__half*>(st.stage) + (size_t)h * KV_BLOCK_TOKENS * hd;
    for (int blk = base / KV_BLOCK_TOKENS; blk * KV_BLOCK_TOKENS < end; ++blk) {
        const int b0 = blk * KV_BLOCK_TOKENS, lo = max(base, b0), hi = min(end, b0 + KV_BLOCK_TOKENS);
        uint8_t* bp = st.d + ((size_t)h * st.n_blocks + blk) * st.blk;
        __half* bsc = reinterpret_cast<__half*>(bp);
        uint8_t* grp = bp + 4 * (size_t)hd + (size_t)c * kv_group_bytes(bits);
        if (lo > b0 && last >= b0 + KV_BLOCK_TOKENS) {
            const float s = __half2float(bsc[c]), m = __half2float(bsc[hd + c]);
            for (int t = 0; t < lo - b0; ++t) {
                const __half v = __float2half_rn(__fmaf_rn(s, (float)kv_code_get(grp, bits, t), m));
                stage[(size_t)t * hd + c] = v;
                xs[t][c] = __half2float(v);
            }
        } else {
            for (int t = 0; t < lo - b0; ++t) xs[t][c] = __half2float(stage[(size_t)t * hd + c]);
        }
        for (int pos = lo; pos < hi; ++pos) {
            const __half v = __float2half_rn(x[((size_t)(pos - base) * st.n_head_kv + h) * hd + c]);
            stage[(size_t)(pos - b0) * hd + c] = v;
            xs[pos - b0][c] = __half2float(v);
        }
        if (hi == b0 + KV_BLOCK_TOKENS) affine32(&xs[0][c], kAffMaxDim, bits, &bsc[c], &bsc[hd + c], grp);
    }
}

// Where the last store ended, for the next one (after every block of the store read it).
__global__ void set_len_kernel(int* len, int pos0, const int* pos_dev, int n) {
    pdl_begin();
    *len = pos0 + (pos_dev ? *pos_dev : 0) + n;
}

constexpr int kRotThreads = 128;
constexpr int kRotMaxDim = 256;

// rot:b, the CPU's encode_rot: a block per (token, head). y = x * signs, then
// kv_fwht over the whole head (fwht_shared), scaled by 1/sqrt(dim); one scale
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
    for (int d = tid; d < hd; d += nt) y[d] = x[th * hd + d];
    __syncthreads();
    fwht_shared(y, 1, hd, hd, hd, signs, nullptr);
    // The CPU's running std::min / std::max from y[0] keep the first of equal
    // values (-0 and +0 among them): the index of the first smallest and of
    // the first largest.
    int ilo = tid < hd ? tid : 0, ihi = ilo;
    // Takes the candidates jl, jh where they come first among the smallest / largest.
    auto take = [&](int jl, int jh) {
        if (y[jl] < y[ilo] || (y[jl] == y[ilo] && jl < ilo)) ilo = jl;
        if (y[jh] > y[ihi] || (y[jh] == y[ihi] && jh < ihi)) ihi = jh;
    };
    for (int d = tid + nt; d < hd; d += nt) take(d, d);
    for (int o = 16; o > 0; o >>= 1)
        take(__shfl_xor_sync(0xffffffffu, ilo, o), __shfl_xor_sync(0xffffffffu, ihi, o));
    if (tid % 32 == 0) {
        red[0][tid / 32] = ilo;
        red[1][tid / 32] = ihi;
    }
    __syncthreads();
    ilo = red[0][0];
    ihi = red[1][0];
    for (int w = 1; w < nt / 32; ++w) take(red[0][w], red[1][w]);
    const affine_quant q(y[ilo], y[ihi], bits);
    for (int d = tid; d < hd; d += nt) codes[d] = q.code(y[d]);
    __syncthreads();
    uint8_t* r = base + th * rec;
    if (tid == 0) {
        reinterpret_cast<__half*>(r)[0] = q.hsc;
        reinterpret_cast<__half*>(r)[1] = q.hmn;
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
    if (st.cmajor) {
        if (!st.stage || !st.len || st.head_dim > kAffMaxDim) throw error("CUDA affine keys: no staging area");
        launch_pdl(store_affine_keys_kernel, st.n_head_kv, st.head_dim, 0, s, st, pos0, pos_dev, n, x);
        launch_pdl(set_len_kernel, 1, 1, 0, s, st.len, pos0, pos_dev, n);
        KVRT_CUDA_CHECK(cudaGetLastError());
        return;
    }
    if (st.kind == KV_KIND_AFFINE) {
        const int64_t total = (int64_t)n * st.n_head_kv * (st.head_dim / 32);
        const int blocks = (int)std::min<int64_t>((total + 127) / 128, 4096);
        launch_pdl(store_affine_values_kernel, blocks, 128, 0, s, st.bits, st.n_head_kv, st.head_dim, st.rec,
                   base, pos_dev, x, total);
    } else if (st.kind == KV_KIND_ROT) {
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
