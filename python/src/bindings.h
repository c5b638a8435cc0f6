// One init_<area> per bindings file; module.cpp calls them all.
#pragma once
#include <nanobind/nanobind.h>

namespace nb = nanobind;

void init_gguf(nb::module_& m);
void init_quants(nb::module_& m);
void init_tokenizer(nb::module_& m);
void init_model(nb::module_& m);
void init_eval(nb::module_& m);
void init_chat(nb::module_& m);
void init_calib(nb::module_& m);
void init_backend_ops(nb::module_& m);
