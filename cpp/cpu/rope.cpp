#include <cmath>

#include "ops.h"

namespace kvrt {

void rope_table::init(const hparams& hp) {
    kind = hp.rope;
    head_dim = hp.head_dim;
    n_rot = hp.n_rot;
    inv_freq.resize(n_rot / 2);
    for (int i = 0; i < n_rot / 2; ++i) {
        double f = std::pow((double)hp.rope_freq_base, -2.0 * i / n_rot) * hp.rope_freq_scale;
        if (!hp.rope_freq_factors.empty()) f /= hp.rope_freq_factors[i];
        inv_freq[i] = (float)f;
    }
}

void rope_table::apply(float* x, int n_heads, int pos) const {
    const int half = n_rot / 2;
    // NORM pairs (2i, 2i+1); NEOX pairs (i, i + n_rot/2).
    const int stride = kind == ROPE_KIND_NORM ? 2 : 1;
    const int offset = kind == ROPE_KIND_NORM ? 1 : half;
    float cs[512], sn[512];
    for (int i = 0; i < half; ++i) {
        const double theta = (double)pos * inv_freq[i];
        cs[i] = (float)std::cos(theta);
        sn[i] = (float)std::sin(theta);
    }
    for (int h = 0; h < n_heads; ++h) {
        float* xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; ++i) {
            float* a = xh + i * stride;
            float* b = a + offset;
            const float x0 = *a, x1 = *b;
            *a = x0 * cs[i] - x1 * sn[i];
            *b = x0 * sn[i] + x1 * cs[i];
        }
    }
}

}  // namespace kvrt
