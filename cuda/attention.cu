// Causal attention over the device KV cache, flash-decoding style: each
// block takes one (query token, head, span of positions), keeps a running
// softmax (max m, normaliser l, unnormalised output) over tiles of the span,
// and a second kernel merges the spans of each (token, head). Decode at long
// context thus spreads one token over many blocks; prefill rows take one span.
// Mirrors cpp/cpu/attention.cpp; keys and values are read in their stream
// format (f32, f16, q8_0, q4_0; kv_layout.h), never dequantized to a copy.
// q8_0 / q4_0 streams hold Hadamard-rotated vectors (64-channel blocks):
// queries are rotated once, values accumulated rotated and turned back after
// the merge, as the CPU streams' scores()/finish() do.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace kvrt {

namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;      // positions scored per step
constexpr int kMinSpan = 256;   // positions below which a span is not split
constexpr int kMaxHeadDim = 256;

__device__ inline float h2f_at(const uint8_t* p) {
    return __half2float(__ushort_as_half((uint16_t)(p[0] | (p[1] << 8))));
}

// Elements e0 .. e0+7 (e0 a multiple of 8) of a record.
template <int K>
__device__ inline void load8(const uint8_t* rec, int e0, float* v) {
    if constexpr (K == KV_KIND_F32) {
        const float4* p = reinterpret_cast<const float4*>(rec + (size_t)e0 * 4);
        const float4 a = p[0], b = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else if constexpr (K == KV_KIND_F16) {
        const uint4 u = *reinterpret_cast<const uint4*>(rec + (size_t)e0 * 2);
        const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(h[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    } else if constexpr (K == KV_KIND_Q8_0) {
        const uint8_t* blk = rec + (size_t)(e0 / 32) * sizeof(block_q8_0);
        const float d = h2f_at(blk);
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2) + e0 % 32;
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (float)qs[i] * d;
    } else {
        const uint8_t* blk = rec + (size_t)(e0 / 32) * sizeof(block_q4_0);
        const float d = h2f_at(blk);
        const int j0 = e0 % 32;
        const uint8_t* qs = blk + 2 + (j0 & 15);
        const int sh = j0 < 16 ? 0 : 4;
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (float)(((qs[i] >> sh) & 0x0F) - 8) * d;
    }
}

// Element e of a record.
template <int K>
__device__ inline float load1(const uint8_t* rec, int e) {
    if constexpr (K == KV_KIND_F32) return reinterpret_cast<const float*>(rec)[e];
    else if constexpr (K == KV_KIND_F16) return __half2float(reinterpret_cast<const __half*>(rec)[e]);
    else if constexpr (K == KV_KIND_Q8_0) {
        const uint8_t* blk = rec + (size_t)(e / 32) * sizeof(block_q8_0);
        return (float)reinterpret_cast<const int8_t*>(blk + 2)[e % 32] * h2f_at(blk);
    } else {
        const uint8_t* blk = rec + (size_t)(e / 32) * sizeof(block_q4_0);
        const int j = e % 32;
        const uint8_t q = blk[2 + (j & 15)];
        return (float)(((j < 16 ? q : q >> 4) & 0x0F) - 8) * h2f_at(blk);
    }
}

// In-place Walsh-Hadamard transform of 64-blocks in shared memory, one
// thread per block (the vectors are short; this runs once per block).
__device__ void fwht64_shared(float* x, int n) {
    for (int b = threadIdx.x * 64; b < n; b += blockDim.x * 64) {
        float* y = x + b;
        for (int len = 1; len < 64; len <<= 1)
            for (int i = 0; i < 64; i += 2 * len)
                for (int j = i; j < i + len; ++j) {
                    const float a = y[j], c = y[j + len];
                    y[j] = a + c;
                    y[j + len] = a - c;
                }
        for (int i = 0; i < 64; ++i) y[i] *= 0.125f;
    }
}

static_assert(kTile == kThreads, "one tile position per thread");

// Block-wide max / sum of one value per thread; every thread gets the result.
// red[2][warps] alternates so back-to-back calls need one barrier each.
__device__ inline float block_max(float v, float (*red)[kThreads / 32]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x % 32 == 0) red[0][threadIdx.x / 32] = v;
    __syncthreads();
    float r = red[0][0];
#pragma unroll
    for (int i = 1; i < kThreads / 32; ++i) r = fmaxf(r, red[0][i]);
    return r;
}

__device__ inline float block_sum(float v, float (*red)[kThreads / 32]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[1][threadIdx.x / 32] = v;
    __syncthreads();
    float r = 0.0f;
#pragma unroll
    for (int i = 0; i < kThreads / 32; ++i) r += red[1][i];
    return r;
}

struct span_args {
    const uint8_t* k;
    const uint8_t* v;
    size_t krec, vrec;
    int krot;
    const float* q;
    int n_head, n_head_kv, hd, sw, pos0, n_split;
    const int* pos_dev;  // added to pos0 when set
    float scale;
    float* partial;  // [(t*n_head + h)*n_split + split] of {m, l, acc[hd]}
};

template <int KK, int VK>
__global__ void __launch_bounds__(kThreads) attn_span_kernel(span_args a) {
    const int split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int hd = a.hd, kvh = h / (a.n_head / a.n_head_kv);
    __shared__ float qs[kMaxHeadDim];
    __shared__ float ps[kTile];
    __shared__ float red[kMaxHeadDim * 2];
    __shared__ float red4[2][kThreads / 32];
    const float* qrow = a.q + ((size_t)t * a.n_head + h) * hd;
    for (int d = threadIdx.x; d < hd; d += kThreads) qs[d] = qrow[d] * a.scale;
    __syncthreads();
    if (a.krot) {
        fwht64_shared(qs, hd);
        __syncthreads();
    }
    const int own = a.pos0 + (a.pos_dev ? *a.pos_dev : 0) + t;
    const int lo = a.sw > 0 ? max(0, own - a.sw + 1) : 0;
    const int len = own + 1 - lo;
    const int t0 = lo + (int)((int64_t)len * split / a.n_split);
    const int t1 = lo + (int)((int64_t)len * (split + 1) / a.n_split);

    // Score layout: lpr lanes per key row (8 elements each), rpw rows per warp.
    const int lpr = hd / 8, rpw = 32 / lpr;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int sub = lane / lpr, e0 = (lane % lpr) * 8;
    float qv[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) qv[i] = qs[e0 + i];
    // Value layout: dims d = tid % hd (+128 when hd > 128), G groups of positions.
    const int G = max(1, kThreads / hd);
    const int grp = threadIdx.x / hd;
    const bool vact = grp < G;
    const int dv = threadIdx.x % hd;
    const int nd = hd > kThreads ? 2 : 1;
    float acc[2] = {0.0f, 0.0f};
    float m = -INFINITY, l = 0.0f;
    const size_t kstride = (size_t)a.n_head_kv * a.krec, vstride = (size_t)a.n_head_kv * a.vrec;
    const uint8_t* kbase = a.k + (size_t)kvh * a.krec;
    const uint8_t* vbase = a.v + (size_t)kvh * a.vrec;

    for (int p0 = t0; p0 < t1; p0 += kTile) {
        const int nt = min(kTile, t1 - p0);
        for (int j = warp * rpw + sub; j < kTile; j += (kThreads / 32) * rpw) {
            float s = 0.0f;
            if (j < nt) {
                float kv8[8];
                load8<KK>(kbase + (size_t)(p0 + j) * kstride, e0, kv8);
#pragma unroll
                for (int i = 0; i < 8; ++i) s += qv[i] * kv8[i];
            }
            for (int o = lpr / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane % lpr == 0) ps[j] = j < nt ? s : -INFINITY;
        }
        __syncthreads();
        // kTile == kThreads: thread j owns position p0 + j of the tile.
        const float sj = ps[threadIdx.x];
        const float mnew = fmaxf(m, block_max(sj, red4));
        const float corr = expf(m - mnew);  // exp(-inf) = 0 on the first tile
        const float pj = threadIdx.x < nt ? expf(sj - mnew) : 0.0f;
        ps[threadIdx.x] = pj;
        l = l * corr + block_sum(pj, red4);  // its barrier also publishes ps
        m = mnew;
        acc[0] *= corr;
        acc[1] *= corr;
        if (vact)
#pragma unroll 4
            for (int j = grp; j < nt; j += G) {
                const uint8_t* vr = vbase + (size_t)(p0 + j) * vstride;
                const float p = ps[j];
                acc[0] += p * load1<VK>(vr, dv);
                if (nd == 2) acc[1] += p * load1<VK>(vr, dv + kThreads);
            }
        __syncthreads();
    }
    // Sum the position groups.
    if (vact) {
        red[grp * hd + dv] = acc[0];
        if (nd == 2) red[hd + dv] = acc[1];  // hd > 128: G == 1
    }
    __syncthreads();
    float* out = a.partial + (((size_t)t * a.n_head + h) * a.n_split + split) * (hd + 2);
    if (threadIdx.x == 0) {
        out[0] = m;
        out[1] = t1 > t0 ? l : 0.0f;
    }
    for (int d = threadIdx.x; d < hd; d += kThreads) {
        float s = 0.0f;
        if (hd > kThreads) s = red[d];
        else for (int g = 0; g < G; ++g) s += red[g * hd + d];
        out[2 + d] = s;
    }
}

__global__ void attn_merge_kernel(const float* partial, int n_split, int hd, int vrot,
                                  const float* basis, const float* mean, int n_head, int n_rep,
                                  float* out) {
    const size_t row = blockIdx.x;  // t * n_head + h
    const float* first = partial + row * n_split * (hd + 2);
    __shared__ float o[kMaxHeadDim];
    __shared__ float red[32];
    extern __shared__ float wsp[];  // [n_split] weight of each span
    // The spans' maximum and weights exp(m - max) by all threads at once (the
    // loads are independent, so they overlap); then a thread per dimension.
    float m = -INFINITY;
    for (int sp = threadIdx.x; sp < n_split; sp += blockDim.x) m = fmaxf(m, first[sp * (hd + 2)]);
    for (int o2 = 16; o2 > 0; o2 >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o2));
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
    __syncthreads();
    m = red[0];
    for (int i = 1; i < (int)(blockDim.x + 31) / 32; ++i) m = fmaxf(m, red[i]);
    float lp = 0.0f;
    for (int sp = threadIdx.x; sp < n_split; sp += blockDim.x) {
        const float* p = first + sp * (hd + 2);
        const float w = p[1] == 0.0f ? 0.0f : expf(p[0] - m);
        wsp[sp] = w;
        lp += w * p[1];
    }
    for (int o2 = 16; o2 > 0; o2 >>= 1) lp += __shfl_xor_sync(0xffffffffu, lp, o2);
    __syncthreads();  // red read above; wsp written
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = lp;
    __syncthreads();
    float l = 0.0f;
    for (int i = 0; i < (int)(blockDim.x + 31) / 32; ++i) l += red[i];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float s = 0.0f;
#pragma unroll 4
        for (int sp = 0; sp < n_split; ++sp) s += wsp[sp] * first[sp * (hd + 2) + 2 + d];
        o[d] = s / l;
    }
    __syncthreads();
    if (vrot) {
        fwht64_shared(o, hd);
        __syncthreads();
    }
    if (basis) {
        // x = mean + P^T o with the value stream's basis of this row's kv head.
        const size_t kvh = (row % n_head) / n_rep;
        const float* P = basis + kvh * hd * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float x = mean[kvh * hd + d];
            for (int c = 0; c < hd; ++c) x += P[(size_t)c * hd + d] * o[c];
            out[row * hd + d] = x;
        }
        return;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[row * hd + d] = o[d];
}

template <int KK>
void launch_span(kv_kind vk, dim3 grid, cudaStream_t s, const span_args& a) {
    switch (vk) {
        case KV_KIND_F32: attn_span_kernel<KK, KV_KIND_F32><<<grid, kThreads, 0, s>>>(a); break;
        case KV_KIND_F16: attn_span_kernel<KK, KV_KIND_F16><<<grid, kThreads, 0, s>>>(a); break;
        case KV_KIND_Q8_0: attn_span_kernel<KK, KV_KIND_Q8_0><<<grid, kThreads, 0, s>>>(a); break;
        case KV_KIND_Q4_0: attn_span_kernel<KK, KV_KIND_Q4_0><<<grid, kThreads, 0, s>>>(a); break;
        default: throw error("CUDA attention: unsupported value format");
    }
}

}  // namespace

int cuda_attention_splits(int rows, int max_len, int n_sm) {
    const int target = 4 * n_sm;
    if (rows >= target) return 1;
    return std::max(1, std::min((target + rows - 1) / rows, max_len / kMinSpan));
}

size_t cuda_attention_partial_floats(const cuda_attn_params& p, int n_tok, int max_len, int n_sm,
                                     bool pca) {
    if (pca) return cuda_attention_pca_partial_floats(p, n_tok, max_len, n_sm);
    // rows * ceil(target / rows) < rows + target.
    return ((size_t)n_tok * p.n_head + 4 * (size_t)n_sm + 1) * (p.head_dim + 2);
}

void cuda_attention_merge(const float* partial, int n_rows, int n_entries, int hd, int vrot,
                          const float* basis, const float* mean, int n_head, int n_rep,
                          float* out, cudaStream_t s) {
    attn_merge_kernel<<<n_rows, std::min(hd, 256), n_entries * sizeof(float), s>>>(
        partial, n_entries, hd, vrot, basis, mean, n_head, n_rep, out);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

void cuda_attention(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q, int n_tok,
                    int pos0, const cuda_attn_params& p, float* out, float* partial, int n_sm,
                    cudaStream_t s, const int* pos_dev, int split_len) {
    if (p.head_dim % 8 != 0 || p.head_dim > kMaxHeadDim || 32 % (p.head_dim / 8) != 0)
        throw error("CUDA attention: head_dim " + std::to_string(p.head_dim) +
                    " is not supported (32, 64, 128 or 256)");
    span_args a;
    a.k = k.d;
    a.v = v.d;
    a.krec = k.rec;
    a.vrec = v.rec;
    a.krot = k.rot;
    a.q = q;
    a.n_head = p.n_head;
    a.n_head_kv = p.n_head_kv;
    a.hd = p.head_dim;
    a.sw = p.sliding_window;
    a.pos0 = pos0;
    a.pos_dev = pos_dev;
    a.n_split = cuda_attention_splits(n_tok * p.n_head, split_len > 0 ? split_len : pos0 + n_tok, n_sm);
    a.scale = 1.0f / std::sqrt((float)p.head_dim);
    a.partial = partial;
    const dim3 grid(a.n_split, p.n_head, n_tok);
    switch (k.kind) {
        case KV_KIND_F32: launch_span<KV_KIND_F32>(v.kind, grid, s, a); break;
        case KV_KIND_F16: launch_span<KV_KIND_F16>(v.kind, grid, s, a); break;
        case KV_KIND_Q8_0: launch_span<KV_KIND_Q8_0>(v.kind, grid, s, a); break;
        case KV_KIND_Q4_0: launch_span<KV_KIND_Q4_0>(v.kind, grid, s, a); break;
        default: throw error("CUDA attention: unsupported key format");
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
    cuda_attention_merge(partial, n_tok * p.n_head, a.n_split, p.head_dim, v.rot, nullptr, nullptr,
                         p.n_head, 1, out, s);
}

}  // namespace kvrt
