#include "bindings.h"

void init_tokenizer(nb::module_& m) {}
