// placeholder: the tokenizer is being written
#include "tokenizer.h"
