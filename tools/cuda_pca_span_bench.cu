// Decode attention over the pca KV format on the GPU: the span kernel alone
// and the whole call (query turned, span, merge) for one token at the 1B and
// 8B bench shapes' heads, at long contexts. Codes and scales are random bytes
// (speed does not depend on them), the channels' bits a 3-bit average; each
// launch reads another layer's streams, more of them than fit in L2. Prints
// microseconds and the streams' bytes per second. A benchmark, not part of
// the build (-I picks the kv_pca.cu it times):
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icpp -Icuda tools/cuda_pca_span_bench.cu cuda/attention.cu \
//        cuda/matmul.cu cuda/rms_norm.cu cuda/rope.cu cuda/swiglu.cu cuda/kv_encode.cu -o /tmp/span && /tmp/span
#include "kv_pca.cu"  // through -Icuda

#include <cstdio>
#include <memory>
#include <random>

using namespace kvrt;

namespace {

// A head's calibration with bits averaging 3 (more on the leading channels)
// and every rotary pair's mean non-zero.
kv_pca_head bench_head(int hd, bool key, std::mt19937& rng) {
    std::normal_distribution<float> nd;
    kv_pca_head h;
    h.mean.assign(hd, 0.0f);
    h.basis.assign((size_t)hd * hd, 0.0f);
    for (int c = 0; c < hd; ++c) h.basis[(size_t)c * hd + c] = 1.0f;
    h.sigma.assign(hd, 1.0f);
    h.bits.resize(hd);
    for (int c = 0; c < hd; ++c) h.bits[c] = c < hd / 8 ? 6 : c < 3 * hd / 8 ? 4 : c < 3 * hd / 4 ? 2 : 1;
    h.lo.assign(hd, -1.0f);
    h.step.assign(hd, 0.1f);
    if (key) {
        h.rope_mean.resize(hd);
        for (float& x : h.rope_mean) x = nd(rng);
        for (int i = 0; i < hd / 2; ++i) h.rope_freq.push_back(std::pow(500000.0f, -2.0f * i / hd));
    }
    return h;
}

struct layer {
    std::unique_ptr<cuda_pca_stream> k, v;
};

void run(const char* name, int n_head, int n_head_kv, int hd, int len, int n_layers, int iters) {
    std::mt19937 rng(1);
    std::vector<kv_pca_head> hk, hv;
    for (int h = 0; h < n_head_kv; ++h) {
        hk.push_back(bench_head(hd, true, rng));
        hv.push_back(bench_head(hd, false, rng));
    }
    std::vector<layer> layers(n_layers);
    std::vector<uint8_t> junk;
    size_t code_bytes = 0;
    for (layer& L : layers) {
        L.k = std::make_unique<cuda_pca_stream>(hk, len);
        L.v = std::make_unique<cuda_pca_stream>(hv, len);
        for (const cuda_pca_stream* s : {L.k.get(), L.v.get()}) {
            junk.resize(s->code_bytes() + s->scale_bytes());
            for (auto& b : junk) b = (uint8_t)(rng() & 0x7f);  // scales below 2^4
            cuda_pca p = s->view().pca;
            KVRT_CUDA_CHECK(cudaMemcpy(p.codes, junk.data(), s->code_bytes(), cudaMemcpyHostToDevice));
            KVRT_CUDA_CHECK(cudaMemcpy(p.scale, junk.data() + s->code_bytes(), s->scale_bytes(),
                                       cudaMemcpyHostToDevice));
        }
        code_bytes = L.k->code_bytes() + L.k->scale_bytes() + L.v->code_bytes() + L.v->scale_bytes();
    }
    int n_sm = 1;
    KVRT_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0));
    cuda_attn_params ap;
    ap.n_head = n_head;
    ap.n_head_kv = n_head_kv;
    ap.head_dim = hd;
    ap.sliding_window = 0;
    std::vector<float> q((size_t)n_head * hd);
    std::normal_distribution<float> nd;
    for (float& x : q) x = nd(rng);
    float *dq, *dout, *part, *qprep;
    KVRT_CUDA_CHECK(cudaMalloc(&dq, q.size() * 4));
    KVRT_CUDA_CHECK(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    KVRT_CUDA_CHECK(cudaMalloc(&dout, q.size() * 4));
    KVRT_CUDA_CHECK(cudaMalloc(&part, cuda_attention_partial_floats(ap, 1, len, n_sm, true) * 4));
    KVRT_CUDA_CHECK(cudaMalloc(&qprep, cuda_attention_pca_qprep_floats(1, n_head, hd) * 4));
    cudaStream_t s;
    KVRT_CUDA_CHECK(cudaStreamCreate(&s));
    const int pos0 = len - 1;
    // The span launch as cuda_attention_pca makes it, qprep from one call.
    auto span_of = [&](const layer& L) {
        return span_args(L.k->view().pca, L.v->view().pca, qprep, n_head, 0, pos0, nullptr, 1, len, n_sm, part);
    };
    cuda_attention_pca(layers[0].k->view(), layers[0].v->view(), dq, 1, pos0, n_head, 0, dout, part, qprep, n_sm,
                       s, nullptr, 0);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float us[2];
    for (int mode = 0; mode < 2; ++mode) {
        for (int w = 0; w < 2; ++w) {
            KVRT_CUDA_CHECK(cudaEventRecord(e0, s));
            for (int it = 0; it < iters; ++it) {
                const layer& L = layers[it % n_layers];
                if (mode == 0) launch_span(span_of(L), s);
                else
                    cuda_attention_pca(L.k->view(), L.v->view(), dq, 1, pos0, n_head, 0, dout, part, qprep, n_sm,
                                       s, nullptr, 0);
            }
            KVRT_CUDA_CHECK(cudaEventRecord(e1, s));
            KVRT_CUDA_CHECK(cudaEventSynchronize(e1));
        }
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, e0, e1);
        us[mode] = 1000.0f * ms / iters;
    }
    std::printf("| %s | %d | %d | %d | %.1f | %.2f | %.1f | %.2f |\n", name, hd, len, span_of(layers[0]).n_split,
                us[0], code_bytes / us[0] / 1e6, us[1], code_bytes / us[1] / 1e6);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(part);
    cudaFree(qprep);
    cudaStreamDestroy(s);
}

}  // namespace

int main() {
    std::printf("| shape | head_dim | context | splits | span us | TB/s | call us | TB/s |\n");
    std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    run("8B", 32, 8, 128, 32768, 8, 64);
    run("8B", 32, 8, 128, 8192, 16, 128);
    run("1B", 32, 8, 64, 131072, 8, 64);
    run("1B", 32, 8, 64, 32768, 16, 128);
    return 0;
}
