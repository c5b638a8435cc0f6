// kvrt._core.GGUFFile: read-only view of a GGUF file's metadata and tensors.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <memory>

#include "bindings.h"
#include "gguf.h"

namespace {

nb::object gguf_value_to_python(const kvrt::gguf_value& v) {
    using kvrt::gguf_vtype;
    switch (v.type) {
        case kvrt::GGUF_VTYPE_UINT8: case kvrt::GGUF_VTYPE_UINT16:
        case kvrt::GGUF_VTYPE_UINT32: case kvrt::GGUF_VTYPE_UINT64:
            return nb::int_(v.u);
        case kvrt::GGUF_VTYPE_INT8: case kvrt::GGUF_VTYPE_INT16:
        case kvrt::GGUF_VTYPE_INT32: case kvrt::GGUF_VTYPE_INT64:
            return nb::int_(v.i);
        case kvrt::GGUF_VTYPE_FLOAT32: case kvrt::GGUF_VTYPE_FLOAT64: return nb::float_(v.f);
        case kvrt::GGUF_VTYPE_BOOL: return nb::bool_(v.u != 0);
        case kvrt::GGUF_VTYPE_STRING: {
            PyObject* o = PyUnicode_DecodeUTF8(v.s.data(), (Py_ssize_t)v.s.size(), "replace");
            if (!o) throw nb::python_error();
            return nb::steal(o);
        }
        case kvrt::GGUF_VTYPE_ARRAY: {
            nb::list l;
            for (const auto& x : v.arr) l.append(gguf_value_to_python(x));
            return l;
        }
    }
    return nb::none();
}

using bytes_array = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;

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
                         for (const auto& [k, v] : f.kv()) d[k.c_str()] = gguf_value_to_python(v);
                         return d;
                     })
        .def_prop_ro("tensors",
                     [](const py_gguf& g) {
                         const kvrt::gguf_file& f = *g.f;
                         nb::list l;
                         for (const auto& t : f.tensors()) {
                             nb::dict d;
                             d["name"] = t.name;
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
        .def("tensor_data", [](const py_gguf& g, const std::string& name) {
            const kvrt::gguf_tensor* t = g.f->tensor(name);
            if (!t) throw kvrt::error("gguf: no tensor named '" + name + "'");
            uint8_t* buf = new uint8_t[t->nbytes ? t->nbytes : 1];
            std::memcpy(buf, t->data, t->nbytes);
            nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
            return bytes_array(buf, {(size_t)t->nbytes}, owner);
        });
}
