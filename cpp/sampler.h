// Token sampling with llama.cpp's default chain and defaults:
//
//   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw
//
// (llama.cpp's common_sampler order, without the samplers it leaves off by
// default: DRY, typical-p, XTC, top-n-sigma.) temperature <= 0 is greedy: the
// argmax after the penalty, as llama.cpp does.
//
// The draw uses std::mt19937 and an inverse-CDF walk written here, not
// std::uniform_real_distribution or std::discrete_distribution, whose
// algorithms differ between standard libraries: the same seed and settings
// give the same tokens with any compiler.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace kvrt {

struct sampler_params {
    float temperature = 0.8f;     // <= 0: greedy
    int top_k = 40;               // <= 0: off
    float top_p = 0.95f;          // >= 1: off
    float min_p = 0.05f;          // <= 0: off
    float repeat_penalty = 1.0f;  // 1: off
    int repeat_last_n = 64;       // 0: off, -1: the whole history kept
    uint32_t seed = 0;
    bool seed_random = true;  // draw the seed from std::random_device
};

struct sampler_candidate {
    int32_t id;
    float logit;
    float p;  // filled by the softmax step
};

class sampler {
public:
    explicit sampler(const sampler_params& p);

    // Picks the next token from a row of n_vocab logits.
    int32_t sample(const float* logits, int n_vocab);
    // Records a token in the penalty history (prompt and generated tokens).
    void accept(int32_t id);

    uint32_t seed() const { return seed_; }
    const sampler_params& params() const { return params_; }

private:
    sampler_params params_;
    uint32_t seed_;
    std::mt19937 rng_;
    std::deque<int32_t> history_;          // last repeat_last_n accepted tokens
    std::vector<sampler_candidate> cand_;  // reused between calls
};

// The chain's steps, each on candidates sorted or not as noted; exposed for
// tests. They keep at least one candidate.
void sampler_apply_repeat_penalty(std::vector<sampler_candidate>& c,
                                  const std::deque<int32_t>& history, float penalty);
// Leaves the k largest logits, sorted descending.
void sampler_apply_top_k(std::vector<sampler_candidate>& c, int k);
// Sorts descending and fills p with the softmax of the logits.
void sampler_softmax(std::vector<sampler_candidate>& c);
void sampler_apply_top_p(std::vector<sampler_candidate>& c, float top_p);
void sampler_apply_min_p(std::vector<sampler_candidate>& c, float min_p);
// A uniform double in [0, 1) from two 32-bit draws (53 random bits).
double sampler_uniform(std::mt19937& rng);
// Index drawn from c by its p (need not sum to 1).
size_t sampler_draw(const std::vector<sampler_candidate>& c, std::mt19937& rng);

}  // namespace kvrt
