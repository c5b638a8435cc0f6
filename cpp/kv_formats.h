// Constructors of the KV stream formats, for kv_cache.cpp.
#pragma once

#include <memory>
#include <vector>

#include "kv_cache.h"

namespace kvrt {

// q8_0, q4_0, affine:B, rot:B. `seed` picks rot's random signs.
std::unique_ptr<kv_stream> kv_stream_create_quantized(const kv_type& t, bool is_key, int n_ctx,
                                                      int n_head_kv, int head_dim, uint32_t seed);
// pca with one quantizer per kv head. kv_pca.cpp
std::unique_ptr<kv_stream> kv_stream_create_pca(int n_ctx, const std::vector<kv_pca_head>& heads,
                                                int window = 0, int window8 = 0);
// Bits one kv head's recent window holds per position and channel: window
// positions of half y, window8 of 8-bit y with a half scale per position.
double kv_pca_window_bits(int window, int window8, int head_dim);

// y = P(x - mu), all channels.
void kv_pca_project(const kv_pca_head& p, const float* x, float* y);
// A token's scale: max_c |y_c| / sigma_c, clamped to the range of its byte
// code (kv_pca_scale_code).
float kv_pca_token_scale(const kv_pca_head& p, const float* y);
// m = R_pos rope_mean: the pre-RoPE key mean turned to position pos (zeros
// when the head has none), m[dim].
void kv_pca_rope_mean_at(const kv_pca_head& p, int pos, float* m);

// n random signs (+1 / -1) from a seed, the same on every platform.
std::vector<float> kv_random_signs(int n, uint32_t seed);

}  // namespace kvrt
