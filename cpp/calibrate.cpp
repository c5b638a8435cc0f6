#include "calibrate.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <thread>

#include "common.h"
#include "context.h"
#include "gguf_writer.h"
#include "kv_formats.h"
#include "kv_layout.h"
#include "model.h"
#include "quants.h"

namespace kvrt {

namespace {

double now_s();

// One phase's bar; t0 is when the phase began.
void progress(bool on, const char* what, int done, int total, double t0) {
    if (!on) return;
    const double el = now_s() - t0;
    const int w = 30, fill = total > 0 ? w * done / total : w;
    const double eta = done > 0 ? el * (total - done) / done : 0;
    std::fprintf(stderr, "\r%-12s [%.*s%*s] %d/%d  %.0fs elapsed, ETA %.0fs   ", what, fill,
                 "##############################", w - fill, "", done, total, el, eta);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Step 1: moments and samples, per (layer, K|V, head); query moments per
// (layer, kv head).
class moments_observer final : public forward_observer {
public:
    moments_observer(const hparams& hp, int max_samples)
        : hp_(hp), hd_(hp.head_dim), n_rep_(hp.n_head / hp.n_head_kv), max_samples_(max_samples),
          n_(hp.n_layer * 2 * hp.n_head_kv), sum_(n_, std::vector<double>(hd_, 0.0)),
          outer_(n_, std::vector<double>((size_t)hd_ * hd_, 0.0)),
          qouter_(hp.n_layer * hp.n_head_kv, std::vector<double>((size_t)hd_ * hd_, 0.0)),
          samples_(n_), pre_sum_(hp.n_layer * hp.n_head_kv, std::vector<double>(hd_, 0.0)),
          rope_mean_(hp.n_layer * hp.n_head_kv), rng_(1234) {
        rope_.init(hp);
    }

    // The rotary offset of the chunk being run (context_params::rope_offset).
    void set_rope_offset(int off) { rope_offset_ = off; }
    // First pass: only the mean of the keys before RoPE. finish_mean_pass()
    // turns it into each stream's rope_mean, subtracted in the second pass.
    void set_mean_pass(bool on) { mean_pass_ = on; }
    // Keeps the max_pairs (-1: all) rotary pairs whose mean is largest (each
    // costs attention two multiply-adds per position and query).
    void finish_mean_pass(int max_pairs) {
        const int stride = hp_.rope == ROPE_KIND_NORM ? 2 : 1;
        const int gap = hp_.rope == ROPE_KIND_NORM ? 1 : hp_.n_rot / 2;
        for (size_t i = 0; i < pre_sum_.size(); ++i) {
            std::vector<float>& rm = rope_mean_[i];
            rm.assign(hd_, 0.0f);
            for (int d = 0; d < hp_.n_rot; ++d)  // unrotated dims keep their mean in `mean`
                rm[d] = (float)(pre_sum_[i][d] / std::max<int64_t>(pre_count_, 1));
            std::vector<std::pair<float, int>> energy;
            for (int k = 0; k < hp_.n_rot / 2; ++k) {
                const int a = k * stride, b = a + gap;
                energy.push_back({rm[a] * rm[a] + rm[b] * rm[b], k});
            }
            std::sort(energy.begin(), energy.end(), std::greater<>());
            for (size_t j = max_pairs < 0 ? energy.size() : (size_t)max_pairs; j < energy.size(); ++j) {
                const int a = energy[j].second * stride;
                rm[a] = rm[a + gap] = 0.0f;
            }
        }
        mean_pass_ = false;
    }
    const std::vector<float>& rope_mean(int layer, int h) const { return rope_mean_[layer * hp_.n_head_kv + h]; }

    void on_qkv(int layer, int pos0, int n, const float* q, const float* k, const float* v) override {
        const int nh = hp_.n_head_kv;
        std::vector<float> tmp((size_t)nh * hd_), km((size_t)n * nh * hd_);
        if (mean_pass_) {
            for (int t = 0; t < n; ++t) {
                std::copy(k + (size_t)t * nh * hd_, k + (size_t)(t + 1) * nh * hd_, tmp.begin());
                rope_.apply(tmp.data(), nh, -(pos0 + t + rope_offset_));
                for (int h = 0; h < nh; ++h)
                    for (int d = 0; d < hd_; ++d) pre_sum_[layer * nh + h][d] += tmp[(size_t)h * hd_ + d];
            }
            if (layer == 0) pre_count_ += n;
            return;
        }
        if (!rope_mean_[layer * nh].empty()) {  // keys less their turned pre-RoPE mean
            for (int t = 0; t < n; ++t) {
                for (int h = 0; h < nh; ++h)
                    std::copy(rope_mean_[layer * nh + h].begin(), rope_mean_[layer * nh + h].end(),
                              tmp.begin() + (size_t)h * hd_);
                rope_.apply(tmp.data(), nh, pos0 + t + rope_offset_);
                for (size_t i = 0; i < (size_t)nh * hd_; ++i)
                    km[(size_t)t * nh * hd_ + i] = k[(size_t)t * nh * hd_ + i] - tmp[i];
            }
            k = km.data();
        }
        // One reservoir decision per token, made at layer 0 and shared by
        // every stream, so the samples of all heads come from the same tokens.
        if (layer == 0) {
            picks_.resize(n);
            for (int t = 0; t < n; ++t) picks_[t] = reserve();
        }
        for (int t = 0; t < n; ++t) {
            const int slot = picks_[t];
            for (int s = 0; s < 2; ++s)
                for (int h = 0; h < nh; ++h) {
                    const float* x = (s ? v : k) + ((size_t)t * nh + h) * hd_;
                    const int id = (layer * 2 + s) * nh + h;
                    add_outer(sum_[id], outer_[id], x);
                    if (slot >= 0) {
                        auto& smp = samples_[id];
                        if ((int)smp.size() < (slot + 1) * hd_) smp.resize((size_t)(slot + 1) * hd_);
                        std::copy(x, x + hd_, smp.begin() + (size_t)slot * hd_);
                    }
                }
            for (int h = 0; h < nh; ++h)
                for (int r = 0; r < n_rep_; ++r)
                    add_outer_only(qouter_[layer * nh + h],
                                   q + ((size_t)t * hp_.n_head + h * n_rep_ + r) * hd_);
        }
        if (layer == 0) count_ += n;
    }

    int64_t count() const { return count_; }
    const std::vector<double>& sum(int id) const { return sum_[id]; }
    const std::vector<double>& outer(int id) const { return outer_[id]; }
    const std::vector<double>& qouter(int layer, int h) const { return qouter_[layer * hp_.n_head_kv + h]; }
    const std::vector<float>& samples(int id) const { return samples_[id]; }

private:
    // Reservoir sampling over layer-0 tokens: the slot this token fills, or -1.
    int reserve() {
        if (n_seen0_ < (uint64_t)max_samples_) return (int)n_seen0_++;
        const uint64_t j = std::uniform_int_distribution<uint64_t>(0, n_seen0_++)(rng_);
        return j < (uint64_t)max_samples_ ? (int)j : -1;
    }
    void add_outer(std::vector<double>& s, std::vector<double>& o, const float* x) {
        for (int i = 0; i < hd_; ++i) s[i] += x[i];
        add_outer_only(o, x);
    }
    void add_outer_only(std::vector<double>& o, const float* x) {
        for (int i = 0; i < hd_; ++i) {
            const double xi = x[i];
            double* row = &o[(size_t)i * hd_];
            for (int j = i; j < hd_; ++j) row[j] += xi * x[j];
        }
    }

    const hparams& hp_;
    int hd_, n_rep_, max_samples_, n_;
    std::vector<std::vector<double>> sum_, outer_, qouter_;
    std::vector<std::vector<float>> samples_;
    int64_t count_ = 0;
    uint64_t n_seen0_ = 0;
    std::vector<int> picks_;  // reservoir slot of each token of the batch, or -1
    std::vector<std::vector<double>> pre_sum_;  // per (layer, kv head): sum of pre-RoPE keys
    std::vector<std::vector<float>> rope_mean_;
    int64_t pre_count_ = 0;
    int rope_offset_ = 0;
    bool mean_pass_ = false;
    rope_table rope_;
    std::mt19937_64 rng_;
};

// Row-major symmetric matrix from its upper triangle.
void symmetrize(std::vector<double>& a, int n) {
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < i; ++j) a[(size_t)i * n + j] = a[(size_t)j * n + i];
}

// Mean KL(ref || test) over rows of logits; ref given as log-probabilities.
double mean_kl(const std::vector<float>& ref_logp, const std::vector<float>& logits, int rows,
               int n_vocab) {
    double total = 0;
    std::vector<double> lp(n_vocab);
    for (int r = 0; r < rows; ++r) {
        const float* x = &logits[(size_t)r * n_vocab];
        double m = x[0];
        for (int i = 1; i < n_vocab; ++i) m = std::max(m, (double)x[i]);
        double z = 0;
        for (int i = 0; i < n_vocab; ++i) z += std::exp(x[i] - m);
        const double lz = m + std::log(z);
        const float* rp = &ref_logp[(size_t)r * n_vocab];
        double kl = 0;
        for (int i = 0; i < n_vocab; ++i) kl += std::exp((double)rp[i]) * (rp[i] - (x[i] - lz));
        total += std::max(0.0, kl);
    }
    return total / rows;
}

void to_log_softmax(std::vector<float>& logits, int rows, int n_vocab) {
    for (int r = 0; r < rows; ++r) {
        float* x = &logits[(size_t)r * n_vocab];
        double m = x[0];
        for (int i = 1; i < n_vocab; ++i) m = std::max(m, (double)x[i]);
        double z = 0;
        for (int i = 0; i < n_vocab; ++i) z += std::exp(x[i] - m);
        const double lz = m + std::log(z);
        for (int i = 0; i < n_vocab; ++i) x[i] = (float)(x[i] - lz);
    }
}

}  // namespace

void calib_eigen_sym(std::vector<double>& a, int n, std::vector<double>& w, std::vector<double>& v) {
    // Cyclic Jacobi: plenty fast for head_dim-sized matrices, and exact
    // enough that the basis is orthonormal to rounding.
    std::vector<double> V((size_t)n * n, 0.0);
    for (int i = 0; i < n; ++i) V[(size_t)i * n + i] = 1.0;
    for (int sweep = 0; sweep < 60; ++sweep) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; ++i) {
            diag += a[(size_t)i * n + i] * a[(size_t)i * n + i];
            for (int j = i + 1; j < n; ++j) off += a[(size_t)i * n + j] * a[(size_t)i * n + j];
        }
        if (off <= 1e-24 * diag || off == 0) break;
        for (int p = 0; p < n; ++p)
            for (int q = p + 1; q < n; ++q) {
                const double apq = a[(size_t)p * n + q];
                if (std::fabs(apq) < 1e-300) continue;
                const double app = a[(size_t)p * n + p], aqq = a[(size_t)q * n + q];
                const double theta = (aqq - app) / (2 * apq);
                const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
                const double c = 1 / std::sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; ++k) {  // columns p, q
                    const double akp = a[(size_t)k * n + p], akq = a[(size_t)k * n + q];
                    a[(size_t)k * n + p] = c * akp - s * akq;
                    a[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; ++k) {  // rows p, q
                    const double apk = a[(size_t)p * n + k], aqk = a[(size_t)q * n + k];
                    a[(size_t)p * n + k] = c * apk - s * aqk;
                    a[(size_t)q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; ++k) {
                    const double vkp = V[(size_t)k * n + p], vkq = V[(size_t)k * n + q];
                    V[(size_t)k * n + p] = c * vkp - s * vkq;
                    V[(size_t)k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
        return a[(size_t)x * n + x] > a[(size_t)y * n + y];
    });
    w.resize(n);
    v.resize((size_t)n * n);
    for (int i = 0; i < n; ++i) {
        w[i] = a[(size_t)order[i] * n + order[i]];
        for (int k = 0; k < n; ++k) v[(size_t)i * n + k] = V[(size_t)k * n + order[i]];
    }
}

double calib_fit_quantizer(const std::vector<std::pair<float, float>>& sorted, int bits,
                           float* lo, float* step) {
    const size_t n = sorted.size();
    const int qmax = (1 << bits) - 1;
    // Clip to symmetric quantiles: outliers cost less clipped than the step
    // they would force on everyone else.
    static const double kTail[] = {0.0, 1e-4, 1e-3, 4e-3, 0.015, 0.04};
    double best = INFINITY;
    for (double tail : kTail) {
        const size_t i0 = std::min(n - 1, (size_t)(tail * n));
        const size_t i1 = n - 1 - i0;
        const float a = sorted[i0].first, b = sorted[std::max(i0, i1)].first;
        const float st = b > a ? (b - a) / qmax : 1e-8f;
        double err = 0;
        for (const auto& [u, w] : sorted) {
            const float c = std::clamp(std::nearbyint((u - a) / st), 0.0f, (float)qmax);
            const double e = u - (a + st * c);
            err += w * e * e;
        }
        err /= (double)n;
        if (err < best) best = err, *lo = a, *step = st;
        if (b <= a) break;
    }
    return best;
}

calibrate_result kv_calibrate(const model& m, const std::vector<int32_t>& tokens,
                              const calibrate_params& p) {
    const hparams& hp = m.hp();
    const int hd = hp.head_dim, nh = hp.n_head_kv, L = KV_CALIB_LEVELS;
    const int n_rep = hp.n_head / hp.n_head_kv;
    if (p.n_ctx < 16) throw error("calibrate: n_ctx must be at least 16");
    const int n_use = std::min<int>((int)tokens.size(), p.max_tokens);
    if (n_use < p.n_ctx) throw error("calibrate: the calibration text has " +
                                     std::to_string(tokens.size()) + " tokens; need at least " +
                                     std::to_string(p.n_ctx));
    if (p.probe_tokens > 0 && (int)tokens.size() < p.probe_tokens)
        throw error("calibrate: the calibration text is shorter than a probe");
    const double t_start = now_s();
    calibrate_result res;

    // 1. Moments over whole chunks of n_ctx from an empty cache.
    context_params cp;
    cp.n_ctx = p.n_ctx;
    cp.n_threads = p.n_threads;
    cp.type_k = cp.type_v = KV_TYPE_F32;
    moments_observer obs(hp, p.max_samples);
    const int n_chunks = n_use / p.n_ctx;
    // Post-RoPE keys depend on the absolute position: each chunk is placed at
    // an evenly spread offset so the statistics cover the whole trained
    // context, not only the first n_ctx positions.
    const int span = std::max(0, hp.n_ctx_train - p.n_ctx);
    auto run_chunk = [&](int c) {
        context_params cc = cp;
        cc.rope_offset = n_chunks > 1 ? (int)((int64_t)span * c / (n_chunks - 1)) : 0;
        obs.set_rope_offset(cc.rope_offset);
        context chunk_ctx(m, cc);
        chunk_ctx.set_observer(&obs);
        chunk_ctx.eval(tokens.data() + (size_t)c * p.n_ctx, p.n_ctx, nullptr, 0);
    };
    // Pre-RoPE key means from the first and last chunks (a mean settles fast).
    const int n_mean = std::min(n_chunks, 2);
    obs.set_mean_pass(true);
    for (int i = 0; i < n_mean; ++i) {
        progress(p.progress, "moments", i, n_chunks + n_mean, t_start);
        run_chunk(i == 0 ? 0 : n_chunks - 1);
    }
    obs.finish_mean_pass(p.rope_pairs);
    for (int c = 0; c < n_chunks; ++c) {
        progress(p.progress, "moments", n_mean + c, n_chunks + n_mean, t_start);
        run_chunk(c);
    }
    progress(p.progress, "moments", n_chunks + n_mean, n_chunks + n_mean, t_start);
    const double t_pca = now_s();
    res.n_tokens = n_chunks * p.n_ctx;

    // Output projection as floats, for the value weights.
    const weight& wo0 = m.layers()[0].wo;
    std::vector<float> wo((size_t)wo0.rows * wo0.cols);

    // 2-3. PCA and quantizers per (layer, K|V, head), spread over threads.
    kv_calibration& cal = res.calib;
    cal.n_layer = hp.n_layer;
    cal.n_head_kv = nh;
    cal.head_dim = hd;
    cal.default_bits = p.default_bits;
    cal.model_hash = kv_calib_model_hash(m);
    cal.set_rope(m);
    cal.heads.resize((size_t)hp.n_layer * 2 * nh);
    const double N = (double)obs.count();
    std::vector<std::vector<float>> weights(cal.heads.size());
    for (int il = 0; il < hp.n_layer; ++il) {
        progress(p.progress, "pca", il, hp.n_layer, t_pca);
        const weight& w = m.layers()[il].wo;
        for (int64_t r = 0; r < w.rows; ++r)
            quants_dequantize_row(w.type, w.data + r * w.row_bytes, &wo[(size_t)r * w.cols], w.cols);
        std::atomic<int> next{0};
        auto work = [&]() {
            for (int j; (j = next.fetch_add(1)) < 2 * nh;) {
                const int s = j / nh, h = j % nh, id = (il * 2 + s) * nh + h;
                kv_calib_head& ch = cal.heads[id];
                std::vector<double> cov = obs.outer(id), mean(hd), ev, vec;
                symmetrize(cov, hd);
                for (int i = 0; i < hd; ++i) mean[i] = obs.sum(id)[i] / N;
                for (int i = 0; i < hd; ++i)
                    for (int k = 0; k < hd; ++k)
                        cov[(size_t)i * hd + k] = cov[(size_t)i * hd + k] / N - mean[i] * mean[k];
                calib_eigen_sym(cov, hd, ev, vec);
                ch.basis.assign(vec.begin(), vec.end());
                if (s == 0) ch.rope_mean = obs.rope_mean(il, h);
                ch.mean.assign(mean.begin(), mean.end());
                ch.sigma.resize(hd);
                for (int c = 0; c < hd; ++c)
                    ch.sigma[c] = (float)std::sqrt(std::max(ev[c], 1e-12 * std::max(ev[0], 1e-30)));
                // What an error in channel c perturbs.
                std::vector<float>& wc = weights[id];
                wc.assign(hd, 0.0f);
                if (s == 0) {  // score error: (Pq)_c^2 / head_dim, queries of the group
                    std::vector<double> qq = obs.qouter(il, h);
                    symmetrize(qq, hd);
                    for (int c = 0; c < hd; ++c) {
                        double e = 0;
                        for (int i = 0; i < hd; ++i)
                            for (int k = 0; k < hd; ++k)
                                e += vec[(size_t)c * hd + i] * qq[(size_t)i * hd + k] * vec[(size_t)c * hd + k];
                        wc[c] = (float)(e / (N * n_rep) / hd);
                    }
                } else {  // output error: |W_o^(r) p_c|^2 over the group's query heads
                    for (int c = 0; c < hd; ++c) {
                        double e = 0;
                        for (int r = 0; r < n_rep; ++r) {
                            const int col0 = (h * n_rep + r) * hd;
                            for (int64_t row = 0; row < w.rows; ++row) {
                                double dot = 0;
                                const float* wr = &wo[(size_t)row * w.cols + col0];
                                for (int i = 0; i < hd; ++i) dot += wr[i] * vec[(size_t)c * hd + i];
                                e += dot * dot;
                            }
                        }
                        wc[c] = (float)e;
                    }
                }
                // Quantizers on the projected samples, each divided by its
                // token's scale as the cache does.
                const std::vector<float>& smp = obs.samples(id);
                const int ns = (int)(smp.size() / hd);
                kv_pca_head ph;  // samples already lost their rope_mean
                ph.basis = ch.basis;
                ph.mean = ch.mean;
                ph.sigma = ch.sigma;
                std::vector<float> ys((size_t)ns * hd), scale(ns);
                for (int i = 0; i < ns; ++i) {
                    kv_pca_project(ph, &smp[(size_t)i * hd], &ys[(size_t)i * hd]);
                    scale[i] = kv_pca_scale_value(kv_pca_scale_code(kv_pca_token_scale(ph, &ys[(size_t)i * hd])));
                }
                std::vector<std::pair<float, float>> u(ns);
                ch.lo.assign((size_t)hd * L, 0.0f);
                ch.step.assign((size_t)hd * L, 1.0f);
                ch.damage.assign((size_t)hd * L, 0.0f);
                for (int c = 0; c < hd; ++c) {
                    for (int i = 0; i < ns; ++i)
                        u[i] = {ys[(size_t)i * hd + c] / scale[i], scale[i] * scale[i]};
                    std::sort(u.begin(), u.end());
                    ch.damage[(size_t)c * L] = wc[c] * (float)std::max(ev[c], 0.0);
                    for (int b = 1; b < L; ++b) {
                        float lo = 0, st = 1;
                        const double mse = ns > 0 ? calib_fit_quantizer(u, b, &lo, &st) : 0.0;
                        ch.lo[(size_t)c * L + b] = lo;
                        ch.step[(size_t)c * L + b] = st;
                        // Never above truncation: more bits cannot hurt.
                        ch.damage[(size_t)c * L + b] =
                            std::min(ch.damage[(size_t)c * L + b - 1], wc[c] * (float)mse);
                    }
                }
            }
        };
        const int nthr = std::max(1, std::min(2 * nh, (int)std::thread::hardware_concurrency()));
        std::vector<std::thread> th;
        for (int i = 1; i < nthr; ++i) th.emplace_back(work);
        work();
        for (auto& t : th) t.join();
    }
    progress(p.progress, "pca", hp.n_layer, hp.n_layer, t_pca);

    // 4. Sensitivity: KL of the final logits with one layer's keys or values
    // at a probe configuration, against the f32 cache.
    res.probe_kl.assign((size_t)hp.n_layer * 2, 0.0f);
    res.probe_scale.assign((size_t)hp.n_layer * 2, 1.0f);
    if (p.probe_tokens > 0) {
        const int np = p.probe_tokens, nv = hp.n_vocab;
        context_params pp = cp;
        pp.n_ctx = np;
        context pc(m, pp);
        std::vector<float> ref((size_t)np * nv), out((size_t)np * nv);
        pc.eval(tokens.data(), np, ref.data(), np);
        to_log_softmax(ref, np, nv);
        const int n_probe = hp.n_layer * 2;
        const double t_probe = now_s();
        for (int il = 0; il < hp.n_layer; ++il)
            for (int s = 0; s < 2; ++s) {
                progress(p.progress, "sensitivity", il * 2 + s, n_probe, t_probe);
                kv_calibration one;
                one.n_layer = 1;
                one.n_head_kv = nh;
                one.head_dim = hd;
                one.heads.resize(2 * nh);
                one.rope_freq = cal.rope_freq;
                one.pair_stride = cal.pair_stride;
                one.pair_gap = cal.pair_gap;
                for (int h = 0; h < nh; ++h) one.at(0, s, h) = cal.at(il, s, h);
                auto pl = one.solve(p.probe_bits, s == 0, s == 1, np);
                const auto& heads = s == 0 ? pl.k[0] : pl.v[0];
                double predicted = 0;
                for (int h = 0; h < nh; ++h)
                    for (int c = 0; c < hd; ++c)
                        predicted += cal.at(il, s, h).damage[(size_t)c * L + heads[h].bits[c]];
                pc.kv_mutable().set_stream(il, s == 1,
                                           kv_stream_create_pca(np, heads, p.probe_window));
                pc.reset();
                pc.eval(tokens.data(), np, out.data(), np);
                pc.kv_mutable().set_stream(il, s == 1,
                                           kv_stream_create(KV_TYPE_F32, s == 0, np, nh, hd));
                const double kl = mean_kl(ref, out, np, nv);
                res.probe_kl[il * 2 + s] = (float)kl;
                // A floor keeps a layer whose probe barely moved the logits
                // from being treated as free.
                const double scale = std::max(kl, 1e-7) / std::max(predicted, 1e-30);
                res.probe_scale[il * 2 + s] = (float)scale;
                for (int h = 0; h < nh; ++h)
                    for (float& d : cal.at(il, s, h).damage) d = (float)(d * scale);
            }
        progress(p.progress, "sensitivity", n_probe, n_probe, t_probe);
    }
    res.seconds = now_s() - t_start;
    return res;
}

void kv_calib_write(const kv_calibration& c, const std::string& path) {
    gguf_writer w;
    w.add_str("general.architecture", "kvrt-kvcal");
    w.add_u32("kvrt.calib.version", 1);
    w.add_u64("kvrt.calib.model_hash", c.model_hash);
    w.add_u32("kvrt.calib.n_layer", (uint32_t)c.n_layer);
    w.add_u32("kvrt.calib.n_head_kv", (uint32_t)c.n_head_kv);
    w.add_u32("kvrt.calib.head_dim", (uint32_t)c.head_dim);
    w.add_f32("kvrt.calib.default_bits", c.default_bits);
    const int64_t nh = c.n_head_kv, d = c.head_dim, L = KV_CALIB_LEVELS;
    for (int il = 0; il < c.n_layer; ++il)
        for (int s = 0; s < 2; ++s) {
            const std::string pre = "blk." + std::to_string(il) + (s ? ".v_" : ".k_");
            std::vector<float> basis, mean, sigma, lo, step, dmg;
            for (int h = 0; h < nh; ++h) {
                const kv_calib_head& ch = c.at(il, s, h);
                basis.insert(basis.end(), ch.basis.begin(), ch.basis.end());
                mean.insert(mean.end(), ch.mean.begin(), ch.mean.end());
                sigma.insert(sigma.end(), ch.sigma.begin(), ch.sigma.end());
                lo.insert(lo.end(), ch.lo.begin(), ch.lo.end());
                step.insert(step.end(), ch.step.begin(), ch.step.end());
                dmg.insert(dmg.end(), ch.damage.begin(), ch.damage.end());
            }
            w.add_tensor(pre + "basis", {d, d, nh}, std::move(basis));
            w.add_tensor(pre + "mean", {d, nh}, std::move(mean));
            w.add_tensor(pre + "sigma", {d, nh}, std::move(sigma));
            w.add_tensor(pre + "lo", {L, d, nh}, std::move(lo));
            w.add_tensor(pre + "step", {L, d, nh}, std::move(step));
            w.add_tensor(pre + "damage", {L, d, nh}, std::move(dmg));
            if (s == 0 && !c.at(il, 0, 0).rope_mean.empty()) {
                std::vector<float> rm;
                for (int h = 0; h < nh; ++h)
                    rm.insert(rm.end(), c.at(il, 0, h).rope_mean.begin(), c.at(il, 0, h).rope_mean.end());
                w.add_tensor(pre + "rope_mean", {d, nh}, std::move(rm));
            }
        }
    w.write(path);
}

}  // namespace kvrt
