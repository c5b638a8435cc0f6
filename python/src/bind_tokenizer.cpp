// kvrt._core.Tokenizer: the tokenizer of a GGUF file on its own, and the
// pre-tokenizer splitter, for tests and tools.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings.h"
#include "tokenizer.h"
#include "unicode.h"

namespace {

struct py_tokenizer {
    std::unique_ptr<kvrt::gguf_file> file;
    std::unique_ptr<kvrt::tokenizer> tok;
    explicit py_tokenizer(const std::string& path)
        : file(kvrt::gguf_file::open(path)), tok(std::make_unique<kvrt::tokenizer>(*file)) {}
};

}  // namespace

static nb::str utf8_to_str(const std::string& bytes) {
    PyObject* o = PyUnicode_DecodeUTF8(bytes.data(), (Py_ssize_t)bytes.size(), "replace");
    if (!o) throw nb::python_error();
    return nb::steal<nb::str>(o);
}

void init_tokenizer(nb::module_& m) {
    nb::class_<py_tokenizer>(m, "Tokenizer")
        .def(nb::init<const std::string&>(), nb::arg("path"))
        .def("encode",
             [](const py_tokenizer& t, const std::string& text, bool add_special, bool parse_special) {
                 nb::gil_scoped_release release;
                 return t.tok->encode(text, add_special, parse_special);
             },
             nb::arg("text"), nb::arg("add_special") = true, nb::arg("parse_special") = false)
        .def("decode",
             [](const py_tokenizer& t, const std::vector<int32_t>& ids, bool render_special) {
                 return utf8_to_str(t.tok->decode(ids, render_special));
             },
             nb::arg("ids"), nb::arg("render_special") = false)
        .def("token_to_piece",
             [](const py_tokenizer& t, int32_t id) {
                 std::string s = t.tok->token_to_piece(id, true);
                 return nb::bytes(s.data(), s.size());
             })
        .def_prop_ro("n_vocab", [](const py_tokenizer& t) { return t.tok->n_vocab(); })
        .def_prop_ro("bos_id", [](const py_tokenizer& t) { return t.tok->bos_id(); })
        .def_prop_ro("eos_id", [](const py_tokenizer& t) { return t.tok->eos_id(); })
        .def("is_eog", [](const py_tokenizer& t, int32_t id) { return t.tok->is_eog(id); });

    m.def("pretokenize", [](const std::string& text, const std::string& kind) {
        kvrt::pretok_kind k;
        if (kind == "gpt2") k = kvrt::PRETOK_GPT2;
        else if (kind == "smollm") k = kvrt::PRETOK_SMOLLM;
        else if (kind == "llama3") k = kvrt::PRETOK_LLAMA3;
        else if (kind == "qwen2") k = kvrt::PRETOK_QWEN2;
        else throw kvrt::error("unknown pre-tokenizer '" + kind + "'");
        nb::list out;
        for (const auto& p : kvrt::pretokenize(text, k)) out.append(utf8_to_str(p));
        return out;
    });
}
