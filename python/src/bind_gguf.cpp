// kvrt._core.GGUFFile: read-only view of a GGUF file's metadata and tensors.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <memory>

#include "bindings.h"
#include "gguf.h"

namespace {

// GGUF strings should be UTF-8 but nothing guarantees it; invalid bytes become
// U+FFFD instead of a UnicodeDecodeError that would make the file unreadable.
nb::str gguf_str_to_python(const std::string& s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t)s.size(), "replace");
    if (!o) throw nb::python_error();
    return nb::steal<nb::str>(o);
}

nb::object gguf_value_to_python(const kvrt::gguf_value& v) {
    switch (v.type) {
        case kvrt::GGUF_VTYPE_UINT8: case kvrt::GGUF_VTYPE_UINT16:
        case kvrt::GGUF_VTYPE_UINT32: case kvrt::GGUF_VTYPE_UINT64:
            return nb::int_(v.u);
        case kvrt::GGUF_VTYPE_INT8: case kvrt::GGUF_VTYPE_INT16:
        case kvrt::GGUF_VTYPE_INT32: case kvrt::GGUF_VTYPE_INT64:
            return nb::int_(v.i);
        case kvrt::GGUF_VTYPE_FLOAT32: case kvrt::GGUF_VTYPE_FLOAT64: return nb::float_(v.f);
        case kvrt::GGUF_VTYPE_BOOL: return nb::bool_(v.u != 0);
        case kvrt::GGUF_VTYPE_STRING: return gguf_str_to_python(v.s);
        case kvrt::GGUF_VTYPE_ARRAY: {
            nb::list l;
            for (const auto& x : v.arr) l.append(gguf_value_to_python(x));
            return l;
        }
    }
    return nb::none();
}

using bytes_view = nb::ndarray<nb::numpy, const uint8_t, nb::ndim<1>>;

struct py_gguf {
    std::unique_ptr<kvrt::gguf_file> f;
    explicit py_gguf(const std::string& path) : f(kvrt::gguf_file::open(path)) {}
};

}  // namespace

void init_gguf(nb::module_& m) {
    nb::class_<py_gguf>(m, "GGUFFile")
        .def(nb::init<const std::string&>(), nb::arg("path"))
        .def_prop_ro("version", [](const py_gguf& g) { return g.f->version(); })
        .def_prop_ro("alignment", [](const py_gguf& g) { return g.f->alignment(); })
        .def_prop_ro("path", [](const py_gguf& g) { return g.f->path(); })
        .def_prop_ro("metadata",
                     [](const py_gguf& g) {
                         const kvrt::gguf_file& f = *g.f;
                         nb::dict d;
                         for (const auto& [k, v] : f.kv())
                             d[gguf_str_to_python(k)] = gguf_value_to_python(v);
                         return d;
                     })
        .def_prop_ro("tensors",
                     [](const py_gguf& g) {
                         const kvrt::gguf_file& f = *g.f;
                         nb::list l;
                         for (const auto& t : f.tensors()) {
                             nb::dict d;
                             d["name"] = gguf_str_to_python(t.name);
                             d["type"] = (int)t.type;
                             d["type_name"] = ggml_type_geometry(t.type).name;
                             nb::list shape;
                             for (uint32_t i = 0; i < t.n_dims; ++i) shape.append(t.ne[i]);
                             d["shape"] = shape;
                             d["offset"] = t.offset;
                             d["nbytes"] = t.nbytes;
                             l.append(d);
                         }
                         return l;
                     })
        .def(
            "value_string",
            [](const py_gguf& g, const std::string& key, size_t max_items) {
                const kvrt::gguf_value* v = g.f->find(key);
                if (!v) throw kvrt::error("gguf: " + g.f->path() + ": no key '" + key + "'");
                return gguf_str_to_python(kvrt::gguf_value_to_string(*v, max_items));
            },
            nb::arg("key"), nb::arg("max_items") = 8,
            "A value rendered for display (`inspect`), arrays abbreviated.")
        .def(
            "tensor_data",
            [](nb::handle self, const std::string& name) {
                const py_gguf& g = nb::cast<const py_gguf&>(self);
                const kvrt::gguf_tensor* t = g.f->tensor(name);
                if (!t)
                    throw kvrt::error("gguf: " + g.f->path() + ": no tensor named '" + name + "'");
                // A read-only view into the mapping; it keeps the GGUFFile (and so
                // the mapping) alive, and avoids copying tens of MB per tensor.
                return bytes_view(t->data, {(size_t)t->nbytes}, self);
            },
            nb::arg("name"), "Raw bytes of a tensor: a read-only uint8 view into the mapping.");
}
