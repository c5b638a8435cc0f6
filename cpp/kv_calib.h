// Calibration of the pca KV format, and the sidecar GGUF that carries it.
//
// Sidecar `<model>.kvcal.gguf` (written by `python -m kvrt calibrate`):
//   kvrt.calib.version         u32   1
//   kvrt.calib.model_hash      u64   kv_calib_model_hash() of the model it was made for
//   kvrt.calib.n_layer, .n_head_kv, .head_dim   u32
//   kvrt.calib.default_bits    f32   the budget `--kv pca` uses
//   tensors, per layer i and s in {k, v}, f32:
//     blk.i.s_basis   (n_head_kv, dim, dim)  row c: principal direction c, by variance
//     blk.i.s_mean    (n_head_kv, dim)
//     blk.i.s_sigma   (n_head_kv, dim)       standard deviation of channel c
//     blk.i.s_lo      (n_head_kv, dim, 9)    quantizer of channel c at b bits:
//     blk.i.s_step    (n_head_kv, dim, 9)      y_c / a_t = lo + step * code
//     blk.i.s_damage  (n_head_kv, dim, 9)    expected damage at b bits (b = 0:
//                                            truncated), in units of KL of the
//                                            final logits (sensitivity table)
//     blk.i.k_rope_mean (n_head_kv, dim)     optional: pre-RoPE mean of the keys,
//                                            subtracted turned to each position
//                                            (the rotary frequencies come from the model)
// A plan for any budget is solved at load time from the damage tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv_cache.h"

namespace kvrt {

class model;

inline constexpr int KV_CALIB_LEVELS = 9;  // bits 0..8

struct kv_calib_head {
    std::vector<float> basis;             // (dim, dim)
    std::vector<float> mean;              // (dim)
    std::vector<float> sigma;             // (dim) sqrt of the eigenvalues
    std::vector<float> lo, step, damage;  // (dim, KV_CALIB_LEVELS)
    std::vector<float> rope_mean;         // (dim) keys only; empty: none
};

class kv_calibration {
public:
    int n_layer = 0, n_head_kv = 0, head_dim = 0;
    float default_bits = 3.0f;
    uint64_t model_hash = 0;
    // The model's rotary pairs, for rope_mean (kv_pca_head says how).
    std::vector<float> rope_freq;
    int pair_stride = 2, pair_gap = 1;
    void set_rope(const model& m);
    // index (layer * 2 + is_value) * n_head_kv + head
    std::vector<kv_calib_head> heads;

    kv_calib_head& at(int layer, bool is_value, int h) {
        return heads[((size_t)layer * 2 + is_value) * n_head_kv + h];
    }
    const kv_calib_head& at(int layer, bool is_value, int h) const {
        return heads[((size_t)layer * 2 + is_value) * n_head_kv + h];
    }

    // Bits per channel for the keys and/or values of every layer, meeting an
    // average of `budget` bits per element with the least total damage
    // (multiple-choice knapsack over the convex hull of each channel's
    // damage curve). Returns per layer the quantizers of its kv heads; the
    // streams not asked for are left empty.
    struct plan {
        std::vector<std::vector<kv_pca_head>> k, v;
        double bits_k = 0, bits_v = 0;  // average bits per element achieved
    };
    // The budget covers everything a stream of n_ctx positions allocates:
    // codes, the per-token scales, the sink positions and the recent window
    // of keys and of values (bits per channel it holds for each position,
    // kv_pca_window_bits), averaged over the streams solved together.
    plan solve(float budget, bool keys, bool values, int n_ctx, double window_bits_k = 0,
               double window_bits_v = 0) const;

    // Reads and checks a sidecar against the model; throws kvrt::error
    // naming the file and the problem.
    static std::unique_ptr<kv_calibration> load(const std::string& path, const model& m);
};

// A fingerprint of a model's shape and attention weights, so a calibration
// made for another model is refused.
uint64_t kv_calib_model_hash(const model& m);

// `<model without .gguf>.kvcal.gguf`.
std::string kv_calib_default_path(const std::string& model_path);

}  // namespace kvrt
