// Perplexity with llama-perplexity's protocol: the text is cut into chunks of
// n_ctx tokens (the first token of each replaced by BOS when the model adds
// one), each chunk is evaluated from an empty cache, and the second half of
// each chunk is scored. Numbers line up with llama.cpp on the same GGUF/text.
#pragma once

#include <functional>
#include <vector>

#include "context.h"

namespace kvrt {

struct perplexity_result {
    int n_chunks = 0;
    int64_t n_scored = 0;
    double ppl = 0.0;
    double ppl_err = 0.0;             // llama-perplexity's estimate of the standard error
    std::vector<double> running_ppl;  // after each chunk
};

// Scores `tokens` with ctx (its n_ctx sets the chunk size); n_chunks <= 0
// means all whole chunks. on_chunk(i, running_ppl) is called after each
// chunk. Throws kvrt::error if fewer than 2 * n_ctx tokens are given.
perplexity_result perplexity_compute(context& ctx, std::vector<int32_t> tokens, int n_chunks,
                                     const std::function<void(int, double)>& on_chunk);

// Throws kvrt::error unless n_tokens >= 2 * n_ctx.
void perplexity_require_tokens(size_t n_tokens, int n_ctx);

// log p(target) from one row of logits, computed stably.
double log_softmax_at(const float* logits, int n_vocab, int target);

// The chunking shared by perplexity and eval (cpp/eval.h), so both score the
// very same rows. Chunk c covers tokens [c*n_ctx, (c+1)*n_ctx); rows
// first() .. n_ctx-2 are scored, row j predicting token c*n_ctx + j + 1.
struct perplexity_chunks {
    perplexity_chunks(const std::vector<int32_t>& tokens, int n_ctx, int n_chunks);
    int first() const { return n_ctx / 2; }
    int n_scored() const { return n_ctx - 1 - first(); }  // per chunk
    int32_t target(int c, int row) const { return tokens[(size_t)c * n_ctx + row + 1]; }

    // Starts chunk c in ctx (from an empty cache): evaluates its rows before
    // first() without logits.
    void begin(context& ctx, int c) const;
    // Evaluates the next rows of chunk c after begin() (at most n_batch of
    // them, fewer at the end) and writes their logits ([n][n_vocab]); returns
    // their count, 0 when the chunk is done. Rows come in pieces so that the
    // logits of a whole chunk are never held at once.
    int next(context& ctx, int c, float* logits) const;

    const std::vector<int32_t>& tokens;
    int n_ctx;
    int n_chunks;  // whole chunks scored
    bool add_bos;
    int32_t bos;
};

// Accumulates negative log-likelihoods into llama-perplexity's estimate.
struct perplexity_accumulator {
    double nll = 0.0, nll2 = 0.0;
    int64_t count = 0;
    void add(double v) {
        nll += v;
        nll2 += v * v;
        ++count;
    }
    double ppl() const;
    double ppl_err() const;
};

}  // namespace kvrt
