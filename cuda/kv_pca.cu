// The pca KV format on the GPU (cpp/kv_pca.cpp is the CPU twin and the
// oracle; layout in kv_layout.h).
//
// Encoder: byte for byte the CPU stream's store(). One block per (32-token
// block touched, kv head), a thread per channel: the position-turned key
// mean is subtracted, y = P(x - mu) summed in the CPU's order with every
// product and sum rounded apart, the token scale max |y_c| / sigma_c taken
// in double, and the codes of the block's tokens gathered in shared memory;
// then one thread per kept channel writes that channel's 32-token group, so
// tokens that share bytes never race. Where the CPU build contracts a
// product and a sum into one FMA (GCC with -march=native on FMA machines:
// the rope mean's rotation and the code's y*inv - lo), the kernel uses the
// same fused operation.
//
// Attention (decode and prefill): a first kernel turns each query into the
// key basis once (qy = P q, the per-code weights w_c = qy_c step_c, the
// constant K = sum qy_c lo_c, and the rope-mean coefficients). The span
// kernel gives each warp 32-token blocks of its split (splits hold whole
// blocks), their key and value codes copied into shared memory one block
// ahead, and takes its products on tensor cores: the scores
// s = a_t (sum_kept w_c code_c + K) + q.R_t m, then sum_t p_t a_t code_c
// (an online softmax per warp); each warp leaves its share in a slice of
// shared memory and the block adds the slices in warp order into its
// partial result (no atomics: the sum is the same every run), and the sink
// positions make one more. The merge (attention.cu) un-rotates once per
// head: x = mu + P^T o.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_pipeline.h>

#include "common.cuh"
#include "kv_layout.h"

namespace kvrt {

namespace {

constexpr int kMaxDim = 256;
constexpr int kWarpsPerSM = 16;    // span warps per multiprocessor that splitting aims at

// Warps of a span block for head_dim hd: eight, two blocks per
// multiprocessor; four above 128, whose codes staged for eight warps would
// not fit in shared memory at high bits.
__host__ __device__ constexpr int span_warps(int hd) { return hd > 128 ? 4 : 8; }
constexpr int kQStride = 4;        // qprep floats per row: 3*hd + kQStride
constexpr int kCodePad = 32;       // bytes past the last group a reader may touch
constexpr int kMinSpan = 128;      // positions below which a span is not split

__device__ inline float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// ---- rope on load ----

// The rotary embedding the keys and queries still need when the attention
// launch reads them (none where inv_freq is null): position pos of the cache
// turns by pos + off, as cuda_rope_apply would at pos0 + off.
struct pca_rope {
    const float* inv_freq = nullptr;
    int n_rot = 0, neox = 0, off = 0;
};

// Element c of head row xh turned for position pos, as rope_kernel computes
// it (the pair's angle and its cosine and sine in double, rounded to float).
__device__ inline float rope_at(const float* xh, int c, int pos, const pca_rope& r) {
    if (!r.inv_freq || c >= r.n_rot) return xh[c];
    const int half = r.n_rot / 2;
    const bool first = r.neox ? c < half : c % 2 == 0;
    const int i = r.neox ? (first ? c : c - half) : c / 2;
    const int ia = r.neox ? i : 2 * i, ib = ia + (r.neox ? half : 1);
    const double theta = (double)(pos + r.off) * (double)r.inv_freq[i];
    const float cs = (float)cos(theta), sn = (float)sin(theta);
    const float x0 = xh[ia], x1 = xh[ib];
    return first ? __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn))
                 : __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
}

// ---- encoder ----

// The CPU stream's window_record of one position and head, a thread per
// channel c holding y_c: y as halves (:wN), or (:eN) the half scale a of
// max_c |half(y_c)| / sigma_c and codes rint(half(y_c) / (a sigma_c / 127))
// in -127..127. Every thread of the block calls it (a barrier inside).
__device__ void window_record(const cuda_pca& p, float y, uint8_t* rec, int h, float* red) {
    const int c = threadIdx.x, hd = p.head_dim;
    const __half yh = __float2half_rn(y);
    if (!p.tier8) {
        reinterpret_cast<__half*>(rec)[c] = yh;
        return;
    }
    const float sg = p.sigma[(size_t)h * hd + c], yf = __half2float(yh);
    float m = fabsf(__fdiv_rn(yf, sg));
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (c % 32 == 0) red[c / 32] = m;
    __syncthreads();
    m = 0.0f;
    for (int w = 0; w < hd / 32; ++w) m = fmaxf(m, red[w]);
    __syncthreads();  // red is free again
    const __half ah = __float2half_rn(m);
    if (c == 0) *reinterpret_cast<__half*>(rec) = ah;
    const float a = __half2float(ah);
    int8_t code = 0;
    if (a > 0.0f) {
        const float u = __fdiv_rn(__fmul_rn(a, sg), 127.0f);
        code = (int8_t)fminf(fmaxf(rintf(__fdiv_rn(yf, u)), -127.0f), 127.0f);
    }
    reinterpret_cast<int8_t*>(rec + 2)[c] = code;
}

// y of a window record, channel c.
__device__ inline float window_y(const cuda_pca& p, const uint8_t* rec, int h, int c) {
    if (!p.tier8) return __half2float(reinterpret_cast<const __half*>(rec)[c]);
    const float a = __half2float(*reinterpret_cast<const __half*>(rec));
    if (!(a > 0.0f)) return 0.0f;
    return (float)reinterpret_cast<const int8_t*>(rec + 2)[c] * (a * p.sigma[(size_t)h * p.head_dim + c] / 127.0f);
}

// The record of position t of head h where the window holds it (the last
// store's batch, or the ring slot that has it), else null. b: bstate.
__device__ inline const uint8_t* window_rec(const cuda_pca& p, int b0, int bn, int h, int t) {
    if (t >= b0 && t < b0 + bn) return p.batch + ((size_t)(t - b0) * p.n_head_kv + h) * p.rec;
    const int slot = t % p.win;
    if (p.ring_pos[slot] != t) return nullptr;
    return p.ring + ((size_t)slot * p.n_head_kv + h) * p.rec;
}

// begin_batch of the CPU stream, for a store of n positions from pos0 (+
// *pos_dev): the last batch's newest win positions before pos0 go into the
// ring, slots holding positions from pos0 on are emptied, and the batch is
// the new store's. One block, for k and (n_streams 2) v.
__global__ void pca_window_begin_kernel(cuda_pca k, cuda_pca v, int n_streams, int pos0, const int* pos_dev,
                                        int n) {
    pdl_begin();
    pos0 += pos_dev ? *pos_dev : 0;
    for (int sv = 0; sv < n_streams; ++sv) {
        const cuda_pca& p = sv == 0 ? k : v;
        const int b0 = p.bstate[0], bn = p.bstate[1];
        const int t_lo = max(b0, b0 + bn - p.win), t_hi = min(b0 + bn, pos0);
        const size_t w = (size_t)p.n_head_kv * p.rec;
        for (size_t i = threadIdx.x; i < (size_t)max(0, t_hi - t_lo) * w; i += blockDim.x) {
            const int t = t_lo + (int)(i / w);
            p.ring[(size_t)(t % p.win) * w + i % w] = p.batch[(size_t)(t - b0) * w + i % w];
        }
        __syncthreads();  // every thread read bstate and the batch
        for (int s = threadIdx.x; s < p.win; s += blockDim.x) {
            // The one position of [t_lo, t_hi) in slot s, if any (the range is at most win long).
            const int t = t_lo + ((s - t_lo % p.win) % p.win + p.win) % p.win;
            if (t < t_hi) p.ring_pos[s] = t;
            else if (p.ring_pos[s] >= pos0) p.ring_pos[s] = -1;
        }
        if (threadIdx.x == 0) {
            p.bstate[0] = pos0;
            p.bstate[1] = n;
        }
        __syncthreads();
    }
}

// Block bx of the 32-token blocks that positions base .. base+n-1 touch, kv
// head h; a thread per channel. x turned by rope as it is read.
__device__ void store_pca_block(const cuda_pca& p, int pos0, const int* pos_dev, int n,
                                const float* x, int bx, int h, const pca_rope& rope = pca_rope{}) {
    const int hd = p.head_dim, c = threadIdx.x;
    const int base = pos0 + (pos_dev ? *pos_dev : 0);
    const int blk = base / KV_BLOCK_TOKENS + bx;
    const int p0 = max(base, blk * KV_BLOCK_TOKENS);
    const int p1 = min(base + n, (blk + 1) * KV_BLOCK_TOKENS);
    if (p0 >= p1) return;
    __shared__ __align__(16) float xs[kMaxDim];
    __shared__ float ms[kMaxDim];
    __shared__ uint8_t codes[KV_BLOCK_TOKENS][kMaxDim];
    __shared__ double red[kMaxDim / 32];
    __shared__ float wred[kMaxDim / 32];
    const int* info = p.head + 4 * h;
    const int nk = info[0], n_pairs = info[2];
    const float* P = p.basis + ((size_t)h * hd + c) * hd;  // row c
    const float* mean = p.mean + (size_t)h * hd;
    const float* rm = p.rope_mean + (size_t)h * hd;
    const int bits = p.cbits[(size_t)h * hd + c];
    for (int pos = p0; pos < p1; ++pos) {
        float xv = rope_at(x + ((size_t)(pos - base) * p.n_head_kv + h) * hd, c, pos, rope);
        if (n_pairs > 0) {
            // kv_pca_rope_mean_at: every rotary pair, angles in double.
            ms[c] = 0.0f;
            __syncthreads();
            for (int i = c; i < p.n_freq; i += hd) {
                const int a = i * p.pair_stride, b = a + p.pair_gap;
                double sn, cs;
                sincos((double)pos * (double)p.rope_freq[i], &sn, &cs);
                const float cf = (float)cs, sf = (float)sn;
                ms[a] = __fmaf_rn(rm[a], cf, -__fmul_rn(rm[b], sf));
                ms[b] = __fmaf_rn(rm[a], sf, __fmul_rn(rm[b], cf));
            }
            __syncthreads();
            xv = __fsub_rn(xv, ms[c]);
        }
        xs[c] = __fsub_rn(xv, mean[c]);
        __syncthreads();
        // kv_pca_project: products rounded, summed in channel order.
        const float y = row_dot<true>(P, xs, hd, 0.0f);
        if (p.win > 0) window_record(p, y, p.batch + ((size_t)(pos - base) * p.n_head_kv + h) * p.rec, h, wred);
        if (pos < KV_PCA_SINKS) {
            p.sinks[((size_t)h * KV_PCA_SINKS + pos) * hd + c] = __half_as_ushort(__float2half_rn(y));
        } else {
            // kv_pca_token_scale: max |y_c| / sigma_c in double, clamped.
            double v = fabs((double)y / (double)p.sigma[(size_t)h * hd + c]);
            for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
            if (c % 32 == 0) red[c / 32] = v;
            __syncthreads();
            double m = 0.0;
            for (int w = 0; w < hd / 32; ++w) m = fmax(m, red[w]);
            const uint8_t sc = kv_pca_scale_code((float)fmin(fmax(m, 1.0 / 256), 496.0));
            if (c == 0) p.scale[(size_t)h * p.n_ctx + pos] = sc;
            const float inv = __fdiv_rn(1.0f, kv_pca_scale_value(sc));
            if (bits > 0) {
                const float lo = p.lo[(size_t)h * hd + c], step = p.step[(size_t)h * hd + c];
                float code = rintf(__fdiv_rn(__fmaf_rn(y, inv, -lo), step));
                code = fminf(fmaxf(code, 0.0f), (float)((1 << bits) - 1));
                codes[pos % KV_BLOCK_TOKENS][c] = (uint8_t)(unsigned)code;
            }
        }
        __syncthreads();
    }
    // One thread per kept channel owns its group in this block.
    if (c < nk && p1 > KV_PCA_SINKS) {
        const int ch = p.keep[(size_t)h * hd + c], b = p.kbits[(size_t)h * hd + c];
        uint8_t* grp = p.codes + p.head_off[h] + (size_t)blk * info[1] + p.koff[(size_t)h * hd + c];
        for (int pos = max(p0, KV_PCA_SINKS); pos < p1; ++pos)
            kv_code_set(grp, b, pos % KV_BLOCK_TOKENS, codes[pos % KV_BLOCK_TOKENS][ch]);
    }
}

__global__ void __launch_bounds__(kMaxDim) kv_store_pca_kernel(cuda_pca p, int pos0,
                                                              const int* pos_dev, int n,
                                                              const float* x) {
    store_pca_block(p, pos0, pos_dev, n, x, blockIdx.x, blockIdx.y);
}

// ---- attention ----

// Per query row (t * n_head + h): qy = P_k (q * scale) [hd], the kept key
// channels' weights w_i = qy_c step_c [hd], the rope-mean coefficients
// A_i, B_i of the scaled query [hd], K = sum_kept qy_c lo_c. q turned by
// rope as it is read, token t at position base + t. Block b takes the R
// rows of one kv head that kv_row_block gives it (R > 1 for prefill), which
// share one read of each row of P_k.
template <int R>
__device__ void pca_query_rows(const cuda_pca& k, const float* q, int n_tok, int n_head, int n_rep,
                               float scale, float* qprep, int b, int base, const pca_rope& rope) {
    const kv_rows rows = kv_row_block(b, n_tok, n_rep, R);
    const int kvh = rows.kvh, hd = k.head_dim, c = threadIdx.x;
    __shared__ __align__(16) float qs[R][kMaxDim];
    __shared__ float ys[R][kMaxDim], red[R][kMaxDim / 32];
    for (int j = 0; j < R; ++j) {
        const int row = j < rows.n ? kv_row(rows, j, n_head, n_rep) : 0;
        qs[j][c] =
            j < rows.n ? rope_at(q + (size_t)row * hd, c, base + row / n_head, rope) * scale : 0.0f;
    }
    __syncthreads();
    float y[R];
    for (int j = 0; j < R; ++j) y[j] = 0.0f;
    rows_dot<false, R>(k.basis + ((size_t)kvh * hd + c) * hd, &qs[0][0], kMaxDim, hd, y);
    const int* info = k.head + 4 * kvh;
    const int kc = k.keep[(size_t)kvh * hd + c];
    const float step = k.step[(size_t)kvh * hd + kc], lo = k.lo[(size_t)kvh * hd + kc];
    const float* pr = k.pairs + ((size_t)kvh * (hd / 2) + c) * 5;
    for (int j = 0; j < R; ++j) ys[j][c] = y[j];
    __syncthreads();
    for (int j = 0; j < R; ++j) {
        if (j >= rows.n) break;
        float* out = qprep + (size_t)kv_row(rows, j, n_head, n_rep) * (3 * hd + kQStride);
        out[c] = y[j];
        float part = 0.0f;
        if (c < info[0]) {
            out[hd + c] = ys[j][kc] * step;
            part = ys[j][kc] * lo;
        }
        if (c < info[2]) {
            const int a = (int)pr[0], b = (int)pr[1];
            out[2 * hd + 2 * c] = qs[j][a] * pr[2] + qs[j][b] * pr[3];      // with cos
            out[2 * hd + 2 * c + 1] = qs[j][b] * pr[2] - qs[j][a] * pr[3];  // with sin
        }
        part = warp_sum(part);
        if (c % 32 == 0) red[j][c / 32] = part;
    }
    __syncthreads();
    if (c < rows.n) {
        float K = 0.0f;
        for (int w = 0; w < hd / 32; ++w) K += red[c][w];
        qprep[(size_t)kv_row(rows, c, n_head, n_rep) * (3 * hd + kQStride) + 3 * hd] = K;
    }
}

// Query rows per block: 8 rows of a kv head from kQueryMinTok tokens on
// (prefill), one row per block below (decode, where blocks are few).
constexpr int kQueryRows = 8;
constexpr int kQueryMinTok = 16;
__host__ __device__ inline int query_rows(int n_tok) {
    return n_tok >= kQueryMinTok ? kQueryRows : 1;
}

template <int R>
__global__ void __launch_bounds__(kMaxDim)
    pca_query_kernel(cuda_pca k, const float* q, int n_tok, int n_head, int n_rep, float scale,
                     float* qprep, int pos0, const int* pos_dev, pca_rope rope) {
    pca_query_rows<R>(k, q, n_tok, n_head, n_rep, scale, qprep, blockIdx.x,
                      pos0 + (pos_dev ? *pos_dev : 0), rope);
}

// Blocks that turn n_tok tokens' queries.
int query_blocks(int n_tok, int n_head_kv, int n_rep) {
    return kv_row_blocks(n_tok, n_head_kv, n_rep, query_rows(n_tok));
}

// One launch for a layer's keys and values stored and its queries turned:
// blocks [0, nb * h) key blocks, then as many value blocks, then the query
// blocks (R rows each: a decode step's launch keeps the one-row block's
// shared memory). Their chains of loads wait on memory side by side.
template <int R>
__global__ void __launch_bounds__(kMaxDim)
    pca_store_query_kernel(cuda_pca k, cuda_pca v, int pos0, const int* pos_dev, int n,
                           const float* xk, const float* xv, int nb, const float* q, int n_head,
                           int n_rep, float scale, float* qprep, pca_rope rope) {
    pdl_begin();
    const int n_store = nb * k.n_head_kv;
    int b = blockIdx.x;
    if (b < n_store) return store_pca_block(k, pos0, pos_dev, n, xk, b % nb, b / nb, rope);
    b -= n_store;
    if (b < n_store) return store_pca_block(v, pos0, pos_dev, n, xv, b % nb, b / nb);
    pca_query_rows<R>(k, q, n, n_head, n_rep, scale, qprep, b - n_store,
                      pos0 + (pos_dev ? *pos_dev : 0), rope);
}

struct pca_span_args {
    cuda_pca k, v;
    const float* qprep;
    int n_head, n_rep, n_rg, sw, pos0, n_split;
    int n_tok, tpb;  // tokens, and tokens per block (their rows share the block's reads)
    const int* pos_dev;
    float* partial;  // [(t*n_head + h) * n_entries + e] of {m, l, o[hd]}
    // Entries per row: the splits', the sinks' and, with a window, the window's.
    __host__ __device__ int n_entries() const { return n_split + 1 + (k.win > 0); }
};

// sin and cos of an angle a (radians, |a| < 2^40): reduced by 2 pi in double
// to [-pi, pi], where the hardware's sine and cosine are within 4e-7.
__device__ inline void angle_sincos(double a, float* s, float* c) {
    const double r = fma(-rint(a * 0.15915494309189535), 6.283185307179586, a);
    __sincosf((float)r, s, c);
}

// Bytes a warp stages for one block of n code bytes: whole 16-byte pieces
// from the 16-byte boundary below the start, and the word past the end.
__host__ __device__ inline int stage_bytes(int n) { return (12 + n + 4 + 15) / 16 * 16; }

// Where src's first byte lands in a staging slot: its offset from the
// 16-byte boundary below it.
__device__ inline int stage_offset(const uint8_t* src) { return (int)(reinterpret_cast<uintptr_t>(src) & 15); }

// The asynchronous copy of n code bytes at src (4-byte aligned) into dst, a
// lane per 16 bytes, from the 16-byte boundary below src.
__device__ inline void stage_async(uint8_t* dst, const uint8_t* src, int n, int lane) {
    const int off = stage_offset(src), n16 = (off + n + 4 + 15) / 16;
    for (int i = lane; i < n16; i += 32) __pipeline_memcpy_async(dst + 16 * i, src - off + 16 * i, 16);
}

// The 32 bits of a group in shared memory from bit `bit` on (the word after
// the group may be read).
__device__ inline uint32_t group_bits(const uint8_t* group, int bit) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(group) + (bit >> 5);
    return __funnelshift_r(w[0], w[1], bit & 31);
}

// Two codes (< 1024) as exact halves: x0's low bits under mask m0 in the low
// half, x1's under m1_hi = m1 << 16 in the high half; 1024 + c in a half's
// bits, less 1024.
__device__ inline uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {  // (a & b) | c
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ inline uint32_t codes_half2(uint32_t x0, uint32_t m0, uint32_t x1, uint32_t m1_hi, int sh = 16) {
    // Two three-input operations (the compiler makes three of the plain form).
    // sh 16 - b with x1 = x0: x0's two b-bit codes from the bottom.
    const uint32_t u = lop3_and_or(x0, m0, lop3_and_or(x1 << sh, m1_hi, 0x64006400u));
    __half2 h;
    memcpy(&h, &u, sizeof h);
    return half2_bits(__hsub2(h, __float2half2_rn(1024.0f)));
}

// Query rows of a span block: the products' 16 rows are 8 query rows' high
// halves and their low halves.
constexpr int kRows = 8;

// The span kernel's dynamic shared memory for head_dim <= HD, in bytes from
// its start (every piece 16-byte aligned).
template <int HD>
struct span_smem {
    static constexpr int KS = HD / 16;                        // 16-channel steps
    static constexpr int W = span_warps(HD);                  // warps
    // Floats per row of A, B and of a warp's output slice, padded so that the
    // rows' reads of one pair (writes of one channel) fall in other banks.
    static constexpr int AB = HD + 8, OS = HD + 4;
    static constexpr int wfrag = 0;                           // uint4 [KS][32] key weights
    static constexpr int tfrag = wfrag + KS * 32 * 16;        // uint4 [KS][4][32] run tables
    static constexpr int ab = tfrag + KS * 4 * 32 * 16;       // float [kRows][AB] scaled A, B
    static constexpr int cs = ab + kRows * AB * 4;            // float [W][HD] block angles
    static constexpr int scl = cs + W * HD * 4;               // float2 [W][32] token scales
    static constexpr int koff = scl + W * 32 * 8;             // int2 [HD] key offset, bits
    static constexpr int voff = koff + HD * 8;                // int2 [HD] value offset, bits
    static constexpr int rows = voff + HD * 8;                // float [2][kRows] K, 1/scale
    static constexpr int stats = rows + 2 * kRows * 4;        // float [3][W][kRows]
    static constexpr int slots = stats + 3 * W * kRows * 4;   // staged codes
    // The output slices, [W][kRows][OS] floats, reuse the slots (free
    // once every warp is past its last block).
    static constexpr size_t slices = (size_t)W * kRows * OS * 4;
    static size_t bytes(const cuda_pca& k, const cuda_pca& v) {
        const size_t staged = (size_t)W * 2 * (stage_bytes(k.max_block) + stage_bytes(v.max_block));
        return slots + std::max(slices, staged);
    }
};

// One block: split blockIdx.x of (token blockIdx.z, kv head and row group
// blockIdx.y), up to kRows query rows, head_dim <= HD. Each warp takes whole
// 32-token blocks and does their products on tensor cores:
//   keys    S[row][tok] = W[row][ch] C_k[ch][tok] (+ the rope-mean term
//           Wr[row][pair's cos, sin] T[cos, sin][tok]), rows 0-7 of W being
//           the weights' high halves and rows 8-15 their low halves, so a
//           row's score is the sum of accumulators 0 and 2 (1 and 3);
//   values  O[ch][row] += C_v[ch][tok] P[tok][row], P = p a_v split in high
//           and low halves over two products. P comes out of the keys'
//           accumulators already in the layout the values' product takes.
// Weights are scaled per row by a power of two so their largest is near
// 2^14 (halves keep their low part's bits), and the scores scaled back.
// WIN: the streams keep a recent window (pca:B:wN / :eN).
template <int HD, bool WIN>
__global__ void __launch_bounds__(span_warps(HD) * 32, (HD > 128 ? 8 : kWarpsPerSM) / span_warps(HD))
    attn_span_pca_kernel(pca_span_args a) {
    pdl_begin();
    using L = span_smem<HD>;
    constexpr int kWarps = L::W;
    constexpr int KS = L::KS;
    extern __shared__ __align__(16) uint8_t smb[];
    uint4* wfrag = reinterpret_cast<uint4*>(smb + L::wfrag);
    uint4* tfrag = reinterpret_cast<uint4*>(smb + L::tfrag);
    float* ab = reinterpret_cast<float*>(smb + L::ab);
    int2* koffb = reinterpret_cast<int2*>(smb + L::koff);
    int2* voffb = reinterpret_cast<int2*>(smb + L::voff);
    float* Kr = reinterpret_cast<float*>(smb + L::rows);
    float* isc = Kr + kRows;
    float* mw = reinterpret_cast<float*>(smb + L::stats);  // each warp's max per row
    float* lw = mw + kWarps * kRows;                          // its normaliser
    float* pw = lw + kWarps * kRows;                          // its sum of p a_v

    const int hd = a.k.head_dim, split = blockIdx.x;
    const int kvh = blockIdx.y / a.n_rg, rg = blockIdx.y % a.n_rg;
    // Row r is query head hh0 + r % rpt of token tk0 + r / rpt (in prefill a
    // block takes the heads of tpb tokens when they fit in kRows rows).
    const int rpt = min(kRows, a.n_rep - rg * kRows);
    const int tk0 = blockIdx.z * a.tpb, ntk = min(a.tpb, a.n_tok - tk0);
    const int nr = rpt * ntk;
    const int hh0 = kvh * a.n_rep + rg * kRows;
    auto row_of = [&](int r) { return (size_t)(tk0 + r / rpt) * a.n_head + hh0 + r % rpt; };
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, k4 = lane % 4;
    const int* kinfo = a.k.head + 4 * kvh;
    const int* vinfo = a.v.head + 4 * kvh;
    const int knk = kinfo[0], knp = kinfo[2], vnk = vinfo[0];
    // Positions: each row's own token and window; the block spans them all.
    const int pos_base = a.pos0 + (a.pos_dev ? *a.pos_dev : 0) + tk0;
    auto own_of = [&](int r) { return pos_base + min(r, nr - 1) / rpt; };
    auto lo_of = [&](int r) { return a.sw > 0 ? max(0, own_of(r) - a.sw + 1) : 0; };
    const int own = own_of(nr - 1), lo = lo_of(0);
    // Splits take whole 32-token blocks, so no block is read by two. At
    // short context the blocks fall to splits spread over the range (with
    // one block, the last split's), so split 0's sinks run beside them.
    // Handing the blocks to splits 0, 1, ... instead measured 739 tokens/s
    // at depth 0 against 792 (1B shape, H200, two leases).
    const int b_lo = lo / KV_BLOCK_TOKENS, nbk = own / KV_BLOCK_TOKENS + 1 - b_lo;
    const int t0 = max(lo, (b_lo + (int)((int64_t)nbk * split / a.n_split)) * KV_BLOCK_TOKENS);
    const int t1 = min(own + 1, (b_lo + (int)((int64_t)nbk * (split + 1) / a.n_split)) * KV_BLOCK_TOKENS);
    const int first = max(t0, KV_PCA_SINKS);
    const int n_entries = a.n_entries();
    const int wb0 = a.k.win > 0 ? a.k.bstate[0] : 0, wbn = a.k.win > 0 ? a.k.bstate[1] : 0;
    const size_t qrow = 3 * hd + kQStride;
    if (first >= t1 && split != 0) {
        // Nothing here (a decode graph's splits cover the whole context): an
        // empty entry, {m, l} = {-inf, 0}, whose output the merge skips.
        for (int i = threadIdx.x; i < 2 * nr; i += blockDim.x)
            a.partial[(row_of(i / 2) * n_entries + split) * (hd + 2) + i % 2] = i % 2 == 0 ? -INFINITY : 0.0f;
        return;
    }

    const int KK = (knk + 15) / 16, KR = (knp + 7) / 8, KV = (vnk + 15) / 16;
    // The run tables' fragments, copied asynchronously while the rest is set up.
    const uint4* kfrag = a.k.run_frag + (size_t)kvh * (hd / 16) * 4 * 32;
    for (int i = threadIdx.x; i < KR * 4 * 32; i += blockDim.x)
        __pipeline_memcpy_async(&tfrag[i], &kfrag[i], 16);
    __pipeline_commit();

    // Per row (a warp each): the scale 2^(14-e) that brings its largest weight
    // or rope coefficient |A|+|B| under 2^14, and the scaled A, B.
    for (int r = warp; r < kRows; r += kWarps) {
        const float* qp = a.qprep + row_of(min(r, nr - 1)) * qrow;
        float mx = 0.0f;
        if (r < nr)
            for (int i = lane; i < hd; i += 32) {
                if (i < knk) mx = fmaxf(mx, fabsf(qp[hd + i]));
                if (i < knp) mx = fmaxf(mx, fabsf(qp[2 * hd + 2 * i]) + fabsf(qp[2 * hd + 2 * i + 1]));
            }
        int e = 0;
        frexpf(warp_max(mx), &e);
        e = max(e, -100);
        const float sc = ldexpf(1.0f, 14 - e);
        if (lane == 0) {
            Kr[r] = r < nr ? qp[3 * hd] : 0.0f;
            isc[r] = ldexpf(1.0f, e - 14);
        }
        for (int i = lane; i < HD / 2; i += 32) {
            const bool on = r < nr && i < knp;
            ab[r * L::AB + 2 * i] = on ? qp[2 * hd + 2 * i] * sc : 0.0f;
            ab[r * L::AB + 2 * i + 1] = on ? qp[2 * hd + 2 * i + 1] * sc : 0.0f;
        }
    }
    for (int i = threadIdx.x; i < HD; i += blockDim.x) {
        koffb[i] = i < knk ? make_int2(a.k.koff[(size_t)kvh * hd + i], a.k.kbits[(size_t)kvh * hd + i])
                           : make_int2(0, 0);
        voffb[i] = i < vnk ? make_int2(a.v.koff[(size_t)kvh * hd + i], a.v.kbits[(size_t)kvh * hd + i])
                           : make_int2(0, 0);
    }
    __syncthreads();  // isc
    // The key weights' fragments: row g's high halves as rows g, its low as g+8.
    for (int i = threadIdx.x; i < KK * 32; i += blockDim.x) {
        const int ks = i / 32, gg = (i % 32) / 4, kk = i % 4, r = min(gg, nr - 1);
        const float* w = a.qprep + row_of(r) * qrow + hd;
        const float sc = 1.0f / isc[r];
        float x[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = ks * 16 + 2 * kk + (j & 1) + 8 * (j >> 1);
            x[j] = gg < nr && c < knk ? w[c] * sc : 0.0f;
        }
        uint4 f;
        split_half2(x[0], x[1], f.x, f.y);
        split_half2(x[2], x[3], f.z, f.w);
        wfrag[i] = f;
    }
    __pipeline_wait_prior(0);  // the run tables
    const float* ktab = a.k.run_tab + (size_t)kvh * (hd / 2) * 64;
    __syncthreads();

    const bool row_on = g < nr;
    const int own_g = own_of(g), lo_g = lo_of(g);
    // Scores are kept in base 2 (times log2 e), so each p is one exp2.
    constexpr float kLog2e = 1.4426950408889634f;
    const float Kg = Kr[g] * kLog2e, iscg = isc[g] * kLog2e;
    float m = -INFINITY, l = 0.0f, ps = 0.0f;  // row g's, this lane's share of l and ps
    float acc[KS][4];  // O[kept mt*16 + g (+8)][row 2k4 (+1)]
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
    float* cs = reinterpret_cast<float*>(smb + L::cs) + warp * HD;
    float2* scl = reinterpret_cast<float2*>(smb + L::scl) + warp * 32;
    const int n_ctx = a.k.n_ctx;
    const uint8_t* kcodes = a.k.codes + a.k.head_off[kvh];
    const uint8_t* vcodes = a.v.codes + a.v.head_off[kvh];
    const size_t kblk = kinfo[1], vblk = vinfo[1];
    const uint8_t* kscale = a.k.scale + (size_t)kvh * n_ctx;
    const uint8_t* vscale = a.v.scale + (size_t)kvh * n_ctx;
    // This lane's rope pairs (lane, lane + 32, ...) and their frequencies.
    const float* kpairs = a.k.pairs + (size_t)kvh * (hd / 2) * 5;
    constexpr int kLanePairs = (HD / 2 + 31) / 32;
    float freq[kLanePairs];
#pragma unroll
    for (int j = 0; j < kLanePairs; ++j) {
        const int i = lane + 32 * j;
        freq[j] = i < knp ? kpairs[i * 5 + 4] : 0.0f;
    }

    // Each warp stages its next block's key and value codes in shared memory
    // (asynchronous copies) while it works on the current one.
    const int kst = stage_bytes(a.k.max_block), vst = stage_bytes(a.v.max_block);
    uint8_t* slots = smb + L::slots + (size_t)warp * 2 * (kst + vst);
    auto stage = [&](int blk, int slot) {
        uint8_t* dst = slots + (size_t)slot * (kst + vst);
        stage_async(dst, kcodes + (size_t)blk * kblk, (int)kblk, lane);
        stage_async(dst + kst, vcodes + (size_t)blk * vblk, (int)vblk, lane);
    };
    // The scale codes of this lane's token, read a block ahead into registers.
    auto scale_codes = [&](int blk) {
        const int pos = blk * KV_BLOCK_TOKENS + lane;
        return pos < t1 ? make_uint2(kscale[pos], vscale[pos]) : make_uint2(0, 0);
    };
    int slot = 0;
    const int b_first = first / KV_BLOCK_TOKENS + warp;
    if (first < t1 && b_first * KV_BLOCK_TOKENS < t1) stage(b_first, 0);
    __pipeline_commit();
    uint2 sc_cur = first < t1 ? scale_codes(b_first) : make_uint2(0, 0);
    if (first < t1)
        for (int b = b_first; b * KV_BLOCK_TOKENS < t1; b += kWarps, slot ^= 1) {
            const bool more = (b + kWarps) * KV_BLOCK_TOKENS < t1;
            if (more) stage(b + kWarps, slot ^ 1);
            __pipeline_commit();
            const uint2 sc_next = more ? scale_codes(b + kWarps) : make_uint2(0, 0);
            const int base = b * KV_BLOCK_TOKENS, pos = base + lane;
            const bool valid = pos >= first && pos < t1;
            scl[lane] = valid ? make_float2(kv_pca_scale_value(sc_cur.x), kv_pca_scale_value(sc_cur.y))
                              : make_float2(0.0f, 0.0f);
            // The rope mean's angles at the block's start, in double.
#pragma unroll
            for (int j = 0; j < kLanePairs; ++j) {
                const int i = lane + 32 * j;
                if (i >= KR * 8) break;
                float s0 = 0.0f, c0 = 0.0f;
                if (i < knp) angle_sincos((double)base * (double)freq[j], &s0, &c0);
                cs[2 * i] = c0;
                cs[2 * i + 1] = s0;
            }
            __pipeline_wait_prior(1);  // this block's copies
            __syncwarp();
            const uint8_t* kb = slots + (size_t)slot * (kst + vst);
            const uint8_t* vb = kb + kst;
            kb += stage_offset(kcodes + (size_t)b * kblk);
            vb += stage_offset(vcodes + (size_t)b * vblk);

            // Keys: column n of n-tile nt is token 4n + nt, so this lane's B
            // columns, tokens 4g .. 4g+3 of kept channels ks*16 + 2k4 (+1, +8,
            // +9), come from one 4-code window of each channel's group.
            float ck[4][4], cr[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int j = 0; j < 4; ++j) ck[nt][j] = cr[nt][j] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {  // unrolled: the next step's loads go ahead
                if (ks >= KK) break;
                const uint4 A = wfrag[ks * 32 + lane];
                int bits[4];
                uint32_t mk[4], x[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int2 o = koffb[ks * 16 + 2 * k4 + (j & 1) + 8 * (j >> 1)];
                    bits[j] = o.y;
                    mk[j] = (1u << o.y) - 1u;
                    x[j] = group_bits(kb + o.x, 4 * g * o.y);
                }
                const uint32_t mh1 = mk[1] << 16, mh3 = mk[3] << 16;
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    mma16816(ck[nt], A.x, A.y, A.z, A.w, codes_half2(x[0], mk[0], x[1], mh1),
                             codes_half2(x[2], mk[2], x[3], mh3));
#pragma unroll
                    for (int j = 0; j < 4; ++j) x[j] >>= bits[j];  // the next token's code
                }
            }
            // The rope mean's term: row g's coefficients of pairs kr*8 + k4 and
            // +4 turned to the block's start, against the run tables.
#pragma unroll
            for (int kr = 0; kr < KS; ++kr) {
                if (kr >= KR) break;
                const int p0 = kr * 8 + k4, p1 = p0 + 4;
                const float A0 = ab[g * L::AB + 2 * p0], B0 = ab[g * L::AB + 2 * p0 + 1];
                const float A1 = ab[g * L::AB + 2 * p1], B1 = ab[g * L::AB + 2 * p1 + 1];
                const float c0 = cs[2 * p0], s0 = cs[2 * p0 + 1], c1 = cs[2 * p1], s1 = cs[2 * p1 + 1];
                uint32_t a0, a1, a2, a3;
                split_half2(A0 * c0 + B0 * s0, B0 * c0 - A0 * s0, a0, a1);
                split_half2(A1 * c1 + B1 * s1, B1 * c1 - A1 * s1, a2, a3);
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    const uint4 T = tfrag[(kr * 4 + nt) * 32 + lane];
                    mma16816(cr[nt], a0, a1, a2, a3, T.x, T.y);
                    mma16816(cr[nt], a0, a1, a2, a3, T.z, T.w);
                }
            }

            // Scores of row g at tokens 8k4 + 4e + nt (accumulator e, columns
            // 2k4 + e); online softmax per row.
            float s[4][2], av[4][2];
            float bm = -INFINITY;
            // Bit 2nt + e: this lane's token 8k4 + 4e + nt is in row g's window
            // and held there, so it takes its exact y in the window's entry,
            // not the codes (a loop kept rolled: rarely any, and little code).
            uint32_t held = 0;
            if (WIN && base + KV_BLOCK_TOKENS > own_g - a.k.win + 1) {
#pragma unroll 1
                for (int i = 0; i < 8; ++i) {
                    const int p = base + 8 * k4 + 4 * (i & 1) + (i >> 1);
                    if (p > own_g - a.k.win && p <= own_g && window_rec(a.k, wb0, wbn, kvh, p)) held |= 1u << i;
                }
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int tok = 8 * k4 + 4 * e + nt, p = base + tok;
                    const bool on = row_on && p >= first && p < t1 && p >= lo_g && p <= own_g &&
                                    !(held >> (2 * nt + e) & 1);
                    const float2 sc2 = scl[tok];  // {a_k, a_v}
                    const float ak = sc2.x;
                    av[nt][e] = sc2.y;
                    const float key = (ck[nt][e] + ck[nt][e + 2]) * iscg + Kg;
                    s[nt][e] = on ? ak * key + (cr[nt][e] + cr[nt][e + 2]) * iscg : -INFINITY;
                    bm = fmaxf(bm, s[nt][e]);
                }
            }
            bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, 1));
            bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, 2));
            const float mnew = fmaxf(m, bm);
            // mnew is -inf only while no position of this row was valid; then
            // every p and corr is exp2(-inf) = 0 (and l, ps, acc are still 0).
            const float msafe = mnew == -INFINITY ? 0.0f : mnew;
            const float corr = exp2f(m - msafe);
            m = mnew;
            float pv[4][2], lsum = 0.0f, psum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = exp2f(s[nt][e] - msafe);
                    lsum += p;
                    pv[nt][e] = p * av[nt][e];
                    psum += pv[nt][e];
                }
            l = l * corr + lsum;
            ps = ps * corr + psum;
            // This lane's accumulators are rows 2k4 and 2k4+1 (lanes 8k4, 8k4+4 hold them).
            const float corr0 = __shfl_sync(0xffffffffu, corr, 8 * k4);
            const float corr1 = __shfl_sync(0xffffffffu, corr, 8 * k4 + 4);
            // P's fragments: value k-step ks2 takes tokens 8k4 + 4ks2 .. +3, so
            // its k = 2k4, 2k4+1, 2k4+8, 2k4+9 are tokens t, t+1, t+2, t+3 with
            // t = 8k4 + 4ks2 (accumulator e = ks2 of n-tiles 0 .. 3): each half
            // pair of codes is two neighbours in a group.
            uint32_t ph[2][2], pl[2][2];
#pragma unroll
            for (int ks2 = 0; ks2 < 2; ++ks2)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    split_half2(pv[2 * h][ks2], pv[2 * h + 1][ks2], ph[ks2][h], pl[ks2][h]);
            // Values: kept channels mt*16 + g and +8, tokens 8k4 + 4ks2 .. +3 from a
            // 4-code window of each group per k-step, two codes at a time.
#pragma unroll
            for (int mt = 0; mt < KS; ++mt) {
                acc[mt][0] *= corr0;
                acc[mt][1] *= corr1;
                acc[mt][2] *= corr0;
                acc[mt][3] *= corr1;
                if (mt >= KV) continue;
                const int2 o0 = voffb[mt * 16 + g], o1 = voffb[mt * 16 + g + 8];
                const int b0 = o0.y, b1 = o1.y;
                const uint32_t m0 = (1u << b0) - 1u, m1 = (1u << b1) - 1u;
                const uint32_t mh0 = m0 << 16, mh1 = m1 << 16;
#pragma unroll
                for (int ks2 = 0; ks2 < 2; ++ks2) {
                    uint32_t x0 = group_bits(vb + o0.x, (8 * k4 + 4 * ks2) * b0);
                    uint32_t x1 = group_bits(vb + o1.x, (8 * k4 + 4 * ks2) * b1);
                    const uint32_t a0 = codes_half2(x0, m0, x0, mh0, 16 - b0);
                    const uint32_t a1 = codes_half2(x1, m1, x1, mh1, 16 - b1);
                    x0 >>= 2 * b0;
                    x1 >>= 2 * b1;
                    const uint32_t a2 = codes_half2(x0, m0, x0, mh0, 16 - b0);
                    const uint32_t a3 = codes_half2(x1, m1, x1, mh1, 16 - b1);
                    mma16816(acc[mt], a0, a1, a2, a3, ph[ks2][0], ph[ks2][1]);
                    mma16816(acc[mt], a0, a1, a2, a3, pl[ks2][0], pl[ks2][1]);
                }
            }
            __syncwarp();  // scl, cs and this slot are free again
            sc_cur = sc_next;  // first waited on here, a block later
        }
    __pipeline_wait_prior(0);

    // The warps' partial results merged into the block's, per row, in the
    // value basis: o_c = step_c sum_w f_w acc_w,c + lo_c sum_w f_w ps_w for
    // kept channels (f_w = 2^(m_w - M)), 0 for the others. Each warp leaves
    // its f_w acc_w in a slice of its own (the staging slots, free now); a
    // thread per row and kept index then adds the slices in warp order.
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    ps += __shfl_xor_sync(0xffffffffu, ps, 2);
    if (k4 == 0) {
        mw[warp * kRows + g] = m;
        lw[warp * kRows + g] = l;
        pw[warp * kRows + g] = ps;
    }
    __syncthreads();  // the slots are free again; every warp's m is in
    // 2^(m_w - M) of warp w and row r, 0 where the warp saw no position.
    auto weight = [&](int w, int r, float M) {
        const float mr = mw[w * kRows + r];
        return mr == -INFINITY ? 0.0f : exp2f(mr - M);
    };
    auto row_max = [&](int r) {
        float M = -INFINITY;
        for (int w = 0; w < kWarps; ++w) M = fmaxf(M, mw[w * kRows + r]);
        return M;
    };
    if (threadIdx.x < nr) {
        // Row r's max and normaliser, and sum_w f_w ps_w (in Kr, free now).
        const int r = threadIdx.x;
        const float M = row_max(r);
        float lr = 0.0f, pr = 0.0f;
        for (int w = 0; w < kWarps; ++w) {
            const float f = weight(w, r, M);
            lr += f * lw[w * kRows + r];
            pr += f * pw[w * kRows + r];
        }
        float* out = a.partial + (row_of(r) * n_entries + split) * (hd + 2);
        out[0] = M * 0.6931471805599453f;  // back to base e for the merge
        out[1] = lr;
        Kr[r] = pr;
    }
    float* slice = reinterpret_cast<float*>(smb + L::slots);  // [kWarps][kRows][L::OS]
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const int r = 2 * k4 + e;
        if (r >= nr) continue;
        const float f = weight(warp, r, row_max(r));
        float* sw = slice + (warp * kRows + r) * L::OS;
#pragma unroll
        for (int mt = 0; mt < KS; ++mt)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) sw[mt * 16 + g + 8 * hh] = f * acc[mt][e + 2 * hh];
    }
    __syncthreads();
    const float* vlo = a.v.lo + (size_t)kvh * hd;
    const float* vstep = a.v.step + (size_t)kvh * hd;
    const int* vkeep = a.v.keep + (size_t)kvh * hd;  // kept channels, then the others
    for (int j = threadIdx.x; j < nr * hd; j += blockDim.x) {
        const int r = j / hd, i = j % hd, c = vkeep[i];
        float o = 0.0f;
        if (i < vnk) {
            float sa = 0.0f;
            for (int w = 0; w < kWarps; ++w) sa += slice[(w * kRows + r) * L::OS + i];
            o = vstep[c] * sa + vlo[c] * Kr[r];
        }
        a.partial[(row_of(r) * n_entries + split) * (hd + 2) + 2 + c] = o;
    }

    // The sink positions (half y, every channel) make the last entry.
    // A warp per row; the angles of the first positions are the run tables'.
    // The sinks are taken side by side (loops unrolled, so their loads are in
    // flight together), each summed in the order of one sink at a time.
    if (split != 0) return;
    const uint16_t* ksink = a.k.sinks + (size_t)kvh * KV_PCA_SINKS * hd;
    const uint16_t* vsink = a.v.sinks + (size_t)kvh * KV_PCA_SINKS * hd;
    for (int r = warp; r < nr; r += kWarps) {
        const int s0 = lo_of(r), s1 = min(KV_PCA_SINKS, own_of(r) + 1);
        auto held_sink = [&](int sp) { return sp >= s0 && sp < s1; };
        const float* qy = a.qprep + row_of(r) * qrow;
        const float* qab = qy + 2 * hd;
        float sc[KV_PCA_SINKS] = {};
#pragma unroll
        for (int c = lane; c < HD; c += 32) {
            if (c >= hd) break;  // hd is a multiple of 32: the whole warp
            const float qc = qy[c];
#pragma unroll
            for (int sp = 0; sp < KV_PCA_SINKS; ++sp)
                sc[sp] += qc * half_bits_to_float(ksink[sp * hd + c]);
        }
#pragma unroll
        for (int i = lane; i < HD / 2; i += 32) {
            if (i >= knp) continue;
            const float A = qab[2 * i], B = qab[2 * i + 1];
#pragma unroll
            for (int sp = 0; sp < KV_PCA_SINKS; ++sp)
                sc[sp] += A * ktab[i * 64 + sp] + B * ktab[i * 64 + 32 + sp];
        }
        float mx = -INFINITY, lsum = 0.0f;
#pragma unroll
        for (int sp = 0; sp < KV_PCA_SINKS; ++sp) {
            sc[sp] = warp_sum(sc[sp]);
            if (held_sink(sp)) mx = fmaxf(mx, sc[sp]);
        }
#pragma unroll
        for (int sp = 0; sp < KV_PCA_SINKS; ++sp) {
            sc[sp] = held_sink(sp) ? expf(sc[sp] - mx) : 0.0f;
            lsum += sc[sp];
        }
        float* out = a.partial + (row_of(r) * n_entries + a.n_split) * (hd + 2);
        if (lane == 0) {
            out[0] = mx;
            out[1] = lsum;
        }
#pragma unroll
        for (int c = lane; c < HD; c += 32) {
            if (c >= hd) break;
            float o = 0.0f;
#pragma unroll
            for (int sp = 0; sp < KV_PCA_SINKS; ++sp)
                if (held_sink(sp)) o += sc[sp] * half_bits_to_float(vsink[sp * hd + c]);
            out[2 + c] = o;
        }
    }
    // The window's entry: each row's held window positions (past the sinks),
    // scored from the keys' exact y plus the rope mean's term at the
    // position, their values' exact y summed. A warp per row, a position at
    // a time (the window is short).
    if constexpr (WIN) {
        for (int r = warp; r < nr; r += kWarps) {
            const int own = own_of(r), w0 = max(max(lo_of(r), KV_PCA_SINKS), own - a.k.win + 1);
            const float* qy = a.qprep + row_of(r) * qrow;
            const float* qab = qy + 2 * hd;
            float* out = a.partial + (row_of(r) * n_entries + a.n_split + 1) * (hd + 2);
            float mx = -INFINITY, lsum = 0.0f, o[kMaxDim / 32];
#pragma unroll
            for (int j = 0; j < kMaxDim / 32; ++j) o[j] = 0.0f;
            for (int t = w0; t <= own; ++t) {
                const uint8_t* krec = window_rec(a.k, wb0, wbn, kvh, t);
                const uint8_t* vrec = window_rec(a.v, a.v.bstate[0], a.v.bstate[1], kvh, t);
                if (!krec || !vrec) continue;
                float d = 0.0f;
                for (int c = lane; c < hd; c += 32) d += qy[c] * window_y(a.k, krec, kvh, c);
                for (int i = lane; i < knp; i += 32) {
                    double sn, cs;
                    sincos((double)t * (double)kpairs[i * 5 + 4], &sn, &cs);
                    d += qab[2 * i] * (float)cs + qab[2 * i + 1] * (float)sn;
                }
                const float sv = warp_sum(d);
                // Online softmax over the positions, the output kept per lane's channels.
                const float mnew = fmaxf(mx, sv), corr = expf(mx - mnew), p = expf(sv - mnew);
                mx = mnew;
                lsum = lsum * corr + p;
#pragma unroll
                for (int j = 0; j < kMaxDim / 32; ++j) {
                    const int c = lane + 32 * j;
                    if (c < hd) o[j] = o[j] * corr + p * window_y(a.v, vrec, kvh, c);
                }
            }
            if (lane == 0) {
                out[0] = mx;
                out[1] = lsum;
            }
#pragma unroll
            for (int j = 0; j < kMaxDim / 32; ++j) {
                const int c = lane + 32 * j;
                if (c < hd) out[2 + c] = o[j];
            }
        }
    }
}

template <int HD, bool WIN>
void launch_span_pca(dim3 grid, cudaStream_t s, const pca_span_args& a) {
    const size_t smem = span_smem<HD>::bytes(a.k, a.v);
    static size_t allowed = 48 * 1024;  // per instantiation
    allow_dynamic_smem(attn_span_pca_kernel<HD, WIN>, smem, allowed);
    launch_pdl(attn_span_pca_kernel<HD, WIN>, grid, span_smem<HD>::W * 32, smem, s, a);
}

// Row groups of n_rep query heads per kv head.
int row_groups(int n_rep) { return (n_rep + kRows - 1) / kRows; }

// Tokens per span block: as many tokens' query heads of a kv head as fit in
// kRows rows, so they share the block's reads of the codes.
int tokens_per_block(int n_rep, int n_tok) { return n_rep <= kRows ? std::min(n_tok, kRows / n_rep) : 1; }

// Span blocks before splitting.
int span_blocks(int n_tok, int n_head_kv, int n_rep) {
    const int tpb = tokens_per_block(n_rep, n_tok);
    return (n_tok + tpb - 1) / tpb * n_head_kv * row_groups(n_rep);
}

// Blocks of 32 positions that n positions from pos0 touch; with pos_dev the
// start is known only on the device, so one more (it finds nothing to do
// when aligned).
int store_blocks(int pos0, int n, const int* pos_dev) {
    return pos_dev ? (n + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS + 1
                   : (pos0 + n - 1) / KV_BLOCK_TOKENS - pos0 / KV_BLOCK_TOKENS + 1;
}

int pca_splits(int blocks, int max_len, int n_sm, int hd) {
    // Each warp takes its own 32-token blocks (their codes staged ahead):
    // 16 warps per multiprocessor, so that a split holds enough blocks to pay
    // for its setup (with blocks of four warps, four blocks per
    // multiprocessor measured best of 1, 2, 4 and 8). Blocks of eight warps
    // share one setup between twice the warps, and the merge has half the
    // entries.
    const int target = kWarpsPerSM / span_warps(hd) * n_sm;
    if (blocks >= target) return 1;
    return std::max(1, std::min((target + blocks - 1) / blocks, max_len / kMinSpan));
}

// The span launch's arguments for n_tok queries at pos0 (+ *pos_dev) over
// keys k and values v, split for contexts up to max_len.
pca_span_args span_args(const cuda_pca& k, const cuda_pca& v, const float* qprep, int n_head,
                        int sliding_window, int pos0, const int* pos_dev, int n_tok, int max_len, int n_sm,
                        float* partial) {
    pca_span_args a;
    a.k = k;
    a.v = v;
    a.qprep = qprep;
    a.n_head = n_head;
    a.n_rep = n_head / k.n_head_kv;
    a.n_rg = row_groups(a.n_rep);
    a.sw = sliding_window;
    a.pos0 = pos0;
    a.pos_dev = pos_dev;
    a.n_tok = n_tok;
    a.tpb = tokens_per_block(a.n_rep, n_tok);
    a.n_split = pca_splits(span_blocks(n_tok, k.n_head_kv, a.n_rep), max_len, n_sm, k.head_dim);
    a.partial = partial;
    return a;
}

// The span kernel of a's head size and window over a's grid.
void launch_span(const pca_span_args& a, cudaStream_t s) {
    const dim3 grid(a.n_split, a.k.n_head_kv * a.n_rg, (a.n_tok + a.tpb - 1) / a.tpb);
    const int hd = a.k.head_dim;
    const bool win = a.k.win > 0;
    if (hd <= 64) win ? launch_span_pca<64, true>(grid, s, a) : launch_span_pca<64, false>(grid, s, a);
    else if (hd <= 128) win ? launch_span_pca<128, true>(grid, s, a) : launch_span_pca<128, false>(grid, s, a);
    else win ? launch_span_pca<256, true>(grid, s, a) : launch_span_pca<256, false>(grid, s, a);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

cuda_pca_stream::cuda_pca_stream(const std::vector<kv_pca_head>& heads, int n_ctx, int window, int window8,
                                 int max_batch) {
    if (heads.empty()) throw error("CUDA pca stream: no heads");
    const int nh = (int)heads.size(), hd = (int)heads[0].mean.size();
    if (hd % 32 != 0 || hd > kMaxDim)
        throw error("CUDA: KV format pca needs head_dim 32, 64, 128 or 256, not " + std::to_string(hd));
    const int n_blocks = (n_ctx + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
    const kv_pca_head& h0 = heads[0];
    const int nf = (int)h0.rope_freq.size();
    // Host images of the device arrays, in the layout of cuda_pca.
    std::vector<float> basis, basis_t((size_t)nh * hd * hd), mean, sigma, lo, step, rmean, pairs((size_t)nh * (hd / 2) * 5, 0.0f),
        tab((size_t)nh * (hd / 2) * 64, 0.0f);
    std::vector<int> info((size_t)nh * 4, 0), keep((size_t)nh * hd, 0), kbits((size_t)nh * hd, 0),
        koff((size_t)nh * hd, 0), cbits((size_t)nh * hd, 0);
    std::vector<int64_t> head_off(nh);
    int64_t off = 0;
    for (int h = 0; h < nh; ++h) {
        const kv_pca_head& p = heads[h];
        if ((int)p.mean.size() != hd || p.basis.size() != (size_t)hd * hd || (int)p.bits.size() != hd ||
            (int)p.lo.size() != hd || (int)p.step.size() != hd || (int)p.sigma.size() != hd)
            throw error("CUDA pca stream: inconsistent calibration shapes");
        basis.insert(basis.end(), p.basis.begin(), p.basis.end());
        for (int c = 0; c < hd; ++c)
            for (int d = 0; d < hd; ++d)
                basis_t[((size_t)h * hd + d) * hd + c] = p.basis[(size_t)c * hd + d];
        mean.insert(mean.end(), p.mean.begin(), p.mean.end());
        sigma.insert(sigma.end(), p.sigma.begin(), p.sigma.end());
        lo.insert(lo.end(), p.lo.begin(), p.lo.end());
        step.insert(step.end(), p.step.begin(), p.step.end());
        if (p.rope_mean.empty()) rmean.insert(rmean.end(), hd, 0.0f);
        else rmean.insert(rmean.end(), p.rope_mean.begin(), p.rope_mean.end());
        int nk = 0, blk = 0;
        for (int c = 0; c < hd; ++c) {
            const int b = p.bits[c];
            if (b > KV_MAX_BITS) throw error("CUDA pca stream: bits above 8");
            cbits[(size_t)h * hd + c] = b;
            if (b == 0) continue;
            keep[(size_t)h * hd + nk] = c;
            kbits[(size_t)h * hd + nk] = b;
            koff[(size_t)h * hd + nk] = blk;
            blk += kv_group_bytes(b);
            ++nk;
        }
        // The CPU stream's rope pairs: those whose mean is not zero.
        int np = 0;
        if (!p.rope_mean.empty()) {
            if ((int)p.rope_freq.size() != nf || p.pair_stride != h0.pair_stride || p.pair_gap != h0.pair_gap)
                throw error("CUDA pca stream: heads differ in their rotary pairs");
            for (int i = 0; i < nf; ++i) {
                if (!kv_pca_pair_held(p, i)) continue;
                const int a = i * p.pair_stride, b = a + p.pair_gap;
                float* pr = &pairs[((size_t)h * (hd / 2) + np) * 5];
                pr[0] = (float)a;
                pr[1] = (float)b;
                pr[2] = p.rope_mean[a];
                pr[3] = p.rope_mean[b];
                pr[4] = p.rope_freq[i];
                float* tb = &tab[((size_t)h * (hd / 2) + np) * 64];
                for (int j = 0; j < KV_BLOCK_TOKENS; ++j) {
                    tb[j] = (float)std::cos((double)j * p.rope_freq[i]);
                    tb[32 + j] = (float)std::sin((double)j * p.rope_freq[i]);
                }
                ++np;
            }
        }
        // keep runs on past the kept channels with the others (the span
        // kernel writes their zeros through it).
        for (int c = 0, j = nk; c < hd; ++c)
            if (p.bits[c] == 0) keep[(size_t)h * hd + j++] = c;
        dev_.max_block = std::max(dev_.max_block, blk);
        info[(size_t)h * 4] = nk;
        info[(size_t)h * 4 + 1] = blk;
        info[(size_t)h * 4 + 2] = np;
        head_off[h] = off;
        off += (int64_t)blk * n_blocks;
    }
    // The span kernel's fragments of the tables: for k-step kr, n-tile nt and
    // lane (g, k) = (lane / 4, lane % 4), pairs kr*8 + k and +4 at offset
    // 4g + nt, {b0, b1} in high halves, then in low halves.
    std::vector<uint32_t> frag((size_t)nh * (hd / 16) * 4 * 32 * 4, 0);
    for (int h = 0; h < nh; ++h)
        for (int i = 0; i < (hd / 16) * 4 * 32; ++i) {
            const int kr = i / 128, nt = (i / 32) % 4, g = (i % 32) / 4, k = i % 4, j = 4 * g + nt;
            const int np = info[(size_t)h * 4 + 2], p0 = kr * 8 + k, p1 = p0 + 4;
            const float* tb = &tab[(size_t)h * (hd / 2) * 64];
            float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (p0 < np) x[0] = tb[p0 * 64 + j], x[1] = tb[p0 * 64 + 32 + j];
            if (p1 < np) x[2] = tb[p1 * 64 + j], x[3] = tb[p1 * 64 + 32 + j];
            uint32_t* f = &frag[((size_t)h * (hd / 16) * 4 * 32 + i) * 4];
            split_half2(x[0], x[1], f[0], f[2]);
            split_half2(x[2], x[3], f[1], f[3]);
        }
    std::vector<float> freq = h0.rope_freq;
    if (freq.empty()) freq.push_back(0.0f);

    // One allocation for the calibration, one for the cache.
    struct piece {
        const void* src;
        size_t bytes;
        size_t at;
    };
    std::vector<piece> pieces;
    size_t total = 0;
    auto add = [&](const void* src, size_t bytes) {
        pieces.push_back({src, bytes, total});
        total += (bytes + 255) / 256 * 256;
        return pieces.size() - 1;
    };
    const size_t i_basis = add(basis.data(), basis.size() * 4),
                 i_basis_t = add(basis_t.data(), basis_t.size() * 4), i_mean = add(mean.data(), mean.size() * 4),
                 i_sigma = add(sigma.data(), sigma.size() * 4), i_lo = add(lo.data(), lo.size() * 4),
                 i_step = add(step.data(), step.size() * 4), i_rm = add(rmean.data(), rmean.size() * 4),
                 i_freq = add(freq.data(), freq.size() * 4), i_info = add(info.data(), info.size() * 4),
                 i_keep = add(keep.data(), keep.size() * 4), i_kbits = add(kbits.data(), kbits.size() * 4),
                 i_koff = add(koff.data(), koff.size() * 4), i_cbits = add(cbits.data(), cbits.size() * 4),
                 i_pairs = add(pairs.data(), pairs.size() * 4), i_tab = add(tab.data(), tab.size() * 4),
                 i_frag = add(frag.data(), frag.size() * 4),
                 i_hoff = add(head_off.data(), head_off.size() * 8);
    KVRT_CUDA_CHECK(cudaMalloc(&calib_, total));
    std::vector<uint8_t> img(total, 0);
    for (const piece& pc : pieces) std::memcpy(img.data() + pc.at, pc.src, pc.bytes);
    KVRT_CUDA_CHECK(cudaMemcpy(calib_, img.data(), total, cudaMemcpyHostToDevice));
    auto at = [&](size_t i) { return static_cast<uint8_t*>(calib_) + pieces[i].at; };
    dev_.n_head_kv = nh;
    dev_.head_dim = hd;
    dev_.n_ctx = n_ctx;
    dev_.n_freq = nf;
    dev_.pair_stride = h0.pair_stride;
    dev_.pair_gap = h0.pair_gap;
    dev_.basis = reinterpret_cast<const float*>(at(i_basis));
    dev_.basis_t = reinterpret_cast<const float*>(at(i_basis_t));
    dev_.mean = reinterpret_cast<const float*>(at(i_mean));
    dev_.sigma = reinterpret_cast<const float*>(at(i_sigma));
    dev_.lo = reinterpret_cast<const float*>(at(i_lo));
    dev_.step = reinterpret_cast<const float*>(at(i_step));
    dev_.rope_mean = reinterpret_cast<const float*>(at(i_rm));
    dev_.rope_freq = reinterpret_cast<const float*>(at(i_freq));
    dev_.head = reinterpret_cast<const int*>(at(i_info));
    dev_.keep = reinterpret_cast<const int*>(at(i_keep));
    dev_.kbits = reinterpret_cast<const int*>(at(i_kbits));
    dev_.koff = reinterpret_cast<const int*>(at(i_koff));
    dev_.cbits = reinterpret_cast<const int*>(at(i_cbits));
    dev_.pairs = reinterpret_cast<const float*>(at(i_pairs));
    dev_.run_tab = reinterpret_cast<const float*>(at(i_tab));
    dev_.run_frag = reinterpret_cast<const uint4*>(at(i_frag));
    dev_.head_off = reinterpret_cast<const int64_t*>(at(i_hoff));

    code_bytes_ = (size_t)off;
    scale_bytes_ = (size_t)nh * n_ctx;
    sink_bytes_ = (size_t)nh * KV_PCA_SINKS * hd * sizeof(uint16_t);
    const size_t codes_alloc = (code_bytes_ + kCodePad + 255) / 256 * 256;
    const size_t scale_alloc = (scale_bytes_ + 255) / 256 * 256;
    const size_t cache = codes_alloc + scale_alloc + sink_bytes_;
    KVRT_CUDA_CHECK(cudaMalloc(&cache_, cache));
    KVRT_CUDA_CHECK(cudaMemset(cache_, 0, cache));
    dev_.codes = static_cast<uint8_t*>(cache_);
    dev_.scale = dev_.codes + codes_alloc;
    dev_.sinks = reinterpret_cast<uint16_t*>(dev_.codes + codes_alloc + scale_alloc);

    if (window > 0 && window8 > 0) throw error("pca window: a stream takes :wN or :eN, not both");
    dev_.win = std::max({window, window8, 0});
    if (dev_.win > 0) {
        if (max_batch < 1) throw error("CUDA pca window: no batch size");
        dev_.tier8 = window8 > 0;
        dev_.rec = dev_.tier8 ? hd + 2 : 2 * hd;
        dev_.max_batch = max_batch;
        ring_bytes_ = (size_t)dev_.win * nh * dev_.rec;
        const size_t ring_alloc = (ring_bytes_ + 255) / 256 * 256;
        const size_t pos_alloc = ((size_t)dev_.win * sizeof(int) + 255) / 256 * 256;
        const size_t batch_alloc = ((size_t)max_batch * nh * dev_.rec + 255) / 256 * 256;
        KVRT_CUDA_CHECK(cudaMalloc(&window_, ring_alloc + pos_alloc + batch_alloc + 2 * sizeof(int)));
        uint8_t* w = static_cast<uint8_t*>(window_);
        KVRT_CUDA_CHECK(cudaMemset(w, 0, ring_alloc));
        KVRT_CUDA_CHECK(cudaMemset(w + ring_alloc, 0xFF, pos_alloc));  // -1: no position
        KVRT_CUDA_CHECK(cudaMemset(w + ring_alloc + pos_alloc, 0, batch_alloc + 2 * sizeof(int)));
        dev_.ring = w;
        dev_.ring_pos = reinterpret_cast<int*>(w + ring_alloc);
        dev_.batch = w + ring_alloc + pos_alloc;
        dev_.bstate = reinterpret_cast<int*>(w + ring_alloc + pos_alloc + batch_alloc);
    }
}

cuda_pca_stream::~cuda_pca_stream() {
    if (calib_) cudaFree(calib_);
    if (cache_) cudaFree(cache_);
    if (window_) cudaFree(window_);
}

cuda_kv_stream cuda_pca_stream::view() const {
    cuda_kv_stream st;
    st.kind = KV_KIND_PCA;
    st.n_head_kv = dev_.n_head_kv;
    st.head_dim = dev_.head_dim;
    st.pca = dev_;
    return st;
}

// The window's batch made ready for a store of n tokens (k and, n_streams 2, v).
static void window_begin(const cuda_pca& k, const cuda_pca& v, int n_streams, int pos0, int n, const int* pos_dev,
                  cudaStream_t s) {
    if (k.win == 0) return;
    if (n > k.max_batch || (n_streams == 2 && n > v.max_batch))
        throw error("CUDA pca window: a store of more tokens than the window's batch holds");
    launch_pdl(pca_window_begin_kernel, 1, 256, 0, s, k, v, n_streams, pos0, pos_dev, n);
}

void cuda_kv_store_pca(const cuda_pca& p, int pos0, int n, const float* x, cudaStream_t s,
                       const int* pos_dev) {
    if (n <= 0) return;
    window_begin(p, p, 1, pos0, n, pos_dev, s);
    kv_store_pca_kernel<<<dim3(store_blocks(pos0, n, pos_dev), p.n_head_kv), p.head_dim, 0, s>>>(
        p, pos0, pos_dev, n, x);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

size_t cuda_attention_pca_qprep_floats(int n_tok, int n_head, int head_dim) {
    return (size_t)n_tok * n_head * (3 * head_dim + kQStride);
}

size_t cuda_attention_pca_partial_floats(const cuda_attn_params& p, int n_tok, int max_len,
                                         int n_sm) {
    // The most that any batch of n <= n_tok tokens takes: fewer tokens
    // make fewer blocks and so more splits each (with one or two kv heads,
    // 8 to 32 tokens took less than some smaller batches).
    size_t most = 0;
    for (int n = 1; n <= n_tok; ++n) {
        const int splits =
            pca_splits(span_blocks(n, p.n_head_kv, p.n_head / p.n_head_kv), max_len, n_sm, p.head_dim);
        most = std::max(most, (size_t)n * (splits + 2));  // the sinks' entry and the window's
    }
    return most * p.n_head * (p.head_dim + 2);
}

void cuda_attention_pca(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q,
                        int n_tok, int pos0, int n_head, int sliding_window, float* out,
                        float* partial, float* qprep, int n_sm, cudaStream_t s,
                        const int* pos_dev, int split_len, const float* xk, const float* xv,
                        void* act, const cuda_rope* rope, int rope_off) {
    if (k.kind != KV_KIND_PCA || v.kind != KV_KIND_PCA)
        throw error("CUDA: KV format pca needs pca for both keys and values on CUDA");
    const int hd = k.head_dim, n_head_kv = k.n_head_kv, n_rep = n_head / n_head_kv;
    const float scale = 1.0f / std::sqrt((float)hd);
    pca_rope pr;
    if (rope) {
        if (rope->head_dim != hd) throw error("CUDA pca attention: rope of another head size");
        pr = pca_rope{rope->inv_freq, rope->n_rot, rope->neox, rope_off};
    }
    if (k.pca.win != v.pca.win || k.pca.tier8 != v.pca.tier8)
        throw error("CUDA pca attention: keys and values need the same recent window");
    if (xk) {
        window_begin(k.pca, v.pca, 2, pos0, n_tok, pos_dev, s);
        const int nb = store_blocks(pos0, n_tok, pos_dev);
        const int blocks = 2 * nb * n_head_kv + query_blocks(n_tok, n_head_kv, n_rep);
        launch_pdl(
            query_rows(n_tok) == 1 ? pca_store_query_kernel<1> : pca_store_query_kernel<kQueryRows>,
            blocks, hd, 0, s, k.pca, v.pca, pos0, pos_dev, n_tok, xk, xv, nb, q, n_head, n_rep,
            scale, qprep, pr);
    } else {
        if (rope) throw error("CUDA pca attention: keys stored already were turned already");
        (query_rows(n_tok) == 1
             ? pca_query_kernel<1>
             : pca_query_kernel<kQueryRows>)<<<query_blocks(n_tok, n_head_kv, n_rep), hd, 0, s>>>(
            k.pca, q, n_tok, n_head, n_rep, scale, qprep, pos0, pos_dev, pr);
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
    const pca_span_args a = span_args(k.pca, v.pca, qprep, n_head, sliding_window, pos0, pos_dev, n_tok,
                                      split_len > 0 ? split_len : pos0 + n_tok, n_sm, partial);
    launch_span(a, s);
    cuda_attention_merge(partial, n_tok * n_head, a.n_entries(), hd, 0, v.pca.basis_t,
                         v.pca.mean, n_head, n_rep, out, s, act);
}

}  // namespace kvrt
