/* Private helpers of the training loop. */
#ifndef LORAC_TRAINER_INTERNAL_H
#define LORAC_TRAINER_INTERNAL_H

#include <stdint.h>

int64_t trainer_peak_rss(void);

#endif
