// The CUDA entry points of gpu_forward.h for builds without CUDA
// (KVRT_CUDA=OFF): each throws the same one-line error.
#include "common.h"
#include "gpu_forward.h"

namespace kvrt {

namespace {

const char kNoCuda[] = "kvrt was built without CUDA (rebuild with CMAKE_ARGS=-DKVRT_CUDA=ON)";

[[noreturn]] void no_cuda() { throw error(kNoCuda); }

}  // namespace

bool gpu_available(std::string* why) {
    if (why) *why = kNoCuda;
    return false;
}

std::unique_ptr<gpu_forward> gpu_forward_create(const model&, int, int, kv_type, kv_type, int,
                                                const kv_cache*) {
    no_cuda();
}

std::vector<float> gpu_test_matmul(ggml_type, const uint8_t*, int64_t, int64_t, const float*, int,
                                   int) {
    no_cuda();
}

std::vector<uint8_t> gpu_test_q16_fused(int, const float*, const float*, int64_t, int64_t, float) {
    no_cuda();
}

std::vector<float> gpu_test_rms_norm(const float*, const float*, int64_t, int64_t, float) {
    no_cuda();
}

std::vector<float> gpu_test_rope(const model&, const float*, int, int, int) { no_cuda(); }

std::vector<float> gpu_test_swiglu(const float*, const float*, int64_t) { no_cuda(); }

std::vector<uint8_t> gpu_test_kv_encode(kv_type, const float*, int, int, int, bool) { no_cuda(); }

std::vector<uint8_t> gpu_test_kv_encode_affine_keys(kv_type, int, int, int,
                                                    const std::vector<std::pair<int, int>>&, const float*) {
    no_cuda();
}

std::vector<uint8_t> gpu_test_kv_encode_pca(const std::vector<kv_pca_head>&, int,
                                            const std::vector<std::pair<int, int>>&, const float*) {
    no_cuda();
}

std::vector<float> gpu_test_attention_pca(const std::vector<kv_pca_head>&,
                                          const std::vector<kv_pca_head>&, const float*,
                                          const float*, const float*, int, int, int, int, int, int) {
    no_cuda();
}

std::vector<float> gpu_test_attention(kv_type, kv_type, const float*, const float*, const float*,
                                      int, int, int, int, int, int) {
    no_cuda();
}

}  // namespace kvrt
