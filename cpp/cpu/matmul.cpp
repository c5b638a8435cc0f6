#include <algorithm>

#include "../quants.h"
#include "ops.h"

namespace kvrt {

void matmul_prepare(const float* x, int n_rows, int64_t cols, ggml_type weight_type,
                    matmul_input* in, thread_pool& pool) {
    in->type = quants_vec_dot_type(weight_type);
    in->cols = cols;
    in->n_rows = n_rows;
    in->row_bytes = quants_row_size(in->type, cols);
    in->buf.resize(in->row_bytes * n_rows);
    pool.run([&](int ith, int nth) {
        int64_t b, e;
        split_range(n_rows, ith, nth, &b, &e);
        for (int64_t t = b; t < e; ++t)
            quants_quantize_row(in->type, x + t * cols, in->buf.data() + t * in->row_bytes, cols);
    });
}

// Weight rows are split across threads in blocks; within a block, columns
// (tokens) go in tiles so a block of weight rows stays in cache while every
// token passes over it.
static constexpr int kRowBlock = 64;
static constexpr int kColTile = 16;

void matmul(const weight& w, const matmul_input& in, float* out, thread_pool& pool) {
    const int64_t M = w.rows;
    const int T = in.n_rows;
    const int64_t n_blocks = (M + kRowBlock - 1) / kRowBlock;
    pool.run([&](int ith, int nth) {
        // Decode (T == 1) splits rows as finely as possible so both threads
        // stream the same amount of weight bytes.
        int64_t r0, r1;
        if (T == 1) {
            split_range(M, ith, nth, &r0, &r1);
        } else {
            int64_t b0, b1;
            split_range(n_blocks, ith, nth, &b0, &b1);
            r0 = b0 * kRowBlock;
            r1 = std::min(M, b1 * kRowBlock);
        }
        for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
            const int nr = (int)std::min<int64_t>(kRowBlock, r1 - rb);
            for (int c = 0; c < T; c += kColTile) {
                const int nc = std::min(kColTile, T - c);
                quants_gemm_tile(w.type, w.cols, w.data + rb * w.row_bytes, w.row_bytes,
                                 in.buf.data() + (size_t)c * in.row_bytes, in.row_bytes,
                                 out + (size_t)c * M + rb, (size_t)M, nr, nc);
            }
        }
    });
}

void add_bias_rows(float* out, const float* bias, int n_rows, int64_t n) {
    for (int r = 0; r < n_rows; ++r)
        for (int64_t i = 0; i < n; ++i) out[r * n + i] += bias[i];
}

}  // namespace kvrt
