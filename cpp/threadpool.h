// Fixed-size pool of worker threads for data-parallel kernels.
//
// run(fn) calls fn(ith, nth) once on each of nth threads (the caller is
// thread 0) and returns when all have finished. Workers spin briefly between
// jobs because decode issues a few hundred short jobs per token, where a
// condition-variable wake-up (tens of microseconds) would dominate; after the
// spin they sleep, so an idle model costs no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace kvrt {

class thread_pool {
public:
    explicit thread_pool(int n_threads);
    ~thread_pool();
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    int size() const { return n_threads_; }

    template <class F>
    void run(F&& fn) {
        using Fn = std::remove_reference_t<F>;
        run_impl(&trampoline<Fn>, const_cast<void*>(static_cast<const void*>(&fn)));
    }

    // Number of threads to use when the user did not say: physical cores are
    // not visible portably, so all hardware threads, capped at 8.
    static int default_threads();

private:
    using job_fn = void (*)(void* ctx, int ith, int nth);
    template <class F>
    static void trampoline(void* ctx, int ith, int nth) {
        (*static_cast<F*>(ctx))(ith, nth);
    }
    void run_impl(job_fn fn, void* ctx);
    void worker_main(int ith);

    int n_threads_;
    std::vector<std::thread> workers_;
    job_fn job_ = nullptr;
    void* job_ctx_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> sleepers_{0};
    std::mutex mu_;
    std::condition_variable cv_;
};

// Splits [0, n) into nth nearly equal ranges; returns thread ith's range.
inline void split_range(int64_t n, int ith, int nth, int64_t* begin, int64_t* end) {
    const int64_t per = n / nth, extra = n % nth;
    *begin = ith * per + (ith < extra ? ith : extra);
    *end = *begin + per + (ith < extra ? 1 : 0);
}

}  // namespace kvrt
