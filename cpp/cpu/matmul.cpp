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
    if (n_rows == 1) {  // decode: not worth a synchronisation
        quants_quantize_row(in->type, x, in->buf.data(), cols);
        return;
    }
    pool.run([&](int ith, int nth) {
        int64_t b, e;
        split_range(n_rows, ith, nth, &b, &e);
        for (int64_t t = b; t < e; ++t)
            quants_quantize_row(in->type, x + t * cols, in->buf.data() + t * in->row_bytes, cols);
    });
}

// Rows of all weights sharing one input (q/k/v, gate/up) form one job list,
// cut into blocks of rows and dealt to threads in contiguous runs, so one
// synchronisation serves several matrices. Within a block, columns (tokens)
// go in tiles so the block's weights stay in cache while every token passes.
// Decode (one column) uses small blocks so threads stream equal bytes.
static constexpr int kRowBlockPrefill = 64;
static constexpr int kRowBlockDecode = 16;
static constexpr int kColTile = 16;

void matmul_many(const matmul_job* jobs, int n_jobs, const matmul_input& in, thread_pool& pool) {
    const int T = in.n_rows;
    const int rb = T == 1 ? kRowBlockDecode : kRowBlockPrefill;
    int64_t n_blocks = 0;
    for (int j = 0; j < n_jobs; ++j) n_blocks += (jobs[j].w->rows + rb - 1) / rb;
    pool.run([&](int ith, int nth) {
        int64_t b0, b1;
        split_range(n_blocks, ith, nth, &b0, &b1);
        int64_t base = 0;  // first block index of job j
        for (int j = 0; j < n_jobs && base < b1; ++j) {
            const weight& w = *jobs[j].w;
            const int64_t nb = (w.rows + rb - 1) / rb;
            for (int64_t b = std::max(b0, base); b < std::min(b1, base + nb); ++b) {
                const int64_t r = (b - base) * rb;
                const int nr = (int)std::min<int64_t>(rb, w.rows - r);
                for (int c = 0; c < T; c += kColTile) {
                    const int nc = std::min(kColTile, T - c);
                    quants_gemm_tile(w.type, w.cols, w.data + r * w.row_bytes, w.row_bytes,
                                     in.buf.data() + (size_t)c * in.row_bytes, in.row_bytes,
                                     jobs[j].out + (size_t)c * w.rows + r, (size_t)w.rows, nr, nc);
                }
            }
            base += nb;
        }
    });
}

void matmul(const weight& w, const matmul_input& in, float* out, thread_pool& pool) {
    const matmul_job job{&w, out};
    matmul_many(&job, 1, in, pool);
}

void add_bias_rows(float* out, const float* bias, int n_rows, int64_t n) {
    for (int r = 0; r < n_rows; ++r)
        for (int64_t i = 0; i < n; ++i) out[r * n + i] += bias[i];
}

}  // namespace kvrt
