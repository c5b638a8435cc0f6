#include "bindings.h"

void init_model(nb::module_& m) {}
