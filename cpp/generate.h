// Text generation: prefill a prompt, then sample and decode one token at a
// time, handing back text as it becomes safe to show.
//
// Text is held back in two cases, so that what the caller prints never has
// to be taken back:
//  - bytes of a UTF-8 character split across tokens (byte-fallback tokens
//    carry single bytes of one character) until the character is complete;
//  - a tail that could be the beginning of a stop string, until it is not.
// Everything emitted is valid UTF-8 (stray invalid bytes become U+FFFD).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "context.h"
#include "sampler.h"

namespace kvrt {

enum generate_stop {
    GENERATE_STOP_NONE,     // still running
    GENERATE_STOP_EOG,      // the model produced an end-of-generation token
    GENERATE_STOP_LENGTH,   // max tokens reached
    GENERATE_STOP_STRING,   // a stop string appeared (not emitted)
    GENERATE_STOP_CONTEXT,  // the context is full
};
const char* generate_stop_name(generate_stop s);

struct generate_params {
    int max_tokens = 128;  // -1: until the context is full
    sampler_params sampling;
    std::vector<std::string> stop;
};

struct generate_stats {
    int n_prompt = 0;
    double t_prompt = 0;  // seconds: prompt eval + first sample
    int n_decode = 0;     // single-token forward passes after the prompt
    double t_decode = 0;  // seconds of those passes + their sampling
    double prompt_tps() const { return t_prompt > 0 ? n_prompt / t_prompt : 0; }
    double decode_tps() const { return t_decode > 0 ? n_decode / t_decode : 0; }
};

class generator {
public:
    // Evaluates from ctx.n_past() on (callers reset the context first when
    // they want a fresh one). Throws kvrt::error for an empty prompt or one
    // that does not fit the context. Nothing is computed until next().
    generator(context& ctx, std::vector<int32_t> prompt, const generate_params& p);

    // Runs one step (the prefill on the first call) and appends the text that
    // became safe to show to `out` (possibly nothing). Returns false once
    // generation has stopped; the last text is appended by that call.
    bool next(std::string& out);

    bool done() const { return stop_ != GENERATE_STOP_NONE; }
    generate_stop stop_reason() const { return stop_; }
    const std::vector<int32_t>& tokens() const { return generated_; }  // sampled ids
    const generate_stats& stats() const { return stats_; }
    uint32_t seed() const { return sampler_.seed(); }

private:
    void finish(generate_stop why, std::string& out);
    // Moves complete characters from bytes_ into text_, then what cannot
    // start a stop string from text_ into out. Returns true on a stop string.
    bool release_text(std::string& out);

    context& ctx_;
    std::vector<int32_t> prompt_;
    generate_params params_;
    sampler sampler_;
    std::vector<float> logits_;
    std::vector<int32_t> generated_;
    std::string bytes_;  // decoded bytes not yet a complete character
    std::string text_;   // complete text held back for the stop strings
    generate_stop stop_ = GENERATE_STOP_NONE;
    bool prefilled_ = false;
    generate_stats stats_;
};

// Length of the longest prefix of s that does not end inside an incomplete
// (but so far valid) UTF-8 sequence.
size_t generate_utf8_complete(const std::string& s);
// s with invalid UTF-8 bytes replaced by U+FFFD.
std::string generate_utf8_sanitize(const std::string& s);
// Length of the longest suffix of text that is a proper prefix of a stop string.
size_t generate_stop_overlap(const std::string& text, const std::vector<std::string>& stop);

}  // namespace kvrt
