#include "eval.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "perplexity.h"

namespace kvrt {

void eval_parse_spec(const std::string& spec, kv_type* k, kv_type* v) {
    const size_t slash = spec.find('/');
    if (spec.empty() || slash == 0 || slash + 1 == spec.size())
        throw error("eval: bad KV format '" + spec + "' (a format name, or K/V)");
    *k = kv_type_from_name(spec.substr(0, slash));
    *v = slash == std::string::npos ? *k : kv_type_from_name(spec.substr(slash + 1));
}

// Log-sum-exp of a row, in double throughout: KL between close
// distributions is a small difference of large sums, and float rounding of
// x - max alone moves it by about 1%.
static double row_lse(const float* x, int n) {
    float m = x[0];
    for (int i = 1; i < n; ++i) m = std::max(m, x[i]);
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += std::exp((double)x[i] - m);
    return m + std::log(s);
}

double eval_kl_row(const float* ref, const float* test, int n_vocab, bool* same_top1) {
    const double lr = row_lse(ref, n_vocab), lt = row_lse(test, n_vocab);
    double kl = 0.0;
    int ar = 0, at = 0;
    for (int i = 0; i < n_vocab; ++i) {
        const double a = ref[i] - lr, b = test[i] - lt;
        kl += std::exp(a) * (a - b);
        if (ref[i] > ref[ar]) ar = i;
        if (test[i] > test[at]) at = i;
    }
    if (same_top1) *same_top1 = ar == at;
    return std::max(kl, 0.0);  // rounding can leave a tiny negative
}

namespace {

// One format being measured: its context and running sums.
struct eval_run {
    eval_result r;
    std::unique_ptr<context> ctx;
    attn_capture cap;
    perplexity_accumulator acc;
    std::vector<double> err_sum;  // per layer
    double kl_sum = 0;
    int64_t top1 = 0, n_err = 0;
    int alias = -1;  // index of the run whose results this one shares

    void finish(int n_layer) {
        r.n_scored = acc.count;
        r.ppl = acc.ppl();
        r.ppl_err = acc.ppl_err();
        r.kl_mean = acc.count ? kl_sum / acc.count : 0.0;
        r.top1 = acc.count ? (double)top1 / acc.count : 0.0;
        r.attn_rel_err.assign(n_layer, 0.0);
        for (int l = 0; l < n_layer && n_err; ++l) r.attn_rel_err[l] = err_sum[l] / n_err;
    }
};

}  // namespace

eval_report eval_compare(const model& m, const std::vector<int32_t>& tokens, const eval_params& p,
                         const std::vector<std::string>& specs,
                         const std::function<void(int, int)>& progress) {
    const hparams& hp = m.hp();
    const int n_vocab = hp.n_vocab, n_layer = hp.n_layer, QD = hp.n_head * hp.head_dim;
    perplexity_chunks chunks(tokens, p.n_ctx, p.n_chunks);

    // Every spec is parsed and every cache allocated before any work, so a
    // bad name fails at once.
    std::vector<eval_run> runs(specs.size() + 1);  // runs[0]: the reference
    std::vector<std::pair<kv_type, kv_type>> types;
    for (size_t i = 0; i <= specs.size(); ++i) {
        kv_type k, v;
        eval_parse_spec(i == 0 ? p.reference : specs[i - 1], &k, &v);
        types.push_back({k, v});
        runs[i].r.spec = i == 0 ? p.reference : specs[i - 1];
        for (size_t j = 0; j < i && runs[i].alias < 0; ++j)
            if (std::string(kv_type_name(types[j].first)) == kv_type_name(k) &&
                std::string(kv_type_name(types[j].second)) == kv_type_name(v))
                runs[i].alias = (int)j;
        if (runs[i].alias >= 0) continue;
        context_params cp;
        cp.n_ctx = p.n_ctx;
        cp.n_threads = p.n_threads;
        cp.n_batch = p.n_batch;
        cp.type_k = k;
        cp.type_v = v;
        cp.kv_calib = p.kv_calib;
        eval_run& run = runs[i];
        run.ctx = std::make_unique<context>(m, cp);
        run.cap.out.resize((size_t)n_layer * run.ctx->n_batch() * QD);
        run.err_sum.assign(n_layer, 0.0);
        run.ctx->set_attn_capture(&run.cap);
        const kv_cache& kv = run.ctx->kv();
        run.r.format = kv.format_name();
        run.r.kv_bytes = kv.bytes();
        run.r.bits_per_element = kv.bits_per_element();
        run.r.bytes_per_token = (double)kv.bytes() / kv.n_ctx();
        run.r.n_chunks = chunks.n_chunks;
    }

    const int n_batch = runs[0].ctx->n_batch();
    std::vector<float> ref_logits((size_t)n_batch * n_vocab), logits((size_t)n_batch * n_vocab);
    for (int c = 0; c < chunks.n_chunks; ++c) {
        for (auto& run : runs) {
            if (!run.ctx) continue;
            chunks.begin(*run.ctx, c);
            run.r.logp.emplace_back();
            run.r.kl.emplace_back();
        }
        for (int row = chunks.first();;) {
            eval_run& ref = runs[0];
            ref.cap.pos0 = row;
            ref.cap.n_rows = n_batch;
            const int n = chunks.next(*ref.ctx, c, ref_logits.data());
            if (n == 0) break;
            const int n_score =
                std::min(n, chunks.n_ctx - 1 - row);  // the last row predicts nothing
            for (size_t i = 0; i < runs.size(); ++i) {
                eval_run& run = runs[i];
                if (!run.ctx) continue;
                if (i > 0) {
                    run.cap.pos0 = row;
                    run.cap.n_rows = n_batch;
                    chunks.next(*run.ctx, c, logits.data());
                }
                const float* out = i > 0 ? logits.data() : ref_logits.data();
                for (int j = 0; j < n_score; ++j) {
                    const float* lt = out + (size_t)j * n_vocab;
                    const double lp = log_softmax_at(lt, n_vocab, chunks.target(c, row + j));
                    run.acc.add(-lp);
                    run.r.logp.back().push_back((float)lp);
                    bool same = true;
                    const double kl = i > 0 ? eval_kl_row(ref_logits.data() + (size_t)j * n_vocab,
                                                          lt, n_vocab, &same)
                                            : 0.0;
                    run.kl_sum += kl;
                    run.r.kl_max = std::max(run.r.kl_max, kl);
                    run.r.kl.back().push_back((float)kl);
                    run.top1 += same;
                    for (int l = 0; l < n_layer; ++l) {
                        const float* a = &run.cap.out[((size_t)l * n_batch + j) * QD];
                        const float* b = &ref.cap.out[((size_t)l * n_batch + j) * QD];
                        double d2 = 0, r2 = 0;
                        for (int e = 0; e < QD; ++e) {
                            d2 += (double)(a[e] - b[e]) * (a[e] - b[e]);
                            r2 += (double)b[e] * b[e];
                        }
                        run.err_sum[l] += r2 > 0 ? std::sqrt(d2 / r2) : 0.0;
                    }
                    run.n_err++;
                }
            }
            row += n;
        }
        for (size_t i = 0; i < runs.size(); ++i)
            if (progress) progress(c, (int)i - 1);
    }

    eval_report rep;
    for (auto& run : runs)
        if (run.ctx) run.finish(n_layer);
    for (size_t i = 0; i < runs.size(); ++i) {
        eval_result r = runs[runs[i].alias >= 0 ? runs[i].alias : i].r;
        r.spec = runs[i].r.spec;
        if (i == 0)
            rep.reference = std::move(r);
        else
            rep.formats.push_back(std::move(r));
    }
    return rep;
}

}  // namespace kvrt
