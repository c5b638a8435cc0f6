#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace kvrt {

sampler::sampler(const sampler_params& p) : params_(p) {
    seed_ = p.seed_random ? std::random_device{}() : p.seed;
    rng_.seed(seed_);
}

void sampler::accept(int32_t id) {
    if (params_.repeat_last_n == 0) return;
    history_.push_back(id);
    if (params_.repeat_last_n > 0)
        while ((int)history_.size() > params_.repeat_last_n) history_.pop_front();
}

void sampler_apply_repeat_penalty(std::vector<sampler_candidate>& c,
                                  const std::deque<int32_t>& history, float penalty) {
    if (penalty == 1.0f || history.empty()) return;
    // llama.cpp penalises each distinct token once, however often it
    // appeared; candidates are still indexed by id here.
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
        if (id < 0 || (size_t)id >= c.size() || c[id].id != id) continue;
        float& l = c[id].logit;
        // Dividing a negative logit would raise it; llama.cpp multiplies.
        l = l <= 0 ? l * penalty : l / penalty;
    }
}

static bool by_logit_desc(const sampler_candidate& a, const sampler_candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

void sampler_apply_top_k(std::vector<sampler_candidate>& c, int k) {
    if (k <= 0 || (size_t)k >= c.size()) {
        std::sort(c.begin(), c.end(), by_logit_desc);
        return;
    }
    // partial_sort: O(n log k) over a 50k-150k vocabulary instead of a full sort.
    std::partial_sort(c.begin(), c.begin() + k, c.end(), by_logit_desc);
    c.resize(k);
}

void sampler_softmax(std::vector<sampler_candidate>& c) {
    if (!std::is_sorted(c.begin(), c.end(), by_logit_desc))
        std::sort(c.begin(), c.end(), by_logit_desc);
    const float max_l = c.front().logit;
    double sum = 0;
    for (auto& x : c) {
        x.p = std::exp(x.logit - max_l);
        sum += x.p;
    }
    for (auto& x : c) x.p = (float)(x.p / sum);
}

void sampler_apply_top_p(std::vector<sampler_candidate>& c, float top_p) {
    if (top_p >= 1.0f) return;
    sampler_softmax(c);
    // Keep the smallest prefix whose mass reaches top_p (llama.cpp: the token
    // that crosses the threshold is kept).
    double cum = 0;
    size_t keep = c.size();
    for (size_t i = 0; i < c.size(); ++i) {
        cum += c[i].p;
        if (cum >= top_p) {
            keep = i + 1;
            break;
        }
    }
    c.resize(std::max<size_t>(keep, 1));
}

void sampler_apply_min_p(std::vector<sampler_candidate>& c, float min_p) {
    if (min_p <= 0.0f || c.empty()) return;
    // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); in logit
    // space so no softmax is needed (llama.cpp does the same).
    float max_l = c.front().logit;
    for (const auto& x : c) max_l = std::max(max_l, x.logit);
    const float threshold = max_l + std::log(min_p);
    std::vector<sampler_candidate> kept;
    kept.reserve(c.size());
    for (const auto& x : c)
        if (x.logit >= threshold) kept.push_back(x);
    if (!kept.empty()) c.swap(kept);
}

double sampler_uniform(std::mt19937& rng) {
    const uint64_t a = rng() >> 5, b = rng() >> 6;  // 27 + 26 bits
    return (double)(a * 67108864ull + b) / 9007199254740992.0;
}

size_t sampler_draw(const std::vector<sampler_candidate>& c, std::mt19937& rng) {
    double total = 0;
    for (const auto& x : c) total += x.p;
    const double u = sampler_uniform(rng) * total;
    double cum = 0;
    for (size_t i = 0; i < c.size(); ++i) {
        cum += c[i].p;
        if (u < cum) return i;
    }
    return c.size() - 1;  // rounding left u at the very top
}

int32_t sampler::sample(const float* logits, int n_vocab) {
    cand_.resize(n_vocab);
    for (int i = 0; i < n_vocab; ++i) cand_[i] = {i, logits[i], 0.0f};
    sampler_apply_repeat_penalty(cand_, history_, params_.repeat_penalty);

    if (params_.temperature <= 0.0f) {
        size_t best = 0;
        for (size_t i = 1; i < cand_.size(); ++i)
            if (cand_[i].logit > cand_[best].logit) best = i;
        return cand_[best].id;
    }
    sampler_apply_top_k(cand_, params_.top_k);
    sampler_apply_top_p(cand_, params_.top_p);
    sampler_apply_min_p(cand_, params_.min_p);
    for (auto& x : cand_) x.logit /= params_.temperature;
    sampler_softmax(cand_);
    return cand_[sampler_draw(cand_, rng_)].id;
}

}  // namespace kvrt
