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
    double ppl_err = 0.0;  // llama-perplexity's estimate of the standard error
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

}  // namespace kvrt
