#include "threadpool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define KVRT_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define KVRT_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define KVRT_CPU_RELAX() ((void)0)
#endif

namespace kvrt {

// Spin this long for the next job before sleeping.
static constexpr auto kSpinTime = std::chrono::microseconds(2000);

thread_pool::thread_pool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

int thread_pool::default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(std::min(n, 8u));
}

void thread_pool::run_impl(job_fn fn, void* ctx) {
    if (n_threads_ == 1) {
        fn(ctx, 0, 1);
        return;
    }
    job_ = fn;
    job_ctx_ = ctx;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    {
        // Publishing under the lock pairs with the sleepers' predicate check,
        // so a worker cannot miss the wake-up between its check and its wait.
        std::lock_guard<std::mutex> lock(mu_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    fn(ctx, 0, n_threads_);
    // Yielding now and then keeps an oversubscribed machine (more runnable
    // threads than cores) from stalling on a descheduled worker.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        KVRT_CPU_RELAX();
        if (spins % 256 == 255) std::this_thread::yield();
    }
}

void thread_pool::worker_main(int ith) {
    uint64_t seen = 0;
    for (;;) {
        auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
        uint64_t gen;
        int spins = 0;
        while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
            KVRT_CPU_RELAX();
            if (++spins % 256 != 0) continue;
            std::this_thread::yield();
            if (std::chrono::steady_clock::now() > spin_until) {
                std::unique_lock<std::mutex> lock(mu_);
                sleepers_.fetch_add(1);
                cv_.wait(lock, [&] { return generation_.load() != seen; });
                sleepers_.fetch_sub(1);
            }
        }
        seen = gen;
        if (stop_.load()) return;
        job_(job_ctx_, ith, n_threads_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace kvrt
