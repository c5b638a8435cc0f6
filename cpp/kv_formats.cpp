// Quantized KV streams that need no calibration: llama.cpp's q8_0 / q4_0
// blocks, KIVI-style affine (keys per channel over token blocks, values per
// token) and the Walsh-Hadamard rotation format. Layouts: kv_layout.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "common.h"
#include "cpu/kv_kernels.h"
#include "kv_cache.h"
#include "kv_formats.h"
#include "kv_layout.h"
#include "quants.h"

namespace kvrt {

namespace {

// One fixed-size record per (position, head), decoded to floats one token at
// a time: the decode is shared by the n_rep query heads of the group.
class kv_stream_tokens final : public kv_stream {
public:
    kv_stream_tokens(const kv_type& t, int n_ctx, int n_head_kv, int head_dim, uint32_t seed)
        : type_(t), n_ctx_(n_ctx), n_head_kv_(n_head_kv), hd_(head_dim) {
        if (head_dim % KV_GROUP != 0)
            throw error("KV format " + kv_type_name(t) + " needs head_dim a multiple of 32");
        switch (t.kind) {
            // As llama.cpp does for its quantized caches: a plain Hadamard
            // rotation over blocks of 64 channels (keys with queries, values
            // undone on the output) spreads outlier channels over the block.
            case KV_KIND_Q8_0:
            case KV_KIND_Q4_0:
                rec_ = head_dim / 32 *
                       (t.kind == KV_KIND_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0));
                if (head_dim % 64 == 0) {
                    rot_ = 64;
                    signs_.assign(head_dim, 1.0f);
                }
                break;
            case KV_KIND_AFFINE: rec_ = head_dim / 32 * kv_affine_group_bytes(t.bits); break;
            case KV_KIND_ROT:
                if (head_dim & (head_dim - 1))
                    throw error("KV format rot needs a power-of-two head_dim");
                rec_ = 4 + head_dim / 32 * kv_group_bytes(t.bits);
                rot_ = head_dim;
                signs_ = kv_random_signs(head_dim, seed);
                break;
            default: throw error("kv_stream_tokens: unsupported format");
        }
        data_.reset(new uint8_t[(size_t)n_ctx * n_head_kv * rec_]);
    }

    void store(int pos0, int n, const float* x) override {
        std::vector<float> tmp(hd_);
        for (int t = 0; t < n; ++t)
            for (int h = 0; h < n_head_kv_; ++h) {
                const float* xh = x + ((size_t)t * n_head_kv_ + h) * hd_;
                uint8_t* rec = record(pos0 + t, h);
                if (rot_ && type_.kind != KV_KIND_ROT) {
                    std::copy(xh, xh + hd_, tmp.data());
                    rotate(tmp.data());
                    xh = tmp.data();
                }
                switch (type_.kind) {
                    case KV_KIND_Q8_0: quants_quantize_row(GGML_TYPE_Q8_0, xh, rec, hd_); break;
                    case KV_KIND_Q4_0: quants_quantize_row(GGML_TYPE_Q4_0, xh, rec, hd_); break;
                    case KV_KIND_AFFINE:
                        for (int g = 0; g < hd_ / 32; ++g) {
                            uint8_t* grp = rec + (size_t)g * kv_affine_group_bytes(type_.bits);
                            uint16_t* hdr = reinterpret_cast<uint16_t*>(grp);
                            kv_affine_quantize32(xh + 32 * g, 1, type_.bits, &hdr[0], &hdr[1],
                                                 grp + 4);
                        }
                        break;
                    default: encode_rot(xh, tmp.data(), rec); break;
                }
            }
    }

    void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                int ld) const override {
        std::vector<float> x(hd_), qr;
        if (rot_) {  // (Hq).(Hk) = q.k: rotate q once, never the keys
            qr.assign(q, q + (size_t)n_rep * hd_);
            for (int r = 0; r < n_rep; ++r) rotate(qr.data() + (size_t)r * hd_);
            q = qr.data();
        }
        for (int t = t0; t < t1; ++t) {
            decode(record(t, h), x.data());
            kv_dot_rows(q, n_rep, hd_, x.data(), s + (t - t0), ld);
        }
    }

    void accumulate(int h, const float* p, int n_rep, int t0, int t1, int ld,
                    float* out) const override {
        std::vector<float> x(hd_);
        for (int t = t0; t < t1; ++t) {
            decode(record(t, h), x.data());
            kv_axpy_rows(p + (t - t0), ld, n_rep, x.data(), hd_, out);
        }
    }

    // Rotated values are accumulated rotated; H and the signs are their own
    // inverse.
    void finish(int, float* o) const override {
        if (!rot_) return;
        for (int b = 0; b < hd_; b += rot_) kv_fwht(o + b, rot_);
        for (int d = 0; d < hd_; ++d) o[d] *= signs_[d];
    }

    // The rotation's signs are fixed per stream, like a calibration: not cache.
    size_t bytes() const override { return (size_t)n_ctx_ * n_head_kv_ * rec_; }

    const uint8_t* token_bytes(int pos, size_t* n) const override {
        *n = (size_t)n_head_kv_ * rec_;
        return record(pos, 0);
    }

    void decode(int pos, float* x) const override {
        for (int h = 0; h < n_head_kv_; ++h) {
            decode(record(pos, h), x + (size_t)h * hd_);
            finish(h, x + (size_t)h * hd_);
        }
    }

private:
    uint8_t* record(int pos, int h) const {
        return data_.get() + ((size_t)pos * n_head_kv_ + h) * rec_;
    }

    void rotate(float* x) const {
        for (int d = 0; d < hd_; ++d) x[d] *= signs_[d];
        for (int b = 0; b < hd_; b += rot_) kv_fwht(x + b, rot_);
    }

    // One scale and minimum over the whole rotated head: the rotation spreads
    // outlier channels, so one range serves all of them.
    void encode_rot(const float* xh, float* y, uint8_t* rec) const {
        std::copy(xh, xh + hd_, y);
        rotate(y);
        float lo = y[0], hi = y[0];
        for (int d = 1; d < hd_; ++d) {
            lo = std::min(lo, y[d]);
            hi = std::max(hi, y[d]);
        }
        const int qmax = (1 << type_.bits) - 1;
        uint16_t* hdr = reinterpret_cast<uint16_t*>(rec);
        hdr[0] = fp32_to_fp16((hi - lo) / qmax);
        hdr[1] = fp32_to_fp16(lo);
        const float sc = fp16_to_fp32(hdr[0]), mn = fp16_to_fp32(hdr[1]);
        const float inv = sc > 0.0f ? 1.0f / sc : 0.0f;
        uint8_t codes[32];
        for (int g = 0; g < hd_ / 32; ++g) {
            for (int i = 0; i < 32; ++i) {
                const float c = std::nearbyint((y[32 * g + i] - mn) * inv);
                codes[i] = (uint8_t)std::clamp(c, 0.0f, (float)qmax);
            }
            kv_pack32(codes, type_.bits, rec + 4 + (size_t)g * kv_group_bytes(type_.bits));
        }
    }

    void decode(const uint8_t* rec, float* x) const {
        switch (type_.kind) {
            case KV_KIND_Q8_0: quants_dequantize_row(GGML_TYPE_Q8_0, rec, x, hd_); return;
            case KV_KIND_Q4_0: quants_dequantize_row(GGML_TYPE_Q4_0, rec, x, hd_); return;
            case KV_KIND_AFFINE:
                for (int g = 0; g < hd_ / 32; ++g) {
                    const uint8_t* grp = rec + (size_t)g * kv_affine_group_bytes(type_.bits);
                    const uint16_t* hdr = reinterpret_cast<const uint16_t*>(grp);
                    const float sc = fp16_to_fp32(hdr[0]), mn = fp16_to_fp32(hdr[1]);
                    kv_unpack32_f32(grp + 4, type_.bits, x + 32 * g);
                    for (int i = 0; i < 32; ++i) x[32 * g + i] = mn + sc * x[32 * g + i];
                }
                return;
            default: {
                const uint16_t* hdr = reinterpret_cast<const uint16_t*>(rec);
                const float sc = fp16_to_fp32(hdr[0]), mn = fp16_to_fp32(hdr[1]);
                for (int g = 0; g < hd_ / 32; ++g)
                    kv_unpack32_f32(rec + 4 + (size_t)g * kv_group_bytes(type_.bits), type_.bits,
                                    x + 32 * g);
                for (int d = 0; d < hd_; ++d) x[d] = mn + sc * x[d];
            }
        }
    }

    kv_type type_;
    int n_ctx_, n_head_kv_, hd_;
    size_t rec_ = 0;
    int rot_ = 0;               // Hadamard block size, 0: no rotation
    std::vector<float> signs_;  // (head_dim) applied before the transform
    std::unique_ptr<uint8_t[]> data_;
};

// KIVI keys: per channel over blocks of 32 tokens, so an outlier channel gets
// its own range. The newest incomplete block stays in f16 until it fills.
class kv_stream_affine_keys final : public kv_stream {
public:
    kv_stream_affine_keys(int bits, int n_ctx, int n_head_kv, int head_dim)
        : bits_(bits), n_ctx_(n_ctx), n_head_kv_(n_head_kv), hd_(head_dim),
          n_blocks_((n_ctx + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS),
          blk_((size_t)head_dim * (4 + kv_group_bytes(bits))),
          data_(new uint8_t[(size_t)n_head_kv * n_blocks_ * blk_]),
          stage_((size_t)n_head_kv * KV_BLOCK_TOKENS * head_dim),
          bits_all_(head_dim, (uint8_t)bits) {}

    void store(int pos0, int n, const float* x) override {
        // Rewriting inside a block already quantized: bring its earlier
        // tokens back to the staging area (decoded), then go on from there.
        if (pos0 < stage0_) unstage(pos0 / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS, pos0);
        const size_t w = (size_t)n_head_kv_ * hd_;
        for (int t = 0; t < n; ++t) {
            const int pos = pos0 + t;
            const int slot = pos - stage0_;
            for (int h = 0; h < n_head_kv_; ++h)
                for (int d = 0; d < hd_; ++d)
                    stage_[((size_t)h * KV_BLOCK_TOKENS + slot) * hd_ + d] =
                        fp32_to_fp16(x[t * w + (size_t)h * hd_ + d]);
            n_stage_ = slot + 1;
            if (n_stage_ == KV_BLOCK_TOKENS) flush();
        }
    }

    void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                int ld) const override {
        std::vector<float> w((size_t)n_rep * hd_), sb((size_t)n_rep * KV_BLOCK_TOKENS), x(hd_);
        std::vector<float> cst(n_rep);
        const int qend = std::min(t1, stage0_);
        for (int b0 = t0 / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS; b0 < qend; b0 += KV_BLOCK_TOKENS) {
            const uint8_t* blk = block(h, b0 / KV_BLOCK_TOKENS);
            const uint16_t* sc = reinterpret_cast<const uint16_t*>(blk);
            const uint16_t* mn = sc + hd_;
            // q.k = sum_c (q_c*scale_c)*code_c + sum_c q_c*min_c; the second
            // term differs between blocks, so it stays.
            std::fill(cst.begin(), cst.end(), 0.0f);
            for (int r = 0; r < n_rep; ++r)
                for (int c = 0; c < hd_; ++c) {
                    w[(size_t)r * hd_ + c] = q[(size_t)r * hd_ + c] * fp16_to_fp32(sc[c]);
                    cst[r] += q[(size_t)r * hd_ + c] * fp16_to_fp32(mn[c]);
                }
            kv_cmajor_scores(blk + 4 * hd_, bits_all_.data(), hd_, w.data(), n_rep, sb.data());
            const int lo = std::max(t0, b0), hi = std::min(qend, b0 + KV_BLOCK_TOKENS);
            for (int r = 0; r < n_rep; ++r)
                for (int t = lo; t < hi; ++t)
                    s[(size_t)r * ld + (t - t0)] = sb[(size_t)r * KV_BLOCK_TOKENS + (t - b0)] + cst[r];
        }
        for (int t = std::max(t0, stage0_); t < t1; ++t) {
            staged(h, t, x.data());
            kv_dot_rows(q, n_rep, hd_, x.data(), s + (t - t0), ld);
        }
    }

    void accumulate(int, const float*, int, int, int, int, float*) const override {
        throw error("affine keys hold keys only");
    }

    size_t bytes() const override {
        return (size_t)n_head_kv_ * n_blocks_ * blk_ + stage_.size() * sizeof(uint16_t);
    }

    // Part 0: the blocks [head][block] (those no store has filled are not
    // initialised); part 1: the staging area [head][32][dim] of halves.
    const uint8_t* packed_bytes(int part, size_t* n) const override {
        if (part == 0) {
            *n = (size_t)n_head_kv_ * n_blocks_ * blk_;
            return data_.get();
        }
        if (part == 1) {
            *n = stage_.size() * sizeof(uint16_t);
            return reinterpret_cast<const uint8_t*>(stage_.data());
        }
        return nullptr;
    }

    void decode(int pos, float* x) const override {
        for (int h = 0; h < n_head_kv_; ++h) {
            float* xh = x + (size_t)h * hd_;
            if (pos >= stage0_) {
                staged(h, pos, xh);
                continue;
            }
            const uint8_t* blk = block(h, pos / KV_BLOCK_TOKENS);
            const uint16_t* sc = reinterpret_cast<const uint16_t*>(blk);
            for (int c = 0; c < hd_; ++c)
                xh[c] = fp16_to_fp32(sc[hd_ + c]) +
                        fp16_to_fp32(sc[c]) * (float)kv_code_get(blk + 4 * hd_ + (size_t)c * kv_group_bytes(bits_),
                                                                 bits_, pos % KV_BLOCK_TOKENS);
        }
    }

private:
    uint8_t* block(int h, int b) const { return data_.get() + ((size_t)h * n_blocks_ + b) * blk_; }

    void staged(int h, int pos, float* x) const {
        const uint16_t* src = &stage_[((size_t)h * KV_BLOCK_TOKENS + (pos - stage0_)) * hd_];
        for (int d = 0; d < hd_; ++d) x[d] = fp16_to_fp32(src[d]);
    }

    void flush() {
        std::vector<float> xs((size_t)KV_BLOCK_TOKENS * hd_);
        for (int h = 0; h < n_head_kv_; ++h) {
            for (size_t i = 0; i < xs.size(); ++i)
                xs[i] = fp16_to_fp32(stage_[(size_t)h * KV_BLOCK_TOKENS * hd_ + i]);
            uint8_t* blk = block(h, stage0_ / KV_BLOCK_TOKENS);
            uint16_t* sc = reinterpret_cast<uint16_t*>(blk);
            for (int c = 0; c < hd_; ++c)
                kv_affine_quantize32(xs.data() + c, hd_, bits_, &sc[c], &sc[hd_ + c],
                                     blk + 4 * hd_ + (size_t)c * kv_group_bytes(bits_));
        }
        stage0_ += KV_BLOCK_TOKENS;
        n_stage_ = 0;
    }

    // Moves tokens [b0, pos) of the quantized block starting at b0 back into
    // the staging area.
    void unstage(int b0, int pos) {
        alignas(32) float x[32];
        for (int h = 0; h < n_head_kv_; ++h) {
            const uint8_t* blk = block(h, b0 / KV_BLOCK_TOKENS);
            const uint16_t* sc = reinterpret_cast<const uint16_t*>(blk);
            for (int c = 0; c < hd_; ++c) {
                kv_unpack32_f32(blk + 4 * hd_ + (size_t)c * kv_group_bytes(bits_), bits_, x);
                const float s = fp16_to_fp32(sc[c]), m = fp16_to_fp32(sc[hd_ + c]);
                for (int t = 0; t < pos - b0; ++t)
                    stage_[((size_t)h * KV_BLOCK_TOKENS + t) * hd_ + c] = fp32_to_fp16(m + s * x[t]);
            }
        }
        stage0_ = b0;
        n_stage_ = pos - b0;
    }

    int bits_, n_ctx_, n_head_kv_, hd_, n_blocks_;
    size_t blk_;
    std::unique_ptr<uint8_t[]> data_;
    std::vector<uint16_t> stage_;  // [head][KV_BLOCK_TOKENS][dim]
    std::vector<uint8_t> bits_all_;
    int stage0_ = 0;   // first position of the staging block
    int n_stage_ = 0;  // tokens in it
};

}  // namespace

std::vector<float> kv_random_signs(int n, uint32_t seed) {
    std::mt19937 rng(seed * 2654435761u + 12345u);
    std::vector<float> s(n);
    for (int i = 0; i < n; ++i) s[i] = (rng() >> 31) ? -1.0f : 1.0f;
    return s;
}

std::unique_ptr<kv_stream> kv_stream_create_quantized(const kv_type& t, bool is_key, int n_ctx,
                                                      int n_head_kv, int head_dim,
                                                      uint32_t seed) {
    if (t.kind == KV_KIND_AFFINE && is_key)
        return std::make_unique<kv_stream_affine_keys>(t.bits, n_ctx, n_head_kv, head_dim);
    return std::make_unique<kv_stream_tokens>(t, n_ctx, n_head_kv, head_dim, seed);
}

}  // namespace kvrt
