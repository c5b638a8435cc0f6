// An inference context over a loaded model: KV cache, scratch buffers,
// threads and the forward pass (batched prefill and single-token decode).
#pragma once

#include <initializer_list>
#include <memory>
#include <vector>

#include "cpu/ops.h"
#include "kv_cache.h"
#include "model.h"
#include "threadpool.h"

namespace kvrt {

struct context_params {
    int n_ctx = 0;      // 0: min(model's training context, 4096)
    int n_threads = 0;  // 0: thread_pool::default_threads()
    int n_batch = 512;  // tokens per forward call during prefill
    kv_type type_k = KV_TYPE_F16;
    kv_type type_v = KV_TYPE_F16;
};

class context {
public:
    context(const model& m, const context_params& params);

    // Evaluates tokens at positions n_past() .. n_past()+n-1 and advances
    // n_past. Logits of the last n_logits tokens (0 <= n_logits <= n) are
    // written to `logits` ([n_logits][n_vocab]); only those rows go through
    // the output layer. Throws kvrt::error when the tokens do not fit the
    // context or an id is invalid.
    void eval(const int32_t* tokens, int n, float* logits, int n_logits);

    int n_past() const { return n_past_; }
    int n_ctx() const { return params_.n_ctx; }
    int n_threads() const { return pool_.size(); }
    // Forgets the cached tokens (keeps the allocations).
    void reset() { n_past_ = 0; }
    // Drops cached tokens from position n on (n <= n_past).
    void truncate(int n);

    const kv_cache& kv() const { return *kv_; }
    const model& mdl() const { return model_; }

private:
    void forward_batch(const int32_t* tokens, int n, float* logits, int n_logits);
    // out_j = W_j x for weights sharing the input x ([n][cols]).
    void project(const float* x, int n, int64_t cols, std::initializer_list<matmul_job> jobs);

    const model& model_;
    context_params params_;
    thread_pool pool_;
    std::unique_ptr<kv_cache> kv_;
    rope_table rope_;
    int n_past_ = 0;

    // Scratch, sized for n_batch tokens.
    std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, ffn_, out_;
    matmul_input in_a_;
    attention_scratch att_scratch_;
};

}  // namespace kvrt
