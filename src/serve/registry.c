/* The adapter registry of the serving engine: adapters found by name under
 * one directory, loaded on first use, shared by reference count, the least
 * recently used idle one evicted beyond max_loras. An unloaded adapter leaves
 * the registry at once but its memory stays until the last request using it
 * releases it. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lorac/gguf.h"
#include "serve/serve_internal.h"

lorac_status_t registry_check_name(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= REGISTRY_NAME_MAX)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "adapter names are 1..%d characters", REGISTRY_NAME_MAX - 1);
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "'%s' is not an adapter name", name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        if (!ok) return lorac_error(LORAC_STATUS_INVALID_ARG, "adapter names use only letters, digits, '.', '_' and '-'");
    }
    return LORAC_STATUS_OK;
}

/* Where adapter `name` lives in dir, written to path: dir/name when it is a
 * PEFT directory (holds adapter_config.json), else dir/name.gguf when that
 * is a llama.cpp LoRA file. 0 when neither. */
static int adapter_path(const char *dir, const char *name, char *path, size_t cap) {
    if (!dir) return 0;
    struct stat st;
    if (snprintf(path, cap, "%s/%s/adapter_config.json", dir, name) < (int)cap && stat(path, &st) == 0 &&
        S_ISREG(st.st_mode)) {
        snprintf(path, cap, "%s/%s", dir, name);
        return 1;
    }
    return snprintf(path, cap, "%s/%s.gguf", dir, name) < (int)cap && lorac_gguf_is_file(path);
}

/* The adapter name of a directory entry: itself for a PEFT directory, the
 * stem of a .gguf file; NULL for anything else. */
static const char *entry_adapter_name(const char *dir, const char *entry, char *buf, size_t cap) {
    char path[4096];
    struct stat st;
    if (registry_check_name(entry) == LORAC_STATUS_OK &&
        snprintf(path, sizeof path, "%s/%s/adapter_config.json", dir, entry) < (int)sizeof path && stat(path, &st) == 0 &&
        S_ISREG(st.st_mode))
        return entry;
    size_t n = strlen(entry);
    if (n <= 5 || strcmp(entry + n - 5, ".gguf") || n - 5 >= cap) return NULL;
    memcpy(buf, entry, n - 5);
    buf[n - 5] = '\0';
    return registry_check_name(buf) == LORAC_STATUS_OK && adapter_path(dir, buf, path, sizeof path) ? buf : NULL;
}

void registry_init(registry_t *reg, const lorac_model_t *model, const char *dir, int32_t max_loras) {
    memset(reg, 0, sizeof *reg);
    reg->model = model;
    reg->dir = dir;
    reg->max_loras = max_loras;
    pthread_mutex_init(&reg->mu, NULL);
}

static void entry_free(registry_entry_t *e) {
    lorac_adapter_free(e->adapter);
    free(e);
}

void registry_free(registry_t *reg) {
    registry_entry_t *e = reg->head;
    while (e) {
        registry_entry_t *next = e->next;
        entry_free(e);
        e = next;
    }
    reg->head = NULL;
    pthread_mutex_destroy(&reg->mu);
}

static registry_entry_t *find_locked(registry_t *reg, const char *name) {
    for (registry_entry_t *e = reg->head; e; e = e->next)
        if (!strcmp(e->name, name)) return e;
    return NULL;
}

static void unlink_locked(registry_t *reg, registry_entry_t *gone) {
    for (registry_entry_t **p = &reg->head; *p; p = &(*p)->next)
        if (*p == gone) {
            *p = gone->next;
            reg->n_loaded--;
            return;
        }
}

/* Makes room for one more adapter: evicts least-recently-used idle entries
 * while the registry is full. BUSY when every loaded adapter is in use. */
static lorac_status_t make_room_locked(registry_t *reg) {
    while (reg->n_loaded >= reg->max_loras) {
        registry_entry_t *lru = NULL;
        for (registry_entry_t *e = reg->head; e; e = e->next)
            if (e->refs == 0 && (!lru || e->last_used < lru->last_used)) lru = e;
        if (!lru)
            return lorac_error(LORAC_STATUS_BUSY, "all %d loaded adapters are in use (--max-loras); retry later",
                               reg->max_loras);
        unlink_locked(reg, lru);
        entry_free(lru);
    }
    return LORAC_STATUS_OK;
}

lorac_status_t registry_acquire(registry_t *reg, const char *name, registry_entry_t **out) {
    *out = NULL;
    lorac_status_t s = registry_check_name(name);
    if (s) return s;
    pthread_mutex_lock(&reg->mu);
    registry_entry_t *e = find_locked(reg, name);
    if (e) {
        e->refs++;
        e->last_used = ++reg->clock;
        pthread_mutex_unlock(&reg->mu);
        *out = e;
        return LORAC_STATUS_OK;
    }
    pthread_mutex_unlock(&reg->mu);

    /* Load without the lock: reading a large adapter must not stall the
     * engine thread, which takes the lock to release finished requests. */
    char path[4096];
    if (!adapter_path(reg->dir, name, path, sizeof path))
        return lorac_error(LORAC_STATUS_NOT_FOUND, "no adapter named '%s'", name);
    lorac_adapter_t *adapter = NULL;
    s = lorac_adapter_load(path, lorac_model_get_config(reg->model), &adapter);
    if (!s) s = lorac_adapter_prepare_inference(adapter);
    if (s) {
        /* the loader's message names the server's path; clients get the name */
        lorac_adapter_free(adapter);
        const char *why = lorac_error_message();
        const char *rel = strstr(why, path);
        char msg[512];
        if (rel) snprintf(msg, sizeof msg, "%.*s%s%s", (int)(rel - why), why, name, rel + strlen(path));
        else snprintf(msg, sizeof msg, "%s", why);
        return lorac_error(s, "adapter '%s' does not load: %s", name, msg);
    }

    pthread_mutex_lock(&reg->mu);
    e = find_locked(reg, name); /* someone else may have loaded it meanwhile */
    if (e) {
        lorac_adapter_free(adapter);
    } else {
        s = make_room_locked(reg);
        if (s) {
            pthread_mutex_unlock(&reg->mu);
            lorac_adapter_free(adapter);
            return s;
        }
        e = calloc(1, sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&reg->mu);
            lorac_adapter_free(adapter);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the adapter registry");
        }
        snprintf(e->name, sizeof e->name, "%s", name);
        e->adapter = adapter;
        e->uid = ++reg->uids;
        for (int32_t i = 0; i < lorac_adapter_n_modules(adapter); i++) {
            int32_t r = lorac_adapter_module(adapter, i)->r;
            e->max_rank = r > e->max_rank ? r : e->max_rank;
        }
        e->next = reg->head;
        reg->head = e;
        reg->n_loaded++;
    }
    e->refs++;
    e->last_used = ++reg->clock;
    pthread_mutex_unlock(&reg->mu);
    *out = e;
    return LORAC_STATUS_OK;
}

void registry_release(registry_t *reg, registry_entry_t *e) {
    if (!e) return;
    pthread_mutex_lock(&reg->mu);
    int gone = --e->refs == 0 && e->detached;
    pthread_mutex_unlock(&reg->mu);
    if (gone) entry_free(e);
}

lorac_status_t registry_unload(registry_t *reg, const char *name) {
    lorac_status_t s = registry_check_name(name);
    if (s) return s;
    pthread_mutex_lock(&reg->mu);
    registry_entry_t *e = find_locked(reg, name);
    if (!e) {
        pthread_mutex_unlock(&reg->mu);
        return lorac_error(LORAC_STATUS_NOT_FOUND, "adapter '%s' is not loaded", name);
    }
    unlink_locked(reg, e);
    e->detached = 1;
    int idle = e->refs == 0;
    pthread_mutex_unlock(&reg->mu);
    if (idle) entry_free(e);
    return LORAC_STATUS_OK;
}

int32_t registry_n_loaded(registry_t *reg) {
    pthread_mutex_lock(&reg->mu);
    int32_t n = reg->n_loaded;
    pthread_mutex_unlock(&reg->mu);
    return n;
}

static int info_cmp(const void *a, const void *b) {
    return strcmp(((const lorac_adapter_info_t *)a)->name, ((const lorac_adapter_info_t *)b)->name);
}

/* Adds or updates `name` in the growing list; returns the list's new size. */
static int32_t list_add(lorac_adapter_info_t **list, int32_t n, int32_t *cap, const char *name, bool loaded,
                        int32_t r) {
    for (int32_t i = 0; i < n; i++)
        if (!strcmp((*list)[i].name, name)) {
            (*list)[i].loaded |= loaded;
            if (loaded) (*list)[i].r = r;
            return n;
        }
    if (n == *cap) {
        int32_t grown_cap = *cap ? 2 * *cap : 16;
        lorac_adapter_info_t *grown = realloc(*list, sizeof **list * (size_t)grown_cap);
        if (!grown) return n;
        *list = grown;
        *cap = grown_cap;
    }
    lorac_adapter_info_t *info = &(*list)[n];
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", name);
    info->loaded = loaded;
    info->r = r;
    return n + 1;
}

int32_t registry_list(registry_t *reg, lorac_adapter_info_t *out, int32_t cap) {
    lorac_adapter_info_t *list = NULL;
    int32_t n = 0, list_cap = 0;
    DIR *d = reg->dir ? opendir(reg->dir) : NULL;
    if (d) {
        struct dirent *de;
        char stem[256];
        const char *name;
        while ((de = readdir(d)) != NULL)
            if ((name = entry_adapter_name(reg->dir, de->d_name, stem, sizeof stem)))
                n = list_add(&list, n, &list_cap, name, false, 0);
        closedir(d);
    }
    lorac_error_clear();
    pthread_mutex_lock(&reg->mu);
    for (registry_entry_t *e = reg->head; e; e = e->next) n = list_add(&list, n, &list_cap, e->name, true, e->max_rank);
    pthread_mutex_unlock(&reg->mu);
    if (n > 1) qsort(list, (size_t)n, sizeof *list, info_cmp);
    for (int32_t i = 0; i < n && i < cap; i++) out[i] = list[i];
    free(list);
    return n;
}
