// Weight x activation products on the GPU, weights kept in their file types.
// Decode and small batches (n <= 8 tokens per launch chunk): a warp takes
// two weight rows of a block type, each lane whole 32-element blocks of both
// (the codes one 16-byte load from the device's planes, common.cuh), dotted
// with every token of the chunk, so a weight byte is read once per 8 tokens;
// float types one warp per row. The activations of block types are first
// turned into the CPU's q16 codes (16-bit integers and a scale per 32
// elements, quant_blocks.h; laid out for the kernel in common.cuh): the
// products are then integer dot products (__dp2a: two 16x8-bit products per
// instruction) equal to the CPU's, and the codes of a block, loaded once,
// serve both rows. The float path of the same layout stays (cuda_matvec
// without codes, KVRT_CUDA_MATVEC=f32). Larger batches: the weight
// dequantized (f32, or f16 for the tensor cores) and one cuBLAS GEMM with
// f32 accumulation, at the price of a dequantization pass per batch.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>

#include "common.cuh"

namespace kvrt {

void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

bool cuda_env_off(const char* name) {
    const char* e = std::getenv(name);
    return e && std::string(e) == "0";
}

bool cuda_pdl_enabled() {
    static const bool on = [] {
        if (cuda_env_off("KVRT_CUDA_PDL")) return false;
        int dev = 0, major = 0;
        if (cudaGetDevice(&dev) != cudaSuccess) return false;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
            return false;
        return major >= 9;
    }();
    return on;
}

bool cuda_prefetch_enabled() {
    static const bool on = !cuda_env_off("KVRT_CUDA_PREFETCH");
    return on;
}

#if defined(KVRT_CUBLAS)
void cublas_check(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw error(std::string("cuBLAS: ") + what + ": status " + std::to_string((int)s));
}
#endif

bool cuda_weight_type_supported(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0: return true;
        default: return false;
    }
}

const char* cuda_weight_types_supported() { return "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"; }

namespace {

constexpr int kTokChunk = 8;      // tokens per matvec launch chunk
constexpr int kRowsPerBlock = 4;  // float types: a warp per row, 4 per block
constexpr int kMvRows = 2;        // block types: weight rows per warp (prefill chunks)
constexpr int kMvWarps = 4;       // block types: warps per block
constexpr int kMvAhead = 1;       // block types: warp steps whose loads are issued together (prefill chunks)
// Decode (one token), from the sweep over the 1B and 8B shapes' Q4_0 and
// Q8_0 matrices on an H200 (tools/cuda_matvec_sweep.cu): 4 rows per warp, a warp
// per row group with two steps' loads in flight (Q4_0 8B qkv 8.5 -> 7.2 us,
// gate/up 25.8 -> 21.3, output 85.2 -> 75.4; 1B o 4.1 -> 3.8); a matrix
// whose rows are at least twice as long as it has rows (down) splits each
// row's blocks over the block's warps instead (Q4_0 8B down 14.5 -> 12.8).
constexpr int kMvDecodeRows = 4;
constexpr int kMvDecodeAhead = 2;

__device__ inline float h2f_bits(uint32_t h) { return __half2float(__ushort_as_half((uint16_t)h)); }
__device__ inline float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

int grid_for(int64_t n, int threads) {
    return (int)std::min<int64_t>((n + threads - 1) / threads, 65535);
}

// f(std::integral_constant<int, T>{}) for block type t (q8_0 for any type
// not listed), so a launcher names its kernel template once.
template <class F>
void with_block_type(ggml_type t, F&& f) {
    switch (t) {
        case GGML_TYPE_Q4_0: f(std::integral_constant<int, GGML_TYPE_Q4_0>{}); return;
        case GGML_TYPE_Q4_1: f(std::integral_constant<int, GGML_TYPE_Q4_1>{}); return;
        case GGML_TYPE_Q5_0: f(std::integral_constant<int, GGML_TYPE_Q5_0>{}); return;
        case GGML_TYPE_Q5_1: f(std::integral_constant<int, GGML_TYPE_Q5_1>{}); return;
        default: f(std::integral_constant<int, GGML_TYPE_Q8_0>{}); return;
    }
}

// A weight as the kernels read it: float types by rows, block types by
// planes.
struct wview {
    ggml_type t;
    const uint8_t* d;
    size_t row_bytes;
    int64_t nb;  // 32-element blocks per row
    plane_ptrs p;
};

wview view_of(const dev_weight& w) {
    return wview{w.type, w.d, w.row_bytes, w.cols / 32, plane_ptrs_of(w.type, w.d, w.rows * (w.cols / 32))};
}

// What the _0 types subtract from their unsigned codes (q8_0's are signed).
__host__ __device__ constexpr int code_offset(ggml_type t) {
    return t == GGML_TYPE_Q4_0 ? 8 : t == GGML_TYPE_Q5_0 ? 16 : 0;
}
template <int T>
constexpr int kCodeOffset = code_offset((ggml_type)T);

// The _1 types: a minimum (the scale plane's second half) added to each value.
template <int T>
constexpr bool kWithMin = planes_of((ggml_type)T).sc == 4;

// Element i of row r of any supported type (embedding lookup,
// dequantization for the GEMM path), rounded as the CPU's dequantization.
__device__ inline float dequant_at(const wview& w, int64_t r, int64_t i) {
    const uint8_t* row = w.d + r * w.row_bytes;
    switch (w.t) {
        case GGML_TYPE_F32: return reinterpret_cast<const float*>(row)[i];
        case GGML_TYPE_F16: return __half2float(reinterpret_cast<const __half*>(row)[i]);
        case GGML_TYPE_BF16: return bf2f(reinterpret_cast<const uint16_t*>(row)[i]);
        default: break;
    }
    const weight_planes P = planes_of(w.t);
    const int64_t rb = r * w.nb + i / 32;
    const int j = (int)(i % 32);
    int code;
    if (w.t == GGML_TYPE_Q8_0) {
        code = reinterpret_cast<const int8_t*>(w.p.qs + rb * P.qs)[j];
    } else {
        const uint8_t q = w.p.qs[rb * P.qs + j % 16];
        code = j < 16 ? q & 0x0F : q >> 4;
        if (P.qh) code |= ((w.p.qh[rb * P.qh + j / 8] >> (j % 8)) & 1) << 4;
    }
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(w.p.sc + rb * P.sc);
    const float d = h2f_bits(sc[0]);
    if (P.sc == 4) return __fadd_rn(__fmul_rn((float)code, d), h2f_bits(sc[1]));
    return __fmul_rn((float)(code - code_offset(w.t)), d);
}

// Bit i of the 4-bit group g becomes bit 4 of byte i (the 5th bit of q5 codes).
__device__ inline uint32_t spread_hi_bits(uint32_t g) {
    return ((g & 1) << 4) | ((g & 2) << 11) | ((g & 4) << 18) | ((g & 8) << 25);
}

// The bytes of block rb (= row * nb + block) of a block type, as loaded:
// its codes (q1: q8_0's second half), 5th bits and scale (and minimum).
template <int T>
struct raw_block {
    uint4 q, q1;
    uint32_t h, sc;
};

template <int T>
__device__ inline raw_block<T> fetch_block(const plane_ptrs& p, int64_t rb) {
    constexpr weight_planes P = planes_of((ggml_type)T);
    raw_block<T> r{};
    r.q = __ldg(reinterpret_cast<const uint4*>(p.qs + rb * P.qs));
    if constexpr (T == GGML_TYPE_Q8_0) r.q1 = __ldg(reinterpret_cast<const uint4*>(p.qs + rb * P.qs + 16));
    if constexpr (T != GGML_TYPE_Q8_0 && P.qh != 0) r.h = __ldg(reinterpret_cast<const uint32_t*>(p.qh + rb * P.qh));
    if constexpr (P.sc == 4) r.sc = __ldg(reinterpret_cast<const uint32_t*>(p.sc + rb * 4));
    else r.sc = __ldg(reinterpret_cast<const unsigned short*>(p.sc + rb * 2));
    return r;
}

// A fetched block as one code a byte: word k of lo holds elements 4k..4k+3,
// of hi 16+4k..16+4k+3; d the scale, m the minimum (0 for the _0 types,
// whose offset is kCodeOffset).
template <int T>
__device__ inline void unpack_block(const raw_block<T>& r, uint32_t (&lo)[4], uint32_t (&hi)[4],
                                    float& d, float& m) {
    constexpr weight_planes P = planes_of((ggml_type)T);
    const uint32_t w[4] = {r.q.x, r.q.y, r.q.z, r.q.w};
    if constexpr (T == GGML_TYPE_Q8_0) {
        const uint32_t w1[4] = {r.q1.x, r.q1.y, r.q1.z, r.q1.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            lo[k] = w[k];
            hi[k] = w1[k];
        }
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            lo[k] = w[k] & 0x0F0F0F0Fu;
            hi[k] = (w[k] >> 4) & 0x0F0F0F0Fu;
            if constexpr (P.qh != 0) {
                lo[k] |= spread_hi_bits((r.h >> (4 * k)) & 0xF);
                hi[k] |= spread_hi_bits((r.h >> (16 + 4 * k)) & 0xF);
            }
        }
    }
    d = h2f_bits(r.sc & 0xFFFF);
    m = P.sc == 4 ? h2f_bits(r.sc >> 16) : 0.0f;
}

// Byte i of a word of codes as an integer (q8_0's signed).
template <int T>
__device__ inline int code_byte(uint32_t w, int i) {
    if constexpr (T == GGML_TYPE_Q8_0) return (int)(int8_t)((w >> (8 * i)) & 0xFF);
    else return (int)((w >> (8 * i)) & 0xFF) - kCodeOffset<T>;
}

// ---- q16 activations (layout and q16_block in common.cuh) ----

// One warp per 32-element block.
__global__ void quantize_q16_kernel(const float* x, int64_t cols, int64_t n_blocks, int16_t* qs,
                                    int2* ds) {
    pdl_begin();
    const int lane = threadIdx.x % 32;
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= n_blocks) return;
    const int64_t nb = cols / 32, tok = blk / nb, b = blk % nb;
    q16_block(x[tok * cols + b * 32 + lane], lane, tok, b, cols, qs, ds);
}

// c + the products of the two 16-bit halves of a with bytes 0, 1 (lo) or
// 2, 3 (hi) of b, all signed.
__device__ inline int dot2_lo(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    return __dp2a_lo(a, b, c);
#else
    return c + (int)(int16_t)(a & 0xFFFF) * (int)(int8_t)(b & 0xFF) +
           (a >> 16) * (int)(int8_t)((b >> 8) & 0xFF);
#endif
}
__device__ inline int dot2_hi(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    return __dp2a_hi(a, b, c);
#else
    return c + (int)(int16_t)(a & 0xFFFF) * (int)(int8_t)((b >> 16) & 0xFF) +
           (a >> 16) * (int)(int8_t)(b >> 24);
#endif
}

// c + the dot product of piece a (eight q16 codes of a part) with its lo
// and hi code words.
__device__ inline int dot_piece(int4 a, uint32_t lo, uint32_t hi, int c) {
    c = dot2_lo(a.x, (int)lo, c);
    c = dot2_hi(a.y, (int)lo, c);
    c = dot2_lo(a.z, (int)hi, c);
    return dot2_hi(a.w, (int)hi, c);
}

// Up to three weights of one type and width in one launch (q, k, v; gate,
// up): their blocks follow each other along blockIdx.x,
// mv_row_blocks<KS, R>(rows) each.
struct mv_target {
    const uint8_t* w;
    int64_t rows;
    float* out;
};
struct mv_set {
    mv_target t[3];
    int count;
};

template <int KS, int R = kMvRows>
__host__ __device__ inline int64_t mv_row_blocks(int64_t rows) {
    constexpr int per_block = R * kMvWarps / KS;
    return (rows + per_block - 1) / per_block;
}

// Token tok's q16 codes of block b (four 8-code pieces) and its {scale, sum}.
__device__ inline void act_block(const int16_t* aq, const int2* ad, int tok, int64_t stride,
                                 int64_t nb, int64_t b, int4 (&a)[4], int2& ds) {
    const int4* ap = reinterpret_cast<const int4*>(aq + (size_t)tok * stride) + (b / 32) * 128 + b % 32;
#pragma unroll
    for (int k = 0; k < 4; ++k) a[k] = __ldg(ap + 32 * k);
    ds = __ldg(ad + (size_t)tok * nb + b);
}

// R weight rows per warp (kMvDecodeRows for a decode token, else kMvRows),
// a lane per 32-element block of them. Q16:
// per block the CPU's sum d_w * d_a * dot(q_w, q_a) + m_w * d_a * sum(q_a),
// the dot exact in int32 (|q_a| <= 32767, |q_w| <= 127); else the block
// dequantized and multiplied with x in f32. NT: tokens per chunk (1 for
// decode, which then holds fewer registers, or kTokChunk).
// KS: warps that share a warp's rows and split their blocks (1 or kMvWarps);
// with kMvWarps a block takes R rows, so a matrix of few rows still
// makes enough blocks to keep the memory busy, and the warps' sums are added
// in shared memory.
template <int T, bool Q16, int NT, int KS, int R = kMvRows, int U = kMvAhead>
__global__ void __launch_bounds__(32 * kMvWarps)
    matvec_blocks_kernel(mv_set set, int64_t cols, const int16_t* aq, const int2* ad,
                         const float* x, int n, int add, int pf) {
    static_assert(KS == 1 || KS == kMvWarps, "KS: 1 or kMvWarps");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kw = KS == 1 ? 0 : warp;  // the warp's share of the blocks
    // The target by constant indices (a computed index would copy the set
    // to local memory).
    int64_t bx = blockIdx.x;
    mv_target tg = set.t[0];
    const int64_t b0 = mv_row_blocks<KS, R>(set.t[0].rows), b1 = mv_row_blocks<KS, R>(set.t[1].rows);
    if (set.count > 1 && bx >= b0) {
        bx -= b0;
        tg = set.t[1];
        if (set.count > 2 && bx >= b1) {
            bx -= b1;
            tg = set.t[2];
        }
    }
    const int64_t rows = tg.rows;
    const int64_t nb = cols / 32, stride = q16_stride(cols);
    const plane_ptrs p = plane_ptrs_of((ggml_type)T, tg.w, rows * nb);
    if constexpr (KS == 1) {
        // The block's rows of every plane, fetched while the kernel before runs
        // (not where warps split rows: the call's registers would cost those
        // blocks a place per multiprocessor).
        constexpr weight_planes wp = planes_of((ggml_type)T);
        const int64_t ra = bx * R * kMvWarps, rn = min((int64_t)R * kMvWarps, rows - ra);
        if (pf && threadIdx.x == 0 && blockIdx.y == 0 && rn > 0) {
            prefetch_l2(p.qs + ra * nb * wp.qs, (size_t)(rn * nb * wp.qs));
            if (wp.qh) prefetch_l2(p.qh + ra * nb * wp.qh, (size_t)(rn * nb * wp.qh));
            prefetch_l2(p.sc + ra * nb * wp.sc, (size_t)(rn * nb * wp.sc));
        }
    }
    pdl_begin();
    const int64_t r0 = (bx * (kMvWarps / KS) + (KS == 1 ? warp : 0)) * R;
    if (r0 >= rows) return;
    const int t0 = blockIdx.y * NT;
    const int nt = min(NT, n - t0);
    int64_t rb[R];
#pragma unroll
    for (int i = 0; i < R; ++i) rb[i] = min(r0 + i, rows - 1) * nb;
    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < R; ++i) acc[t][i] = 0.0f;
    // U (kMvDecodeAhead or kMvAhead) of the warp's steps at a time: every
    // load of them issued (indices past the row clamped to its last block)
    // before the first product waits on one, so a warp has that many steps'
    // bytes in flight.
    const int64_t step = 32 * KS;
    for (int64_t bs = lane + 32 * kw; bs < nb; bs += step * U) {
        raw_block<T> rw[U][R];
        int4 a1[U][4];  // one token's activation codes (NT == 1)
        int2 ds1[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t b = min(bs + step * u, nb - 1);
#pragma unroll
            for (int i = 0; i < R; ++i) rw[u][i] = fetch_block<T>(p, rb[i] + b);
            if constexpr (Q16 && NT == 1) act_block(aq, ad, t0, stride, nb, b, a1[u], ds1[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t b = bs + step * u;
            if (b >= nb) break;
            uint32_t lo[R][4], hi[R][4];
            float dw[R], mw[R];
#pragma unroll
            for (int i = 0; i < R; ++i) unpack_block<T>(rw[u][i], lo[i], hi[i], dw[i], mw[i]);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t >= nt) break;
                if constexpr (Q16) {
                    int4 a[4];
                    int2 ds;
                    if constexpr (NT == 1) {
#pragma unroll
                        for (int k = 0; k < 4; ++k) a[k] = a1[u][k];
                        ds = ds1[u];
                    } else {
                        act_block(aq, ad, t0 + t, stride, nb, b, a, ds);
                    }
                    const float da = __int_as_float(ds.x);
#pragma unroll
                    for (int i = 0; i < R; ++i) {
                        int dot = 0;
#pragma unroll
                        for (int k = 0; k < 4; ++k) dot = dot_piece(a[k], lo[i][k], hi[i][k], dot);
                        if constexpr (kCodeOffset<T> != 0) dot -= kCodeOffset<T> * ds.y;
                        acc[t][i] += (float)dot * (dw[i] * da);
                        if constexpr (kWithMin<T>) acc[t][i] += mw[i] * (da * (float)ds.y);
                    }
                } else {
                    const float* xb = x + (size_t)(t0 + t) * cols + b * 32;
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const float4 pl = *reinterpret_cast<const float4*>(xb + 4 * k);
                        const float4 ph = *reinterpret_cast<const float4*>(xb + 16 + 4 * k);
                        const float xl[4] = {pl.x, pl.y, pl.z, pl.w}, xh[4] = {ph.x, ph.y, ph.z, ph.w};
#pragma unroll
                        for (int i = 0; i < R; ++i)
#pragma unroll
                            for (int e = 0; e < 4; ++e)
                                acc[t][i] += ((float)code_byte<T>(lo[i][k], e) * dw[i] + mw[i]) * xl[e] +
                                             ((float)code_byte<T>(hi[i][k], e) * dw[i] + mw[i]) * xh[e];
                    }
                }
            }
        }
    }
    if constexpr (KS > 1) {
        __shared__ float red[KS][NT][R];
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const float s = warp_sum(acc[t][i]);
                if (lane == 0) red[warp][t][i] = s;
            }
        __syncthreads();
        if (warp > 0) return;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int i = 0; i < R; ++i) {
                float s = 0.0f;
#pragma unroll
                for (int w = 0; w < KS; ++w) s += red[w][t][i];
                acc[t][i] = s;
            }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= nt) break;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const float s = KS == 1 ? warp_sum(acc[t][i]) : acc[t][i];
            if (lane == 0 && r0 + i < rows) {
                float* o = tg.out + (size_t)(t0 + t) * rows + r0 + i;
                *o = add ? *o + s : s;
            }
        }
    }
}

// Float weights (any column count): lanes stride over the elements.
template <int T>
__global__ void matvec_float_kernel(const uint8_t* w, size_t row_bytes, int64_t rows,
                                    int64_t cols, const float* x, int n, float* out, int add) {
    const int lane = threadIdx.x % 32;
    const int64_t r = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    if (r >= rows) return;
    const int t0 = blockIdx.y * kTokChunk;
    const int nt = min(kTokChunk, n - t0);
    const uint8_t* row = w + r * row_bytes;
    const float* xt = x + (size_t)t0 * cols;
    float acc[kTokChunk];
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t) acc[t] = 0.0f;
    for (int64_t i = lane; i < cols; i += 32) {
        float v;
        if constexpr (T == GGML_TYPE_F32) v = reinterpret_cast<const float*>(row)[i];
        else if constexpr (T == GGML_TYPE_F16) v = __half2float(reinterpret_cast<const __half*>(row)[i]);
        else v = bf2f(reinterpret_cast<const uint16_t*>(row)[i]);
#pragma unroll
        for (int t = 0; t < kTokChunk; ++t) {
            if (t >= nt) break;
            acc[t] += v * xt[(size_t)t * cols + i];
        }
    }
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t) {
        if (t >= nt) break;
        const float s = warp_sum(acc[t]);
        float* o = out + (size_t)(t0 + t) * rows + r;
        if (lane == 0) *o = add ? *o + s : s;
    }
}


#if defined(KVRT_CUBLAS)
template <class T>
__device__ inline T from_float(float f);
template <>
__device__ inline float from_float<float>(float f) { return f; }
template <>
__device__ inline __half from_float<__half>(float f) { return __float2half_rn(f); }

// The GEMM's weight as floats or halves, rows of cols: float types a thread
// per element; block types a thread per 32-element block (its codes one
// load, its values 64 or 128 contiguous bytes).
template <class O>
__global__ void dequant_kernel(wview w, int64_t rows, int64_t cols, O* out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * cols;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = from_float<O>(dequant_at(w, i / cols, i % cols));
}

template <int T, class O>
__global__ void dequant_blocks_kernel(const uint8_t* w, int64_t n_blocks, O* out) {
    const plane_ptrs p = plane_ptrs_of((ggml_type)T, w, n_blocks);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_blocks;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t lo[4], hi[4];
        float d, m;
        unpack_block<T>(fetch_block<T>(p, i), lo, hi, d, m);
        float v[32];
#pragma unroll
        for (int k = 0; k < 4; ++k)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                // As dequant_at rounds: the _1 types' product and sum apart.
                const float a = (float)code_byte<T>(lo[k], e), b = (float)code_byte<T>(hi[k], e);
                v[4 * k + e] = kWithMin<T> ? __fadd_rn(__fmul_rn(a, d), m) : __fmul_rn(a, d);
                v[16 + 4 * k + e] = kWithMin<T> ? __fadd_rn(__fmul_rn(b, d), m) : __fmul_rn(b, d);
            }
        O* o = out + i * 32;
        if constexpr (std::is_same_v<O, __half>) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                uint4 u;
                uint32_t* uw = reinterpret_cast<uint32_t*>(&u);
#pragma unroll
                for (int h = 0; h < 4; ++h) {
                    const __half2 pr = __floats2half2_rn(v[8 * j + 2 * h], v[8 * j + 2 * h + 1]);
                    uw[h] = *reinterpret_cast<const uint32_t*>(&pr);
                }
                reinterpret_cast<uint4*>(o)[j] = u;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j)
                reinterpret_cast<float4*>(o)[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
        }
    }
}

// w dequantized into out (rows x cols).
template <class O>
void dequant_weight(const dev_weight& w, O* out, cudaStream_t s) {
    if (planes_of(w.type).qs == 0) {
        dequant_kernel<O><<<grid_for(w.rows * w.cols, 256), 256, 0, s>>>(view_of(w), w.rows, w.cols, out);
        return;
    }
    const int64_t n_blocks = w.rows * (w.cols / 32);
    with_block_type(w.type, [&](auto T) {
        dequant_blocks_kernel<T(), O><<<grid_for(n_blocks, 256), 256, 0, s>>>(w.d, n_blocks, out);
    });
}

__global__ void to_f16_kernel(const float* x, __half* y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}
#endif

__global__ void get_rows_kernel(wview w, int64_t cols, const int32_t* ids, float* out) {
    pdl_begin();
    const int64_t r = ids[blockIdx.x];
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
        out[(size_t)blockIdx.x * cols + i] = dequant_at(w, r, i);
}

__global__ void add_bias_kernel(float* x, const float* b, int64_t n, int64_t total) {
    pdl_begin();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] += b[i % n];
}

// Block i of a matrix in the file's layout ([scales][high bits][codes] for
// every block type) into the planes.
__global__ void to_planes_kernel(ggml_type t, const uint8_t* src, uint8_t* dst, int64_t n_blocks) {
    const weight_planes P = planes_of(t);
    const int size = P.sc + P.qh + P.qs;
    const plane_ptrs p = plane_ptrs_of(t, dst, n_blocks);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_blocks;
         i += (int64_t)gridDim.x * blockDim.x) {
        const uint8_t* blk = src + i * size;
        uint8_t* sc = const_cast<uint8_t*>(p.sc) + i * P.sc;
        uint8_t* qh = const_cast<uint8_t*>(p.qh) + i * P.qh;
        uint8_t* qs = const_cast<uint8_t*>(p.qs) + i * P.qs;
        for (int k = 0; k < P.sc; ++k) sc[k] = blk[k];
        for (int k = 0; k < P.qh; ++k) qh[k] = blk[P.sc + k];
        for (int k = 0; k < P.qs; ++k) qs[k] = blk[P.sc + P.qh + k];
    }
}

}  // namespace

void cuda_upload_weight(const dev_weight& w, const void* host, uint8_t* dst) {
    const size_t bytes = (size_t)w.rows * w.row_bytes;
    if (planes_of(w.type).qs == 0) {
        KVRT_CUDA_CHECK(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice));
        return;
    }
    void* raw = nullptr;
    KVRT_CUDA_CHECK(cudaMalloc(&raw, bytes));
    const std::unique_ptr<void, cudaError_t (*)(void*)> staging(raw, cudaFree);
    KVRT_CUDA_CHECK(cudaMemcpy(raw, host, bytes, cudaMemcpyHostToDevice));
    const int64_t n_blocks = w.rows * (w.cols / 32);
    to_planes_kernel<<<grid_for(n_blocks, 256), 256>>>(w.type, static_cast<const uint8_t*>(raw), dst,
                                                      n_blocks);
    KVRT_CUDA_CHECK(cudaGetLastError());
    KVRT_CUDA_CHECK(cudaDeviceSynchronize());
}

bool cuda_matvec_takes_q16(ggml_type t) { return planes_of(t).qs != 0; }

size_t cuda_q16_bytes(int n, int64_t cols) {
    return (size_t)n * (size_t)q16_stride(cols) * sizeof(int16_t) +
           (size_t)n * (size_t)(cols / 32) * sizeof(int2);
}

void cuda_quantize_q16(const float* x, int n, int64_t cols, void* act, cudaStream_t s) {
    if (cols % 32) throw error("CUDA: q16 activations need a multiple of 32 columns");
    const int64_t n_blocks = (int64_t)n * (cols / 32);
    constexpr int kWarps = 8;
    launch_pdl(quantize_q16_kernel, (unsigned)((n_blocks + kWarps - 1) / kWarps), 32 * kWarps, 0, s, x,
               cols, n_blocks, q16_codes(act), q16_scales(act, n, cols));
    KVRT_CUDA_CHECK(cudaGetLastError());
}

namespace {

// The block types' kernel over set: from q16 codes in act, or from x in f32
// where act is null.
void launch_matvec_blocks(ggml_type type, const mv_set& set, int64_t cols, int n, const void* act,
                          const float* x, bool add, cudaStream_t s) {
    int64_t rows = 0;
    for (int k = 0; k < set.count; ++k) rows += set.t[k].rows;
    // A decode token over rows at least twice as long as there are rows: the
    // warps of a block split the blocks of the same rows (down of an 8B
    // shape, 4096 rows: 256 blocks become 1024).
    const bool split = n == 1 && cols >= 2 * rows;
    constexpr int RD = kMvDecodeRows;
    int64_t blocks = 0;
    for (int k = 0; k < set.count; ++k)
        blocks += n > 1 ? mv_row_blocks<1>(set.t[k].rows)
                        : split ? mv_row_blocks<kMvWarps, RD>(set.t[k].rows) : mv_row_blocks<1, RD>(set.t[k].rows);
    const int nt = n == 1 ? 1 : kTokChunk;
    const dim3 grid((unsigned)blocks, (unsigned)((n + nt - 1) / nt));
    const int16_t* aq = act ? q16_codes(act) : nullptr;
    const int2* ad = act ? q16_scales(act, n, cols) : nullptr;
    with_block_type(type, [&](auto T) {
        constexpr int t = T();
        const dim3 block(32 * kMvWarps);
        const int pf = cuda_prefetch_enabled() ? 1 : 0;
#define KVRT_MVB(Q16, NT, ...)                                                                  \
    launch_pdl(matvec_blocks_kernel<t, Q16, NT, __VA_ARGS__>, grid, block, 0, s, set, cols, aq, \
               ad, x, n, (int)add, pf)
        if (split && act) KVRT_MVB(true, 1, kMvWarps, RD, 1);
        else if (split) KVRT_MVB(false, 1, kMvWarps, RD, 1);
        else if (act && n == 1) KVRT_MVB(true, 1, 1, RD, kMvDecodeAhead);
        else if (act) KVRT_MVB(true, kTokChunk, 1);
        else if (n == 1) KVRT_MVB(false, 1, 1, RD, kMvDecodeAhead);
        else KVRT_MVB(false, kTokChunk, 1);
#undef KVRT_MVB
    });
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool cuda_matvec_multi(const dev_weight* const* ws, float* const* outs, int count, int n,
                       cudaStream_t s, const void* act) {
    if (!act || count < 1 || count > 3 || !cuda_matvec_takes_q16(ws[0]->type)) return false;
    mv_set set{};
    set.count = count;
    for (int k = 0; k < count; ++k) {
        if (ws[k]->type != ws[0]->type || ws[k]->cols != ws[0]->cols) return false;
        set.t[k] = mv_target{ws[k]->d, ws[k]->rows, outs[k]};
    }
    launch_matvec_blocks(ws[0]->type, set, ws[0]->cols, n, act, nullptr, false, s);
    return true;
}

void cuda_matvec(const dev_weight& w, const float* x, int n, float* out, cudaStream_t s,
                 const void* act, bool add) {
    if (cuda_matvec_takes_q16(w.type)) {
        mv_set set{};
        set.count = 1;
        set.t[0] = mv_target{w.d, w.rows, out};
        launch_matvec_blocks(w.type, set, w.cols, n, act, x, add, s);
        return;
    }
    const dim3 grid((unsigned)((w.rows + kRowsPerBlock - 1) / kRowsPerBlock),
                    (unsigned)((n + kTokChunk - 1) / kTokChunk));
    const dim3 block(32 * kRowsPerBlock);
#define KVRT_MV(T) matvec_float_kernel<T><<<grid, block, 0, s>>>(w.d, w.row_bytes, w.rows, w.cols, x, n, out, add)
    switch (w.type) {
        case GGML_TYPE_F32: KVRT_MV(GGML_TYPE_F32); break;
        case GGML_TYPE_F16: KVRT_MV(GGML_TYPE_F16); break;
        case GGML_TYPE_BF16: KVRT_MV(GGML_TYPE_BF16); break;
        default:
            throw error(std::string("CUDA: weight type ") + ggml_type_geometry(w.type).name +
                        " is not supported (CUDA reads " + cuda_weight_types_supported() + ")");
    }
#undef KVRT_MV
    KVRT_CUDA_CHECK(cudaGetLastError());
}

#if defined(KVRT_CUBLAS)
void cuda_matmul_gemm(const dev_weight& w, const float* x, int n, float* out, gemm_precision prec,
                      void* wbuf, void* xbuf, cublasHandle_t h, cudaStream_t s, bool add) {
    const bool f16 = prec == GEMM_F16;
    if (f16) {
        dequant_weight(w, (__half*)wbuf, s);
        to_f16_kernel<<<grid_for((int64_t)n * w.cols, 256), 256, 0, s>>>(x, (__half*)xbuf,
                                                                        (int64_t)n * w.cols);
    } else {
        dequant_weight(w, (float*)wbuf, s);
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
    const float one = 1.0f, beta = add ? 1.0f : 0.0f;
    const cudaDataType_t in_t = f16 ? CUDA_R_16F : CUDA_R_32F;
    // Column-major view: out (rows x n) = W' (rows x cols) . X (cols x n).
    KVRT_CUBLAS_CHECK(cublasSetStream(h, s));
    KVRT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)w.rows, n, (int)w.cols, &one,
                                   wbuf, in_t, (int)w.cols, f16 ? xbuf : (const void*)x, in_t,
                                   (int)w.cols, &beta, out, CUDA_R_32F, (int)w.rows,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
#endif

void cuda_get_rows(const dev_weight& w, const int32_t* ids, int n, float* out, cudaStream_t s) {
    launch_pdl(get_rows_kernel, n, 256, 0, s, view_of(w), w.cols, ids, out);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

void cuda_add_bias_rows(float* x, const float* b, int n_rows, int64_t n, cudaStream_t s) {
    launch_pdl(add_bias_kernel, grid_for((int64_t)n_rows * n, 256), 256, 0, s, x, b, n, (int64_t)n_rows * n);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
