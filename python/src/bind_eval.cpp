// kvrt._core.eval_compare: quality of KV cache formats against a reference
// (cpp/eval.h), and eval_kl for tests.
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "eval.h"

namespace {

using floats_out = nb::ndarray<nb::numpy, float, nb::ndim<1>>;
using logits_in = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// Concatenated per-chunk rows as one float32 array (n_chunks * n_scored).
floats_out flat(const std::vector<std::vector<float>>& rows) {
    size_t n = 0;
    for (const auto& r : rows) n += r.size();
    float* buf = new float[n ? n : 1];
    size_t at = 0;
    for (const auto& r : rows)
        for (float x : r) buf[at++] = x;
    nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    return floats_out(buf, {n}, owner);
}

nb::dict to_dict(const kvrt::eval_result& r) {
    nb::dict d;
    d["spec"] = r.spec;
    d["format"] = r.format;
    d["kv_bytes"] = r.kv_bytes;
    d["bits_per_element"] = r.bits_per_element;
    d["bytes_per_token"] = r.bytes_per_token;
    d["n_chunks"] = r.n_chunks;
    d["n_scored"] = r.n_scored;
    d["ppl"] = r.ppl;
    d["ppl_err"] = r.ppl_err;
    d["kl_mean"] = r.kl_mean;
    d["kl_max"] = r.kl_max;
    d["top1"] = r.top1;
    d["attn_rel_err"] = r.attn_rel_err;
    d["logp"] = flat(r.logp);
    d["kl"] = flat(r.kl);
    return d;
}

}  // namespace

void init_eval(nb::module_& m) {
    m.def(
        "eval_compare",
        [](const std::string& path, const std::vector<int32_t>& tokens, int n_ctx, int n_chunks,
           const std::vector<std::string>& specs, const std::string& reference, int n_threads,
           int n_batch, std::function<void(int, int)> progress, const std::string& kv_calib) {
            kvrt::eval_params p;
            p.n_ctx = n_ctx;
            p.n_chunks = n_chunks;
            p.n_threads = n_threads;
            p.n_batch = n_batch;
            p.reference = reference;
            p.kv_calib = kv_calib;
            kvrt::eval_report rep;
            {
                nb::gil_scoped_release release;
                auto model = kvrt::model::load(path);
                std::function<void(int, int)> cb;
                if (progress)
                    cb = [&](int c, int i) {
                        nb::gil_scoped_acquire acquire;
                        progress(c, i);
                    };
                rep = kvrt::eval_compare(*model, tokens, p, specs, cb);
            }
            nb::dict d;
            d["reference"] = to_dict(rep.reference);
            nb::list formats;
            for (const auto& r : rep.formats) formats.append(to_dict(r));
            d["formats"] = formats;
            return d;
        },
        nb::arg("path"), nb::arg("tokens"), nb::arg("n_ctx"), nb::arg("n_chunks"), nb::arg("specs"),
        nb::arg("reference") = "f16", nb::arg("n_threads") = 0, nb::arg("n_batch") = 512,
        nb::arg("progress").none() = nb::none(), nb::arg("kv_calib") = "",
        "Quality of KV cache formats against a reference format over llama-perplexity's chunks.");
    m.def(
        "eval_kl",
        [](logits_in ref, logits_in test) {
            if (ref.shape(0) != test.shape(0) || ref.shape(1) != test.shape(1) || ref.shape(1) == 0)
                throw kvrt::error("eval_kl: the logit arrays differ in shape");
            const int n = (int)ref.shape(0), v = (int)ref.shape(1);
            float* buf = new float[n ? n : 1];
            nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
            for (int i = 0; i < n; ++i)
                buf[i] = (float)kvrt::eval_kl_row(ref.data() + (size_t)i * v,
                                                  test.data() + (size_t)i * v, v, nullptr);
            return floats_out(buf, {(size_t)n}, owner);
        },
        nb::arg("ref"), nb::arg("test"), "KL(ref || test) per row of two logit arrays.");
}
