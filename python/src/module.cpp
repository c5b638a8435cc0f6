#include "bindings.h"

NB_MODULE(_core, m) {
    m.doc() = "kvrt engine (private; use the kvrt package)";
    init_gguf(m);
    init_quants(m);
    init_tokenizer(m);
    init_model(m);
    init_calib(m);
    init_eval(m);
    init_chat(m);
    init_backend_ops(m);
}
