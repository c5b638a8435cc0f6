// Causal attention over a KV cache, split into work items of (token, kv head,
// span of positions). Each item produces a partial softmax (running max m,
// normaliser l, unnormalised output) that a second pass merges, so decode at
// long context spreads one token's attention over every thread
// (flash-decoding) while prefill uses one span per (tile of tokens, kv head).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kv_kernels.h"
#include "ops.h"

namespace kvrt {

// Query tokens per work item in prefill.
static constexpr int kTile = 8;
// Below this many positions a span is not split further.
static constexpr int kMinSpan = 256;
// Attention with fewer (query, key) head-pairs than this runs on the calling
// thread: at small depth in decode it costs less than waking the others.
static constexpr int64_t kMinParallelWork = 16384;

void attention_forward(const kv_stream& keys, const kv_stream& values, const float* q, int n_tok,
                       int pos0, const attention_params& p, float* out,
                       attention_scratch& scratch, thread_pool& pool) {
    const int n_rep = p.n_head / p.n_head_kv, hd = p.head_dim;
    const int nth = pool.size();
    // Prefill without a sliding window takes kTile consecutive query tokens
    // per work item: the stream reads (and unpacks) each cached position once
    // for all their rows; a row's positions past its own are masked.
    const int tile = p.sliding_window > 0 || n_tok < 2 ? 1 : std::min(n_tok, kTile);
    const int n_tiles = (n_tok + tile - 1) / tile;
    const int rows = tile * n_rep;  // query rows of a full tile
    const int n_pairs = n_tiles * p.n_head_kv;
    const int max_len = pos0 + n_tok;
    int n_split = 1;
    if (n_pairs < 4 * nth) {
        n_split = (4 * nth + n_pairs - 1) / n_pairs;
        n_split = std::max(1, std::min(n_split, max_len / kMinSpan));
    }
    const int n_items = n_pairs * n_split;
    const size_t item_floats = (size_t)rows * (hd + 2);
    scratch.partial.resize((size_t)n_items * item_floats);
    scratch.per_thread.resize(nth);
    const float scale = 1.0f / std::sqrt((float)hd);
    std::atomic<int> next{0};
    const bool inline_only = (int64_t)n_tok * max_len * p.n_head < kMinParallelWork;
    auto run = [&](auto&& fn) {
        if (inline_only) fn(0, 1);
        else pool.run(fn);
    };

    run([&](int ith, int) {
        std::vector<float>& sbuf = scratch.per_thread[ith];
        sbuf.resize((size_t)rows * (max_len + hd));
        float* qbuf = sbuf.data();  // rows * hd, then scores
        float* s = sbuf.data() + (size_t)rows * hd;
        for (int item; (item = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
            const int tl = item / (p.n_head_kv * n_split);
            const int kvh = (item / n_split) % p.n_head_kv;
            const int split = item % n_split;
            const int ta = tl * tile, nt = std::min(tile, n_tok - ta), nr = nt * n_rep;
            const int last = pos0 + ta + nt - 1;  // position of the tile's last token
            const int lo = p.sliding_window > 0 ? std::max(0, last - p.sliding_window + 1) : 0;
            const int len = last + 1 - lo;
            const int t0 = lo + (int)((int64_t)len * split / n_split);
            const int t1 = lo + (int)((int64_t)len * (split + 1) / n_split);
            const int n = t1 - t0;
            float* part = scratch.partial.data() + (size_t)item * item_floats;
            float* acc = part + 2 * rows;
            std::fill(acc, acc + (size_t)nr * hd, 0.0f);
            if (n <= 0) {
                for (int r = 0; r < nr; ++r) {
                    part[2 * r] = -std::numeric_limits<float>::infinity();
                    part[2 * r + 1] = 0.0f;
                }
                continue;
            }
            for (int ti = 0; ti < nt; ++ti) {
                const float* qh = q + ((size_t)(ta + ti) * p.n_head + (size_t)kvh * n_rep) * hd;
                float* qb = qbuf + (size_t)ti * n_rep * hd;
                for (int i = 0; i < n_rep * hd; ++i) qb[i] = qh[i] * scale;
            }
            keys.scores_at(kvh, qbuf, nr, t0, t1, s, n, pos0 + ta, n_rep);
            for (int r = 0; r < nr; ++r) {
                float* sr = s + (size_t)r * n;
                // Positions after this row's own token are not its to see.
                const int own = pos0 + ta + r / n_rep, valid = std::min(n, own + 1 - t0);
                if (valid <= 0) {
                    std::fill(sr, sr + n, 0.0f);
                    part[2 * r] = -std::numeric_limits<float>::infinity();
                    part[2 * r + 1] = 0.0f;
                    continue;
                }
                const float m = kv_max(sr, valid);
                const float l = kv_softmax_exp(sr, valid, m);
                std::fill(sr + valid, sr + n, 0.0f);
                part[2 * r] = m;
                part[2 * r + 1] = l;
            }
            values.accumulate_at(kvh, s, nr, t0, t1, n, acc, pos0 + ta, n_rep);
        }
    });

    // Merge the spans of each (token, head).
    run([&](int ith, int nth_) {
        int64_t b, e;
        split_range((int64_t)n_tok * p.n_head, ith, nth_, &b, &e);
        for (int64_t i = b; i < e; ++i) {  // i == token*n_head + head
            const int t = (int)(i / p.n_head), head = (int)(i % p.n_head);
            const int kvh = head / n_rep;
            const int row = (t % tile) * n_rep + head % n_rep;  // within its tile's items
            const float* first = scratch.partial.data() +
                                 ((size_t)(t / tile) * p.n_head_kv + kvh) * n_split * item_floats;
            float m = -std::numeric_limits<float>::infinity();
            for (int sp = 0; sp < n_split; ++sp) m = std::max(m, first[sp * item_floats + 2 * row]);
            float* o = out + (size_t)i * hd;
            std::fill(o, o + hd, 0.0f);
            float l = 0.0f;
            for (int sp = 0; sp < n_split; ++sp) {
                const float* part = first + sp * item_floats;
                if (part[2 * row + 1] == 0.0f) continue;
                const float w = std::exp(part[2 * row] - m);
                l += w * part[2 * row + 1];
                const float* acc = part + 2 * rows + (size_t)row * hd;
                for (int d = 0; d < hd; ++d) o[d] += w * acc[d];
            }
            const float inv = 1.0f / l;
            for (int d = 0; d < hd; ++d) o[d] *= inv;
            values.finish(kvh, o);
        }
    });
}

}  // namespace kvrt
