// kvrt._core.Model: a loaded model with one inference context.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "context.h"
#include "generate.h"
#include "perplexity.h"

namespace {

struct py_model {
    std::unique_ptr<kvrt::model> model;
    std::unique_ptr<kvrt::context> ctx;
    // Bumped by each generate call: an older generator still held by Python
    // must not write into a context a newer one is using.
    uint64_t generation = 0;

    py_model(const std::string& path, int n_ctx, int n_threads, int n_batch,
             const std::string& type_k, const std::string& type_v, const std::string& kv_calib,
             const std::string& device) {
        kvrt::context_params p;
        p.n_ctx = n_ctx;
        p.n_threads = n_threads;
        p.n_batch = n_batch;
        p.type_k = kvrt::kv_type_from_name(type_k);
        p.type_v = kvrt::kv_type_from_name(type_v);
        p.kv_calib = kv_calib;
        p.device = kvrt::device_from_name(device);
        nb::gil_scoped_release release;
        model = kvrt::model::load(path);
        ctx = std::make_unique<kvrt::context>(*model, p);
    }
};

// The kv_* methods read the CPU cache; a CUDA context keeps its cache on the GPU.
void check_layer(py_model& s, int layer) {
    if (s.ctx->device() == kvrt::DEVICE_CUDA)
        throw kvrt::error("kv_decode / kv_scores / kv_mix read the CPU cache: load the model with "
                          "device=\"cpu\"");
    if (layer < 0 || layer >= s.model->hp().n_layer)
        throw kvrt::error("layer " + std::to_string(layer) + " out of range");
}

// One generate call. Holds the model alive (keep_alive in the binding).
struct py_generator {
    py_model& owner;
    uint64_t generation;
    kvrt::generator gen;

    // Each generate call starts from an empty cache: a previous call that
    // was interrupted (KeyboardInterrupt) leaves nothing behind. A chat turn
    // keeps the first n_keep cached tokens, the prefix its prompt shares.
    static kvrt::context& fresh_context(py_model& m, int n_keep) {
        m.ctx->truncate(n_keep);
        return *m.ctx;
    }

    py_generator(py_model& m, std::vector<int32_t> prompt, const kvrt::generate_params& p,
                 int n_keep)
        : owner(m),
          generation(++m.generation),
          gen(fresh_context(m, n_keep), std::move(prompt), p) {}

    // The next non-empty piece of text, or None when generation has stopped.
    // The GIL is released while the model runs, so Ctrl-C is seen between
    // tokens and other Python threads keep running.
    nb::object next() {
        if (owner.generation != generation)
            throw kvrt::error("this generation was superseded by a later generate call");
        std::string piece;
        {
            nb::gil_scoped_release release;
            while (piece.empty() && gen.next(piece)) {
            }
        }
        if (piece.empty()) return nb::none();
        PyObject* o = PyUnicode_DecodeUTF8(piece.data(), (Py_ssize_t)piece.size(), "replace");
        if (!o) throw nb::python_error();
        return nb::steal(o);
    }
};

using logits_array = nb::ndarray<nb::numpy, float, nb::ndim<2>>;

}  // namespace

void init_model(nb::module_& m) {
    nb::class_<py_generator>(m, "Generator")
        .def("next", &py_generator::next)
        .def_prop_ro("tokens", [](const py_generator& g) { return g.gen.tokens(); })
        .def_prop_ro("done", [](const py_generator& g) { return g.gen.done(); })
        .def_prop_ro("seed", [](const py_generator& g) { return g.gen.seed(); })
        .def_prop_ro("stop_reason",
                     [](const py_generator& g) {
                         return std::string(kvrt::generate_stop_name(g.gen.stop_reason()));
                     })
        .def_prop_ro("stats", [](const py_generator& g) {
            const kvrt::generate_stats& st = g.gen.stats();
            nb::dict d;
            d["n_prompt"] = st.n_prompt;
            d["prompt_seconds"] = st.t_prompt;
            d["prompt_tokens_per_s"] = st.prompt_tps();
            d["n_decode"] = st.n_decode;
            d["decode_seconds"] = st.t_decode;
            d["decode_tokens_per_s"] = st.decode_tps();
            return d;
        });

    nb::class_<py_model>(m, "Model")
        .def(nb::init<const std::string&, int, int, int, const std::string&, const std::string&,
                      const std::string&, const std::string&>(),
             nb::arg("path"), nb::arg("n_ctx") = 0, nb::arg("n_threads") = 0,
             nb::arg("n_batch") = 512, nb::arg("type_k") = "f16", nb::arg("type_v") = "f16",
             nb::arg("kv_calib") = "", nb::arg("device") = "cpu")
        // The cache as its format reproduces it, and the two halves of
        // attention over the packed data, for tests against the decoded cache.
        .def("kv_decode",
             [](py_model& s, int layer, bool is_value) {
                 const auto& hp = s.model->hp();
                 check_layer(s, layer);
                 const size_t n = (size_t)s.ctx->n_past(), w = (size_t)hp.n_head_kv * hp.head_dim;
                 float* buf = new float[std::max<size_t>(1, n * w)];
                 nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 kvrt::kv_cache& kv = s.ctx->kv_mutable();
                 const kvrt::kv_stream& st = is_value ? kv.values(layer) : kv.keys(layer);
                 for (size_t t = 0; t < n; ++t) st.decode((int)t, buf + t * w);
                 return logits_array(buf, {n, w}, owner);
             },
             nb::arg("layer"), nb::arg("is_value"))
        .def("kv_scores",
             [](py_model& s, int layer, int head, const std::vector<float>& q) {
                 const auto& hp = s.model->hp();
                 check_layer(s, layer);
                 const int n_rep = (int)(q.size() / hp.head_dim), n = s.ctx->n_past();
                 if (head < 0 || head >= hp.n_head_kv || n_rep < 1 ||
                     q.size() != (size_t)n_rep * hp.head_dim || n < 1)
                     throw kvrt::error("kv_scores: bad head, query size or empty cache");
                 float* buf = new float[(size_t)n_rep * n];
                 nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 s.ctx->kv_mutable().keys(layer).scores(head, q.data(), n_rep, 0, n, buf, n);
                 return logits_array(buf, {(size_t)n_rep, (size_t)n}, owner);
             },
             nb::arg("layer"), nb::arg("head"), nb::arg("q"))
        .def("kv_mix",
             [](py_model& s, int layer, int head, const std::vector<float>& p, int n_rep) {
                 const auto& hp = s.model->hp();
                 check_layer(s, layer);
                 const int n = s.ctx->n_past(), hd = hp.head_dim;
                 if (head < 0 || head >= hp.n_head_kv || n_rep < 1 || n < 1 ||
                     p.size() != (size_t)n_rep * n)
                     throw kvrt::error("kv_mix: bad head, weights size or empty cache");
                 float* buf = new float[(size_t)n_rep * hd]();
                 nb::capsule owner(buf, [](void* q) noexcept { delete[] static_cast<float*>(q); });
                 const kvrt::kv_stream& v = s.ctx->kv_mutable().values(layer);
                 v.accumulate(head, p.data(), n_rep, 0, n, n, buf);
                 for (int r = 0; r < n_rep; ++r) v.finish(head, buf + (size_t)r * hd);
                 return logits_array(buf, {(size_t)n_rep, (size_t)hd}, owner);
             },
             nb::arg("layer"), nb::arg("head"), nb::arg("p"), nb::arg("n_rep"))
        .def_prop_ro("kv_format", [](const py_model& s) { return s.ctx->kv().format_name(); })
        .def("tokenize",
             [](const py_model& s, const std::string& text, bool add_special, bool parse_special) {
                 nb::gil_scoped_release release;
                 return s.model->vocab().encode(text, add_special, parse_special);
             },
             nb::arg("text"), nb::arg("add_special") = true, nb::arg("parse_special") = false)
        .def("detokenize",
             [](const py_model& s, const std::vector<int32_t>& ids, bool render_special) {
                 std::string bytes = s.model->vocab().decode(ids, render_special);
                 PyObject* o = PyUnicode_DecodeUTF8(bytes.data(), (Py_ssize_t)bytes.size(), "replace");
                 if (!o) throw nb::python_error();
                 return nb::steal<nb::str>(o);
             },
             nb::arg("ids"), nb::arg("render_special") = false)
        .def("eval",
             [](py_model& s, const std::vector<int32_t>& tokens, bool logits_all) {
                 const size_t n_vocab = (size_t)s.model->hp().n_vocab;
                 if (tokens.empty()) throw kvrt::error("eval: no tokens given");
                 const size_t n_out = logits_all ? tokens.size() : 1;
                 float* buf = new float[n_out * n_vocab];
                 nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 {
                     nb::gil_scoped_release release;
                     s.ctx->eval(tokens.data(), (int)tokens.size(), buf, (int)n_out);
                 }
                 return logits_array(buf, {n_out, n_vocab}, owner);
             },
             nb::arg("tokens"), nb::arg("logits_all") = true)
        .def("generator",
             [](py_model& s, const std::vector<int32_t>& prompt, int max_tokens,
                float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                int repeat_last_n, int64_t seed, const std::vector<std::string>& stop,
                int n_keep) {
                 kvrt::generate_params p;
                 p.max_tokens = max_tokens;
                 p.stop = stop;
                 p.sampling.temperature = temperature;
                 p.sampling.top_k = top_k;
                 p.sampling.top_p = top_p;
                 p.sampling.min_p = min_p;
                 p.sampling.repeat_penalty = repeat_penalty;
                 p.sampling.repeat_last_n = repeat_last_n;
                 p.sampling.seed_random = seed < 0;
                 p.sampling.seed = (uint32_t)(seed < 0 ? 0 : seed);
                 return new py_generator(s, prompt, p, n_keep);
             },
             nb::arg("prompt"), nb::arg("max_tokens"), nb::arg("temperature"), nb::arg("top_k"),
             nb::arg("top_p"), nb::arg("min_p"), nb::arg("repeat_penalty"),
             nb::arg("repeat_last_n"), nb::arg("seed"), nb::arg("stop"), nb::arg("n_keep") = 0,
             nb::keep_alive<0, 1>(), nb::rv_policy::take_ownership)
        .def("reset", [](py_model& s) { s.ctx->reset(); })
        .def("truncate", [](py_model& s, int n) { s.ctx->truncate(n); })
        .def("perplexity",
             [](py_model& s, const std::vector<int32_t>& tokens, int n_chunks) {
                 kvrt::perplexity_result r;
                 {
                     nb::gil_scoped_release release;
                     r = kvrt::perplexity_compute(*s.ctx, tokens, n_chunks, nullptr);
                 }
                 nb::dict d;
                 d["ppl"] = r.ppl;
                 d["ppl_err"] = r.ppl_err;
                 d["n_chunks"] = r.n_chunks;
                 d["n_scored"] = r.n_scored;
                 d["running_ppl"] = r.running_ppl;
                 return d;
             },
             nb::arg("tokens"), nb::arg("n_chunks") = 0)
        .def_prop_ro("n_past", [](const py_model& s) { return s.ctx->n_past(); })
        .def_prop_ro("n_ctx", [](const py_model& s) { return s.ctx->n_ctx(); })
        .def_prop_ro("n_threads", [](const py_model& s) { return s.ctx->n_threads(); })
        .def_prop_ro("n_vocab", [](const py_model& s) { return s.model->hp().n_vocab; })
        .def_prop_ro("n_layer", [](const py_model& s) { return s.model->hp().n_layer; })
        .def_prop_ro("bos_id", [](const py_model& s) { return s.model->vocab().bos_id(); })
        .def_prop_ro("eos_id", [](const py_model& s) { return s.model->vocab().eos_id(); })
        .def_prop_ro("kv_bytes", [](const py_model& s) { return s.ctx->kv().bytes(); })
        .def_prop_ro("kv_bits_per_element",
                     [](const py_model& s) { return s.ctx->kv().bits_per_element(); })
        .def_prop_ro("kv_summary", [](const py_model& s) { return s.ctx->kv().summary_line(); })
        .def_prop_ro("description", [](const py_model& s) { return s.model->describe(); });
}
