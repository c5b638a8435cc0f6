// Causal attention over the device KV cache, flash-decoding style: each
// block takes one (query token, kv head, up to kRows of the query heads that
// share it, span of positions), so each cached row is read once for all of
// them; its warps keep running softmaxes (max m, normaliser l, unnormalised
// output) over 32-position chunks and merge at the end, and a second kernel
// merges the spans of each (token, head). Decode at long context thus spreads
// one token over many blocks; prefill rows take one span.
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
constexpr int kMinSpan = 256;   // positions below which a span is not split
constexpr int kMaxHeadDim = 256;
constexpr int kRows = 4;        // query heads of one kv head per block
constexpr int kMergeThreads = 256;
constexpr int kSplitTarget = 4;  // span blocks per multiprocessor that splitting aims at

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

// In-place Walsh-Hadamard transform (scaled by 1/8) of the 64-blocks of
// `rows` vectors of hd floats, `stride` apart in shared memory: each stage a
// butterfly per thread, the same operations as one thread per block would
// do. Every thread of the block calls it; it syncs after each stage.
__device__ void fwht64_shared(float* x, int rows, int stride, int hd) {
    const int half = hd / 2;
    for (int len = 1; len < 64; len <<= 1) {
        for (int i = threadIdx.x; i < rows * half; i += blockDim.x) {
            const int k = i % half, j = k % 32;  // pair j of 64-block k / 32
            float* y = x + (i / half) * stride + (k / 32) * 64 + (j / len) * 2 * len + j % len;
            const float a = y[0], c = y[len];
            y[0] = a + c;
            y[len] = a - c;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) x[(i / hd) * stride + i % hd] *= 0.125f;
    __syncthreads();
}

struct span_args {
    const uint8_t* k;
    const uint8_t* v;
    size_t krec, vrec;
    int krot;
    const float* q;
    int n_head, n_head_kv, n_rg, hd, sw, pos0, n_split;
    const int* pos_dev;  // added to pos0 when set
    float scale;
    float* partial;  // [(t*n_head + h)*n_split + split] of {m, l, acc[hd]}
};

// One block: split blockIdx.x of (token blockIdx.z, kv head and group of
// kRows query heads blockIdx.y), so each key and value row is read once for
// all the query heads that share it. Each warp takes 32-position chunks of
// the split with its own running softmax; a row is read by hd/8 lanes, 8
// elements each, 256/hd rows at a time. The warps' results are merged at
// the end into the split's partial entry of each query head.
template <int KK, int VK>
__global__ void __launch_bounds__(kThreads) attn_span_kernel(span_args a) {
    constexpr int kWarps = kThreads / 32;
    const int split = blockIdx.x, t = blockIdx.z;
    const int n_rep = a.n_head / a.n_head_kv;
    const int kvh = blockIdx.y / a.n_rg, rg = blockIdx.y % a.n_rg;
    const int nr = min(kRows, n_rep - rg * kRows);
    const int h0 = kvh * n_rep + rg * kRows;  // query head of row 0
    const int hd = a.hd, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int lpr = hd / 8, rpw = 32 / lpr, sub = lane / lpr, e0 = (lane % lpr) * 8;
    __shared__ float qs[kRows][kMaxHeadDim];
    __shared__ float sc[kWarps][32][kRows];  // a warp's scores, then weights
    __shared__ float ow[kWarps][kRows][kMaxHeadDim];
    __shared__ float mw[kWarps][kRows], lw[kWarps][kRows];
    const int own = a.pos0 + (a.pos_dev ? *a.pos_dev : 0) + t;
    const int lo = a.sw > 0 ? max(0, own - a.sw + 1) : 0;
    const int len = own + 1 - lo;
    // A split per position at most: at short context most of a decode
    // graph's splits (made for the whole context) take none and leave an
    // empty entry at once, which the merge skips. (One split per 128
    // positions instead made depth 0 slower: 868 against 944 tokens/s, 1B
    // shape on an H200.)
    const int n_act = min(a.n_split, len);
    if (split >= n_act) {
        if (threadIdx.x < nr) {
            float* e = a.partial + (((size_t)t * a.n_head + h0 + threadIdx.x) * a.n_split + split) * (hd + 2);
            e[0] = -INFINITY;
            e[1] = 0.0f;
        }
        return;
    }
    for (int i = threadIdx.x; i < kRows * hd; i += kThreads) {
        const int r = i / hd, d = i % hd;
        qs[r][d] = r < nr ? a.q[((size_t)t * a.n_head + h0 + r) * hd + d] * a.scale : 0.0f;
    }
    __syncthreads();
    if (a.krot) fwht64_shared(&qs[0][0], kRows, kMaxHeadDim, hd);
    float qv[kRows][8], acc[kRows][8], m[kRows], l[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            qv[r][i] = qs[r][e0 + i];
            acc[r][i] = 0.0f;
        }
    }
    const int t0 = lo + (int)((int64_t)len * split / n_act);
    const int t1 = lo + (int)((int64_t)len * (split + 1) / n_act);
    const size_t kstride = (size_t)a.n_head_kv * a.krec, vstride = (size_t)a.n_head_kv * a.vrec;
    const uint8_t* kbase = a.k + (size_t)kvh * a.krec;
    const uint8_t* vbase = a.v + (size_t)kvh * a.vrec;
    float (*scw)[kRows] = sc[warp];

    for (int c0 = t0 + warp * 32; c0 < t1; c0 += kWarps * 32) {
        const int nt = min(32, t1 - c0);
#pragma unroll 4
        for (int j0 = 0; j0 < 32; j0 += rpw) {
            const int j = j0 + sub;
            float s[kRows];
#pragma unroll
            for (int r = 0; r < kRows; ++r) s[r] = 0.0f;
            if (j < nt) {
                float k8[8];
                load8<KK>(kbase + (size_t)(c0 + j) * kstride, e0, k8);
#pragma unroll
                for (int r = 0; r < kRows; ++r)
#pragma unroll
                    for (int i = 0; i < 8; ++i) s[r] = fmaf(qv[r][i], k8[i], s[r]);
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                for (int o = lpr / 2; o > 0; o >>= 1) s[r] += __shfl_xor_sync(0xffffffffu, s[r], o);
                if (lane % lpr == 0) scw[j][r] = s[r];
            }
        }
        __syncwarp();
        // Lane j: position c0 + j.
        const bool valid = lane < nt;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const float sv = valid ? scw[lane][r] : -INFINITY;
            const float mnew = fmaxf(m[r], warp_max(sv));  // finite: the chunk has a position
            const float corr = expf(m[r] - mnew);         // 0 on the first chunk
            const float p = valid ? expf(sv - mnew) : 0.0f;
            m[r] = mnew;
            l[r] = l[r] * corr + p;
            scw[lane][r] = p;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r][i] *= corr;
        }
        __syncwarp();
#pragma unroll 4
        for (int j0 = 0; j0 < 32; j0 += rpw) {
            const int j = j0 + sub;
            if (j < nt) {
                float v8[8];
                load8<VK>(vbase + (size_t)(c0 + j) * vstride, e0, v8);
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    const float p = scw[j][r];
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(p, v8[i], acc[r][i]);
                }
            }
        }
        __syncwarp();
    }
    // The warp's rows summed over its lane groups, then the warps merged.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        l[r] = warp_sum(l[r]);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            for (int o = lpr; o < 32; o <<= 1) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], o);
            if (lane < lpr) ow[warp][r][e0 + i] = acc[r][i];
        }
        if (lane == 0) {
            mw[warp][r] = m[r];
            lw[warp][r] = l[r];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nr * (hd + 2); i += kThreads) {
        const int r = i / (hd + 2), d = i % (hd + 2);
        float M = -INFINITY;
        for (int w = 0; w < kWarps; ++w) M = fmaxf(M, mw[w][r]);
        float x = M;
        if (d > 0) {
            x = 0.0f;
            for (int w = 0; w < kWarps; ++w)
                if (mw[w][r] != -INFINITY) x += expf(mw[w][r] - M) * (d == 1 ? lw[w][r] : ow[w][r][d - 2]);
        }
        a.partial[(((size_t)t * a.n_head + h0 + r) * a.n_split + split) * (hd + 2) + d] = x;
    }
}

__global__ void attn_merge_kernel(const float* partial, int n_split, int hd, int vrot,
                                  const float* basis_t, const float* mean, int n_head, int n_rep,
                                  float* out, int16_t* qs, int2* ds) {
    const size_t row = blockIdx.x;  // t * n_head + h
    const float* first = partial + row * n_split * (hd + 2);
    __shared__ float o[kMaxHeadDim], part[kMergeThreads];
    __shared__ float red[32];
    extern __shared__ float wsp[];  // [n_split] weight of each span
    // The spans' maximum and weights exp(m - max) by all threads at once (the
    // loads are independent, so they overlap); then a thread per dimension.
    float m = -INFINITY;
    for (int sp = threadIdx.x; sp < n_split; sp += blockDim.x) m = fmaxf(m, first[sp * (hd + 2)]);
    m = warp_max(m);
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
    lp = warp_sum(lp);
    __syncthreads();  // red read above; wsp written
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = lp;
    __syncthreads();
    float l = 0.0f;
    for (int i = 0; i < (int)(blockDim.x + 31) / 32; ++i) l += red[i];
    // Groups of hd threads take every G-th span; their sums are added.
    const int G = max(1, (int)blockDim.x / hd), g = threadIdx.x / hd, dg = threadIdx.x % hd;
    if (g < G) {
        float s = 0.0f;
#pragma unroll 4
        for (int sp = g; sp < n_split; sp += G)
            if (wsp[sp] != 0.0f) s += wsp[sp] * first[sp * (hd + 2) + 2 + dg];  // empty: not written
        part[threadIdx.x] = s;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float s = 0.0f;
        for (int i = 0; i < G; ++i) s += part[i * hd + d];
        o[d] = s / l;
    }
    __syncthreads();
    if (vrot) fwht64_shared(o, 1, hd, hd);
    // With basis_t: x = mean + P^T o with the value stream's basis of this
    // row's kv head; row d of P^T is column d of P. With qs (hd a multiple of
    // 32, at most the block's threads): the token's q16 codes too, a warp per
    // 32-element block of the row.
    const size_t kvh = (row % n_head) / n_rep;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        const float x = basis_t ? row_dot<false>(basis_t + (kvh * hd + d) * hd, o, hd, mean[kvh * hd + d])
                                : o[d];
        out[row * hd + d] = x;
        if (qs)
            q16_block(x, threadIdx.x % 32, row / n_head, ((row % n_head) * hd + d) / 32,
                      (int64_t)n_head * hd, qs, ds);
    }
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

int cuda_attention_splits(int blocks, int max_len, int n_sm) {
    const int target = kSplitTarget * n_sm;
    if (blocks >= target) return 1;
    return std::max(1, std::min((target + blocks - 1) / blocks, max_len / kMinSpan));
}

namespace {

// Blocks of the span kernel before splitting: tokens x kv heads x groups.
int span_blocks(const cuda_attn_params& p, int n_tok) {
    const int n_rep = p.n_head / p.n_head_kv;
    return n_tok * p.n_head_kv * ((n_rep + kRows - 1) / kRows);
}

}  // namespace

size_t cuda_attention_partial_floats(const cuda_attn_params& p, int n_tok, int max_len, int n_sm,
                                     bool pca) {
    if (pca) return cuda_attention_pca_partial_floats(p, n_tok, max_len, n_sm);
    // n tokens take n * splits <= n * ceil(target / (n b)) <= n + ceil(target / b) entries.
    (void)max_len;
    const int b = span_blocks(p, 1);
    return (size_t)p.n_head * ((size_t)n_tok + (kSplitTarget * n_sm + b - 1) / b) * (p.head_dim + 2);
}

bool cuda_attention_writes_q16(int head_dim) { return head_dim % 32 == 0 && head_dim <= kMergeThreads; }

void cuda_attention_merge(const float* partial, int n_rows, int n_entries, int hd, int vrot,
                          const float* basis_t, const float* mean, int n_head, int n_rep,
                          float* out, cudaStream_t s, void* act) {
    if (act && !cuda_attention_writes_q16(hd))
        throw error("CUDA attention: q16 codes of the output need head_dim a multiple of 32");
    const int64_t cols = (int64_t)n_head * hd;
    attn_merge_kernel<<<n_rows, kMergeThreads, n_entries * sizeof(float), s>>>(
        partial, n_entries, hd, vrot, basis_t, mean, n_head, n_rep, out,
        act ? q16_codes(act) : nullptr, act ? q16_scales(act, n_rows / n_head, cols) : nullptr);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

void cuda_attention(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q, int n_tok,
                    int pos0, const cuda_attn_params& p, float* out, float* partial, int n_sm,
                    cudaStream_t s, const int* pos_dev, int split_len, void* act) {
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
    const int n_rep = p.n_head / p.n_head_kv;
    a.n_rg = (n_rep + kRows - 1) / kRows;
    a.n_split = cuda_attention_splits(span_blocks(p, n_tok), split_len > 0 ? split_len : pos0 + n_tok, n_sm);
    a.scale = 1.0f / std::sqrt((float)p.head_dim);
    a.partial = partial;
    const dim3 grid(a.n_split, p.n_head_kv * a.n_rg, n_tok);
    switch (k.kind) {
        case KV_KIND_F32: launch_span<KV_KIND_F32>(v.kind, grid, s, a); break;
        case KV_KIND_F16: launch_span<KV_KIND_F16>(v.kind, grid, s, a); break;
        case KV_KIND_Q8_0: launch_span<KV_KIND_Q8_0>(v.kind, grid, s, a); break;
        case KV_KIND_Q4_0: launch_span<KV_KIND_Q4_0>(v.kind, grid, s, a); break;
        default: throw error("CUDA attention: unsupported key format");
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
    cuda_attention_merge(partial, n_tok * p.n_head, a.n_split, p.head_dim, v.rot, nullptr, nullptr,
                         p.n_head, 1, out, s, act);
}

}  // namespace kvrt
