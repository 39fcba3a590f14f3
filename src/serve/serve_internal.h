/* Private pieces of the serving engine: the adapter registry (registry.c)
 * and the stop-string / UTF-8 text assembly of one request (engine.c). */
#ifndef LORAC_SERVE_INTERNAL_H
#define LORAC_SERVE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "lorac/lora.h"
#include "lorac/serve.h"

#define REGISTRY_NAME_MAX 256

typedef struct registry_entry {
    char name[REGISTRY_NAME_MAX];
    lorac_adapter_t *adapter;
    int32_t max_rank;
    int32_t refs;            /* requests holding it (queued or running) */
    uint64_t last_used;      /* registry clock at the last acquire */
    int detached;            /* unloaded: freed when refs reaches 0 */
    uint64_t uid;            /* 1, 2, ... in load order: never the same for two loads */
    struct registry_entry *next;
} registry_entry_t;

typedef struct {
    const lorac_model_t *model;
    const char *dir;         /* NULL: no adapters */
    int32_t max_loras;
    pthread_mutex_t mu;
    registry_entry_t *head;  /* loaded adapters */
    int32_t n_loaded;
    uint64_t clock;
    uint64_t uids;           /* the last uid given */
} registry_t;

void registry_init(registry_t *reg, const lorac_model_t *model, const char *dir, int32_t max_loras);
void registry_free(registry_t *reg);
/* INVALID_ARG unless name is [A-Za-z0-9._-]+ (not "." or ".."), < 256 bytes. */
lorac_status_t registry_check_name(const char *name);
/* A reference to the named adapter, loading it when needed. */
lorac_status_t registry_acquire(registry_t *reg, const char *name, registry_entry_t **out);
void registry_release(registry_t *reg, registry_entry_t *entry);
lorac_status_t registry_unload(registry_t *reg, const char *name);
int32_t registry_n_loaded(registry_t *reg);
int32_t registry_list(registry_t *reg, lorac_adapter_info_t *out, int32_t cap);

#endif
