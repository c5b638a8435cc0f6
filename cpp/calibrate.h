// Calibration of the pca KV format (see kv_calib.h for the sidecar it writes):
//
//  1. The engine runs over calibration text with an f32 cache; an observer
//     accumulates, per (layer, K|V, kv head), first and second moments of
//     post-RoPE keys and of values, a reservoir of sample vectors, and the
//     second moments of the queries that meet each key head.
//     Keys first lose their pre-RoPE mean turned to their position (a
//     short first pass measures that mean), which halves their variance.
//  2. PCA: eigendecomposition (Jacobi) of each covariance; basis rows sorted
//     by variance.
//  3. Quantizers: each sample is divided by its token's scale a_t (the RMS
//     of y_c / sigma_c, as the cache does); for each channel and bits 1..8,
//     the clipping range with least squared error in y (weights a_t^2);
//     bits 0 truncates (error = variance).
//  4. Damage: channel error weighted by what it perturbs (keys: the rotated
//     query energy, i.e. the score error; values: the output projection's
//     gain along the channel), then scaled per (layer, K|V) so that a probe
//     configuration's predicted damage equals the KL divergence of the final
//     logits measured with only that layer compressed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv_calib.h"

namespace kvrt {

class model;

struct calibrate_params {
    int n_ctx = 512;          // chunk length of the moments pass
    int n_threads = 0;        // 0: default
    int max_tokens = 4096;    // calibration tokens used for the moments
    int max_samples = 2048;   // sample vectors kept per (layer, K|V, head)
    int probe_tokens = 128;   // tokens per sensitivity probe (0: no probes)
    float probe_bits = 2.0f;  // average bits of a probe configuration
    int probe_window = 0;     // recent window (pca:B:wN) of the probed layer, not charged
    float default_bits = 3.0f;
    int rope_pairs = -1;      // most rotary pairs per key head with a pre-RoPE mean
                              // (-1: all, 0: none)
    bool progress = true;     // a progress bar on stderr
};

struct calibrate_result {
    kv_calibration calib;
    // Per (layer, K|V): measured KL of the probe and its scale factor.
    std::vector<float> probe_kl, probe_scale;  // [layer][2]
    int n_tokens = 0;
    double seconds = 0;
};

// Runs steps 1-4 over `tokens`. Throws kvrt::error on bad input.
calibrate_result kv_calibrate(const model& m, const std::vector<int32_t>& tokens,
                              const calibrate_params& p);

// Writes the sidecar GGUF atomically (temporary file, then rename).
void kv_calib_write(const kv_calibration& c, const std::string& path);

// Eigen-decomposition of a symmetric n x n matrix a (row-major, destroyed):
// eigenvalues descending in w, eigenvector i in row i of v.
void calib_eigen_sym(std::vector<double>& a, int n, std::vector<double>& w,
                     std::vector<double>& v);

// Least-squares uniform quantizer at `bits` of samples (u, weight) sorted
// by u: returns the weighted mean squared error sum w (u - Q(u))^2 / n and
// sets lo, step (u ~ lo + step * code).
double calib_fit_quantizer(const std::vector<std::pair<float, float>>& sorted, int bits,
                           float* lo, float* step);

}  // namespace kvrt
