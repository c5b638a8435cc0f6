// Causal attention over the device KV cache, flash-decoding style: each
// block takes one (query token, kv head, up to kRows of the query heads that
// share it, span of positions), so each cached row is read once for all of
// them; its warps keep running softmaxes (max m, normaliser l, unnormalised
// output) over 32-position chunks and merge at the end, and a second kernel
// merges the spans of each (token, head). Decode at long context thus spreads
// one token over many blocks; prefill rows take one span.
// Mirrors cpp/cpu/attention.cpp; keys and values are read in their stream
// format (f32, f16, q8_0, q4_0, rot; kv_layout.h), never dequantized to a
// copy. q8_0 / q4_0 streams hold Hadamard-rotated vectors (64-channel
// blocks), rot streams vectors turned by signs and a Hadamard transform over
// the whole head: queries are rotated once, values accumulated rotated and
// turned back after the merge, as the CPU streams' scores()/finish() do.
#include <algorithm>
#include <cmath>

#include <cuda_pipeline.h>

#include "common.cuh"
#include "kv_layout.h"

namespace kvrt {

namespace {

constexpr int kThreads = 128;
constexpr int kMinSpan = 256;   // positions below which a span is not split
constexpr int kMaxHeadDim = 256;
constexpr int kRows = 4;        // query heads of one kv head per block
constexpr int kMergeThreads = 256;      // a merge block's threads, ...
constexpr int kMergeThreadsMax = 512;   // ... or, for many entries (decode), up to these
constexpr int kMergeLoads = 8;          // entries a merge thread has in flight
constexpr int kMergeRowEntries = 8;     // the rows merge: at most these entries a row, ...
constexpr int kMergeRowMinTok = 16;     // ... from these tokens on (prefill)
constexpr int kMergeRowSet = 16;        // rows a thread un-rotates at once
constexpr int kSplitTarget = 4;  // span blocks per multiprocessor that splitting aims at

__device__ inline float h2f_at(const uint8_t* p) {
    return __half2float(__ushort_as_half((uint16_t)(p[0] | (p[1] << 8))));
}

// Eight halves as floats.
__device__ inline void halves8(const uint4 u, float* v) {
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}

// Eight b-bit codes from the `bits` bytes at p (codes e0 .. e0+7 of a
// packed group, e0 a multiple of 8, start on a byte): min + scale * code.
__device__ inline void codes8(const uint8_t* p, int bits, float sc, float mn, float* v) {
    uint64_t w = 0;
    for (int k = 0; k < bits; ++k) w |= (uint64_t)p[k] << (8 * k);
    const uint32_t mask = (1u << bits) - 1u;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = fmaf(sc, (float)((uint32_t)(w >> (i * bits)) & mask), mn);
}

// Elements e0 .. e0+7 (e0 a multiple of 8) of a record (bits: rot's and
// affine's; affine here: the values' token-major groups).
template <int K>
__device__ inline void load8(const uint8_t* rec, int e0, float* v, int bits) {
    if constexpr (K == KV_KIND_F32) {
        const float4* p = reinterpret_cast<const float4*>(rec + (size_t)e0 * 4);
        const float4 a = p[0], b = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else if constexpr (K == KV_KIND_F16) {
        halves8(*reinterpret_cast<const uint4*>(rec + (size_t)e0 * 2), v);
    } else if constexpr (K == KV_KIND_ROT) {
        // { half scale; half min; groups of 32 codes }: the 8 codes are
        // `bits` whole bytes of their group, from byte (e0 % 32) / 8 * bits.
        codes8(rec + 4 + (e0 / 32) * kv_group_bytes(bits) + (e0 % 32) / 8 * bits, bits, h2f_at(rec),
               h2f_at(rec + 2), v);
    } else if constexpr (K == KV_KIND_AFFINE) {
        // [dim/32] groups of { half scale; half min; codes }.
        const uint8_t* grp = rec + (e0 / 32) * kv_affine_group_bytes(bits);
        codes8(grp + 4 + (e0 % 32) / 8 * bits, bits, h2f_at(grp), h2f_at(grp + 2), v);
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

struct span_args {
    const uint8_t* k;
    const uint8_t* v;
    size_t krec, vrec;
    int krot;                // the keys' Hadamard block (queries turned alike), 0: none
    int kbits, vbits;        // rot's and affine's bits per code
    const float* ksigns;     // rot's signs, turned into the queries first
    // affine keys (channel-major): [head][kblocks] blocks of kblk bytes in k,
    // the newest incomplete block as halves in kstage [head][32][dim].
    const uint8_t* kstage;
    int kblocks;
    size_t kblk;
    const float* q;
    int n_head, n_head_kv, n_rg, hd, sw, pos0, n_split;
    const int* pos_dev;  // added to pos0 when set
    float scale;
    float* partial;  // [(t*n_head + h)*n_split + split] of {m, l, acc[hd]}
};

// Elements e0 .. e0+7 of affine key pos, kv head kvh: from the staging
// area's halves at and past stage0 (the block the last store left
// incomplete), else min_c + scale_c * code_c of the position's block.
__device__ inline void affine_key8(const span_args& a, int kvh, int pos, int e0, int stage0, float* v) {
    const int hd = a.hd;
    if (pos >= stage0) {
        halves8(*reinterpret_cast<const uint4*>(
                        a.kstage + (((size_t)kvh * KV_BLOCK_TOKENS + (pos - stage0)) * hd + e0) * 2),
                v);
        return;
    }
    const uint8_t* bp = a.k + ((size_t)kvh * a.kblocks + pos / KV_BLOCK_TOKENS) * a.kblk;
    const uint4 us = *reinterpret_cast<const uint4*>(bp + 2 * e0);
    const uint4 um = *reinterpret_cast<const uint4*>(bp + 2 * (size_t)hd + 2 * e0);
    const __half* sc = reinterpret_cast<const __half*>(&us);
    const __half* mn = reinterpret_cast<const __half*>(&um);
    const uint8_t* codes = bp + 4 * (size_t)hd;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const unsigned c = kv_code_get(codes + (size_t)(e0 + i) * kv_group_bytes(a.kbits), a.kbits,
                                       pos % KV_BLOCK_TOKENS);
        v[i] = fmaf(__half2float(sc[i]), (float)c, __half2float(mn[i]));
    }
}

// One block: split blockIdx.x of (token blockIdx.z, kv head and group of
// kRows query heads blockIdx.y), so each key and value row is read once for
// all the query heads that share it. Each warp takes 32-position chunks of
// the split with its own running softmax; a row is read by hd/8 lanes, 8
// elements each, 256/hd rows at a time. The warps' results are merged at
// the end into the split's partial entry of each query head.
template <int KK, int VK>
__global__ void __launch_bounds__(kThreads) attn_span_kernel(span_args a) {
    pdl_begin();
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
    // affine keys: the store of these gridDim.z tokens left the block they
    // end in incomplete, staged (the positions before it quantized).
    const int stage0 = (own - t + (int)gridDim.z) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
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
    if (a.krot) fwht_shared(&qs[0][0], kRows, kMaxHeadDim, hd, a.krot, a.ksigns, nullptr);
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
                if constexpr (KK == KV_KIND_AFFINE) affine_key8(a, kvh, c0 + j, e0, stage0, k8);
                else load8<KK>(kbase + (size_t)(c0 + j) * kstride, e0, k8, a.kbits);
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
                load8<VK>(vbase + (size_t)(c0 + j) * vstride, e0, v8, a.vbits);
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

// Lanes per output element of the un-rotation x = mean + P^T o in a block
// of n threads: the most (up to 32, a power of two) that leave two rows'
// worth of elements per block and split the row into slices of 8.
__host__ __device__ inline int merge_lanes(int hd, int n) {
    int S = 1;
    while (S < 32 && 2 * S * hd <= n && hd % (8 * S) == 0) S *= 2;
    return S;
}

// Rows per block of attn_merge_rows_kernel: kMergeRowSet for each set of
// S * hd threads it holds (one or two).
__host__ __device__ inline int merge_rows_per_block(int hd) {
    return kMergeThreads / (merge_lanes(hd, kMergeThreads) * hd) * kMergeRowSet;
}

__global__ void attn_merge_kernel(const float* partial, int n_split, int hd, int vrot,
                                  const float* basis_t, const float* mean, int n_head, int n_rep,
                                  float* out, int16_t* qs, int2* ds, const float* vsigns) {
    pdl_begin();
    const size_t row = blockIdx.x;  // t * n_head + h
    const float* first = partial + row * n_split * (hd + 2);
    __shared__ __align__(16) float o[kMaxHeadDim];
    __shared__ float part[kMergeThreadsMax];
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
#pragma unroll kMergeLoads
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
    if (vrot) fwht_shared(o, 1, hd, hd, vrot, nullptr, vsigns);
    // With basis_t: x = mean + P^T o with the value stream's basis of this
    // row's kv head; row d of P^T is column d of P. S threads per element
    // (neighbouring lanes; the block has at least hd threads), each a slice of
    // the row loaded at once, their sums added by shuffles. With qs (hd a
    // multiple of 32, at most the block's threads): the token's q16 codes
    // too, a warp per 32-element block of the row.
    const size_t kvh = (row % n_head) / n_rep;
    if (basis_t) {
        const int S = merge_lanes(hd, blockDim.x);
        const int d = threadIdx.x / S, seg = hd / S, k = threadIdx.x % S;
        float x = d < hd ? row_dot<false>(basis_t + (kvh * hd + d) * hd + k * seg, o + k * seg, seg, 0.0f) : 0.0f;
        for (int off = S / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
        if (d < hd && k == 0) part[d] = x + mean[kvh * hd + d];  // part is free again
        __syncthreads();
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        const float x = basis_t ? part[d] : o[d];
        out[row * hd + d] = x;
        if (qs)
            q16_block(x, threadIdx.x % 32, row / n_head, ((row % n_head) * hd + d) / 32,
                      (int64_t)n_head * hd, qs, ds);
    }
}

// attn_merge_kernel's sums for the rows of a pca prefill (a few entries a
// row, the value basis, no Hadamard): a block of kMergeThreads takes up to
// 16 or 32 rows of one kv head (kv_row_block), so each row of P^T is read
// once for all of them. Every sum in attn_merge_kernel's order, which a
// block of kMergeThreads threads takes for these entries, so the results
// are the same bits.
__global__ void __launch_bounds__(kMergeThreads)
    attn_merge_rows_kernel(const float* partial, int n_entries, int hd, int n_tok,
                           const float* basis_t, const float* mean, int n_head, int n_rep,
                           float* out, int16_t* qs, int2* ds) {
    pdl_begin();
    constexpr int kMaxRows = 2 * kMergeRowSet;
    __shared__ __align__(16) float o[kMaxRows * kMaxHeadDim / 2];
    __shared__ float wsp[kMaxRows][kMergeRowEntries], lsum[kMaxRows];
    const int S = merge_lanes(hd, kMergeThreads), n_sets = merge_rows_per_block(hd) / kMergeRowSet;
    const kv_rows rows = kv_row_block(blockIdx.x, n_tok, n_rep, merge_rows_per_block(hd));
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    // A warp per row: the entries' maximum, weights and sum of weights.
    for (int j = warp; j < rows.n; j += kMergeThreads / 32) {
        const float* p = partial + (size_t)kv_row(rows, j, n_head, n_rep) * n_entries * (hd + 2) +
                         lane * (hd + 2);
        const float p0 = lane < n_entries ? p[0] : -INFINITY, p1 = lane < n_entries ? p[1] : 0.0f;
        const float m = warp_max(p0);
        const float w = p1 == 0.0f ? 0.0f : expf(p0 - m);
        if (lane < n_entries) wsp[j][lane] = w;
        const float l = warp_sum(w * p1);
        if (lane == 0) lsum[j] = l;
    }
    __syncthreads();
    // o = (sum_g sum_(e = g mod G) w_e o_e) / l, G groups as the one-row merge has.
    const int G = max(1, kMergeThreads / hd);
    for (int i = threadIdx.x; i < n_sets * kMergeRowSet * hd; i += kMergeThreads) {
        const int j = i / hd, d = i % hd;
        float x = 0.0f;
        if (j < rows.n) {
            const float* p =
                partial + (size_t)kv_row(rows, j, n_head, n_rep) * n_entries * (hd + 2) + 2 + d;
            float s = 0.0f;
            for (int g = 0; g < G; ++g) {
                float sg = 0.0f;
                for (int e = g; e < n_entries; e += G)
                    if (wsp[j][e] != 0.0f) sg += wsp[j][e] * p[e * (hd + 2)];
                s += sg;
            }
            x = s / lsum[j];
        }
        o[i] = x;
    }
    __syncthreads();
    // Each set of S * hd threads un-rotates kMergeRowSet rows, S lanes per
    // element, their slices' sums added by shuffles.
    const int set = threadIdx.x / (S * hd), d = threadIdx.x % (S * hd) / S, k = threadIdx.x % S,
              seg = hd / S;
    float acc[kMergeRowSet];
    for (int r = 0; r < kMergeRowSet; ++r) acc[r] = 0.0f;
    const size_t kvh = rows.kvh;
    if (set < n_sets)
        rows_dot<false, kMergeRowSet>(basis_t + (kvh * hd + d) * hd + k * seg,
                                      o + set * kMergeRowSet * hd + k * seg, hd, seg, acc);
    for (int r = 0; r < kMergeRowSet; ++r)
        for (int off = S / 2; off > 0; off /= 2)
            acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    __syncthreads();  // o read
    if (set < n_sets && k == 0)
        for (int r = 0; r < kMergeRowSet; ++r)
            o[(set * kMergeRowSet + r) * hd + d] = acc[r] + mean[kvh * hd + d];
    __syncthreads();
    for (int i = threadIdx.x; i < rows.n * hd; i += kMergeThreads) {
        const int row = kv_row(rows, i / hd, n_head, n_rep), d = i % hd;
        out[(size_t)row * hd + d] = o[i];
        if (qs)
            q16_block(o[i], lane, row / n_head, ((row % n_head) * hd + d) / 32,
                      (int64_t)n_head * hd, qs, ds);
    }
}

template <int KK>
void launch_span(kv_kind vk, dim3 grid, cudaStream_t s, const span_args& a) {
    switch (vk) {
        case KV_KIND_F32: launch_pdl(attn_span_kernel<KK, KV_KIND_F32>, grid, kThreads, 0, s, a); break;
        case KV_KIND_F16: launch_pdl(attn_span_kernel<KK, KV_KIND_F16>, grid, kThreads, 0, s, a); break;
        case KV_KIND_Q8_0: launch_pdl(attn_span_kernel<KK, KV_KIND_Q8_0>, grid, kThreads, 0, s, a); break;
        case KV_KIND_Q4_0: launch_pdl(attn_span_kernel<KK, KV_KIND_Q4_0>, grid, kThreads, 0, s, a); break;
        case KV_KIND_ROT: launch_pdl(attn_span_kernel<KK, KV_KIND_ROT>, grid, kThreads, 0, s, a); break;
        case KV_KIND_AFFINE: launch_pdl(attn_span_kernel<KK, KV_KIND_AFFINE>, grid, kThreads, 0, s, a); break;
        default: throw error("CUDA attention: unsupported value format");
    }
}

// ---- prefill: a tiled flash attention on tensor cores ----
// A block takes 64 query rows of one kv head (row r: query head r % n_rep of
// token r / n_rep, so the heads that share the kv head share every key and
// value tile), a warp 16 of them, and walks the keys in tiles of 64 in
// shared memory. Scores S = Q K^T and the output O += P V are m16n8k16
// products; queries and p are split into high and low halves (two products
// each), so they keep about 22 bits against the keys and values, as the
// float path does. Softmax in base 2.
//   f16 caches (DQ false): the tiles are copied as they are, one tile ahead.
//   Other caches (DQ true: f32, q8_0, q4_0, rot, affine; pca has its own
//   kernels): each tile is decoded as the span kernels decode a position
//   and kept as high and low halves, a third product adding q_hi k_lo (and
//   p_hi v_lo). Keys and values stay in their streams' Hadamard basis: the
//   queries are turned into it first and the outputs turned back at the end.
//   Decoded elements beyond the half range (65504) do not fit, as in an f16
//   cache.
constexpr int kFaRows = 64, kFaKeys = 64, kFaThreads = 128;
constexpr int kFaMinTokens = 16;  // fewer query tokens take the span kernels
constexpr int kFaShortContext = 4096;  // DQ: below a wave of blocks, only contexts up to this

struct fa_args {
    const uint8_t* k;
    const uint8_t* v;
    size_t krec, vrec;
    const float* q;
    float* out;
    int n_head, n_head_kv, n_tok, pos0, sw;
    float scale;
    // DQ: the streams' kinds and what decoding them takes (sp: the span
    // kernels' view of the same streams), and the values' turn back.
    int kkind = KV_KIND_F16, vkind = KV_KIND_F16, vrot = 0;
    const float* vsigns = nullptr;
    span_args sp;
};

// Elements e0 .. e0+7 of position pos's key (kkind) or value (vkind) record,
// kv head kvh, as the span kernels read them; stage0 as affine_key8's.
__device__ inline void fa_load8(const fa_args& a, bool key, int kvh, int pos, int e0, int stage0,
                                float* x) {
    const int kind = key ? a.kkind : a.vkind, bits = key ? a.sp.kbits : a.sp.vbits;
    if (key && kind == KV_KIND_AFFINE) return affine_key8(a.sp, kvh, pos, e0, stage0, x);
    const uint8_t* rec = (key ? a.k : a.v) + ((size_t)pos * a.n_head_kv + kvh) * (key ? a.krec : a.vrec);
    switch (kind) {
        case KV_KIND_F32: return load8<KV_KIND_F32>(rec, e0, x, bits);
        case KV_KIND_F16: return load8<KV_KIND_F16>(rec, e0, x, bits);
        case KV_KIND_Q8_0: return load8<KV_KIND_Q8_0>(rec, e0, x, bits);
        case KV_KIND_Q4_0: return load8<KV_KIND_Q4_0>(rec, e0, x, bits);
        case KV_KIND_ROT: return load8<KV_KIND_ROT>(rec, e0, x, bits);
        default: return load8<KV_KIND_AFFINE>(rec, e0, x, bits);  // affine values, token-major
    }
}

// Eight floats as high and low halves at hi and lo (16 bytes each).
__device__ inline void split_store8(const float* x, __half* hi, __half* lo) {
    uint4 h, l;
    split_half2(x[0], x[1], h.x, l.x);
    split_half2(x[2], x[3], h.y, l.y);
    split_half2(x[4], x[5], h.z, l.z);
    split_half2(x[6], x[7], h.w, l.w);
    *reinterpret_cast<uint4*>(hi) = h;
    *reinterpret_cast<uint4*>(lo) = l;
}

__device__ inline uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Four 8x8 matrices of halves from shared memory (lanes 8i .. 8i+7 give the
// rows of matrix i), in the mma fragment layout; .trans: transposed.
__device__ inline void ldmatrix_x4(uint32_t* r, const __half* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t* r, const __half* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

template <int HD>
struct fa_smem {
    static constexpr int P = HD + 8;  // halves per row: rows 16 bytes apart in the banks
    static constexpr size_t bytes = (size_t)(2 * kFaRows + 4 * kFaKeys) * P * sizeof(__half);
    // DQ: the tiles' space holds the queries as floats while they are
    // turned, and the outputs while they are turned back.
    static_assert(kFaRows * HD * sizeof(float) <= 4 * kFaKeys * P * sizeof(__half),
                  "fa_smem: staging overruns");
};

template <int HD, bool DQ>
__global__ void __launch_bounds__(kFaThreads, 2) attn_prefill_kernel(fa_args a) {
    constexpr int P = fa_smem<HD>::P, ND = HD / 8;
    constexpr float kLog2e = 1.4426950408889634f;
    extern __shared__ __align__(16) uint8_t fa_sm[];
    __half* Qh = reinterpret_cast<__half*>(fa_sm);  // [kFaRows][P] high halves
    __half* Ql = Qh + kFaRows * P;                   // low halves
    __half* Ks = Ql + kFaRows * P;                   // [2][kFaKeys][P]: two tiles, or (DQ) high, low
    __half* Vs = Ks + 2 * kFaKeys * P;               // [2][kFaKeys][P]
    float* stage = reinterpret_cast<float*>(Ks);     // DQ: [kFaRows][HD]
    const int kvh = blockIdx.y, n_rep = a.n_head / a.n_head_kv;
    const int n_rows = a.n_tok * n_rep, r0 = blockIdx.x * kFaRows;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, k4 = lane % 4;
    auto q_index = [&](int rr) { return ((size_t)(rr / n_rep) * a.n_head + kvh * n_rep + rr % n_rep) * HD; };

    // The block's queries, scaled (by log2 e too), as high and low halves;
    // DQ with turned keys: turned as the span kernels turn them first.
    const bool turn_q = DQ && a.sp.krot;
    auto q_at = [&](int r, int d) {
        const int rr = r0 + r;
        return rr < n_rows ? a.q[q_index(rr) + d] * a.scale : 0.0f;
    };
    if (turn_q) {
        for (int i = threadIdx.x; i < kFaRows * HD; i += kFaThreads) stage[i] = q_at(i / HD, i % HD);
        __syncthreads();
        fwht_shared(stage, kFaRows, HD, HD, a.sp.krot, a.sp.ksigns, nullptr);
    }
    for (int i = threadIdx.x; i < kFaRows * HD / 2; i += kFaThreads) {
        const int r = i / (HD / 2), d = 2 * (i % (HD / 2));
        const float x0 = (turn_q ? stage[r * HD + d] : q_at(r, d)) * kLog2e;
        const float x1 = (turn_q ? stage[r * HD + d + 1] : q_at(r, d + 1)) * kLog2e;
        uint32_t hi, lo;
        split_half2(x0, x1, hi, lo);
        *reinterpret_cast<uint32_t*>(Qh + r * P + d) = hi;
        *reinterpret_cast<uint32_t*>(Ql + r * P + d) = lo;
    }
    if (turn_q) __syncthreads();  // stage read: the tiles may overwrite it
    // Positions: this lane's rows g and g+8 of its warp, and the keys the block needs.
    const int last_row = min(n_rows, r0 + kFaRows) - 1;
    const int own_last = a.pos0 + last_row / n_rep;
    const int lo_first = a.sw > 0 ? max(0, a.pos0 + r0 / n_rep - a.sw + 1) : 0;
    int own[2], lo[2];
    bool row_on[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rr = r0 + warp * 16 + g + 8 * h;
        row_on[h] = rr < n_rows;
        own[h] = a.pos0 + min(rr, last_row) / n_rep;
        lo[h] = a.sw > 0 ? max(0, own[h] - a.sw + 1) : 0;
    }
    const int kt_first = lo_first / kFaKeys * kFaKeys;
    const int n_tiles = own_last / kFaKeys - kt_first / kFaKeys + 1;
    auto load_tile = [&](int kt, int buf) {
        for (int i = threadIdx.x; i < kFaKeys * ND; i += kFaThreads) {
            const int j = i / ND, c = (i % ND) * 8, pos = kt + j;
            // Past the last position: 16 zero bytes, nothing read.
            const bool ok = pos <= own_last;
            const size_t rec = (size_t)(ok ? pos : 0) * a.n_head_kv + kvh, zfill = ok ? 0 : 16;
            __pipeline_memcpy_async(Ks + (buf * kFaKeys + j) * P + c, a.k + rec * a.krec + c * 2, 16, zfill);
            __pipeline_memcpy_async(Vs + (buf * kFaKeys + j) * P + c, a.v + rec * a.vrec + c * 2, 16, zfill);
        }
    };
    // DQ: the tile decoded, high halves in buffer 0 and low halves in 1. The
    // affine keys' staged block starts where the store of these tokens ended.
    const int stage0 = (a.pos0 + a.n_tok) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
    auto decode_tile = [&](int kt) {
#pragma unroll 2
        for (int i = threadIdx.x; i < kFaKeys * ND; i += kFaThreads) {
            const int j = i / ND, c = (i % ND) * 8, pos = kt + j;
            float xk[8] = {}, xv[8] = {};
            if (pos <= own_last) {
                fa_load8(a, true, kvh, pos, c, stage0, xk);
                fa_load8(a, false, kvh, pos, c, stage0, xv);
            }
            split_store8(xk, Ks + j * P + c, Ks + (kFaKeys + j) * P + c);
            split_store8(xv, Vs + j * P + c, Vs + (kFaKeys + j) * P + c);
        }
    };

    float o[ND][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    if (!DQ) {
        load_tile(kt_first, 0);
        __pipeline_commit();
    }
    for (int it = 0; it < n_tiles; ++it) {
        const int kt = kt_first + it * kFaKeys, buf = DQ ? 0 : it & 1;
        if (DQ) {
            decode_tile(kt);
        } else {
            if (it + 1 < n_tiles) load_tile(kt + kFaKeys, buf ^ 1);
            __pipeline_commit();
            __pipeline_wait_prior(1);  // this tile's copies
        }
        __syncthreads();   // every thread's part of the tile, and the queries
        const __half* K = Ks + buf * kFaKeys * P;
        const __half* V = Vs + buf * kFaKeys * P;
        const __half* Kl = Ks + kFaKeys * P;  // DQ: the low halves
        const __half* Vl = Vs + kFaKeys * P;
        // S (16 rows x 64 keys): n-tile nt is keys nt*8 .. nt*8+7.
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
            uint32_t ah[4], al[4];
            const int qoff = (warp * 16 + lane % 16) * P + ks * 16 + (lane / 16) * 8;
            ldmatrix_x4(ah, Qh + qoff);
            ldmatrix_x4(al, Ql + qoff);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                uint32_t b[4];  // b0, b1 of n-tiles 2np and 2np+1
                const int koff = (np * 16 + lane % 8 + (lane / 16) * 8) * P + ks * 16 + ((lane / 8) % 2) * 8;
                ldmatrix_x4(b, K + koff);
                mma16816(s[2 * np], ah[0], ah[1], ah[2], ah[3], b[0], b[1]);
                mma16816(s[2 * np], al[0], al[1], al[2], al[3], b[0], b[1]);
                mma16816(s[2 * np + 1], ah[0], ah[1], ah[2], ah[3], b[2], b[3]);
                mma16816(s[2 * np + 1], al[0], al[1], al[2], al[3], b[2], b[3]);
                if (DQ) {
                    ldmatrix_x4(b, Kl + koff);
                    mma16816(s[2 * np], ah[0], ah[1], ah[2], ah[3], b[0], b[1]);
                    mma16816(s[2 * np + 1], ah[0], ah[1], ah[2], ah[3], b[2], b[3]);
                }
            }
        }
        // Causal and window masks; online softmax of rows g (entries 0, 1) and g+8 (2, 3).
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e / 2, key = kt + nt * 8 + 2 * k4 + (e & 1);
                const bool on = row_on[h] && key <= own[h] && key >= lo[h];
                s[nt][e] = on ? s[nt][e] : -INFINITY;
                mx[h] = fmaxf(mx[h], s[nt][e]);
            }
        float corr[2], msafe[2], lsum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            const float mnew = fmaxf(m[h], mx[h]);
            msafe[h] = mnew == -INFINITY ? 0.0f : mnew;  // no key yet: every p is 0
            corr[h] = exp2f(m[h] - msafe[h]);
            m[h] = mnew;
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - msafe[e / 2]);
                lsum[e / 2] += s[nt][e];
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * corr[h] + lsum[h];
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            o[nd][0] *= corr[0];
            o[nd][1] *= corr[0];
            o[nd][2] *= corr[1];
            o[nd][3] *= corr[1];
        }
        // O += P V: k-step kk is keys kk*16 .., whose P fragments are the
        // accumulators of n-tiles 2kk and 2kk+1.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t ph[4], pl[4];
            split_half2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
            split_half2(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
            split_half2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
            split_half2(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
            for (int nd2 = 0; nd2 < ND / 2; ++nd2) {
                uint32_t b[4];  // b0, b1 of dimension tiles 2nd2 and 2nd2+1
                const int voff = (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * P + nd2 * 16 + (lane / 16) * 8;
                ldmatrix_x4_trans(b, V + voff);
                mma16816(o[2 * nd2], ph[0], ph[1], ph[2], ph[3], b[0], b[1]);
                mma16816(o[2 * nd2], pl[0], pl[1], pl[2], pl[3], b[0], b[1]);
                mma16816(o[2 * nd2 + 1], ph[0], ph[1], ph[2], ph[3], b[2], b[3]);
                mma16816(o[2 * nd2 + 1], pl[0], pl[1], pl[2], pl[3], b[2], b[3]);
                if (DQ) {
                    ldmatrix_x4_trans(b, Vl + voff);
                    mma16816(o[2 * nd2], ph[0], ph[1], ph[2], ph[3], b[0], b[1]);
                    mma16816(o[2 * nd2 + 1], ph[0], ph[1], ph[2], ph[3], b[2], b[3]);
                }
            }
        }
        __syncthreads();  // the buffer is refilled next
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    // DQ with turned values: the rows go through the staging space (free
    // after the last tile's barrier) to be turned back, as the merge does.
    const bool turn_o = DQ && a.vrot;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + g + 8 * h;
        if (!row_on[h] && !turn_o) continue;
        float* out = turn_o ? stage + r * HD : a.out + q_index(r0 + r);
        const float inv = row_on[h] ? 1.0f / l[h] : 0.0f;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
            *reinterpret_cast<float2*>(out + nd * 8 + 2 * k4) = make_float2(o[nd][2 * h] * inv, o[nd][2 * h + 1] * inv);
    }
    if (turn_o) {
        __syncthreads();
        fwht_shared(stage, kFaRows, HD, HD, a.vrot, nullptr, a.vsigns);
        for (int i = threadIdx.x; i < kFaRows * HD; i += kFaThreads)
            if (r0 + i / HD < n_rows) a.out[q_index(r0 + i / HD) + i % HD] = stage[i];
    }
}

template <int HD, bool DQ>
void launch_prefill(const fa_args& a, cudaStream_t s) {
    const size_t smem = fa_smem<HD>::bytes;
    static size_t allowed = 48 * 1024;
    allow_dynamic_smem(attn_prefill_kernel<HD, DQ>, smem, allowed);
    const dim3 grid((a.n_tok * (a.n_head / a.n_head_kv) + kFaRows - 1) / kFaRows, a.n_head_kv);
    attn_prefill_kernel<HD, DQ><<<grid, kFaThreads, smem, s>>>(a);
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
                          float* out, cudaStream_t s, void* act, const float* vsigns) {
    if (act && !cuda_attention_writes_q16(hd))
        throw error("CUDA attention: q16 codes of the output need head_dim a multiple of 32");
    const int64_t cols = (int64_t)n_head * hd;
    const int n_tok = n_rows / n_head;
    int16_t* qs = act ? q16_codes(act) : nullptr;
    int2* ds = act ? q16_scales(act, n_tok, cols) : nullptr;
    // A pca prefill: the rows of one kv head share the block's reads of P^T.
    if (basis_t && !vrot && n_entries <= kMergeRowEntries && n_tok >= kMergeRowMinTok) {
        launch_pdl(attn_merge_rows_kernel,
                   kv_row_blocks(n_tok, n_head / n_rep, n_rep, merge_rows_per_block(hd)),
                   kMergeThreads, 0, s, partial, n_entries, hd, n_tok, basis_t, mean, n_head, n_rep,
                   out, qs, ds);
        KVRT_CUDA_CHECK(cudaGetLastError());
        return;
    }
    // Groups of hd threads each take every G-th entry, kMergeLoads at a time:
    // enough groups that each has about that many (a decode step's splits
    // over a long context), at least kMergeThreads threads; whole warps (the
    // kernel's sums are warp-wide, and head_dim 8 or 16 makes odd counts).
    const int groups = (n_entries + kMergeLoads - 1) / kMergeLoads;
    const int threads = std::max(kMergeThreads, std::min(kMergeThreadsMax, (groups * hd + 31) / 32 * 32));
    launch_pdl(attn_merge_kernel, n_rows, threads, n_entries * sizeof(float), s, partial, n_entries,
               hd, vrot, basis_t, mean, n_head, n_rep, out, qs, ds, vsigns);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

void cuda_attention(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q, int n_tok,
                    int pos0, const cuda_attn_params& p, float* out, float* partial, int n_sm,
                    cudaStream_t s, const int* pos_dev, int split_len, void* act) {
    if (p.head_dim % 8 != 0 || p.head_dim > kMaxHeadDim || 32 % (p.head_dim / 8) != 0)
        throw error("CUDA attention: head_dim " + std::to_string(p.head_dim) +
                    " is not supported (32, 64, 128 or 256)");
    const int hd = p.head_dim;
    span_args a;
    a.k = k.d;
    a.v = v.d;
    a.krec = k.rec;
    a.vrec = v.rec;
    a.krot = k.rot;
    a.kbits = k.bits;
    a.vbits = v.bits;
    a.ksigns = k.signs;
    a.kstage = k.stage;
    a.kblocks = k.n_blocks;
    a.kblk = k.blk;
    if ((k.kind == KV_KIND_AFFINE) != (k.cmajor != 0) || v.cmajor)
        throw error("CUDA attention: affine keys need their channel-major stream, affine values the token-major one");
    a.q = q;
    a.n_head = p.n_head;
    a.n_head_kv = p.n_head_kv;
    a.hd = p.head_dim;
    a.sw = p.sliding_window;
    a.pos0 = pos0;
    a.pos_dev = pos_dev;
    a.scale = 1.0f / std::sqrt((float)p.head_dim);
    auto tiled = [](kv_kind t) {  // kinds fa_load8 reads
        return t == KV_KIND_F32 || t == KV_KIND_F16 || t == KV_KIND_Q8_0 || t == KV_KIND_Q4_0 ||
               t == KV_KIND_ROT || t == KV_KIND_AFFINE;
    };
    // Decoded tiles cost more per tile than copied ones, and a block walks
    // the whole context alone: a few tokens over a long context keep the
    // span kernels, whose splits spread it over the machine.
    const bool dq = k.kind != KV_KIND_F16 || v.kind != KV_KIND_F16;
    const int fa_blocks = (n_tok * (p.n_head / p.n_head_kv) + kFaRows - 1) / kFaRows * p.n_head_kv;
    const bool fa_fits = !dq || fa_blocks >= n_sm || pos0 + n_tok <= kFaShortContext;
    if ((hd == 64 || hd == 128) && n_tok >= kFaMinTokens && !pos_dev && tiled(k.kind) && tiled(v.kind) &&
        fa_fits) {
        // Prefill: the tiled kernel writes out directly (no spans to merge).
        fa_args f{k.d, v.d, k.rec, v.rec, q, out, p.n_head, p.n_head_kv, n_tok, pos0, p.sliding_window,
                  a.scale};
        if (dq) {
            f.kkind = k.kind;
            f.vkind = v.kind;
            f.vrot = v.rot;
            f.vsigns = v.signs;
            f.sp = a;
        }
        if (hd == 64) dq ? launch_prefill<64, true>(f, s) : launch_prefill<64, false>(f, s);
        else dq ? launch_prefill<128, true>(f, s) : launch_prefill<128, false>(f, s);
        KVRT_CUDA_CHECK(cudaGetLastError());
        if (act) cuda_quantize_q16(out, n_tok, (int64_t)p.n_head * hd, act, s);
        return;
    }
    const int n_rep = p.n_head / p.n_head_kv;
    a.n_rg = (n_rep + kRows - 1) / kRows;
    a.n_split = cuda_attention_splits(span_blocks(p, n_tok), split_len > 0 ? split_len : pos0 + n_tok, n_sm);
    a.partial = partial;
    const dim3 grid(a.n_split, p.n_head_kv * a.n_rg, n_tok);
    switch (k.kind) {
        case KV_KIND_F32: launch_span<KV_KIND_F32>(v.kind, grid, s, a); break;
        case KV_KIND_F16: launch_span<KV_KIND_F16>(v.kind, grid, s, a); break;
        case KV_KIND_Q8_0: launch_span<KV_KIND_Q8_0>(v.kind, grid, s, a); break;
        case KV_KIND_Q4_0: launch_span<KV_KIND_Q4_0>(v.kind, grid, s, a); break;
        case KV_KIND_ROT: launch_span<KV_KIND_ROT>(v.kind, grid, s, a); break;
        case KV_KIND_AFFINE: launch_span<KV_KIND_AFFINE>(v.kind, grid, s, a); break;
        default: throw error("CUDA attention: unsupported key format");
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
    cuda_attention_merge(partial, n_tok * p.n_head, a.n_split, p.head_dim, v.rot, nullptr, nullptr,
                         p.n_head, 1, out, s, act, v.signs);
}

}  // namespace kvrt
