// Quality of KV cache formats against a reference format over one text.
//
// The text is cut into llama-perplexity's chunks (perplexity.h). Each chunk
// is evaluated once with the reference cache (f16 by default) and once per
// format, the contexts advancing side by side one batch of scored rows at a
// time, so the reference logits are computed once per (n_ctx, text), reused
// by every format, and never held for more than one batch.
//
// Per format: perplexity, the log-probability of the true token at every
// scored row, KL(reference || format) of the next-token distributions at
// every scored row, top-1 agreement, and per layer the mean relative error
// ||o - o_ref|| / ||o_ref|| of the attention output (before the output
// projection) over the scored rows. The format's run is free-running: from
// layer 1 on its inputs already carry the error of the layers below, so the
// per-layer error compounds with depth; it is the error the model sees.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "context.h"

namespace kvrt {

struct eval_params {
    int n_ctx = 512;
    int n_chunks = 0;  // <= 0: every whole chunk
    int n_threads = 0;
    int n_batch = 512;
    std::string reference = "f16";  // spec of the reference cache
    std::string kv_calib;           // pca sidecar; empty: <model>.kvcal.gguf
};

struct eval_result {
    std::string spec;     // as given: "q8_0", or "K/V" for keys and values apart
    std::string format;   // the cache's own name, e.g. "k=q8_0,v=f16"
    size_t kv_bytes = 0;  // allocated for the whole context (n_ctx tokens)
    double bits_per_element = 0;
    double bytes_per_token = 0;
    int n_chunks = 0;
    int64_t n_scored = 0;
    double ppl = 0, ppl_err = 0;
    double kl_mean = 0, kl_max = 0;
    double top1 = 0;                       // fraction of rows with the reference's argmax
    std::vector<double> attn_rel_err;      // (n_layer)
    std::vector<std::vector<float>> logp;  // (n_chunks, n_scored per chunk): log p(true token)
    std::vector<std::vector<float>> kl;    // (n_chunks, n_scored per chunk)
};

struct eval_report {
    eval_result reference;
    std::vector<eval_result> formats;  // in the order given
};

// Parses a format spec: a KV cache format name for keys and values, or
// "K/V" for keys and values apart. Throws kvrt::error for an unknown name.
void eval_parse_spec(const std::string& spec, kv_type* k, kv_type* v);

// Measures `specs` against p.reference on `tokens` (already tokenized, BOS
// included as perplexity does). A spec equal to the reference (or to an
// earlier spec) reuses that run. After each chunk, progress(chunk, i) is
// called for each run (i = -1 for the reference). Throws kvrt::error for an unknown format or too
// short a text before any evaluation starts.
eval_report eval_compare(const model& m, const std::vector<int32_t>& tokens, const eval_params& p,
                         const std::vector<std::string>& specs,
                         const std::function<void(int, int)>& progress);

// KL(p || q) of the softmax distributions of two logit rows, and whether
// their argmaxes agree; exposed for tests.
double eval_kl_row(const float* ref, const float* test, int n_vocab, bool* same_top1);

}  // namespace kvrt
