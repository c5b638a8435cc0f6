// kvrt._core quants functions: the tensor-type kernels, exposed so tests can
// compare them against gguf-py (llama.cpp's reference) and against each other.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bindings.h"
#include "common.h"
#include "quants.h"

namespace {

using bytes_in = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using floats_in = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using floats_nd = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using bytes_out = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;
using floats_out = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

ggml_type checked_type(int t) {
    const ggml_type_size g = ggml_type_geometry((uint32_t)t);
    if (t < 0 || g.block_size == 0) throw kvrt::error("unknown tensor type " + std::to_string(t));
    return (ggml_type)t;
}

// Elements n of type t must be whole blocks and fit in `bytes`.
void check_row(ggml_type t, int64_t n, size_t bytes, const char* what) {
    const ggml_type_size g = ggml_type_geometry(t);
    if (n < 0 || n % g.block_size != 0)
        throw kvrt::error(std::string(what) + ": n=" + std::to_string(n) +
                          " is not a multiple of the block size of " + g.name);
    if (kvrt::quants_row_size(t, n) > bytes)
        throw kvrt::error(std::string(what) + ": buffer holds " + std::to_string(bytes) +
                          " bytes, " + std::to_string(kvrt::quants_row_size(t, n)) + " needed");
}

template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& v) {
    auto* p = new std::vector<T>(std::move(v));
    nb::capsule owner(p, [](void* q) noexcept { delete (std::vector<T>*)q; });
    return nb::ndarray<nb::numpy, T, nb::ndim<1>>(p->data(), {p->size()}, owner);
}

kvrt::quants_impl parse_impl(const std::string& s) {
    if (s == "scalar") return kvrt::QUANTS_IMPL_SCALAR;
    if (s == "simd") return kvrt::QUANTS_IMPL_SIMD;
    throw kvrt::error("quants impl must be 'scalar' or 'simd', got '" + s + "'");
}

}  // namespace

void init_quants(nb::module_& m) {
    m.def("dequantize",
          [](int type, bytes_in data, int64_t n) {
              const ggml_type t = checked_type(type);
              check_row(t, n, data.size(), "dequantize");
              std::vector<float> y((size_t)n);
              kvrt::quants_dequantize_row(t, data.data(), y.data(), n);
              return to_numpy(std::move(y));
          },
          nb::arg("type"), nb::arg("data"), nb::arg("n"),
          "Dequantize n elements of `type` from raw block bytes.");
    m.def("quantize",
          [](int type, floats_in x) {
              const ggml_type t = checked_type(type);
              const int64_t n = (int64_t)x.size();
              check_row(t, n, SIZE_MAX, "quantize");
              std::vector<uint8_t> y(kvrt::quants_row_size(t, n));
              kvrt::quants_quantize_row(t, x.data(), y.data(), n);
              return to_numpy(std::move(y));
          },
          nb::arg("type"), nb::arg("x"),
          "Quantize a float32 row to `type` (current impl); returns the block bytes.");
    m.def("quantize_rows",
          [](int type, floats_nd x) {
              const ggml_type t = checked_type(type);
              if (x.ndim() == 0)
                  throw kvrt::error("quantize_rows: x must have at least 1 dimension");
              const int64_t n = (int64_t)x.shape(x.ndim() - 1);
              const int64_t rows = n ? (int64_t)x.size() / n : 0;
              check_row(t, n, SIZE_MAX, "quantize_rows");
              const size_t rb = kvrt::quants_row_size(t, n);
              std::vector<uint8_t> y(rb * (size_t)rows);
              const float* src = x.data();
              uint8_t* dst = y.data();
              if (rows == 0) return to_numpy(std::move(y));
              // The first row on this thread: an unsupported type throws here, not in a worker.
              kvrt::quants_quantize_row(t, src, dst, n);
              {
                  // Rows are independent and conversion time is dominated by this loop, so it
                  // runs without the GIL on every core.
                  nb::gil_scoped_release release;
                  const int64_t n_thr = std::max<int64_t>(
                      1, std::min<int64_t>(std::thread::hardware_concurrency(), rows / 16));
                  auto work = [&](int64_t r0, int64_t r1) {
                      for (int64_t r = r0; r < r1; ++r)
                          kvrt::quants_quantize_row(t, src + r * n, dst + r * rb, n);
                  };
                  const int64_t per = (rows - 1 + n_thr - 1) / n_thr;
                  std::vector<std::thread> threads;
                  for (int64_t i = 1; i < n_thr; ++i)
                      threads.emplace_back(work, std::min(rows, 1 + i * per),
                                           std::min(rows, 1 + (i + 1) * per));
                  work(1, std::min(rows, 1 + per));
                  for (auto& th : threads) th.join();
              }
              return to_numpy(std::move(y));
          },
          nb::arg("type"), nb::arg("x"),
          "Quantize a float32 array row by row (rows: the last dimension) to `type`; returns the "
          "packed bytes of all rows as one uint8 array.");
    m.def("vec_dot",
          [](int type, bytes_in x, bytes_in y, int64_t n) {
              const ggml_type t = checked_type(type);
              check_row(t, n, x.size(), "vec_dot x");
              check_row(kvrt::quants_vec_dot_type(t), n, y.size(), "vec_dot y");
              return kvrt::quants_vec_dot(t, n, x.data(), y.data());
          },
          nb::arg("type"), nb::arg("x"), nb::arg("y"), nb::arg("n"),
          "Dot of a row of `type` with a row of vec_dot_type(type).");
    m.def("gemm_tile",
          [](int type, bytes_in x, bytes_in y, int64_t n, int nr, int nc) {
              const ggml_type t = checked_type(type);
              if (nr < 1 || nc < 1) throw kvrt::error("gemm_tile: nr and nc must be >= 1");
              const ggml_type vt = kvrt::quants_vec_dot_type(t);
              check_row(t, n, SIZE_MAX, "gemm_tile");
              const size_t bx = kvrt::quants_row_size(t, n), by = kvrt::quants_row_size(vt, n);
              if (x.size() < bx * nr || y.size() < by * nc)
                  throw kvrt::error("gemm_tile: x must hold nr rows and y nc rows");
              std::vector<float> out((size_t)nr * nc);
              kvrt::quants_gemm_tile(t, n, x.data(), bx, y.data(), by, out.data(), nr, nr, nc);
              return to_numpy(std::move(out));
          },
          nb::arg("type"), nb::arg("x"), nb::arg("y"), nb::arg("n"), nb::arg("nr"), nb::arg("nc"),
          "nr consecutive rows x (nc consecutive rows y) -> out[c*nr + r] = dot(x_r, y_c).");
    m.def("set_impl", [](const std::string& s) { kvrt::quants_set_impl(parse_impl(s)); },
          nb::arg("impl"), "Select 'scalar' (reference) or 'simd' kernels globally.");
    m.def("get_impl", [] {
        return std::string(kvrt::quants_get_impl() == kvrt::QUANTS_IMPL_SCALAR ? "scalar" : "simd");
    });
    m.def("simd_name", [] { return std::string(kvrt::quants_simd_name()); });
    m.def("row_size",
          [](int type, int64_t n) {
              const ggml_type t = checked_type(type);
              check_row(t, n, SIZE_MAX, "row_size");
              return kvrt::quants_row_size(t, n);
          },
          nb::arg("type"), nb::arg("n"));
    m.def("vec_dot_type", [](int type) { return (int)kvrt::quants_vec_dot_type(checked_type(type)); },
          nb::arg("type"));
}
