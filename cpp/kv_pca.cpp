// The pca KV format: y = P(x - mu) in a calibrated basis; per token one
// scale a_t (the largest |y_c| / sigma_c, rounded up to its byte code), and
// each kept channel quantized as y_c / a_t ~ lo_c + step_c * code with its
// own bits and static quantizer; channel-major blocks (kv_layout.h).
//
// Attention never leaves the rotated domain:
//  - keys: q.k = (Pq).y + q.mu; q.mu is the same for every position and is
//    dropped (softmax ignores it); the query is rotated once per call and
//    the codes are read as they are. Truncated channels cost nothing.
//    Keys may first lose their pre-RoPE mean m turned to their position,
//    x - R_t m; then q.k also gets q.R_t m = sum over pairs i of
//    A_i cos(w_i t) + B_i sin(w_i t), A and B made from q and m once per call.
//  - values: sum_t p_t x_t = P^T(sum_t p_t y_t) + mu since sum_t p_t = 1;
//    accumulate() sums in the rotated domain, finish() un-rotates once per
//    head.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <new>

#include "common.h"
#include "cpu/kv_kernels.h"
#include "kv_formats.h"
#include "kv_layout.h"
#include "quants.h"

namespace kvrt {

namespace {

// Codes of the 8-bit window: -127..127 times a / 127 sigma_c.
constexpr int kWindow8Levels = 127;

class kv_stream_pca final : public kv_stream {
    // The first positions (BOS and its neighbours) draw much of the attention
    // and sit far outside the calibrated ranges ("attention sinks"); they are
    // kept unquantized in the rotated basis.
    static constexpr int kSinks = KV_PCA_SINKS;

public:
    kv_stream_pca(int n_ctx, const std::vector<kv_pca_head>& heads, int window, int window8)
        : n_ctx_(n_ctx), n_blocks_((n_ctx + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS), src_(heads) {
        if (src_.empty()) throw error("pca KV stream: no heads");
        if (window > 0 && window8 > 0)
            throw error("pca window: a stream takes :wN or :eN, not both");
        ring_n_ = std::max({window, window8, 0});
        tier8_ = window8 > 0;
        hd_ = (int)src_[0].mean.size();
        rec_ = tier8_ ? hd_ + 2 : 2 * hd_;
        size_t off = 0;
        for (const kv_pca_head& h : src_) {
            if ((int)h.mean.size() != hd_ || h.basis.size() != (size_t)hd_ * hd_ ||
                (int)h.bits.size() != hd_ || (int)h.lo.size() != hd_ ||
                (int)h.step.size() != hd_ || (int)h.sigma.size() != hd_)
                throw error("pca KV stream: inconsistent calibration shapes");
            head g;
            g.src = &h;
            for (int c = 0; c < hd_; ++c)
                if (h.bits[c] > 0) {
                    if (h.bits[c] > KV_MAX_BITS) throw error("pca KV stream: bits above 8");
                    g.keep.push_back(c);
                    g.bits.push_back(h.bits[c]);
                    g.blk += kv_group_bytes(h.bits[c]);
                }
            if (!h.rope_mean.empty()) {
                const int nf = (int)h.rope_freq.size();
                if ((int)h.rope_mean.size() != hd_ || nf == 0 || 2 * nf > hd_ ||
                    (nf - 1) * h.pair_stride + h.pair_gap >= hd_)
                    throw error("pca KV stream: inconsistent rope mean shapes");
                for (int i = 0; i < (int)h.rope_freq.size(); ++i) {
                    if (!kv_pca_pair_held(h, i)) continue;
                    const int a = i * h.pair_stride, b = a + h.pair_gap;
                    const double turn = (double)KV_BLOCK_TOKENS * h.rope_freq[i];
                    g.pairs.push_back({a, b, h.rope_mean[a], h.rope_mean[b], h.rope_freq[i],
                                       std::cos(turn), std::sin(turn)});
                    for (int j = 0; j < KV_BLOCK_TOKENS; ++j)
                        g.run_tab.push_back((float)std::cos((double)j * h.rope_freq[i]));
                    for (int j = 0; j < KV_BLOCK_TOKENS; ++j)
                        g.run_tab.push_back((float)std::sin((double)j * h.rope_freq[i]));
                }
            }
            g.offset = off;
            off += g.blk * n_blocks_;
            heads_.push_back(std::move(g));
        }
        const size_t nh = src_.size();
        data_ = zeroed<uint8_t>(off);
        scale_ = zeroed<uint8_t>(nh * n_ctx);
        sinks_ = zeroed<uint16_t>(nh * kSinks * hd_);
        ring_ = zeroed<uint8_t>((size_t)ring_n_ * nh * rec_);
        ring_pos_.assign(ring_n_, -1);
        bytes_ = off + nh * n_ctx + nh * kSinks * hd_ * sizeof(uint16_t) + (size_t)ring_n_ * nh * rec_;
    }

    void store(int pos0, int n, const float* x) override {
        const int nh = (int)heads_.size();
        if (ring_n_ > 0) begin_batch(pos0, n);
        std::vector<float> y(hd_), xr(hd_);
        for (int t = 0; t < n; ++t) {
            const int pos = pos0 + t;
            for (int h = 0; h < nh; ++h) {
                const head& g = heads_[h];
                const kv_pca_head& p = *g.src;
                const float* xh = x + ((size_t)t * nh + h) * hd_;
                if (!g.pairs.empty()) {
                    kv_pca_rope_mean_at(p, pos, xr.data());
                    for (int d = 0; d < hd_; ++d) xr[d] = xh[d] - xr[d];
                    xh = xr.data();
                }
                kv_pca_project(p, xh, y.data());
                if (ring_n_ > 0) window_record(p, y.data(), &batch_[((size_t)t * nh + h) * rec_]);
                if (pos < kSinks) {  // every channel, as halves
                    uint16_t* dst = sinks_.get() + ((size_t)h * kSinks + pos) * hd_;
                    for (int c = 0; c < hd_; ++c) dst[c] = fp32_to_fp16(y[c]);
                    continue;
                }
                const uint8_t sc = kv_pca_scale_code(kv_pca_token_scale(p, y.data()));
                scale_[(size_t)h * n_ctx_ + pos] = sc;
                const float inv = 1.0f / kv_pca_scale_value(sc);
                uint8_t* grp = block(h, pos / KV_BLOCK_TOKENS);
                for (size_t i = 0; i < g.keep.size(); ++i) {
                    const int c = g.keep[i], b = g.bits[i];
                    const float code = std::nearbyint((y[c] * inv - p.lo[c]) / p.step[c]);
                    kv_code_set(grp, b, pos % KV_BLOCK_TOKENS,
                                (unsigned)std::clamp(code, 0.0f, (float)((1 << b) - 1)));
                    grp += kv_group_bytes(b);
                }
            }
        }
    }

    // s_t = a_t * (sum_kept w_c code_c + K_r) with w_c = (Pq)_c step_c and
    // K_r = sum_kept (Pq)_c lo_c; q.mu, the same for every position, is dropped.
    void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                int ld) const override {
        scores_at(h, q, n_rep, t0, t1, s, ld, -1, 1);
    }

    // own0 >= 0: each row's recent window (positions own - window + 1 ..
    // own, past the sinks) is scored from its exact y instead of the codes.
    void scores_at(int h, const float* q, int n_rep, int t0, int t1, float* s, int ld, int own0,
                   int per_token) const override {
        const head& g = heads_[h];
        const kv_pca_head& p = *g.src;
        const int nk = (int)g.keep.size();
        std::vector<float> qr((size_t)n_rep * hd_), w((size_t)n_rep * nk), K(n_rep, 0.0f);
        std::vector<float> sb((size_t)n_rep * KV_BLOCK_TOKENS);
        float af[KV_BLOCK_TOKENS];
        for (int r = 0; r < n_rep; ++r) {
            float* qy = qr.data() + (size_t)r * hd_;
            kv_dot_rows(p.basis.data(), hd_, hd_, q + (size_t)r * hd_, qy, 1);  // qy = P q
            for (int i = 0; i < nk; ++i) {
                w[(size_t)r * nk + i] = qy[g.keep[i]] * p.step[g.keep[i]];
                K[r] += qy[g.keep[i]] * p.lo[g.keep[i]];
            }
        }
        for (int t = t0; t < std::min(t1, kSinks); ++t) {
            const std::vector<float> y = sink(h, t);
            for (int r = 0; r < n_rep; ++r) {
                float acc = 0.0f;
                for (int c = 0; c < hd_; ++c) acc += qr[(size_t)r * hd_ + c] * y[c];
                s[(size_t)r * ld + (t - t0)] = acc;
            }
        }
        for (int b0 = std::max(t0, kSinks) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS; b0 < t1;
             b0 += KV_BLOCK_TOKENS) {
            const int lo = std::max({t0, b0, kSinks}), hi = std::min(t1, b0 + KV_BLOCK_TOKENS);
            if (lo >= hi) continue;
            if (nk > 0)
                kv_cmajor_scores(block(h, b0 / KV_BLOCK_TOKENS), g.bits.data(), nk, w.data(),
                                 n_rep, sb.data());
            else
                std::fill(sb.begin(), sb.end(), 0.0f);
            scales(h, lo, hi, af);
            for (int r = 0; r < n_rep; ++r) {
                const float* sbr = &sb[(size_t)r * KV_BLOCK_TOKENS + (lo - b0)];
                float* sr = s + (size_t)r * ld + (lo - t0);
                for (int j = 0; j < hi - lo; ++j) sr[j] = af[j] * (sbr[j] + K[r]);
            }
        }
        each_window_y(h, n_rep, t0, t1, own0, per_token, [&](int r, int t, const float* y) {
            const float* qy = qr.data() + (size_t)r * hd_;
            float acc = 0.0f;
            for (int c = 0; c < hd_; ++c) acc += qy[c] * y[c];
            s[(size_t)r * ld + (t - t0)] = acc;
        });
        if (!g.pairs.empty()) add_rope_mean_scores(g, q, n_rep, t0, t1, s, ld);
    }

    // Accumulates in the rotated domain y: with p'_t = p_t a_t,
    // sum_t p_t y_tc = step_c sum_t p'_t code_tc + lo_c sum_t p'_t.
    void accumulate(int h, const float* p, int n_rep, int t0, int t1, int ld,
                    float* out) const override {
        accumulate_at(h, p, n_rep, t0, t1, ld, out, -1, 1);
    }

    // own0 >= 0: each row's recent window takes its exact y (and no codes).
    void accumulate_at(int h, const float* p, int n_rep, int t0, int t1, int ld, float* out,
                       int own0, int per_token) const override {
        const head& g = heads_[h];
        const kv_pca_head& ph = *g.src;
        const int nk = (int)g.keep.size();
        for (int t = t0; t < std::min(t1, kSinks); ++t) {
            const std::vector<float> y = sink(h, t);
            for (int r = 0; r < n_rep; ++r) {
                const float pt = p[(size_t)r * ld + (t - t0)];
                for (int c = 0; c < hd_; ++c) out[(size_t)r * hd_ + c] += pt * y[c];
            }
        }
        // The window's positions take their exact y here, and probability 0
        // in the codes' sum below.
        each_window_y(h, n_rep, t0, t1, own0, per_token, [&](int r, int t, const float* y) {
            const float pt = p[(size_t)r * ld + (t - t0)];
            for (int c = 0; c < hd_; ++c) out[(size_t)r * hd_ + c] += pt * y[c];
        });
        if (nk == 0) return;
        std::vector<float> pb((size_t)n_rep * KV_BLOCK_TOKENS), acc((size_t)n_rep * nk, 0.0f);
        std::vector<float> psum(n_rep, 0.0f);
        float af[KV_BLOCK_TOKENS];
        for (int b0 = std::max(t0, kSinks) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS; b0 < t1;
             b0 += KV_BLOCK_TOKENS) {
            const int lo = std::max({t0, b0, kSinks}), hi = std::min(t1, b0 + KV_BLOCK_TOKENS);
            if (lo >= hi) continue;
            // Positions of the block outside [lo, hi) get probability 0.
            std::fill(pb.begin(), pb.end(), 0.0f);
            scales(h, lo, hi, af);
            for (int r = 0; r < n_rep; ++r) {
                const float* pr = p + (size_t)r * ld + (lo - t0);
                float* pbr = &pb[(size_t)r * KV_BLOCK_TOKENS + (lo - b0)];
                for (int j = 0; j < hi - lo; ++j) pbr[j] = pr[j] * af[j];
            }
            each_window_rec(h, n_rep, lo, hi, own0, per_token, [&](int r, int t, const uint8_t*) {
                pb[(size_t)r * KV_BLOCK_TOKENS + (t - b0)] = 0.0f;
            });
            for (int r = 0; r < n_rep; ++r) {
                const float* pbr = &pb[(size_t)r * KV_BLOCK_TOKENS + (lo - b0)];
                float sum = 0.0f;
                for (int j = 0; j < hi - lo; ++j) sum += pbr[j];
                psum[r] += sum;
            }
            kv_cmajor_accumulate(block(h, b0 / KV_BLOCK_TOKENS), g.bits.data(), nk, pb.data(),
                                 n_rep, acc.data(), nk);
        }
        for (int r = 0; r < n_rep; ++r)
            for (int i = 0; i < nk; ++i) {
                const int c = g.keep[i];
                out[(size_t)r * hd_ + c] += ph.step[c] * acc[(size_t)r * nk + i] + ph.lo[c] * psum[r];
            }
    }

    // o: the normalised accumulation in the rotated domain; x = mu + P^T o.
    void finish(int h, float* o) const override {
        const kv_pca_head& p = *heads_[h].src;
        std::vector<float> y(o, o + hd_);
        for (int d = 0; d < hd_; ++d) o[d] = p.mean[d];
        for (int c = 0; c < hd_; ++c) {
            if (y[c] == 0.0f) continue;
            const float* row = p.basis.data() + (size_t)c * hd_;
            for (int d = 0; d < hd_; ++d) o[d] += row[d] * y[c];
        }
    }

    size_t bytes() const override { return bytes_; }

    const uint8_t* packed_bytes(int part, size_t* n) const override {
        const size_t nh = heads_.size();
        switch (part) {
            case 0: *n = heads_.back().offset + heads_.back().blk * n_blocks_; return data_.get();
            case 1: *n = nh * n_ctx_; return scale_.get();
            case 2: *n = nh * kSinks * hd_ * sizeof(uint16_t); return reinterpret_cast<const uint8_t*>(sinks_.get());
            default: return nullptr;
        }
    }

    void decode(int pos, float* x) const override {
        for (int h = 0; h < (int)heads_.size(); ++h) {
            const head& g = heads_[h];
            const kv_pca_head& p = *g.src;
            float* xh = x + (size_t)h * hd_;
            if (pos < kSinks) {
                const std::vector<float> y = sink(h, pos);
                std::copy(y.begin(), y.end(), xh);
            } else {
                std::fill(xh, xh + hd_, 0.0f);
                const float a = kv_pca_scale_value(scale_[(size_t)h * n_ctx_ + pos]);
                const uint8_t* grp = block(h, pos / KV_BLOCK_TOKENS);
                for (size_t i = 0; i < g.keep.size(); ++i) {
                    const int c = g.keep[i];
                    xh[c] = a * (p.lo[c] + p.step[c] * (float)kv_code_get(grp, g.bits[i], pos % KV_BLOCK_TOKENS));
                    grp += kv_group_bytes(g.bits[i]);
                }
            }
            finish(h, xh);
            if (!g.pairs.empty()) {
                std::vector<float> m(hd_);
                kv_pca_rope_mean_at(p, pos, m.data());
                for (int d = 0; d < hd_; ++d) xh[d] += m[d];
            }
        }
    }

private:
    // A rotary pair (dims a, b) with a pre-RoPE key mean (ma, mb) turning by
    // w radians per position.
    struct rope_pair {
        int a, b;
        float ma, mb, w;
        double cr, sr;  // cos, sin of the turn over KV_BLOCK_TOKENS positions
    };
    struct head {
        const kv_pca_head* src = nullptr;
        std::vector<rope_pair> pairs;  // pairs with a mean
        std::vector<float> run_tab;  // [pair][2][j]: cos(w j), then sin(w j), j < 32
        std::vector<int> keep;       // kept channels, in order
        std::vector<uint8_t> bits;   // their bits
        size_t blk = 0;              // bytes of one block
        size_t offset = 0;
    };

    // s[r*ld + t - t0] += q_r . R_t m over the pairs of head g: per pair
    // A cos(w t) + B sin(w t), A and B from q and m. Over a run of 32
    // positions from b0, t = b0 + j, that is (A c0 + B s0) cos(w j) +
    // (B c0 - A s0) sin(w j) with c0, s0 the angle at b0: the run's
    // coefficients against the head's fixed per-offset tables.
    void add_rope_mean_scores(const head& g, const float* q, int n_rep, int t0, int t1, float* s,
                              int ld) const {
        constexpr int R = KV_BLOCK_TOKENS;
        const int np = (int)g.pairs.size();
        std::vector<float> AB((size_t)n_rep * 2 * np), W((size_t)n_rep * 2 * np), acc((size_t)n_rep * R);
        for (int r = 0; r < n_rep; ++r)
            for (int i = 0; i < np; ++i) {
                const rope_pair& pr = g.pairs[i];
                const float* qr = q + (size_t)r * hd_;
                AB[(size_t)r * 2 * np + 2 * i] = qr[pr.a] * pr.ma + qr[pr.b] * pr.mb;      // cos
                AB[(size_t)r * 2 * np + 2 * i + 1] = qr[pr.b] * pr.ma - qr[pr.a] * pr.mb;  // sin
            }
        // Start angles of each run, turned by R positions in double from run to run.
        std::vector<double> cs(2 * np);
        for (int i = 0; i < np; ++i) {
            const double th = (double)t0 * g.pairs[i].w;
            cs[2 * i] = std::cos(th);
            cs[2 * i + 1] = std::sin(th);
        }
        for (int b0 = t0; b0 < t1; b0 += R) {
            const int n = std::min(R, t1 - b0);
            for (int i = 0; i < np; ++i) {
                const double c = cs[2 * i], sn = cs[2 * i + 1];
                const float c0 = (float)c, s0 = (float)sn;
                cs[2 * i] = c * g.pairs[i].cr - sn * g.pairs[i].sr;
                cs[2 * i + 1] = sn * g.pairs[i].cr + c * g.pairs[i].sr;
                for (int r = 0; r < n_rep; ++r) {
                    const float A = AB[(size_t)r * 2 * np + 2 * i], B = AB[(size_t)r * 2 * np + 2 * i + 1];
                    W[(size_t)r * 2 * np + 2 * i] = A * c0 + B * s0;
                    W[(size_t)r * 2 * np + 2 * i + 1] = B * c0 - A * s0;
                }
            }
            kv_run_scores(W.data(), 2 * np, g.run_tab.data(), n_rep, acc.data());
            for (int r = 0; r < n_rep; ++r) {
                float* sr = s + (size_t)r * ld + (b0 - t0);
                const float* ar = &acc[(size_t)r * R];
                for (int j = 0; j < n; ++j) sr[j] += ar[j];
            }
        }
    }

    // Scales of positions lo..hi-1 of head h.
    void scales(int h, int lo, int hi, float* a) const {
        const uint8_t* sc = &scale_[(size_t)h * n_ctx_];
        for (int t = lo; t < hi; ++t) a[t - lo] = kv_pca_scale_value(sc[t]);
    }
    // The recent window: the newest ring_n_ positions of each row, a record
    // per position and head (window_record). The newest batch's records stay
    // in batch_ until the next store() folds its last ring_n_ positions into
    // the ring; positions being stored again leave the ring.
    void begin_batch(int pos0, int n) {
        const size_t w = heads_.size() * rec_;
        for (int t = std::max(batch_pos0_, batch_pos0_ + batch_n_ - ring_n_);
             t < std::min(batch_pos0_ + batch_n_, pos0); ++t) {
            const int slot = t % ring_n_;
            std::copy_n(&batch_[(size_t)(t - batch_pos0_) * w], w, ring_.get() + (size_t)slot * w);
            ring_pos_[slot] = t;
        }
        for (int& rp : ring_pos_)
            if (rp >= pos0) rp = -1;
        batch_pos0_ = pos0;
        batch_n_ = n;
        batch_.resize((size_t)n * w);
    }
    // A window position's record of y: hd_ halves (:wN), or (:eN) a half
    // scale a = max_c |y_c| / sigma_c of the half-rounded y and its codes
    // round(y_c / (a sigma_c) * 127), one signed byte each.
    void window_record(const kv_pca_head& p, const float* y, uint8_t* rec) const {
        if (!tier8_) {
            uint16_t* h = reinterpret_cast<uint16_t*>(rec);
            for (int c = 0; c < hd_; ++c) h[c] = fp32_to_fp16(y[c]);
            return;
        }
        float m = 0.0f;
        for (int c = 0; c < hd_; ++c)
            m = std::max(m, std::fabs(fp16_to_fp32(fp32_to_fp16(y[c])) / p.sigma[c]));
        const uint16_t ah = fp32_to_fp16(m);
        std::memcpy(rec, &ah, 2);
        const float a = fp16_to_fp32(ah);
        int8_t* codes = reinterpret_cast<int8_t*>(rec + 2);
        if (!(a > 0.0f)) {
            std::fill_n(codes, hd_, int8_t{0});
            return;
        }
        for (int c = 0; c < hd_; ++c) {
            const float u = a * p.sigma[c] / (float)kWindow8Levels;
            const float yh = fp16_to_fp32(fp32_to_fp16(y[c]));
            codes[c] = (int8_t)std::clamp(std::nearbyint(yh / u), (float)-kWindow8Levels,
                                          (float)kWindow8Levels);
        }
    }
    // The y a record holds, into out.
    void window_decode(const kv_pca_head& p, const uint8_t* rec, float* out) const {
        if (!tier8_) {
            const uint16_t* h = reinterpret_cast<const uint16_t*>(rec);
            for (int c = 0; c < hd_; ++c) out[c] = fp16_to_fp32(h[c]);
            return;
        }
        uint16_t ah;
        std::memcpy(&ah, rec, 2);
        const float a = fp16_to_fp32(ah);
        if (!(a > 0.0f)) {
            std::fill_n(out, hd_, 0.0f);
            return;
        }
        const int8_t* codes = reinterpret_cast<const int8_t*>(rec + 2);
        for (int c = 0; c < hd_; ++c) out[c] = (float)codes[c] * (a * p.sigma[c] / (float)kWindow8Levels);
    }
    // f(r, t, rec) for each position t in [t0, t1) of row r's window (own0
    // >= 0; row r is the token at own0 + r / per_token) whose record is held.
    template <class F>
    void each_window_rec(int h, int n_rep, int t0, int t1, int own0, int per_token, F&& f) const {
        if (ring_n_ <= 0 || own0 < 0) return;
        for (int r = 0; r < n_rep; ++r) {
            const int own = own0 + r / per_token;
            for (int t = std::max({t0, own - ring_n_ + 1, kSinks}); t <= std::min(t1 - 1, own); ++t)
                if (const uint8_t* rec = window_rec(h, t)) f(r, t, rec);
        }
    }
    // The same with the y each record holds: f(r, t, y).
    template <class F>
    void each_window_y(int h, int n_rep, int t0, int t1, int own0, int per_token, F&& f) const {
        if (ring_n_ <= 0 || own0 < 0) return;
        std::vector<float> y(hd_);
        each_window_rec(h, n_rep, t0, t1, own0, per_token, [&](int r, int t, const uint8_t* rec) {
            window_decode(*heads_[h].src, rec, y.data());
            f(r, t, y.data());
        });
    }
    // The record of position t of head h where the window holds it, else null.
    const uint8_t* window_rec(int h, int t) const {
        const size_t nh = heads_.size();
        if (t >= batch_pos0_ && t < batch_pos0_ + batch_n_)
            return &batch_[((size_t)(t - batch_pos0_) * nh + h) * rec_];
        const int slot = t % ring_n_;
        if (ring_pos_[slot] != t) return nullptr;
        return ring_.get() + ((size_t)slot * nh + h) * rec_;
    }

    // y of sink position pos of head h, as floats.
    std::vector<float> sink(int h, int pos) const {
        const uint16_t* src = sinks_.get() + ((size_t)h * kSinks + pos) * hd_;
        std::vector<float> y(hd_);
        for (int c = 0; c < hd_; ++c) y[c] = fp16_to_fp32(src[c]);
        return y;
    }
    uint8_t* block(int h, int b) const {
        return data_.get() + heads_[h].offset + (size_t)b * heads_[h].blk;
    }

    int n_ctx_, n_blocks_, hd_ = 0;
    std::vector<kv_pca_head> src_;  // the calibrated quantizers; heads_ point into it
    std::vector<head> heads_;
    // Zeroed by calloc, whose large blocks the system maps lazily: a cache
    // is resident only where it has been written (a CUDA context's CPU
    // twin, or a long context barely used, costs no memory).
    struct free_deleter {
        void operator()(void* p) const { std::free(p); }
    };
    template <class T>
    using zeroed_array = std::unique_ptr<T[], free_deleter>;
    template <class T>
    static zeroed_array<T> zeroed(size_t n) {
        void* p = std::calloc(std::max<size_t>(n, 1), sizeof(T));
        if (!p) throw std::bad_alloc();
        return zeroed_array<T>(static_cast<T*>(p));
    }
    zeroed_array<uint8_t> data_;
    zeroed_array<uint8_t> scale_;   // [head][pos] the token's scale code (kv_pca_scale_code)
    zeroed_array<uint16_t> sinks_;  // [head][kSinks][dim] half y of the first positions
    // pca:B:wN / pca:B:eN: [slot][head] a record of y (window_record) of the
    // newest positions (slot = pos % ring_n_), ring_pos_[slot] the position
    // it holds (-1: none); batch_ [t][head] the last store()'s records,
    // scratch not counted in bytes().
    int ring_n_ = 0, rec_ = 0;
    bool tier8_ = false;
    zeroed_array<uint8_t> ring_;
    std::vector<int> ring_pos_;
    std::vector<uint8_t> batch_;
    int batch_pos0_ = 0, batch_n_ = 0;
    size_t bytes_ = 0;
};

}  // namespace

void kv_pca_project(const kv_pca_head& p, const float* x, float* y) {
    const int n = (int)p.mean.size();
    for (int c = 0; c < n; ++c) {
        const float* row = p.basis.data() + (size_t)c * n;
        float acc = 0.0f;
        for (int d = 0; d < n; ++d) acc += row[d] * (x[d] - p.mean[d]);
        y[c] = acc;
    }
}

float kv_pca_token_scale(const kv_pca_head& p, const float* y) {
    // The largest normalised channel: each channel's quantizer then spans
    // the token's own range in units of its sigma, so a token's outlier
    // widens its steps instead of being clipped.
    const int n = (int)p.mean.size();
    double m = 0;
    for (int c = 0; c < n; ++c) m = std::max(m, std::fabs((double)y[c] / p.sigma[c]));
    // Kept finite and inside the byte code's range.
    return (float)std::clamp(m, 1.0 / 256, 496.0);
}

void kv_pca_rope_mean_at(const kv_pca_head& p, int pos, float* m) {
    const int n = (int)p.mean.size();
    std::fill(m, m + n, 0.0f);
    if (p.rope_mean.empty()) return;
    for (int i = 0; i < (int)p.rope_freq.size(); ++i) {
        const int a = i * p.pair_stride, b = a + p.pair_gap;
        const double th = (double)pos * p.rope_freq[i];
        const float c = (float)std::cos(th), s = (float)std::sin(th);
        m[a] = p.rope_mean[a] * c - p.rope_mean[b] * s;
        m[b] = p.rope_mean[a] * s + p.rope_mean[b] * c;
    }
}

std::unique_ptr<kv_stream> kv_stream_create_pca(int n_ctx, const std::vector<kv_pca_head>& heads,
                                                int window, int window8) {
    return std::make_unique<kv_stream_pca>(n_ctx, heads, window, window8);
}

double kv_pca_window_bits(int window, int window8, int head_dim) {
    return 16.0 * window + (8.0 * head_dim + 16.0) / head_dim * window8;
}

}  // namespace kvrt
