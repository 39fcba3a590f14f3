/* libFuzzer target: config.json parsing. */
#include <stdint.h>

#include "lorac/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lorac_model_config_t c;
    lorac_model_config_parse((const char *)data, size, "fuzz", &c);
    return 0;
}
