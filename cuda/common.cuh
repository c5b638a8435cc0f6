// Shared pieces of the CUDA backend: error checks, device views of weights
// and KV streams, and the launchers each op family's .cu file provides.
#pragma once

// cuBLAS serves the prefill GEMMs when the build links it (CMake defines
// KVRT_CUBLAS with CUDA::cublas); without it, batches go through the matvec
// kernel (correct, slower) and the sources still compile with nvcc alone.
#if defined(KVRT_CUBLAS)
#include <cublas_v2.h>
#endif
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"
#include "ggml_types.h"
#include "kv_cache.h"
#include "quant_blocks.h"

namespace kvrt {

// Throws kvrt::error "CUDA: <what>: <reason>".
void cuda_check(cudaError_t e, const char* what);
#define KVRT_CUDA_CHECK(x) ::kvrt::cuda_check((x), #x)
#if defined(KVRT_CUBLAS)
void cublas_check(cublasStatus_t s, const char* what);
#define KVRT_CUBLAS_CHECK(x) ::kvrt::cublas_check((x), #x)
#endif

// ---- programmatic dependent launch (compute capability 9.0 and newer) ----
// A decode step is a chain of small kernels, each waiting on the one before.
// Launched with launch_pdl, a kernel's blocks may be scheduled while the one
// before still runs; pdl_begin, every such kernel's first statement (before
// any return; only index arithmetic and prefetch_l2 of constant data come
// before it), holds each thread until the kernel before has completed and
// its writes are visible, then lets the next kernel be scheduled. So only
// the launch, the blocks' scheduling and their weights' prefetch overlap,
// never the work. Without the attribute (older GPUs, $KVRT_CUDA_PDL=0) both
// are no-ops.
__device__ inline void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks the L2 for bytes [p, p + n) and returns at once (Hopper's bulk
// prefetch, 64 KB a request; a call, so that its loop leaves the caller's
// scheduling as it was; whole 16-byte pieces around the range, which
// stay inside the allocation's 256-byte granules). Code before pdl_begin may
// use it for data that no kernel before writes: the blocks of a kernel are
// resident while the kernel before still runs, and its memory traffic then
// overlaps that kernel's.
static __device__ __noinline__ void prefetch_l2(const void* p, size_t n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr uintptr_t kChunk = 64 * 1024;
    uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(15);
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n + 15) & ~uintptr_t(15);
#pragma unroll 1
    for (; a < e; a += kChunk) {
        const uint32_t len = (uint32_t)(e - a < kChunk ? e - a : kChunk);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"(len));
    }
#else
    (void)p;
    (void)n;
#endif
}

// Whether $name is "0" (the switches that turn a CUDA path off).
bool cuda_env_off(const char* name);

// Whether kernels prefetch their weights into the L2 before waiting on the
// kernel before ($KVRT_CUDA_PREFETCH=0 turns it off; asked once per process).
bool cuda_prefetch_enabled();

// Whether launch_pdl asks for the overlap (on streams other than the legacy
// default stream): the current device is 9.0 or newer and $KVRT_CUDA_PDL is
// not "0" (asked once per process).
bool cuda_pdl_enabled();

// kernel<<<grid, block, smem, s>>>(args...) with the overlap where enabled;
// the kernel must begin with pdl_begin().
template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = s != nullptr && cuda_pdl_enabled() ? 1 : 0;  // not on the legacy default stream
    KVRT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
}

// A weight matrix on the device in its file type: rows of `cols` elements.
// Float types row by row as in the file. Block types keep the file's bytes
// regrouped into planes over the whole matrix (cuda_upload_weight): every
// block's codes (16 bytes, q8_0 32), then the 5-bit types' high bits (4),
// then the scales (2, or 4 with the minimum), block (r, b) at index
// r * nb + b of each plane. A lane then loads a block's codes in one 16-byte
// load, where the file's 18-byte q4_0 blocks allow only 2-byte loads.
struct dev_weight {
    ggml_type type = GGML_TYPE_F32;
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;
    const uint8_t* d = nullptr;
};

// Bytes per block in each plane of block type t (qs 0: not a block type).
struct weight_planes {
    int qs, qh, sc;
};
__host__ __device__ constexpr weight_planes planes_of(ggml_type t) {
    return t == GGML_TYPE_Q4_0   ? weight_planes{16, 0, 2}
           : t == GGML_TYPE_Q4_1 ? weight_planes{16, 0, 4}
           : t == GGML_TYPE_Q5_0 ? weight_planes{16, 4, 2}
           : t == GGML_TYPE_Q5_1 ? weight_planes{16, 4, 4}
           : t == GGML_TYPE_Q8_0 ? weight_planes{32, 0, 2}
                                 : weight_planes{0, 0, 0};
}

// The planes of a block-type matrix of n_blocks (rows * nb) blocks.
struct plane_ptrs {
    const uint8_t *qs, *qh, *sc;
};
__host__ __device__ inline plane_ptrs plane_ptrs_of(ggml_type t, const uint8_t* d, int64_t n_blocks) {
    const weight_planes p = planes_of(t);
    const uint8_t* qh = d + n_blocks * p.qs;
    return plane_ptrs{d, qh, qh + n_blocks * p.qh};
}

// ---- matmul.cu ----
// Weight types the CUDA kernels read; the names for error messages.
bool cuda_weight_type_supported(ggml_type t);
const char* cuda_weight_types_supported();
// Copies w.rows * w.row_bytes bytes of a weight from the host to dst (w.d
// is not read) in the device layout; block types pass through a device
// buffer of as many bytes, freed on return.
void cuda_upload_weight(const dev_weight& w, const void* host, uint8_t* dst);
// out[t][r] = w_row(r) . x_t, x [n][cols], out [n][rows]; reads each weight
// block once per 8 tokens (decode and small batches). With `act` (x turned
// into q16 codes by cuda_quantize_q16) the block types take integer dot
// products with those codes, as the CPU does; without it, or for the float
// types, they multiply x in f32.
// add: out[t][r] += the product instead (a residual added in the same pass).
void cuda_matvec(const dev_weight& w, const float* x, int n, float* out, cudaStream_t s,
                 const void* act = nullptr, bool add = false);
// ws[k] times x into outs[k], k < count <= 3, in one launch, from q16 codes;
// false (nothing launched) where the weights differ in type or width or do
// not read q16 codes.
bool cuda_matvec_multi(const dev_weight* const* ws, float* const* outs, int count, int n,
                       cudaStream_t s, const void* act);
// Whether cuda_matvec of weight type t reads q16 codes when given them.
bool cuda_matvec_takes_q16(ggml_type t);
// Bytes of the q16 codes of n rows of cols (a multiple of 32) activations;
// cuda_quantize_q16 writes them from x [n][cols], bit-identical to the CPU's
// quant_q16 (laid out for the kernel, not as block_q16).
size_t cuda_q16_bytes(int n, int64_t cols);
void cuda_quantize_q16(const float* x, int n, int64_t cols, void* act, cudaStream_t s);
// Batches through cuBLAS: GEMM_F32 dequantizes w to f32 (wbuf: rows*cols
// floats) and multiplies in f32, as exact as the CPU's 16-bit activation
// codes; GEMM_F16 dequantizes to f16 and converts x into xbuf (n*cols
// halves) for the tensor cores (f32 accumulation), faster but activations
// rounded to 11 bits.
enum gemm_precision { GEMM_F32, GEMM_F16 };
#if defined(KVRT_CUBLAS)
void cuda_matmul_gemm(const dev_weight& w, const float* x, int n, float* out, gemm_precision prec,
                      void* wbuf, void* xbuf, cublasHandle_t h, cudaStream_t s, bool add = false);
#endif
// out[t] = row ids[t] of w as floats (embedding lookup).
void cuda_get_rows(const dev_weight& w, const int32_t* ids, int n, float* out, cudaStream_t s);
// x[t][i] += b[i]
void cuda_add_bias_rows(float* x, const float* b, int n_rows, int64_t n, cudaStream_t s);

// ---- rms_norm.cu ----
// With act (n a multiple of 32), y's q16 codes are written there too, as
// cuda_quantize_q16 would write them: the next matvec needs no pass of its own.
void cuda_rms_norm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n,
                        float eps, cudaStream_t s, void* act = nullptr);

// ---- rope.cu ----
struct cuda_rope {
    int neox = 0;  // 0: pairs (2i, 2i+1); 1: pairs (i, i + n_rot/2)
    int head_dim = 0, n_rot = 0;
    const float* inv_freq = nullptr;  // device, n_rot/2 (rope_table::inv_freq)
};
// x [n_tok][n_heads*head_dim], token t at position pos0 + t. Where pos_dev
// is given, *pos_dev (device memory, read by the kernel) is added to pos0:
// a captured CUDA graph replays with the position of each decode step.
// x2 (n_tok x n_heads2 heads), where given, is turned in the same launch.
void cuda_rope_apply(float* x, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                     cudaStream_t s, const int* pos_dev = nullptr, float* x2 = nullptr,
                     int n_heads2 = 0);
struct cuda_kv_stream;
// Whether cuda_rope_apply_store can store into k and v (both f16 or f32
// streams).
bool cuda_rope_stores(const cuda_kv_stream& k, const cuda_kv_stream& v);
// cuda_rope_apply of the queries q and keys k, which also stores the turned
// keys and the values v at positions store_pos0.. (+ *pos_dev) of sk and sv
// as cuda_kv_store would: a decode step's rope and two stores in one launch.
void cuda_rope_apply_store(float* q, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                           cudaStream_t s, const int* pos_dev, float* k, const float* v,
                           const cuda_kv_stream& sk, const cuda_kv_stream& sv, int store_pos0);

// ---- swiglu.cu ----
// n_rows x cols elements; with act (cols a multiple of 32), y's q16 codes
// too, as for cuda_rms_norm_rows.
void cuda_swiglu(const float* g, const float* u, float* y, int64_t n_rows, int64_t cols,
                 cudaStream_t s, void* act = nullptr);

// ---- device helpers of the kernels ----
// Sum and maximum over a warp; every lane gets the result.
template <class T>
__device__ inline T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Element i of an f16 (else f32) cache stream at base, from x (rope.cu and
// kv_encode.cu store the same way).
__device__ inline void store_kv_elem(uint8_t* base, bool f16, int64_t i, float x) {
    if (f16) reinterpret_cast<__half*>(base)[i] = __float2half_rn(x);
    else reinterpret_cast<float*>(base)[i] = x;
}

// Lets kernel take `bytes` of dynamic shared memory (beyond the default 48
// KiB); `allowed` is the caller's per-kernel record of what it asked for.
template <class K>
void allow_dynamic_smem(K* kernel, size_t bytes, size_t& allowed) {
    if (bytes <= allowed) return;
    KVRT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    allowed = bytes;
}

// In-place Walsh-Hadamard transform (scaled by 1/sqrt(nb)) of the nb-blocks
// of `rows` vectors of hd floats, `stride` apart in shared memory, as
// kv_fwht (cpp/cpu/kv_kernels.cpp, the same sums and products in the same
// order): each stage a butterfly per thread, the same operations as one
// thread per block would do. pre / post: signs multiplied in before the
// transform (rot's encoder and queries) or after it (rot's values). Every
// thread of the block calls it; it syncs after each stage.
__device__ inline void fwht_shared(float* x, int rows, int stride, int hd, int nb, const float* pre,
                                   const float* post) {
    if (pre) {
        for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) x[(i / hd) * stride + i % hd] *= pre[i % hd];
        __syncthreads();
    }
    const int half = hd / 2, bh = nb / 2;
    for (int len = 1; len < nb; len <<= 1) {
        for (int i = threadIdx.x; i < rows * half; i += blockDim.x) {
            const int k = i % half, j = k % bh;  // pair j of nb-block k / bh
            float* y = x + (i / half) * stride + (k / bh) * nb + (j / len) * 2 * len + j % len;
            const float a = y[0], c = y[len];
            y[0] = a + c;
            y[len] = a - c;
        }
        __syncthreads();
    }
    const float norm = 1.0f / sqrtf((float)nb);
    for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) {
        float& e = x[(i / hd) * stride + i % hd];
        e *= norm;
        if (post) e *= post[i % hd];
    }
    __syncthreads();
}

// ---- tensor-core helpers (kv_pca.cu, attention.cu) ----
__host__ __device__ inline uint32_t half2_bits(__half2 h) {
    uint32_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

// x0, x1 as two halves each: hi = half(x), lo = half(x - hi), so that hi + lo
// holds x to about 22 bits (also on the host, for tables made on upload).
__host__ __device__ inline void split_half2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
    const __half2 h = __floats2half2_rn(x0, x1);
    const float2 f = __half22float2(h);
    hi = half2_bits(h);
    lo = half2_bits(__floats2half2_rn(x0 - f.x, x1 - f.y));
}

// d += A B on a warp's tensor cores (m16n8k16, halves in, floats summed), in
// PTX's fragment layout; with g = lane / 4 and k = lane % 4:
//   a0 = A[g][2k, 2k+1]  a1 = A[g+8][2k, 2k+1]  a2 = A[g][2k+8, 2k+9]  a3 = A[g+8][2k+8, 2k+9]
//   b0 = B[2k, 2k+1][g]  b1 = B[2k+8, 2k+9][g]
//   d0, d1 = D[g][2k, 2k+1]  d2, d3 = D[g+8][2k, 2k+1]
__device__ inline void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    // Turing: the two k = 8 halves of the product (a0, a1 with b0; a2, a3 with b1).
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(b0));
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a2), "r"(a3), "r"(b1));
#elif defined(__CUDA_ARCH__)
#error "the tensor-core kernels (pca and prefill attention) need compute capability 7.5 or newer (CMAKE_CUDA_ARCHITECTURES >= 75)"
#endif
}

// ---- q16 activation codes (matmul.cu's matvec reads them) ----
// A lane of the q16 matvec takes whole 32-element blocks, in four parts:
// part p is elements 4p..4p+3 and 16+4p..16+4p+3 (byte run p of a 4/5-bit
// block's nibbles; q8_0 takes the same elements), eight codes in one 16-byte
// piece [lo 4, hi 4]. A token's codes come in groups of 32 blocks, and a
// group holds piece p of its blocks side by side (part-major), so the warp's
// load of piece p of 32 consecutive blocks is 512 contiguous bytes. Per
// token: q16_stride(cols) codes (groups padded to 32 blocks), and after all
// tokens' codes, nb = cols/32 int2 per token {d as float bits, sum of the
// block's codes}.
__host__ __device__ inline int64_t q16_stride(int64_t cols) { return (cols / 32 + 31) / 32 * 1024; }

// Where code j (0..31) of block b of a token sits among the token's codes.
__device__ inline int64_t q16_slot(int64_t b, int j) {
    return (b / 32) * 1024 + ((j % 16) / 4) * 256 + (b % 32) * 8 + 4 * (j / 16) + j % 4;
}

// Block b of token tok from a warp holding its 32 values (lane j holds
// element j), as the CPU's quant_q16 (quants_ref.cpp): d = amax / 32767,
// codes round(x / d) half away from zero.
__device__ inline void q16_block(float v, int lane, int64_t tok, int64_t b, int64_t cols,
                                 int16_t* qs, int2* ds) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    const int sum = warp_sum(q);
    qs[tok * q16_stride(cols) + q16_slot(b, lane)] = (int16_t)q;
    if (lane == 0) ds[tok * (cols / 32) + b] = make_int2(__float_as_int(d), sum);
}

// The code and scale arrays of n_tok tokens of cols activations in act.
template <class V>  // void or const void
inline auto q16_codes(V* act) {
    using I = std::conditional_t<std::is_const_v<V>, const int16_t, int16_t>;
    return static_cast<I*>(act);
}
template <class V>
inline auto q16_scales(V* act, int64_t n_tok, int64_t cols) {
    using D = std::conditional_t<std::is_const_v<V>, const int2, int2>;
    return reinterpret_cast<D*>(q16_codes(act) + (size_t)n_tok * q16_stride(cols));
}

// acc[r] + sum_i row[i] v[r * stride + i] for rows r < R, i = 0 .. n-1 in
// order (n and stride multiples of 4, row and v 16-byte aligned): one pass
// over row serves R vectors. The row's loads are issued 64 floats at a
// time, so a thread waits on memory once per 64 rather than once per
// element. kRounded: every product and sum rounded apart (no FMA), as the
// CPU encoder sums.
template <bool kRounded, int R>
__device__ inline void rows_dot(const float* row, const float* v, int stride, int n, float* acc) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    const int n4 = n / 4;
    for (int j0 = 0; j0 < n4; j0 += 16) {
        float4 w[16];
#pragma unroll
        for (int i = 0; i < 16; ++i)
            if (j0 + i < n4) w[i] = __ldg(r4 + j0 + i);
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            if (j0 + i >= n4) break;
            const float wi[4] = {w[i].x, w[i].y, w[i].z, w[i].w};
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 x4 = reinterpret_cast<const float4*>(v + (size_t)r * stride)[j0 + i];
                const float x[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
                for (int k = 0; k < 4; ++k)
                    acc[r] = kRounded ? __fadd_rn(acc[r], __fmul_rn(x[k], wi[k]))
                                      : fmaf(wi[k], x[k], acc[r]);
            }
        }
    }
}

// rows_dot of one vector.
template <bool kRounded>
__device__ inline float row_dot(const float* row, const float* v, int n, float acc) {
    rows_dot<kRounded, 1>(row, v, 0, n, &acc);
    return acc;
}

// The rows t * n_head + h of n_tok tokens, grouped by kv head (h / n_rep)
// and taken R at a time: block b holds rows first .. first + n - 1 of kv
// head kvh, where row i of a kv head is token i / n_rep, head kvh * n_rep +
// i % n_rep. Blocks that read a kv head's data once for R rows.
struct kv_rows {
    int kvh, first, n;
};
__host__ __device__ inline int kv_row_blocks(int n_tok, int n_head_kv, int n_rep, int R) {
    return n_head_kv * ((n_tok * n_rep + R - 1) / R);
}
__host__ __device__ inline kv_rows kv_row_block(int b, int n_tok, int n_rep, int R) {
    const int per = n_tok * n_rep, bpk = (per + R - 1) / R;
    const int first = b % bpk * R;
    return kv_rows{b / bpk, first, per - first < R ? per - first : R};
}
// Row j of block rows (j < rows.n), as t * n_head + h.
__host__ __device__ inline int kv_row(const kv_rows& rows, int j, int n_head, int n_rep) {
    const int i = rows.first + j;
    return i / n_rep * n_head + rows.kvh * n_rep + i % n_rep;
}

// ---- kv_pca.cu ----
// A pca stream's calibration on the device (the CPU stream's per-head
// quantizers, kv_pca.cpp) and where its packed data lives (kv_layout.h):
// plain device pointers, passed to kernels by value. Arrays run over the
// kv heads h; "kept" channels are those with bits > 0, in channel order.
struct cuda_pca {
    int n_head_kv = 0, head_dim = 0, n_ctx = 0;
    int n_freq = 0, pair_stride = 2, pair_gap = 1;  // rotary pairs of rope_mean
    int max_block = 0;                 // the largest head's bytes per 32-token block
    const float* basis = nullptr;      // [h][dim][dim], row c: direction c
    const float* basis_t = nullptr;    // [h][dim][dim] transposed: row d is column d of basis
    const float* mean = nullptr;       // [h][dim]
    const float* sigma = nullptr;      // [h][dim]
    const float* lo = nullptr;         // [h][dim]
    const float* step = nullptr;       // [h][dim]
    const float* rope_mean = nullptr;  // [h][dim] (zeros where a head has none)
    const float* rope_freq = nullptr;  // [n_freq]
    const int* head = nullptr;         // [h][4]: kept channels, block bytes, rope pairs, -
    const int* keep = nullptr;         // [h][dim] channel of kept i (then the others, in order)
    const int* kbits = nullptr;        // [h][dim] its bits
    const int* koff = nullptr;         // [h][dim] its group's byte offset in a block
    const int* cbits = nullptr;        // [h][dim] bits of channel c (0: truncated)
    // Rotary pairs with a nonzero mean (the CPU stream's rope_pair), [h][dim/2]
    // of {a, b, ma, mb, w} (a, b as floats), and per pair the tables
    // cos(w j), sin(w j) for j < KV_BLOCK_TOKENS: [h][dim/2][2][32].
    const float* pairs = nullptr;
    const float* run_tab = nullptr;
    // The run tables as the span kernel's tensor-core fragments (kv_pca.cu),
    // [h][dim/16][4][32]: cos and sin of 8 pairs against an 8-token tile, in
    // high and low halves.
    const uint4* run_frag = nullptr;
    const int64_t* head_off = nullptr; // [h] byte offset of head h's blocks in codes
    uint8_t* codes = nullptr;          // [h][block] of the kept channels' groups
    uint8_t* scale = nullptr;          // [h][n_ctx] token scale codes (kv_pca_scale_code)
    uint16_t* sinks = nullptr;         // [h][KV_PCA_SINKS][dim] half y
    // pca:B:wN / pca:B:eN, the CPU stream's recent window: win positions, a
    // record of y per position and head (rec bytes: dim halves, or with
    // tier8 a half scale and dim signed bytes). The last store's records in
    // batch [t][h] (up to max_batch tokens), folded into the ring [slot][h]
    // (slot = pos % win) by the next store; ring_pos[slot] the position a
    // slot holds (-1: none); bstate {first position, tokens} of the batch.
    int win = 0, tier8 = 0, rec = 0, max_batch = 0;
    uint8_t* ring = nullptr;
    int* ring_pos = nullptr;
    uint8_t* batch = nullptr;
    int* bstate = nullptr;
};

// ---- kv_encode.cu ----
// One layer's keys or values on the device, laid out as the CPU stream of
// the same format (kv_layout.h): [pos][head] records of `rec` bytes (pca:
// the cuda_pca arrays instead).
struct cuda_kv_stream {
    kv_kind kind = KV_KIND_F16;
    int n_head_kv = 0, head_dim = 0;
    size_t rec = 0;  // bytes per (position, head)
    int rot = 0;     // Hadamard block applied before quantizing (q8_0/q4_0: 64, rot: head_dim), 0: none
    int bits = 0;    // rot, affine: bits per code
    const float* signs = nullptr;  // rot: [head_dim] signs applied before the turn (device; the caller's)
    uint8_t* d = nullptr;
    // affine keys (channel-major, rec 0): d holds [head][n_blocks] blocks of
    // blk bytes {half scale[dim]; half min[dim]; codes[dim][4*bits]}; the
    // newest incomplete block waits as halves in stage [head][32][dim]; len
    // (one int) is where the last store ended, which tells the next store
    // whether the block it starts in was quantized already.
    int cmajor = 0, n_blocks = 0;
    size_t blk = 0;
    uint8_t* stage = nullptr;
    int* len = nullptr;
    cuda_pca pca;    // kind KV_KIND_PCA
};
// Whether the CUDA backend has this format; the supported names.
bool cuda_kv_kind_supported(kv_kind k);
const char* cuda_kv_kinds_supported();
// Record size and rotation as the CPU stream of type t uses them (rot: the
// caller sets signs, kv_random_signs of the stream's seed, in device memory;
// affine keys: the caller allocates d, stage and len, of the sizes below,
// zeroed).
cuda_kv_stream cuda_kv_stream_shape(const kv_type& t, int n_head_kv, int head_dim, bool is_key = false,
                                    int n_ctx = 0);
// Device bytes of a stream's d for n_ctx positions, and of its stage.
size_t cuda_kv_data_bytes(const cuda_kv_stream& st, int n_ctx);
size_t cuda_kv_stage_bytes(const cuda_kv_stream& st);
// Encodes x [n][n_head_kv*head_dim] at positions pos0.. byte for byte as the
// CPU stream's store() does.
// pos_dev as for cuda_rope_apply.
void cuda_kv_store(const cuda_kv_stream& st, int pos0, int n, const float* x, cudaStream_t s,
                   const int* pos_dev = nullptr);

// ---- kv_pca.cu ----
// A pca stream's device memory (codes, scales, sinks, calibration), made
// from the CPU stream's quantizers and freed with its owner.
class cuda_pca_stream {
public:
    // window / window8: pca:B:wN / :eN (at most one), for stores of up to
    // max_batch tokens.
    cuda_pca_stream(const std::vector<kv_pca_head>& heads, int n_ctx, int window = 0, int window8 = 0,
                    int max_batch = 0);
    ~cuda_pca_stream();
    cuda_pca_stream(const cuda_pca_stream&) = delete;
    cuda_pca_stream& operator=(const cuda_pca_stream&) = delete;
    cuda_kv_stream view() const;
    // Bytes of the code blocks, the token scales and the sinks; their sum is
    // the CPU stream's bytes().
    size_t code_bytes() const { return code_bytes_; }
    size_t scale_bytes() const { return scale_bytes_; }
    size_t sink_bytes() const { return sink_bytes_; }
    size_t bytes() const { return code_bytes_ + scale_bytes_ + sink_bytes_ + ring_bytes_; }

private:
    cuda_pca dev_;
    size_t code_bytes_ = 0, scale_bytes_ = 0, sink_bytes_ = 0, ring_bytes_ = 0;
    void* calib_ = nullptr;
    void* cache_ = nullptr;
    void* window_ = nullptr;
};
// The pca encoder: x [n][n_head_kv*head_dim] at positions pos0.. (+ *pos_dev).
void cuda_kv_store_pca(const cuda_pca& p, int pos0, int n, const float* x, cudaStream_t s,
                       const int* pos_dev);
// Attention over pca keys and values (both pca): per (token, kv head) the
// query turned into the key basis once, then spans of 32-token blocks scored
// from the codes and values summed in the value basis; the merge un-rotates.
// Partial results: n_tok * n_head * (splits + 1) entries of head_dim + 2
// floats (cuda_attention_pca_partial_floats). xk, xv: the tokens' keys and
// values, stored first in the same launch as the query turn (as
// cuda_kv_store_pca would); null when they are stored already. act as for
// cuda_attention. rope (with xk): q and xk not turned yet; the launch that
// reads them turns them, cache position p by p + rope_off.
void cuda_attention_pca(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q,
                        int n_tok, int pos0, int n_head, int sliding_window, float* out,
                        float* partial, float* qprep, int n_sm, cudaStream_t s,
                        const int* pos_dev, int split_len, const float* xk = nullptr,
                        const float* xv = nullptr, void* act = nullptr,
                        const cuda_rope* rope = nullptr, int rope_off = 0);
// Floats of the per-query scratch cuda_attention_pca needs for n_tok tokens.
size_t cuda_attention_pca_qprep_floats(int n_tok, int n_head, int head_dim);
struct cuda_attn_params;
size_t cuda_attention_pca_partial_floats(const cuda_attn_params& p, int n_tok, int max_len,
                                         int n_sm);

// ---- attention.cu ----
struct cuda_attn_params {
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    int sliding_window = 0;
};
// Floats of partial results attention needs for n_tok queries at most
// max_len positions deep (flash-decoding splits); pca streams need more.
size_t cuda_attention_partial_floats(const cuda_attn_params& p, int n_tok, int max_len,
                                     int n_sm, bool pca = false);
// Splits over the sequence for `blocks` blocks of work at most max_len deep.
int cuda_attention_splits(int blocks, int max_len, int n_sm);
// Merges n_entries partial results {m, l, acc[hd]} per row (t * n_head + h)
// into out; vrot: the inverse Walsh-Hadamard turn of the values (blocks of
// vrot channels, then vsigns where given: q8_0/q4_0 64, rot head_dim);
// basis_t/mean: a pca value stream's un-rotation x = mean + P^T o, per kv
// head (n_rep query heads each), from its transposed basis; act as for
// cuda_attention.
void cuda_attention_merge(const float* partial, int n_rows, int n_entries, int hd, int vrot,
                          const float* basis_t, const float* mean, int n_head, int n_rep,
                          float* out, cudaStream_t s, void* act = nullptr,
                          const float* vsigns = nullptr);
// Whether attention can write its output's q16 codes (act) for this head_dim.
bool cuda_attention_writes_q16(int head_dim);
// Causal attention of n_tok queries q [n_tok][n_head*head_dim] at
// positions pos0.. over streams that already hold them; out likewise.
void cuda_attention(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q, int n_tok,
                    int pos0, const cuda_attn_params& p, float* out, float* partial, int n_sm,
                    cudaStream_t s, const int* pos_dev = nullptr, int split_len = 0,
                    void* act = nullptr);
// pos_dev as for cuda_rope_apply; split_len > 0 sizes the split over the
// sequence for that many positions instead of pos0 + n_tok (a graph's grid
// is fixed: it is sized for the whole context and spans follow *pos_dev).
// act: out's q16 codes are written too, as cuda_quantize_q16 would
// (cuda_attention_writes_q16(head_dim) must hold).

}  // namespace kvrt
