#include "perplexity.h"

#include <cmath>

namespace kvrt {

double log_softmax_at(const float* logits, int n_vocab, int target) {
    float max = logits[0];
    for (int i = 1; i < n_vocab; ++i) max = std::max(max, logits[i]);
    double sum = 0.0;
    for (int i = 0; i < n_vocab; ++i) sum += std::exp((double)(logits[i] - max));
    return (double)(logits[target] - max) - std::log(sum);
}

void perplexity_require_tokens(size_t n_tokens, int n_ctx) {
    if ((int64_t)n_tokens < 2 * (int64_t)n_ctx)
        throw error("perplexity: the text has " + std::to_string(n_tokens) + " tokens; at least " +
                    std::to_string(2 * (int64_t)n_ctx) + " are needed for a context of " +
                    std::to_string(n_ctx));
}

perplexity_result perplexity_compute(context& ctx, std::vector<int32_t> tokens, int n_chunks,
                                     const std::function<void(int, double)>& on_chunk) {
    const int n_ctx = ctx.n_ctx();
    const int n_vocab = ctx.mdl().hp().n_vocab;
    perplexity_require_tokens(tokens.size(), n_ctx);
    const int n_max = (int)(tokens.size() / n_ctx);
    perplexity_result r;
    r.n_chunks = n_chunks > 0 ? std::min(n_chunks, n_max) : n_max;
    const int first = n_ctx / 2;
    const bool add_bos = ctx.mdl().vocab().add_bos() && ctx.mdl().vocab().bos_id() >= 0;
    std::vector<float> logits((size_t)(n_ctx - first) * n_vocab);
    double nll = 0.0, nll2 = 0.0;
    int64_t count = 0;
    for (int c = 0; c < r.n_chunks; ++c) {
        std::vector<int32_t> chunk(tokens.begin() + (size_t)c * n_ctx,
                                   tokens.begin() + (size_t)(c + 1) * n_ctx);
        if (add_bos) chunk[0] = ctx.mdl().vocab().bos_id();
        ctx.reset();
        ctx.eval(chunk.data(), n_ctx, logits.data(), n_ctx - first);
        // The scored targets are the original tokens (the BOS swap only
        // changes the input at position 0, which is never a target here).
        const int32_t* target = tokens.data() + (size_t)c * n_ctx;
        for (int j = first; j < n_ctx - 1; ++j) {
            const double v = -log_softmax_at(logits.data() + (size_t)(j - first) * n_vocab,
                                             n_vocab, target[j + 1]);
            nll += v;
            nll2 += v * v;
        }
        count += n_ctx - 1 - first;
        r.running_ppl.push_back(std::exp(nll / count));
        if (on_chunk) on_chunk(c, r.running_ppl.back());
    }
    r.n_scored = count;
    const double mean = nll / count;
    r.ppl = std::exp(mean);
    const double var = nll2 / count - mean * mean;
    r.ppl_err = var > 0 && count > 1 ? std::sqrt(var / (count - 1)) * r.ppl : 0.0;
    return r;
}

}  // namespace kvrt
