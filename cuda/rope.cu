// Rotary embedding in place, as rope_table::apply (cpp/cpu/rope.cpp): the
// angle pos * inv_freq[i] and its cosine and sine in double, then rounded to
// float, so positions deep in a long context keep their precision.
#include <algorithm>

#include "common.cuh"

namespace kvrt {

namespace {

// Where the turned keys and the values go as well (float streams): element
// i of a token's [head*dim] row at byte i * size past that token's record
// (cuda_kv_stream: [pos][head] records of head_dim elements).
struct rope_kv_out {
    uint8_t* k = nullptr;  // the keys' stream at position pos_store (+ *pos_dev)
    uint8_t* v = nullptr;
    size_t k_pos = 0, v_pos = 0;  // bytes per position of each stream
    int k_f16 = 0, v_f16 = 0;
    const float* vsrc = nullptr;  // the values, [n_tok][n_heads2*head_dim]
};

// Index idx over x's pairs, then x2's. STORE: x2 (the keys) is stored as it
// is turned, then the values and the keys' unturned dimensions, past total.
template <bool STORE>
__global__ void rope_kernel(float* x, int n_heads, float* x2, int n_heads2, int head_dim,
                            int n_rot, int neox, const float* inv_freq, int pos0,
                            const int* pos_dev, int64_t total1, int64_t total, rope_kv_out kv) {
    pdl_begin();
    const int half = n_rot / 2;
    if (pos_dev) pos0 += *pos_dev;
    if constexpr (STORE) {
        if (pos_dev) {
            kv.k += (size_t)*pos_dev * kv.k_pos;
            kv.v += (size_t)*pos_dev * kv.v_pos;
        }
    }
    const int64_t n_v = STORE ? (total - total1) / half * head_dim : 0;  // value elements
    const int64_t n_tail = STORE ? (total - total1) / half * (head_dim - n_rot) : 0;
    const int64_t end = total + n_v + n_tail;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < end;
         idx += (int64_t)gridDim.x * blockDim.x) {
        if (STORE && idx >= total) {
            const int64_t j = idx - total;
            if (j < n_v) {
                store_kv_elem(kv.v, kv.v_f16, j, kv.vsrc[j]);
            } else {  // dimension n_rot + j % (head_dim - n_rot) of key row j / (head_dim - n_rot)
                const int64_t jt = j - n_v, w = head_dim - n_rot;
                const int64_t e = jt / w * head_dim + n_rot + jt % w;
                store_kv_elem(kv.k, kv.k_f16, e, x2[e]);
            }
            continue;
        }
        const bool second = idx >= total1;
        const int64_t j = second ? idx - total1 : idx;
        const int i = (int)(j % half);
        const int64_t th = j / half;  // token * heads + head
        const int t = (int)(th / (second ? n_heads2 : n_heads));
        float* xh = (second ? x2 : x) + th * head_dim;
        const double theta = (double)(pos0 + t) * (double)inv_freq[i];
        const float cs = (float)cos(theta), sn = (float)sin(theta);
        const int ia = neox ? i : 2 * i, ib = ia + (neox ? half : 1);
        const float x0 = xh[ia], x1 = xh[ib];
        const float y0 = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        const float y1 = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
        xh[ia] = y0;
        xh[ib] = y1;
        if (STORE && second) {
            store_kv_elem(kv.k, kv.k_f16, th * head_dim + ia, y0);
            store_kv_elem(kv.k, kv.k_f16, th * head_dim + ib, y1);
        }
    }
}

void launch_rope(float* x, int n_tok, int n_heads, const cuda_rope& r, int pos0, cudaStream_t s,
                 const int* pos_dev, float* x2, int n_heads2, const rope_kv_out* kv) {
    const int64_t total1 = (int64_t)n_tok * n_heads * (r.n_rot / 2);
    const int64_t n2 = x2 ? (int64_t)n_tok * n_heads2 : 0;
    const int64_t total = total1 + n2 * (r.n_rot / 2);
    const int64_t end = total + (kv ? n2 * (2 * r.head_dim - r.n_rot) : 0);
    if (end <= 0) return;
    const int blocks = (int)std::min<int64_t>((end + 255) / 256, 4096);
    launch_pdl(kv ? rope_kernel<true> : rope_kernel<false>, blocks, 256, 0, s, x, n_heads, x2, n_heads2,
               r.head_dim, r.n_rot, r.neox, r.inv_freq, pos0, pos_dev, total1, total,
               kv ? *kv : rope_kv_out{});
    KVRT_CUDA_CHECK(cudaGetLastError());
}

bool float_stream(const cuda_kv_stream& st) {
    return st.kind == KV_KIND_F16 || st.kind == KV_KIND_F32;
}

}  // namespace

void cuda_rope_apply(float* x, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                     cudaStream_t s, const int* pos_dev, float* x2, int n_heads2) {
    launch_rope(x, n_tok, n_heads, r, pos0, s, pos_dev, x2, n_heads2, nullptr);
}

bool cuda_rope_stores(const cuda_kv_stream& k, const cuda_kv_stream& v) {
    return float_stream(k) && float_stream(v);
}

void cuda_rope_apply_store(float* q, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                           cudaStream_t s, const int* pos_dev, float* k, const float* v,
                           const cuda_kv_stream& sk, const cuda_kv_stream& sv, int store_pos0) {
    if (!cuda_rope_stores(sk, sv) || sk.head_dim != r.head_dim)
        throw error("CUDA rope: keys and values stored in the launch need float streams of the rope's heads");
    rope_kv_out kv;
    kv.k_pos = (size_t)sk.n_head_kv * sk.rec;
    kv.v_pos = (size_t)sv.n_head_kv * sv.rec;
    kv.k = sk.d + (size_t)store_pos0 * kv.k_pos;
    kv.v = sv.d + (size_t)store_pos0 * kv.v_pos;
    kv.k_f16 = sk.kind == KV_KIND_F16;
    kv.v_f16 = sv.kind == KV_KIND_F16;
    kv.vsrc = v;
    launch_rope(q, n_tok, n_heads, r, pos0, s, pos_dev, k, sk.n_head_kv, &kv);
}

}  // namespace kvrt
