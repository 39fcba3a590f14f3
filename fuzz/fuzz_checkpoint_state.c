/* libFuzzer target: trainer_state.json parsing (checkpoint resume). */
#include <stdint.h>

#include "lorac/optim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    if (lorac_checkpoint_state_parse((const char *)data, size, "fuzz", &st) == LORAC_STATUS_OK)
        lorac_checkpoint_state_clear(&st);
    return 0;
}
