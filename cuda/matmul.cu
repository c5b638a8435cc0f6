// Weight x activation products on the GPU, weights kept in their file types.
// Decode and small batches (n <= 8 tokens per launch chunk): block types take
// a pair of weight rows per block, each lane a quarter of a 32-element block
// of both, and dot it with every token of the chunk, so a weight byte is read
// once per 8 tokens; float types one warp per row. The activations of block
// types are first turned into the CPU's q16 codes (16-bit integers and a
// scale per 32 elements, quant_blocks.h): the products are then integer dot
// products (__dp2a: two 16x8-bit products per instruction) equal to the
// CPU's, activation loads are half the bytes of floats and shared by the two
// rows, which is what the decode matvec is bound by (L1 load throughput, not
// DRAM). The float kernel of the same layout stays (cuda_matvec without
// codes, KVRT_CUDA_MATVEC=f32). Larger batches: the weight dequantized (f32,
// or f16 for the tensor cores) and one cuBLAS GEMM with f32 accumulation, at
// the price of a dequantization pass per batch.
#include <algorithm>
#include <string>

#include "common.cuh"

namespace kvrt {

void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
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

constexpr int kTokChunk = 8;   // tokens per matvec launch chunk
constexpr int kRowsPerBlock = 4;  // warps per block (float types: one row each)
constexpr int kQ16Rows = 2;       // weight rows per block of the q16 kernel

__device__ inline float h2f(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

__device__ inline float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

// Element i of a row of any supported type (embedding lookup, dequantization
// for the GEMM path).
__device__ inline float dequant_one(ggml_type t, const uint8_t* row, int64_t i) {
    const int64_t b = i / 32;
    const int j = (int)(i % 32), jj = j % 16;
    switch (t) {
        case GGML_TYPE_F32: return reinterpret_cast<const float*>(row)[i];
        case GGML_TYPE_F16: return __half2float(reinterpret_cast<const __half*>(row)[i]);
        case GGML_TYPE_BF16: return bf2f(reinterpret_cast<const uint16_t*>(row)[i]);
        case GGML_TYPE_Q4_0: {
            const uint8_t* blk = row + b * sizeof(block_q4_0);
            const uint8_t q = blk[2 + jj];
            return __fmul_rn((float)((j < 16 ? q & 0x0F : q >> 4) - 8), h2f(blk));
        }
        case GGML_TYPE_Q4_1: {
            const uint8_t* blk = row + b * sizeof(block_q4_1);
            const uint8_t q = blk[4 + jj];
            return __fadd_rn(__fmul_rn((float)(j < 16 ? q & 0x0F : q >> 4), h2f(blk)), h2f(blk + 2));
        }
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1: {
            const bool one = t == GGML_TYPE_Q5_1;
            const uint8_t* blk = row + b * (one ? sizeof(block_q5_1) : sizeof(block_q5_0));
            const uint8_t* qhp = blk + (one ? 4 : 2);
            const uint32_t qh = qhp[0] | (qhp[1] << 8) | (qhp[2] << 16) | ((uint32_t)qhp[3] << 24);
            const uint8_t q = qhp[4 + jj];
            const int hi = (qh >> j) & 1;
            const int x = ((j < 16 ? q & 0x0F : q >> 4) | (hi << 4)) - (one ? 0 : 16);
            return __fadd_rn(__fmul_rn((float)x, h2f(blk)), one ? h2f(blk + 2) : 0.0f);
        }
        case GGML_TYPE_Q8_0: {
            const uint8_t* blk = row + b * sizeof(block_q8_0);
            return __fmul_rn((float)reinterpret_cast<const int8_t*>(blk + 2)[j], h2f(blk));
        }
        default: return 0.0f;
    }
}

__device__ inline uint32_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
// 4 bytes at a 2-byte aligned address.
__device__ inline uint32_t ld_u32_2a(const uint8_t* p) { return ld_u16(p) | (ld_u16(p + 2) << 16); }
__device__ inline float h2f_bits(uint32_t h) { return __half2float(__ushort_as_half((uint16_t)h)); }

// Bit i of the 4-bit group g becomes bit 4 of byte i (the 5th bit of q5 codes).
__device__ inline uint32_t spread_hi_bits(uint32_t g) {
    return ((g & 1) << 4) | ((g & 2) << 11) | ((g & 4) << 18) | ((g & 8) << 25);
}

// Quarter `part` of weight block b as integer codes: bytes lo (elements
// 4p..4p+3) and hi (16+4p..16+4p+3), the scale d and minimum m (0 for the
// _0 types, whose offset is the template's kQ16Offset).
template <int T>
__device__ inline void codes_part(const uint8_t* row, int64_t b, int part, int& lo, int& hi,
                                  float& d, float& m) {
    m = 0.0f;
    uint32_t qs = 0, qh = 0;
    if constexpr (T == GGML_TYPE_Q8_0) {
        const uint8_t* blk = row + b * sizeof(block_q8_0);
        d = h2f_bits(ld_u16(blk));
        lo = (int)ld_u32_2a(blk + 2 + 4 * part);
        hi = (int)ld_u32_2a(blk + 18 + 4 * part);
        return;
    } else if constexpr (T == GGML_TYPE_Q4_0) {
        const uint8_t* blk = row + b * sizeof(block_q4_0);
        d = h2f_bits(ld_u16(blk));
        qs = ld_u32_2a(blk + 2 + 4 * part);
    } else if constexpr (T == GGML_TYPE_Q4_1) {
        const uint8_t* blk = row + b * sizeof(block_q4_1);
        const uint32_t dm = *reinterpret_cast<const uint32_t*>(blk);
        d = h2f_bits(dm & 0xFFFF);
        m = h2f_bits(dm >> 16);
        qs = *reinterpret_cast<const uint32_t*>(blk + 4 + 4 * part);
    } else if constexpr (T == GGML_TYPE_Q5_0) {
        const uint8_t* blk = row + b * sizeof(block_q5_0);
        d = h2f_bits(ld_u16(blk));
        qh = ld_u32_2a(blk + 2);
        qs = ld_u32_2a(blk + 6 + 4 * part);
    } else {  // Q5_1
        const uint8_t* blk = row + b * sizeof(block_q5_1);
        const uint32_t dm = *reinterpret_cast<const uint32_t*>(blk);
        d = h2f_bits(dm & 0xFFFF);
        m = h2f_bits(dm >> 16);
        qh = *reinterpret_cast<const uint32_t*>(blk + 4);
        qs = *reinterpret_cast<const uint32_t*>(blk + 8 + 4 * part);
    }
    uint32_t l = qs & 0x0F0F0F0Fu, h = (qs >> 4) & 0x0F0F0F0Fu;
    if constexpr (T == GGML_TYPE_Q5_0 || T == GGML_TYPE_Q5_1) {
        l |= spread_hi_bits((qh >> (4 * part)) & 0xF);
        h |= spread_hi_bits((qh >> (16 + 4 * part)) & 0xF);
    }
    lo = (int)l;
    hi = (int)h;
}

// What the _0 types subtract from their unsigned codes (q8_0's are signed).
template <int T>
constexpr int kQ16Offset = T == GGML_TYPE_Q4_0 ? 8 : T == GGML_TYPE_Q5_0 ? 16 : 0;

// Quarter `part` (0..3) of block b of a row: 8 values and where they sit in
// the block. 4/5-bit types: elements 4p..4p+3 and 16+4p..16+4p+3 (one
// 4-byte run of nibbles); q8_0: elements 8p..8p+7. Each warp thus reads 8
// consecutive blocks per step, and its activation loads are contiguous.
template <int T>
__device__ inline void dequant_part(const uint8_t* row, int64_t b, int part, float* v) {
    if constexpr (T == GGML_TYPE_Q8_0) {
        const uint8_t* blk = row + b * sizeof(block_q8_0);
        const float d = h2f_bits(ld_u16(blk));
        const uint8_t* q = blk + 2 + 8 * part;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t w = ld_u16(q + 2 * k);
            v[2 * k] = (float)(int8_t)(w & 0xFF) * d;
            v[2 * k + 1] = (float)(int8_t)(w >> 8) * d;
        }
    } else {
        int lo, hi;
        float d, m;
        codes_part<T>(row, b, part, lo, hi, d, m);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[i] = (float)((int)(((uint32_t)lo >> (8 * i)) & 0xFF) - kQ16Offset<T>) * d + m;
            v[4 + i] = (float)((int)(((uint32_t)hi >> (8 * i)) & 0xFF) - kQ16Offset<T>) * d + m;
        }
    }
}

// One block (kRowsPerBlock warps) per weight row: the warps split the row's
// blocks between them (each step of the block covers 32 consecutive weight
// blocks), so small matrices still put enough loads in flight; the partial
// sums meet in shared memory.
template <int T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) matvec_block_kernel(
        const uint8_t* w, size_t row_bytes, int64_t rows, int64_t cols, const float* x, int n,
        float* out, int add) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, part = lane % 4;
    const int64_t r = blockIdx.x;
    const int t0 = blockIdx.y * kTokChunk;
    const int nt = min(kTokChunk, n - t0);
    const uint8_t* row = w + r * row_bytes;
    const float* xt = x + (size_t)t0 * cols;
    // Offsets of this lane's two runs of 4 values inside a block.
    const int o0 = T == GGML_TYPE_Q8_0 ? 8 * part : 4 * part;
    const int o1 = T == GGML_TYPE_Q8_0 ? 8 * part + 4 : 16 + 4 * part;
    float acc[kTokChunk];
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t) acc[t] = 0.0f;
    const int64_t nb = cols / 32;
#pragma unroll 2
    for (int64_t b = warp * 8 + lane / 4; b < nb; b += 8 * kRowsPerBlock) {
        float v[8];
        dequant_part<T>(row, b, part, v);
#pragma unroll
        for (int t = 0; t < kTokChunk; ++t) {
            if (t >= nt) break;
            const float* xb = xt + (size_t)t * cols + b * 32;
            const float4 p = *reinterpret_cast<const float4*>(xb + o0);
            const float4 q = *reinterpret_cast<const float4*>(xb + o1);
            acc[t] += v[0] * p.x + v[1] * p.y + v[2] * p.z + v[3] * p.w + v[4] * q.x + v[5] * q.y +
                      v[6] * q.z + v[7] * q.w;
        }
    }
    __shared__ float part_sum[kRowsPerBlock][kTokChunk];
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t) {
        const float s = warp_sum(acc[t]);
        if (lane == 0) part_sum[warp][t] = s;
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < kRowsPerBlock; ++k) s += part_sum[k][threadIdx.x];
        float* o = out + (size_t)(t0 + threadIdx.x) * rows + r;
        *o = add ? *o + s : s;
    }
}

// ---- q16 activations (layout and q16_block in common.cuh) ----

// One warp per 32-element block.
__global__ void quantize_q16_kernel(const float* x, int64_t n_blocks, int16_t* qs, int2* ds) {
    const int lane = threadIdx.x % 32;
    const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= n_blocks) return;
    q16_block(x[blk * 32 + lane], lane, blk, qs, ds);
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

// Up to three weights of one type and width in one launch (q, k, v; gate,
// up): their blocks follow each other along blockIdx.x,
// q16_row_blocks(rows) each.
struct mv_target {
    const uint8_t* w;
    size_t row_bytes;
    int64_t rows;
    float* out;
};
struct mv_set {
    mv_target t[3];
    int count;
};

__host__ __device__ inline int64_t q16_row_blocks(int64_t rows) {
    return (rows + kQ16Rows - 1) / kQ16Rows;
}

// kQ16Rows weight rows per block of kRowsPerBlock warps; the warps split the
// row's blocks as matvec_block_kernel does, each lane loads its tokens' codes
// once for both rows. Per block the CPU's sum d_w * d_a * dot(q_w, q_a) +
// m_w * d_a * sum(q_a), the dot exact in int32 (|q_a| <= 32767, |q_w| <= 127).
template <int T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) matvec_q16_kernel(
        mv_set set, int64_t cols, const int16_t* aq, const int2* ad, int n, int add) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, part = lane % 4;
    // The target by constant indices (a computed index would copy the set
    // to local memory).
    int64_t bx = blockIdx.x;
    mv_target tg = set.t[0];
    const int64_t b0 = q16_row_blocks(set.t[0].rows), b1 = q16_row_blocks(set.t[1].rows);
    if (set.count > 1 && bx >= b0) {
        bx -= b0;
        tg = set.t[1];
        if (set.count > 2 && bx >= b1) {
            bx -= b1;
            tg = set.t[2];
        }
    }
    const uint8_t* w = tg.w;
    const size_t row_bytes = tg.row_bytes;
    const int64_t rows = tg.rows;
    float* out = tg.out;
    const int64_t r0 = bx * kQ16Rows;
    const int t0 = blockIdx.y * kTokChunk;
    const int nt = min(kTokChunk, n - t0);
    const int64_t nb = cols / 32;
    const uint8_t* row[kQ16Rows];
#pragma unroll
    for (int i = 0; i < kQ16Rows; ++i) row[i] = w + min(r0 + i, rows - 1) * row_bytes;
    const int16_t* aqt = aq + (size_t)t0 * cols + 8 * part;
    const int2* adt = ad + (size_t)t0 * nb;
    float acc[kTokChunk][kQ16Rows];
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t)
#pragma unroll
        for (int i = 0; i < kQ16Rows; ++i) acc[t][i] = 0.0f;
#pragma unroll 2
    for (int64_t b = warp * 8 + lane / 4; b < nb; b += 8 * kRowsPerBlock) {
        int lo[kQ16Rows], hi[kQ16Rows];
        float dw[kQ16Rows], mw[kQ16Rows];
#pragma unroll
        for (int i = 0; i < kQ16Rows; ++i)
            codes_part<T>(row[i], b, part, lo[i], hi[i], dw[i], mw[i]);
#pragma unroll
        for (int t = 0; t < kTokChunk; ++t) {
            if (t >= nt) break;
            const int4 a = *reinterpret_cast<const int4*>(aqt + (size_t)t * cols + b * 32);
            const int2 ds = adt[(size_t)t * nb + b];
            const float da = __int_as_float(ds.x);
            // The block's code sum enters once, through its first quarter.
            const int sa = part == 0 ? ds.y : 0;
#pragma unroll
            for (int i = 0; i < kQ16Rows; ++i) {
                int dot = dot2_lo(a.x, lo[i], 0);
                dot = dot2_hi(a.y, lo[i], dot);
                dot = dot2_lo(a.z, hi[i], dot);
                dot = dot2_hi(a.w, hi[i], dot);
                if constexpr (kQ16Offset<T> != 0) dot -= kQ16Offset<T> * sa;
                acc[t][i] += (float)dot * (dw[i] * da);
                if constexpr (T == GGML_TYPE_Q4_1 || T == GGML_TYPE_Q5_1)
                    acc[t][i] += mw[i] * (da * (float)sa);
            }
        }
    }
    __shared__ float part_sum[kRowsPerBlock][kTokChunk * kQ16Rows];
#pragma unroll
    for (int t = 0; t < kTokChunk; ++t) {
        if (t >= nt) break;
#pragma unroll
        for (int i = 0; i < kQ16Rows; ++i) {
            const float s = warp_sum(acc[t][i]);
            if (lane == 0) part_sum[warp][t * kQ16Rows + i] = s;
        }
    }
    __syncthreads();
    if (threadIdx.x < nt * kQ16Rows) {
        const int t = threadIdx.x / kQ16Rows, i = threadIdx.x % kQ16Rows;
        if (r0 + i < rows) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < kRowsPerBlock; ++k) s += part_sum[k][threadIdx.x];
            float* o = out + (size_t)(t0 + t) * rows + r0 + i;
            *o = add ? *o + s : s;
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

template <class T>
__global__ void dequant_kernel(ggml_type t, const uint8_t* w, size_t row_bytes, int64_t cols,
                               T* out) {
    const int64_t r = blockIdx.y;
    const uint8_t* row = w + r * row_bytes;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cols;
         i += (int64_t)gridDim.x * blockDim.x)
        out[r * cols + i] = from_float<T>(dequant_one(t, row, i));
}

__global__ void to_f16_kernel(const float* x, __half* y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}
#endif

__global__ void get_rows_kernel(ggml_type t, const uint8_t* w, size_t row_bytes, int64_t cols,
                                const int32_t* ids, float* out) {
    const uint8_t* row = w + (size_t)ids[blockIdx.x] * row_bytes;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
        out[(size_t)blockIdx.x * cols + i] = dequant_one(t, row, i);
}

__global__ void add_bias_kernel(float* x, const float* b, int64_t n, int64_t total) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] += b[i % n];
}

int grid_for(int64_t n, int threads) {
    return (int)std::min<int64_t>((n + threads - 1) / threads, 65535);
}

}  // namespace

bool cuda_matvec_takes_q16(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0: return true;
        default: return false;
    }
}

size_t cuda_q16_bytes(int n, int64_t cols) {
    return (size_t)n * (size_t)cols * sizeof(int16_t) +
           (size_t)n * (size_t)(cols / 32) * sizeof(int2);
}

void cuda_quantize_q16(const float* x, int n, int64_t cols, void* act, cudaStream_t s) {
    if (cols % 32) throw error("CUDA: q16 activations need a multiple of 32 columns");
    const int64_t n_blocks = (int64_t)n * (cols / 32);
    constexpr int kWarps = 8;
    quantize_q16_kernel<<<(unsigned)((n_blocks + kWarps - 1) / kWarps), 32 * kWarps, 0, s>>>(
            x, n_blocks, q16_codes(act), q16_scales(act, n, cols));
    KVRT_CUDA_CHECK(cudaGetLastError());
}

namespace {

void launch_matvec_q16(ggml_type type, const mv_set& set, int64_t cols, int n, const void* act,
                       bool add, cudaStream_t s) {
    int64_t blocks = 0;
    for (int k = 0; k < set.count; ++k) blocks += q16_row_blocks(set.t[k].rows);
    const dim3 grid((unsigned)blocks, (unsigned)((n + kTokChunk - 1) / kTokChunk));
    const int16_t* aq = q16_codes(act);
    const int2* ad = q16_scales(act, n, cols);
#define KVRT_MV16(T) matvec_q16_kernel<T><<<grid, 32 * kRowsPerBlock, 0, s>>>(set, cols, aq, ad, n, add)
    switch (type) {
        case GGML_TYPE_Q4_0: KVRT_MV16(GGML_TYPE_Q4_0); break;
        case GGML_TYPE_Q4_1: KVRT_MV16(GGML_TYPE_Q4_1); break;
        case GGML_TYPE_Q5_0: KVRT_MV16(GGML_TYPE_Q5_0); break;
        case GGML_TYPE_Q5_1: KVRT_MV16(GGML_TYPE_Q5_1); break;
        default: KVRT_MV16(GGML_TYPE_Q8_0); break;
    }
#undef KVRT_MV16
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
        set.t[k] = mv_target{ws[k]->d, ws[k]->row_bytes, ws[k]->rows, outs[k]};
    }
    launch_matvec_q16(ws[0]->type, set, ws[0]->cols, n, act, false, s);
    return true;
}

void cuda_matvec(const dev_weight& w, const float* x, int n, float* out, cudaStream_t s,
                 const void* act, bool add) {
    const dim3 grid((unsigned)((w.rows + kRowsPerBlock - 1) / kRowsPerBlock),
                    (unsigned)((n + kTokChunk - 1) / kTokChunk));
    const dim3 grid_q((unsigned)w.rows, (unsigned)((n + kTokChunk - 1) / kTokChunk));
    const dim3 block(32 * kRowsPerBlock);
    if (act && cuda_matvec_takes_q16(w.type)) {
        mv_set set{};
        set.count = 1;
        set.t[0] = mv_target{w.d, w.row_bytes, w.rows, out};
        launch_matvec_q16(w.type, set, w.cols, n, act, add, s);
        return;
    }
#define KVRT_MV(T, K, G) K<T><<<G, block, 0, s>>>(w.d, w.row_bytes, w.rows, w.cols, x, n, out, add)
    switch (w.type) {
        case GGML_TYPE_F32: KVRT_MV(GGML_TYPE_F32, matvec_float_kernel, grid); break;
        case GGML_TYPE_F16: KVRT_MV(GGML_TYPE_F16, matvec_float_kernel, grid); break;
        case GGML_TYPE_BF16: KVRT_MV(GGML_TYPE_BF16, matvec_float_kernel, grid); break;
        case GGML_TYPE_Q4_0: KVRT_MV(GGML_TYPE_Q4_0, matvec_block_kernel, grid_q); break;
        case GGML_TYPE_Q4_1: KVRT_MV(GGML_TYPE_Q4_1, matvec_block_kernel, grid_q); break;
        case GGML_TYPE_Q5_0: KVRT_MV(GGML_TYPE_Q5_0, matvec_block_kernel, grid_q); break;
        case GGML_TYPE_Q5_1: KVRT_MV(GGML_TYPE_Q5_1, matvec_block_kernel, grid_q); break;
        case GGML_TYPE_Q8_0: KVRT_MV(GGML_TYPE_Q8_0, matvec_block_kernel, grid_q); break;
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
    const dim3 dg((unsigned)std::min<int64_t>((w.cols + 255) / 256, 64), (unsigned)w.rows);
    const bool f16 = prec == GEMM_F16;
    if (f16) {
        dequant_kernel<__half><<<dg, 256, 0, s>>>(w.type, w.d, w.row_bytes, w.cols, (__half*)wbuf);
        to_f16_kernel<<<grid_for((int64_t)n * w.cols, 256), 256, 0, s>>>(x, (__half*)xbuf,
                                                                        (int64_t)n * w.cols);
    } else {
        dequant_kernel<float><<<dg, 256, 0, s>>>(w.type, w.d, w.row_bytes, w.cols, (float*)wbuf);
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
    get_rows_kernel<<<n, 256, 0, s>>>(w.type, w.d, w.row_bytes, w.cols, ids, out);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

void cuda_add_bias_rows(float* x, const float* b, int n_rows, int64_t n, cudaStream_t s) {
    add_bias_kernel<<<grid_for((int64_t)n_rows * n, 256), 256, 0, s>>>(x, b, n, (int64_t)n_rows * n);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
