// kvrt._core.calibrate: the pca KV calibration (cpp/calibrate.h).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "calibrate.h"
#include "model.h"

void init_calib(nb::module_& m) {
    m.def(
        "calibrate",
        [](const std::string& model_path, const std::string& text, const std::string& out_path,
           int n_ctx, int n_threads, int max_tokens, int probe_tokens, float probe_bits,
           float default_bits, int rope_pairs, bool progress, int probe_window) {
            kvrt::calibrate_params p;
            p.n_ctx = n_ctx;
            p.n_threads = n_threads;
            p.max_tokens = max_tokens;
            p.probe_tokens = probe_tokens;
            p.probe_bits = probe_bits;
            p.probe_window = probe_window;
            p.default_bits = default_bits;
            p.rope_pairs = rope_pairs;
            p.progress = progress;
            kvrt::calibrate_result r;
            {
                nb::gil_scoped_release release;
                auto mdl = kvrt::model::load(model_path);
                const std::vector<int32_t> tokens = mdl->vocab().encode(text, true, false);
                r = kvrt::kv_calibrate(*mdl, tokens, p);
                kvrt::kv_calib_write(r.calib, out_path);
            }
            nb::dict d;
            d["n_tokens"] = r.n_tokens;
            d["seconds"] = r.seconds;
            d["probe_kl"] = r.probe_kl;
            d["probe_scale"] = r.probe_scale;
            return d;
        },
        nb::arg("model_path"), nb::arg("text"), nb::arg("out_path"), nb::arg("n_ctx") = 512,
        nb::arg("n_threads") = 0, nb::arg("max_tokens") = 4096, nb::arg("probe_tokens") = 128,
        nb::arg("probe_bits") = 2.0f, nb::arg("default_bits") = 3.0f,
        nb::arg("rope_pairs") = -1, nb::arg("progress") = true, nb::arg("probe_window") = 0,
        "Calibrates the pca KV format over `text` and writes the sidecar to out_path.");
}
