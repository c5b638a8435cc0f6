// kvrt._core.Tokenizer: the tokenizer of a GGUF file on its own, and the
// pre-tokenizer splitter (a test hook: _core.pretokenize(text, kind)).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "tokenizer.h"
#include "unicode.h"

namespace {

struct py_tokenizer {
    std::unique_ptr<kvrt::gguf_file> file;  // the tokenizer copies what it needs
    std::unique_ptr<kvrt::tokenizer> tok;
    explicit py_tokenizer(const std::string& path)
        : file(kvrt::gguf_file::open(path)), tok(std::make_unique<kvrt::tokenizer>(*file)) {}
};

// Token bytes need not be valid UTF-8 (byte tokens, cut sequences): invalid
// bytes become U+FFFD as in Hugging Face's decode.
nb::str utf8_to_str(const std::string& bytes) {
    PyObject* o = PyUnicode_DecodeUTF8(bytes.data(), (Py_ssize_t)bytes.size(), "replace");
    if (!o) throw nb::python_error();
    return nb::steal<nb::str>(o);
}

kvrt::pretok_kind pretok_kind_of(const std::string& kind) {
    if (kind == "gpt2") return kvrt::PRETOK_GPT2;
    if (kind == "smollm") return kvrt::PRETOK_SMOLLM;
    if (kind == "llama3") return kvrt::PRETOK_LLAMA3;
    if (kind == "qwen2") return kvrt::PRETOK_QWEN2;
    throw kvrt::error("unknown pre-tokenizer '" + kind + "' (gpt2, smollm, llama3, qwen2)");
}

}  // namespace

void init_tokenizer(nb::module_& m) {
    nb::class_<py_tokenizer>(m, "Tokenizer")
        .def(nb::init<const std::string&>(), nb::arg("path"))
        .def(
            "encode",
            [](const py_tokenizer& t, const std::string& text, bool add_special,
               bool parse_special) {
                nb::gil_scoped_release release;  // encode is const and thread-safe
                return t.tok->encode(text, add_special, parse_special);
            },
            nb::arg("text"), nb::arg("add_special") = true, nb::arg("parse_special") = false)
        .def(
            "decode",
            [](const py_tokenizer& t, const std::vector<int32_t>& ids, bool render_special) {
                return utf8_to_str(t.tok->decode(ids, render_special));
            },
            nb::arg("ids"), nb::arg("render_special") = false)
        .def(
            "token_to_piece",
            [](const py_tokenizer& t, int32_t id) {
                const std::string s = t.tok->token_to_piece(id, true);
                return nb::bytes(s.data(), s.size());
            },
            nb::arg("id"))
        .def("is_eog", [](const py_tokenizer& t, int32_t id) { return t.tok->is_eog(id); },
             nb::arg("id"))
        .def("token_id", [](const py_tokenizer& t, const std::string& s) {
                 return t.tok->token_id(s);
             }, nb::arg("text"))
        .def_prop_ro("n_vocab", [](const py_tokenizer& t) { return t.tok->n_vocab(); })
        .def_prop_ro("bos_id", [](const py_tokenizer& t) { return t.tok->bos_id(); })
        .def_prop_ro("eos_id", [](const py_tokenizer& t) { return t.tok->eos_id(); })
        .def_prop_ro("add_bos", [](const py_tokenizer& t) { return t.tok->add_bos(); });

    m.def(
        "pretokenize",
        [](const std::string& text, const std::string& kind) {
            nb::list out;
            for (const auto& p : kvrt::pretokenize(text, pretok_kind_of(kind)))
                out.append(utf8_to_str(p));
            return out;
        },
        nb::arg("text"), nb::arg("kind"));
}
