#include "bindings.h"

void init_quants(nb::module_& m) {}
