// An inference context over a loaded model: KV cache, scratch buffers,
// threads and the forward pass (batched prefill and single-token decode).
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "gpu_forward.h"
#include "kv_cache.h"
#include "kv_calib.h"
#include "model.h"
#include "threadpool.h"

namespace kvrt {

// Optional copy of each layer's attention output (before the output
// projection) for positions [pos0, pos0 + n_rows) of the next eval calls; the
// per-layer error of a KV format against a reference (cpp/eval.h) reads it.
struct attn_capture {
    int pos0 = 0;
    int n_rows = 0;
    std::vector<float> out;  // (n_layer, n_rows, n_head*head_dim), sized by the caller
};

struct context_params {
    int n_ctx = 0;      // 0: min(model's training context, 4096)
    int n_threads = 0;  // 0: thread_pool::default_threads()
    int n_batch = 512;  // tokens per forward call during prefill
    kv_type type_k = KV_TYPE_F16;
    kv_type type_v = KV_TYPE_F16;
    // pca formats: the calibration sidecar; empty: <model>.kvcal.gguf when
    // present. Without one, pca falls back to rot (said on stderr).
    std::string kv_calib;
    // Added to every rotary position. Attention depends only on position
    // differences, so outputs stay the same while post-RoPE keys turn as they
    // would deeper in a long context (calibration samples all of them).
    int rope_offset = 0;
    // DEVICE_CUDA: the forward pass runs on the GPU (cpp/gpu_forward.h);
    // the context throws kvrt::error when that is not possible.
    device_kind device = DEVICE_CPU;
};

// Sees each layer's post-RoPE queries [n][n_head*head_dim], keys and
// values [n][n_head_kv*head_dim] before they are cached (calibration).
class forward_observer {
public:
    virtual ~forward_observer() = default;
    virtual void on_qkv(int layer, int pos0, int n, const float* q, const float* k,
                        const float* v) = 0;
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
    int n_batch() const { return params_.n_batch; }
    device_kind device() const { return params_.device; }
    // The GPU backend's one-line description ("" on the CPU).
    std::string device_description() const { return gpu_ ? gpu_->describe() : std::string(); }
    // Copies attention outputs into *c during eval while set (null: off).
    void set_attn_capture(attn_capture* c) { capture_ = c; }
    // Forgets the cached tokens (keeps the allocations).
    void reset() { n_past_ = 0; }
    // Drops cached tokens from position n on (n <= n_past).
    void truncate(int n);

    const kv_cache& kv() const { return *kv_; }
    kv_cache& kv_mutable() { return *kv_; }
    void set_observer(forward_observer* o) { observer_ = o; }
    // The calibration the cache was built with (null when none was needed).
    const kv_calibration* kv_calib() const { return calib_.get(); }
    const model& mdl() const { return model_; }

private:
    // Loads the calibration a pca format needs, or falls back to rot.
    void resolve_kv_formats();
    void forward_batch(const int32_t* tokens, int n, float* logits, int n_logits);
    // out_j = W_j x for weights sharing the input x ([n][cols]).
    void project(const float* x, int n, int64_t cols, std::initializer_list<matmul_job> jobs);

    const model& model_;
    context_params params_;
    thread_pool pool_;
    forward_observer* observer_ = nullptr;
    std::unique_ptr<kv_calibration> calib_;
    std::unique_ptr<kv_cache> kv_;
    rope_table rope_;
    int n_past_ = 0;
    attn_capture* capture_ = nullptr;
    std::unique_ptr<gpu_forward> gpu_;  // set when params_.device == DEVICE_CUDA

    // Scratch, sized for n_batch tokens.
    std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, ffn_, out_;
    matmul_input in_a_;
    attention_scratch att_scratch_;
};

}  // namespace kvrt
