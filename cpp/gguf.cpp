// placeholder: the GGUF reader is being written
#include "gguf.h"
