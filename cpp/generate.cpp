#include "generate.h"

#include <algorithm>

#include "common.h"
#include "unicode.h"

namespace kvrt {

using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

const char* generate_stop_name(generate_stop s) {
    switch (s) {
        case GENERATE_STOP_NONE: return "none";
        case GENERATE_STOP_EOG: return "end of generation";
        case GENERATE_STOP_LENGTH: return "max tokens";
        case GENERATE_STOP_STRING: return "stop string";
        case GENERATE_STOP_CONTEXT: return "context full";
    }
    return "?";
}

size_t generate_utf8_complete(const std::string& s) {
    // Only the last three bytes can belong to an unfinished character.
    const size_t n = s.size();
    for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
        const unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        const size_t len = (c & 0xE0) == 0xC0   ? 2
                           : (c & 0xF0) == 0xE0 ? 3
                           : (c & 0xF8) == 0xF0 ? 4
                                                : 1;
        // A lead byte whose sequence is not finished yet: hold it and its
        // continuations. Anything else (complete, or ASCII, or invalid) goes.
        return len > back ? n - back : n;
    }
    return n;
}

std::string generate_utf8_sanitize(const std::string& s) {
    bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; });
    if (ascii) return s;
    std::string out;
    out.reserve(s.size());
    for (uint32_t cp : utf8_decode(s)) utf8_append(out, cp);
    return out;
}

size_t generate_stop_overlap(const std::string& text, const std::vector<std::string>& stop) {
    size_t best = 0;
    for (const auto& s : stop) {
        const size_t max_k = std::min(text.size(), s.size() - 1);
        for (size_t k = max_k; k > best; --k)
            if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

generator::generator(context& ctx, std::vector<int32_t> prompt, const generate_params& p)
    : ctx_(ctx), prompt_(std::move(prompt)), params_(p), sampler_(p.sampling) {
    params_.stop.erase(std::remove(params_.stop.begin(), params_.stop.end(), std::string()),
                       params_.stop.end());
    if (prompt_.empty()) throw error("the prompt is empty (no tokens)");
    const int room = ctx_.n_ctx() - ctx_.n_past();
    if ((long long)prompt_.size() > room)
        throw error("the prompt is " + std::to_string(prompt_.size()) +
                    " tokens but the context has room for " + std::to_string(room) +
                    " (raise -c / n_ctx)");
    if (params_.max_tokens < -1) throw error("max tokens must be >= -1");
    logits_.resize((size_t)ctx_.mdl().hp().n_vocab);
    for (int32_t id : prompt_) sampler_.accept(id);
    if (params_.max_tokens == 0) stop_ = GENERATE_STOP_LENGTH;
}

bool generator::release_text(std::string& out) {
    const size_t complete = generate_utf8_complete(bytes_);
    text_ += generate_utf8_sanitize(bytes_.substr(0, complete));
    bytes_.erase(0, complete);
    // Any match starts inside text_: earlier text was only released once it
    // could no longer begin a stop string.
    size_t first = std::string::npos;
    for (const auto& s : params_.stop) first = std::min(first, text_.find(s));
    if (first != std::string::npos) {
        out += text_.substr(0, first);
        text_.clear();
        return true;
    }
    const size_t hold = generate_stop_overlap(text_, params_.stop);
    out += text_.substr(0, text_.size() - hold);
    text_.erase(0, text_.size() - hold);
    return false;
}

void generator::finish(generate_stop why, std::string& out) {
    stop_ = why;
    // Nothing more will come: the held text is final, and a character left
    // incomplete shows as U+FFFD rather than as invalid bytes.
    if (!bytes_.empty()) text_ += generate_utf8_sanitize(bytes_);
    bytes_.clear();
    out += text_;
    text_.clear();
}

bool generator::next(std::string& out) {
    if (done()) return false;
    const int n_vocab = (int)logits_.size();
    auto t0 = clock_type::now();
    if (!prefilled_) {
        ctx_.eval(prompt_.data(), (int)prompt_.size(), logits_.data(), 1);
        prefilled_ = true;
    } else {
        if (ctx_.n_past() >= ctx_.n_ctx()) {
            finish(GENERATE_STOP_CONTEXT, out);
            return false;
        }
        ctx_.eval(&generated_.back(), 1, logits_.data(), 1);
    }
    const int32_t id = sampler_.sample(logits_.data(), n_vocab);
    sampler_.accept(id);
    if (generated_.empty()) {
        stats_.n_prompt = (int)prompt_.size();
        stats_.t_prompt = seconds_since(t0);
    } else {
        stats_.n_decode += 1;
        stats_.t_decode += seconds_since(t0);
    }
    generated_.push_back(id);

    const tokenizer& tok = ctx_.mdl().vocab();
    if (tok.is_eog(id)) {
        finish(GENERATE_STOP_EOG, out);
        return false;
    }
    bytes_ += tok.token_to_piece(id);
    if (release_text(out)) {
        bytes_.clear();
        stop_ = GENERATE_STOP_STRING;
        return false;
    }
    if (params_.max_tokens >= 0 && (int)generated_.size() >= params_.max_tokens) {
        finish(GENERATE_STOP_LENGTH, out);
        return false;
    }
    return true;
}

}  // namespace kvrt
