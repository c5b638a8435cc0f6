#include "kv_calib.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "cpu/ops.h"
#include "gguf.h"
#include "kv_layout.h"
#include "model.h"

namespace kvrt {

uint64_t kv_calib_model_hash(const model& m) {
    // FNV-1a over the attention shape and the bytes of the first and last
    // layers' key and value projections: cheap, and differs between models.
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](const void* p, size_t n) {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    };
    const hparams& hp = m.hp();
    const int shape[4] = {hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim};
    mix(shape, sizeof shape);
    for (const layer_weights* l : {&m.layers().front(), &m.layers().back()})
        for (const weight* w : {&l->wk, &l->wv})
            mix(w->data, std::min<size_t>(w->row_bytes * w->rows, 1 << 16));
    return h;
}

std::string kv_calib_default_path(const std::string& model_path) {
    std::string base = model_path;
    const std::string ext = ".gguf";
    if (base.size() > ext.size() && base.compare(base.size() - ext.size(), ext.size(), ext) == 0)
        base.resize(base.size() - ext.size());
    return base + ".kvcal.gguf";
}

void kv_calibration::set_rope(const model& m) {
    rope_table rt;
    rt.init(m.hp());
    rope_freq = rt.inv_freq;
    pair_stride = m.hp().rope == ROPE_KIND_NORM ? 2 : 1;
    pair_gap = m.hp().rope == ROPE_KIND_NORM ? 1 : m.hp().n_rot / 2;
}

std::unique_ptr<kv_calibration> kv_calibration::load(const std::string& path, const model& m) {
    auto f = gguf_file::open(path);
    auto fail = [&](const std::string& what) -> error {
        return error("KV calibration '" + path + "': " + what);
    };
    if (!f->find("kvrt.calib.version")) throw fail("not a kvrt calibration file");
    if (f->get_uint("kvrt.calib.version") != 1) throw fail("unsupported version");
    auto cal = std::make_unique<kv_calibration>();
    const hparams& hp = m.hp();
    cal->n_layer = (int)f->get_uint("kvrt.calib.n_layer");
    cal->n_head_kv = (int)f->get_uint("kvrt.calib.n_head_kv");
    cal->head_dim = (int)f->get_uint("kvrt.calib.head_dim");
    cal->default_bits = (float)f->get_float("kvrt.calib.default_bits");
    cal->model_hash = f->get_uint("kvrt.calib.model_hash");
    if (cal->n_layer != hp.n_layer || cal->n_head_kv != hp.n_head_kv ||
        cal->head_dim != hp.head_dim || cal->model_hash != kv_calib_model_hash(m))
        throw fail("made for another model (recalibrate with `python -m kvrt calibrate`)");
    if (!(cal->default_bits > 0.0f && cal->default_bits <= 8.0f))
        throw fail("default_bits out of range");
    const int nh = cal->n_head_kv, d = cal->head_dim, L = KV_CALIB_LEVELS;
    cal->set_rope(m);
    cal->heads.resize((size_t)cal->n_layer * 2 * nh);
    auto read = [&](const std::string& name, int64_t n) -> const float* {
        const gguf_tensor* t = f->tensor(name);
        if (!t) throw fail("missing tensor " + name);
        if (t->type != GGML_TYPE_F32 || t->nelements() != n)
            throw fail("tensor " + name + " has the wrong type or shape");
        return reinterpret_cast<const float*>(t->data);
    };
    for (int il = 0; il < cal->n_layer; ++il)
        for (int s = 0; s < 2; ++s) {
            const std::string p = "blk." + std::to_string(il) + (s ? ".v_" : ".k_");
            const float* basis = read(p + "basis", (int64_t)nh * d * d);
            const float* mean = read(p + "mean", (int64_t)nh * d);
            const float* sigma = read(p + "sigma", (int64_t)nh * d);
            const float* lo = read(p + "lo", (int64_t)nh * d * L);
            const float* step = read(p + "step", (int64_t)nh * d * L);
            const float* dmg = read(p + "damage", (int64_t)nh * d * L);
            const float* rmean = s == 0 && f->tensor(p + "rope_mean")
                                     ? read(p + "rope_mean", (int64_t)nh * d) : nullptr;
            for (int h = 0; h < nh; ++h) {
                kv_calib_head& c = cal->at(il, s, h);
                c.basis.assign(basis + (size_t)h * d * d, basis + (size_t)(h + 1) * d * d);
                c.mean.assign(mean + (size_t)h * d, mean + (size_t)(h + 1) * d);
                c.sigma.assign(sigma + (size_t)h * d, sigma + (size_t)(h + 1) * d);
                for (float v : c.sigma)
                    if (!(v > 0.0f) || !std::isfinite(v)) throw fail("tensor " + p + "sigma holds invalid values");
                c.lo.assign(lo + (size_t)h * d * L, lo + (size_t)(h + 1) * d * L);
                c.step.assign(step + (size_t)h * d * L, step + (size_t)(h + 1) * d * L);
                c.damage.assign(dmg + (size_t)h * d * L, dmg + (size_t)(h + 1) * d * L);
                if (rmean) {
                    c.rope_mean.assign(rmean + (size_t)h * d, rmean + (size_t)(h + 1) * d);
                    for (float v : c.rope_mean)
                        if (!std::isfinite(v)) throw fail("tensor " + p + "rope_mean holds invalid values");
                }
                for (int i = 0; i < d * L; ++i)
                    if (!(c.step[i] > 0.0f) || !std::isfinite(c.lo[i]) ||
                        !(c.damage[i] >= 0.0f) || !std::isfinite(c.damage[i]))
                        throw fail("tensor " + p + " holds invalid values");
            }
        }
    return cal;
}

kv_calibration::plan kv_calibration::solve(float budget, bool keys, bool values, int n_ctx,
                                           double window_bits_k, double window_bits_v) const {
    if (!(budget > 0.0f && budget <= 8.0f))
        throw error("pca budget must be in (0, 8] bits per element");
    const int d = head_dim, L = KV_CALIB_LEVELS;
    // A step moves one channel from b0 to b1 bits along the lower convex hull
    // of its damage curve; taking steps by falling damage-per-bit solves the
    // convexified knapsack, and a channel's steps come out in its own order.
    struct step {
        float ratio;
        uint32_t chan;  // index into bits[]
        uint8_t b0, b1;
    };
    std::vector<step> steps;
    std::vector<const kv_calib_head*> chan_head;
    std::vector<int> chan_c;
    for (int il = 0; il < n_layer; ++il)
        for (int s = 0; s < 2; ++s) {
            if (s == 0 ? !keys : !values) continue;
            for (int h = 0; h < n_head_kv; ++h) {
                const kv_calib_head& ch = at(il, s, h);
                for (int c = 0; c < d; ++c) {
                    const float* dm = &ch.damage[(size_t)c * L];
                    const uint32_t id = (uint32_t)chan_c.size();
                    chan_head.push_back(&ch);
                    chan_c.push_back(c);
                    int b = 0;
                    while (b < L - 1) {
                        int best = -1;
                        float best_ratio = -1.0f;
                        for (int nb = b + 1; nb < L; ++nb) {
                            const float r = (dm[b] - dm[nb]) / (float)(nb - b);
                            if (r > best_ratio) best_ratio = r, best = nb;
                        }
                        if (best < 0 || best_ratio <= 0.0f) break;
                        steps.push_back({best_ratio, id, (uint8_t)b, (uint8_t)best});
                        b = best;
                    }
                }
            }
        }
    std::stable_sort(steps.begin(), steps.end(),
                     [](const step& a, const step& b) { return a.ratio > b.ratio; });
    std::vector<uint8_t> bits(chan_c.size(), 0);
    // Each token's scale costs 8 bits per head; the sinks 16 bits per element
    // over n_ctx positions, and each stream's recent window what it holds.
    const double fixed = 8.0 / d + 16.0 * KV_PCA_SINKS / std::max(n_ctx, 1);
    const double ow_k = window_bits_k / std::max(n_ctx, 1);
    const double ow_v = window_bits_v / std::max(n_ctx, 1);
    const double overhead = fixed + (keys && values ? (ow_k + ow_v) / 2 : keys ? ow_k : ow_v);
    double left = ((double)budget - overhead) * (double)chan_c.size();
    if (left < 0) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "pca budget %g is below the format's fixed cost at n_ctx %d: %.3f bits per "
                      "element for token scales, %d sinks and the recent window",
                      budget, n_ctx, overhead, KV_PCA_SINKS);
        throw error(buf);
    }
    for (const step& st : steps) {
        if (bits[st.chan] != st.b0) continue;  // an earlier step of this channel was skipped
        if (st.b1 - st.b0 > left) continue;
        bits[st.chan] = st.b1;
        left -= st.b1 - st.b0;
    }
    plan p;
    p.k.resize(keys ? n_layer : 0);
    p.v.resize(values ? n_layer : 0);
    size_t id = 0;
    double sum_k = 0, sum_v = 0;
    for (int il = 0; il < n_layer; ++il)
        for (int s = 0; s < 2; ++s) {
            if (s == 0 ? !keys : !values) continue;
            auto& out = s == 0 ? p.k[il] : p.v[il];
            for (int h = 0; h < n_head_kv; ++h) {
                const kv_calib_head& ch = at(il, s, h);
                kv_pca_head q;
                q.basis = ch.basis;
                q.mean = ch.mean;
                q.sigma = ch.sigma;
                q.bits.resize(d);
                q.lo.resize(d);
                q.step.resize(d);
                if (!ch.rope_mean.empty()) {
                    q.rope_mean = ch.rope_mean;
                    q.rope_freq = rope_freq;
                    q.pair_stride = pair_stride;
                    q.pair_gap = pair_gap;
                }
                for (int c = 0; c < d; ++c, ++id) {
                    const int b = bits[id];
                    q.bits[c] = (uint8_t)b;
                    q.lo[c] = ch.lo[(size_t)c * L + b];
                    q.step[c] = ch.step[(size_t)c * L + b];
                    (s == 0 ? sum_k : sum_v) += b;
                }
                out.push_back(std::move(q));
            }
        }
    const double per = (double)n_layer * n_head_kv * d;
    p.bits_k = keys ? sum_k / per + fixed + ow_k : 0;
    p.bits_v = values ? sum_v / per + fixed + ow_v : 0;
    return p;
}

}  // namespace kvrt
