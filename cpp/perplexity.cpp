#include "perplexity.h"

#include <algorithm>
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

perplexity_chunks::perplexity_chunks(const std::vector<int32_t>& toks, int ctx_size,
                                     int n_max_chunks)
    : tokens(toks), n_ctx(ctx_size), add_bos(false), bos(-1) {
    perplexity_require_tokens(tokens.size(), n_ctx);
    const int n_all = (int)(tokens.size() / n_ctx);
    n_chunks = n_max_chunks > 0 ? std::min(n_max_chunks, n_all) : n_all;
}

void perplexity_chunks::begin(context& ctx, int c) const {
    if (ctx.n_ctx() < n_ctx) throw error("perplexity: the context is smaller than a chunk");
    const tokenizer& v = ctx.mdl().vocab();
    std::vector<int32_t> head(tokens.begin() + (size_t)c * n_ctx,
                              tokens.begin() + (size_t)c * n_ctx + first());
    // The scored targets stay the original tokens: the BOS swap only changes
    // the input at position 0, which is never a target.
    if (v.add_bos() && v.bos_id() >= 0) head[0] = v.bos_id();
    ctx.reset();
    ctx.eval(head.data(), (int)head.size(), nullptr, 0);
}

int perplexity_chunks::next(context& ctx, int c, float* logits) const {
    const int row = ctx.n_past();
    const int n = std::min(ctx.n_batch(), n_ctx - row);
    if (n <= 0) return 0;
    ctx.eval(tokens.data() + (size_t)c * n_ctx + row, n, logits, n);
    return n;
}

double perplexity_accumulator::ppl() const {
    return count ? std::exp(nll / count) : 0.0;
}

double perplexity_accumulator::ppl_err() const {
    if (count < 2) return 0.0;
    const double mean = nll / count;
    const double var = nll2 / count - mean * mean;
    return var > 0 ? std::sqrt(var / (count - 1)) * ppl() : 0.0;
}

perplexity_result perplexity_compute(context& ctx, std::vector<int32_t> tokens, int n_chunks,
                                     const std::function<void(int, double)>& on_chunk) {
    const int n_vocab = ctx.mdl().hp().n_vocab;
    perplexity_chunks chunks(tokens, ctx.n_ctx(), n_chunks);
    perplexity_result r;
    r.n_chunks = chunks.n_chunks;
    std::vector<float> logits((size_t)ctx.n_batch() * n_vocab);
    perplexity_accumulator acc;
    for (int c = 0; c < r.n_chunks; ++c) {
        chunks.begin(ctx, c);
        for (int row = chunks.first(), n; (n = chunks.next(ctx, c, logits.data())) > 0; row += n)
            for (int i = 0; i < n && row + i < chunks.n_ctx - 1; ++i)
                acc.add(-log_softmax_at(logits.data() + (size_t)i * n_vocab, n_vocab,
                                        chunks.target(c, row + i)));
        r.running_ppl.push_back(acc.ppl());
        if (on_chunk) on_chunk(c, r.running_ppl.back());
    }
    r.n_scored = acc.count;
    r.ppl = acc.ppl();
    r.ppl_err = acc.ppl_err();
    return r;
}

}  // namespace kvrt
