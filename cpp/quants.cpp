// placeholder: tensor types are being written
#include "quants.h"
