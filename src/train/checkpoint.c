/* Atomic training checkpoints (lorac/optim.h): save, validate, load, find the
 * latest whole one, clean up after interrupted saves.
 *
 * Crash safety rests on one rule: a directory is only ever named
 * checkpoint-N once everything in it has been written and fsync'd, and it
 * stops being named so (rename to a hidden name) before anything in it is
 * deleted. Everything hidden (".checkpoint-N.tmp-PID", ".checkpoint-N.old-PID")
 * is scratch that find_latest ignores and cleanup removes. The manifest in
 * trainer_state.json (size + checksum of every other file) lets a reader tell
 * a whole checkpoint from one damaged after the fact (truncated, edited). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2, nftw, scandir */
#endif
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lorac/optim.h"

#define STATE_FILE "trainer_state.json"
#define PARAMS_FILE "params.safetensors"
#define MOMENTS_FILE "optimizer.safetensors"
#define FORMAT_NAME "lorac-checkpoint"
#define FORMAT_VERSION 1
/* JSON numbers are doubles: integers beyond 2^53 would not round-trip */
#define MAX_EXACT_INT 9007199254740992.0
#define MAX_STATE_BYTES ((size_t)64 << 20)

/* ---- small helpers ------------------------------------------------------------ */

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static char *path_fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0; /* keep going: best effort */
}

/* Deletes a directory tree (depth first, links not followed). */
static void remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* fsync of a directory makes the renames and creations inside it durable. */
static lorac_status_t fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return lorac_error(LORAC_STATUS_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    /* some file systems do not support fsync on directories; that is not an error */
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP) {
        int e = errno;
        close(fd);
        return lorac_error(LORAC_STATUS_IO, "%s: fsync failed: %s", dir, strerror(e));
    }
    close(fd);
    return LORAC_STATUS_OK;
}

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* 64-bit checksum of the manifest, built like xxHash64 (four independent
 * lanes of multiply-rotate, so it runs at memory speed) but not claimed to
 * be bit-compatible with it. It guards against truncation and damage, not
 * against an adversary. */
static uint64_t checksum64(const uint8_t *p, size_t n) {
    const uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull,
                   P5 = 0x27D4EB2F165667C5ull;
    uint64_t acc[4] = {P1 + P2, P2, 0, 0 - P1};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++) acc[l] = rotl64(acc[l] + load_le64(p + i + 8 * l) * P2, 31) * P1;
    uint64_t h = rotl64(acc[0], 1) + rotl64(acc[1], 7) + rotl64(acc[2], 12) + rotl64(acc[3], 18) + (uint64_t)n;
    for (; i < n; i++) h = rotl64(h ^ (p[i] * P5), 11) * P1;
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

/* A name a checkpoint file may have: one path component, printable. */
static int plain_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 255 || !strcmp(s, ".") || !strcmp(s, "..")) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '/' || (unsigned char)s[i] < 0x20) return 0;
    return 1;
}

static int reserved_name(const char *s) {
    return !strcmp(s, STATE_FILE) || !strcmp(s, PARAMS_FILE) || !strcmp(s, MOMENTS_FILE);
}

/* "checkpoint-N" with N canonical decimal (no sign, no leading zeros):
 * returns N, or -1 for any other name. */
static int64_t checkpoint_number(const char *name) {
    static const char prefix[] = "checkpoint-";
    if (strncmp(name, prefix, sizeof prefix - 1)) return -1;
    const char *d = name + sizeof prefix - 1;
    size_t n = strlen(d);
    if (n == 0 || n > 18 || (d[0] == '0' && n > 1)) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i] < '0' || d[i] > '9') return -1;
        v = v * 10 + (d[i] - '0');
    }
    return v;
}

/* ---- trainer_state.json ------------------------------------------------------- */

typedef struct {
    char *name;
    uint64_t bytes, checksum;
} manifest_entry_t;

typedef struct {
    manifest_entry_t *e;
    int32_t n;
} manifest_t;

static void manifest_free(manifest_t *m) {
    for (int32_t i = 0; i < m->n; i++) free(m->e[i].name);
    free(m->e);
    m->e = NULL;
    m->n = 0;
}

static cJSON *u64_string(uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateString(buf);
}

/* cJSON prints doubles with 15 digits when they compare equal within an
 * epsilon, which can change the last bits; %.17g round-trips exactly. */
static cJSON *loss_value(double v) {
    if (!isfinite(v)) return cJSON_CreateNull();
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

static int exact_int(int64_t v) { return (double)v <= MAX_EXACT_INT && (double)v >= -MAX_EXACT_INT; }

/* The JSON text of the state (malloc'd), or NULL on OOM. */
static char *state_to_json(const lorac_checkpoint_state_t *st, lorac_adamw_counters_t c, const manifest_t *mf) {
    cJSON *root = cJSON_CreateObject(), *o;
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "format", FORMAT_NAME);
    cJSON_AddNumberToObject(root, "version", FORMAT_VERSION);
    cJSON_AddNumberToObject(root, "step", (double)st->step);
    if ((o = cJSON_AddObjectToObject(root, "optimizer"))) {
        cJSON_AddNumberToObject(o, "steps", (double)c.steps);
        cJSON_AddNumberToObject(o, "skipped", (double)c.skipped);
        cJSON_AddNumberToObject(o, "skipped_in_row", (double)c.skipped_in_row);
    }
    if ((o = cJSON_AddObjectToObject(root, "data"))) {
        cJSON_AddNumberToObject(o, "epoch", (double)st->data_epoch);
        cJSON_AddNumberToObject(o, "index", (double)st->data_index);
        cJSON_AddNumberToObject(o, "flags", (double)st->data_flags);
        cJSON_AddItemToObject(o, "seed", u64_string(st->data_seed));
    }
    if ((o = cJSON_AddArrayToObject(root, "rng_state")))
        for (int i = 0; i < 4; i++) cJSON_AddItemToArray(o, u64_string(st->rng_state[i]));
    cJSON_AddNumberToObject(root, "tokens", (double)st->tokens);
    cJSON_AddItemToObject(root, "last_loss", loss_value(st->last_loss));
    cJSON_AddItemToObject(root, "best_loss", loss_value(st->best_loss));
    if ((o = cJSON_AddArrayToObject(root, "files")))
        for (int32_t i = 0; i < mf->n; i++) {
            cJSON *f = cJSON_CreateObject();
            char sum[20];
            snprintf(sum, sizeof sum, "%016llx", (unsigned long long)mf->e[i].checksum);
            cJSON_AddStringToObject(f, "name", mf->e[i].name);
            cJSON_AddNumberToObject(f, "bytes", (double)mf->e[i].bytes);
            cJSON_AddStringToObject(f, "checksum", sum);
            cJSON_AddItemToArray(o, f);
        }
    /* the caller's text verbatim (validated by check_save_args), so its
     * numbers are stored exactly as the trainer wrote them */
    cJSON_AddItemToObject(root, "trainer", st->trainer_json ? cJSON_CreateRaw(st->trainer_json) : cJSON_CreateObject());
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

/* Integer member `key` of obj in [lo, hi]. */
static lorac_status_t get_int(const cJSON *obj, const char *key, const char *where, const char *label, double lo,
                              double hi, int64_t *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(it))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %s\"%s\" missing or not a number", label, where, key);
    double d = it->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %s\"%s\" is %g, expected an integer in [%.0f, %.0f]", label, where, key,
                           d, lo, hi);
    *out = (int64_t)d;
    return LORAC_STATUS_OK;
}

/* A u64 stored as a decimal string (doubles would round it). */
static lorac_status_t parse_u64(const cJSON *it, const char *what, const char *label, uint64_t *out) {
    const char *s = cJSON_IsString(it) ? it->valuestring : NULL;
    size_t n = s ? strlen(s) : 0;
    if (!s || n == 0 || n > 20 || strspn(s, "0123456789") != n)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %s must be a string of decimal digits (a 64-bit unsigned integer)", label,
                           what);
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: %s \"%s\" does not fit in 64 bits", label, what, s);
        v = v * 10 + d;
    }
    *out = v;
    return LORAC_STATUS_OK;
}

static lorac_status_t get_loss(const cJSON *root, const char *key, const char *label, double *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) { *out = NAN; return LORAC_STATUS_OK; }
    if (!cJSON_IsNumber(it)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" must be a number or null", label, key);
    *out = it->valuedouble;
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_manifest(const cJSON *files, const char *label, manifest_t *mf) {
    if (!cJSON_IsArray(files)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"files\" missing or not an array", label);
    int n = cJSON_GetArraySize(files);
    if (n > 4096) return lorac_error(LORAC_STATUS_FORMAT, "%s: %d files, at most 4096 expected", label, n);
    mf->e = calloc((size_t)(n ? n : 1), sizeof *mf->e);
    if (!mf->e) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    const cJSON *f;
    cJSON_ArrayForEach(f, files) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *sum = cJSON_GetObjectItemCaseSensitive(f, "checksum");
        int32_t i = mf->n;
        if (!cJSON_IsObject(f) || !cJSON_IsString(name) || !plain_name(name->valuestring) ||
            !strcmp(name->valuestring, STATE_FILE))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: files[%d] needs a \"name\" that is a plain file name", label, (int)i);
        for (int32_t j = 0; j < i; j++)
            if (!strcmp(mf->e[j].name, name->valuestring))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: file \"%s\" listed twice", label, name->valuestring);
        int64_t bytes;
        lorac_status_t s = get_int(f, "bytes", "a file's ", label, 0, MAX_EXACT_INT, &bytes);
        if (s) return s;
        const char *h = cJSON_IsString(sum) ? sum->valuestring : "";
        if (strlen(h) != 16 || strspn(h, "0123456789abcdef") != 16)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: file \"%s\": \"checksum\" must be 16 lowercase hex digits", label,
                               name->valuestring);
        if (!(mf->e[i].name = strdup(name->valuestring))) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
        mf->n++;
        mf->e[i].bytes = (uint64_t)bytes;
        mf->e[i].checksum = strtoull(h, NULL, 16);
    }
    const char *required[2] = {PARAMS_FILE, MOMENTS_FILE};
    for (int k = 0; k < 2; k++) {
        int found = 0;
        for (int32_t i = 0; i < mf->n; i++) found |= !strcmp(mf->e[i].name, required[k]);
        if (!found) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"files\" does not list %s", label, required[k]);
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_state(const char *text, size_t len, const char *label, lorac_checkpoint_state_t *out,
                                  manifest_t *mf) {
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    manifest_t local = {0};
    if (!mf) mf = &local;
    cJSON *root = cJSON_ParseWithLength(text, len);
    lorac_status_t s = LORAC_STATUS_OK;
    const cJSON *it, *o;
    if (!cJSON_IsObject(root)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", label); goto done; }
    it = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(it) || strcmp(it->valuestring, FORMAT_NAME)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"format\" is not \"%s\"", label, FORMAT_NAME);
        goto done;
    }
    int64_t version;
    if ((s = get_int(root, "version", "", label, 0, MAX_EXACT_INT, &version))) goto done;
    if (version != FORMAT_VERSION) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: version %lld, this lorac reads version %d", label, (long long)version,
                        FORMAT_VERSION);
        goto done;
    }
    if ((s = get_int(root, "step", "", label, 0, MAX_EXACT_INT, &st.step))) goto done;
    if ((s = get_int(root, "tokens", "", label, 0, MAX_EXACT_INT, &st.tokens))) goto done;
    o = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
    if ((s = get_int(o, "steps", "optimizer.", label, 0, MAX_EXACT_INT, &st.optimizer.steps)) ||
        (s = get_int(o, "skipped", "optimizer.", label, 0, MAX_EXACT_INT, &st.optimizer.skipped)) ||
        (s = get_int(o, "skipped_in_row", "optimizer.", label, 0, MAX_EXACT_INT, &st.optimizer.skipped_in_row)))
        goto done;
    o = cJSON_GetObjectItemCaseSensitive(root, "data");
    if ((s = get_int(o, "epoch", "data.", label, -MAX_EXACT_INT, MAX_EXACT_INT, &st.data_epoch)) ||
        (s = get_int(o, "index", "data.", label, -MAX_EXACT_INT, MAX_EXACT_INT, &st.data_index)) ||
        (s = get_int(o, "flags", "data.", label, -MAX_EXACT_INT, MAX_EXACT_INT, &st.data_flags)) ||
        (s = parse_u64(cJSON_GetObjectItemCaseSensitive(o, "seed"), "data.seed", label, &st.data_seed)))
        goto done;
    o = cJSON_GetObjectItemCaseSensitive(root, "rng_state");
    if (!cJSON_IsArray(o) || cJSON_GetArraySize(o) != 4) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"rng_state\" must be an array of 4 strings", label);
        goto done;
    }
    for (int i = 0; i < 4; i++)
        if ((s = parse_u64(cJSON_GetArrayItem(o, i), "rng_state[]", label, &st.rng_state[i]))) goto done;
    if ((s = get_loss(root, "last_loss", label, &st.last_loss)) || (s = get_loss(root, "best_loss", label, &st.best_loss)))
        goto done;
    if ((s = parse_manifest(cJSON_GetObjectItemCaseSensitive(root, "files"), label, mf))) goto done;
    it = cJSON_GetObjectItemCaseSensitive(root, "trainer");
    if (it && !cJSON_IsObject(it)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"trainer\" must be an object", label); goto done; }
    st.trainer_json = it ? cJSON_PrintUnformatted(it) : strdup("{}");
    if (!st.trainer_json) { s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); goto done; }
done:
    cJSON_Delete(root);
    if (s) { lorac_checkpoint_state_clear(&st); manifest_free(mf); }
    else *out = st;
    manifest_free(&local);
    return s;
}

lorac_checkpoint_state_t lorac_checkpoint_state_init(void) {
    lorac_checkpoint_state_t st;
    memset(&st, 0, sizeof st);
    st.last_loss = st.best_loss = NAN;
    return st;
}

void lorac_checkpoint_state_clear(lorac_checkpoint_state_t *st) {
    free(st->trainer_json);
    st->trainer_json = NULL;
}

lorac_status_t lorac_checkpoint_state_parse(const char *text, size_t len, const char *label, lorac_checkpoint_state_t *out) {
    return parse_state(text, len, label ? label : STATE_FILE, out, NULL);
}

/* ---- opening a checkpoint ------------------------------------------------------ */

typedef struct {
    lorac_checkpoint_state_t state;
    lorac_mapped_file_t params_map, moments_map;
    lorac_safetensors_t *params, *moments;
} opened_t;

static void close_checkpoint(opened_t *c) {
    lorac_checkpoint_state_clear(&c->state);
    lorac_safetensors_free(c->params);
    lorac_safetensors_free(c->moments);
    lorac_file_unmap(&c->params_map);
    lorac_file_unmap(&c->moments_map);
    memset(c, 0, sizeof *c);
}

/* Every file of the manifest checked, the two tensor files kept open. */
static lorac_status_t open_checkpoint(const char *dir, opened_t *c) {
    memset(c, 0, sizeof *c);
    char *path = path_fmt("%s/%s", dir, STATE_FILE), *text = NULL;
    if (!path) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    size_t len = 0;
    manifest_t mf = {0};
    lorac_status_t s = lorac_file_read(path, MAX_STATE_BYTES, &text, &len);
    if (!s) s = parse_state(text, len, path, &c->state, &mf);
    free(text);
    for (int32_t i = 0; !s && i < mf.n; i++) {
        free(path);
        if (!(path = path_fmt("%s/%s", dir, mf.e[i].name))) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
        lorac_mapped_file_t map;
        if ((s = lorac_file_map(path, &map))) break;
        if ((uint64_t)map.size != mf.e[i].bytes)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: %zu bytes, the manifest says %llu (truncated or replaced)", path, map.size,
                            (unsigned long long)mf.e[i].bytes);
        else if (checksum64(map.data, map.size) != mf.e[i].checksum)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: checksum does not match the manifest (damaged)", path);
        /* the tensor files stay mapped for load; any other safetensors file
         * only gets its structure checked */
        lorac_safetensors_t *st = NULL;
        size_t n = strlen(mf.e[i].name);
        int is_params = !strcmp(mf.e[i].name, PARAMS_FILE), is_moments = !strcmp(mf.e[i].name, MOMENTS_FILE);
        if (!s && (is_params || is_moments || (n > 12 && !strcmp(mf.e[i].name + n - 12, ".safetensors"))))
            s = lorac_safetensors_open_memory(map.data, map.size, path, &st);
        if (!s && is_params) { c->params_map = map; c->params = st; }
        else if (!s && is_moments) { c->moments_map = map; c->moments = st; }
        else { lorac_safetensors_free(st); lorac_file_unmap(&map); }
    }
    free(path);
    manifest_free(&mf);
    /* the moments must pair up with the params, so that load can trust both */
    int64_t np = s ? 0 : lorac_safetensors_count(c->params);
    if (!s && lorac_safetensors_count(c->moments) != 2 * np)
        s = lorac_error(LORAC_STATUS_FORMAT, "%s/%s: %lld tensors, expected 2 per param (%lld)", dir, MOMENTS_FILE,
                        (long long)lorac_safetensors_count(c->moments), (long long)(2 * np));
    for (int64_t i = 0; !s && i < np; i++) {
        const lorac_tensor_view_t *p = lorac_safetensors_get(c->params, i);
        if (p->dtype != LORAC_DTYPE_F32) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s/%s: tensor \"%s\" is %s, expected F32", dir, PARAMS_FILE, p->name,
                            lorac_dtype_name(p->dtype));
            break;
        }
        for (int k = 0; !s && k < 2; k++) {
            char *mname = path_fmt("%s%s", p->name, k ? ".exp_avg_sq" : ".exp_avg");
            if (!mname) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
            const lorac_tensor_view_t *m = lorac_safetensors_find(c->moments, mname);
            if (!m || m->dtype != LORAC_DTYPE_F32 || m->n_elements != p->n_elements)
                s = lorac_error(LORAC_STATUS_FORMAT, "%s/%s: tensor \"%s\" missing or not %lld F32 values", dir, MOMENTS_FILE,
                                mname, (long long)p->n_elements);
            free(mname);
        }
    }
    if (s) close_checkpoint(c);
    return s;
}

lorac_status_t lorac_checkpoint_validate(const char *dir) {
    opened_t c;
    lorac_status_t s = open_checkpoint(dir, &c);
    if (!s) close_checkpoint(&c);
    return s;
}

lorac_status_t lorac_checkpoint_load(const char *dir, lorac_adamw_t *opt, lorac_checkpoint_state_t *state) {
    opened_t c;
    lorac_status_t s = open_checkpoint(dir, &c);
    if (s) return s;
    /* find every source tensor before changing anything, so that a failed
     * load leaves the run as it was */
    int32_t n = lorac_adamw_n_params(opt);
    const lorac_tensor_view_t **src = calloc((size_t)(3 * n + 1), sizeof *src);
    if (!src) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    for (int32_t i = 0; i < n && !s; i++) {
        const lorac_optim_param_t *p = lorac_adamw_param(opt, i);
        const lorac_tensor_view_t *t = lorac_safetensors_find(c.params, p->name);
        if (!t)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: the run trains \"%s\" but the checkpoint has no such tensor", dir, p->name);
        else if (t->n_elements != p->n)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has %lld values in the checkpoint, %lld in the run", dir,
                            p->name, (long long)t->n_elements, (long long)p->n);
        src[3 * i] = t;
        for (int k = 1; k < 3 && !s; k++) {
            char *mname = path_fmt("%s%s", p->name, k == 1 ? ".exp_avg" : ".exp_avg_sq");
            if (!mname) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
            src[3 * i + k] = lorac_safetensors_find(c.moments, mname); /* open_checkpoint paired them */
            free(mname);
        }
    }
    /* every run param is in the checkpoint and names are unique on both
     * sides, so equal counts mean the same set */
    int64_t nt = lorac_safetensors_count(c.params);
    for (int64_t k = 0; !s && nt != n && k < nt; k++) {
        const char *name = lorac_safetensors_get(c.params, k)->name;
        int found = 0;
        for (int32_t i = 0; i < n && !found; i++) found = !strcmp(lorac_adamw_param(opt, i)->name, name);
        if (!found)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: the checkpoint has tensor \"%s\" that the run does not train", dir, name);
    }
    for (int32_t i = 0; i < n && !s; i++) {
        const lorac_optim_param_t *p = lorac_adamw_param(opt, i);
        float *dst[3] = {p->data, lorac_adamw_exp_avg(opt, i), lorac_adamw_exp_avg_sq(opt, i)};
        for (int k = 0; k < 3 && p->n > 0; k++) memcpy(dst[k], src[3 * i + k]->data, sizeof(float) * (size_t)p->n);
    }
    free(src);
    if (!s) {
        lorac_adamw_set_counters(opt, c.state.optimizer);
        *state = c.state;
        c.state.trainer_json = NULL; /* now the caller's */
    }
    close_checkpoint(&c);
    return s;
}

/* ---- saving ---------------------------------------------------------------------- */

lorac_checkpoint_save_params_t lorac_checkpoint_default_save_params(void) {
    lorac_checkpoint_save_params_t p;
    memset(&p, 0, sizeof p);
    return p;
}

/* params.safetensors (which = 0) or optimizer.safetensors (which = 1). */
static lorac_status_t write_tensors(const char *path, lorac_adamw_t *opt, int which) {
    int32_t n = lorac_adamw_n_params(opt), per = which ? 2 : 1;
    lorac_tensor_write_t *t = calloc((size_t)(per * n + 1), sizeof *t);
    char **names = calloc((size_t)(per * n + 1), sizeof *names);
    lorac_status_t s = t && names ? LORAC_STATUS_OK : lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    for (int32_t i = 0; i < n && !s; i++) {
        const lorac_optim_param_t *p = lorac_adamw_param(opt, i);
        for (int k = 0; k < per && !s; k++) {
            int j = per * i + k;
            names[j] = which ? path_fmt("%s%s", p->name, k ? ".exp_avg_sq" : ".exp_avg") : strdup(p->name);
            if (!names[j]) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
            t[j].name = names[j];
            t[j].dtype = LORAC_DTYPE_F32;
            t[j].n_dims = 1;
            t[j].shape[0] = p->n;
            t[j].data = !which ? p->data : k ? lorac_adamw_exp_avg_sq(opt, i) : lorac_adamw_exp_avg(opt, i);
        }
    }
    if (!s) s = lorac_safetensors_write(path, t, (int64_t)per * n, NULL, NULL, 0);
    for (int32_t j = 0; names && j < per * n; j++) free(names[j]);
    free(names);
    free(t);
    return s;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

/* Lists, checksums and fsyncs every file of the temporary directory. */
static lorac_status_t build_manifest(const char *dir, manifest_t *mf) {
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, by_name);
    if (n < 0) return lorac_error(LORAC_STATUS_IO, "%s: cannot list: %s", dir, strerror(errno));
    lorac_status_t s = LORAC_STATUS_OK;
    mf->e = calloc((size_t)n + 1, sizeof *mf->e);
    if (!mf->e) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    for (int i = 0; i < n && !s; i++) {
        const char *name = ents[i]->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char *path = path_fmt("%s/%s", dir, name);
        if (!path) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
        struct stat st;
        lorac_mapped_file_t map = {0};
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || !plain_name(name))
            s = lorac_error(LORAC_STATUS_INVALID_ARG, "%s: a checkpoint may only hold plain files", path);
        else if (!(s = lorac_file_map(path, &map))) {
            manifest_entry_t *e = &mf->e[mf->n];
            e->bytes = map.size;
            e->checksum = checksum64(map.data, map.size);
            lorac_file_unmap(&map);
            if (!(e->name = strdup(name))) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
            else mf->n++;
            /* files written by a callback may not have been synced */
            int fd = open(path, O_RDONLY);
            if (!s && (fd < 0 || fsync(fd) != 0)) s = lorac_error(LORAC_STATUS_IO, "%s: fsync failed: %s", path, strerror(errno));
            if (fd >= 0) close(fd);
        }
        free(path);
    }
    for (int i = 0; i < n; i++) free(ents[i]);
    free(ents);
    return s;
}

/* Moves checkpoint-M (M < n) out of the way, but for the keep - 1 newest. */
static void apply_keep_last(const char *out_dir, int64_t n_saved, int32_t keep) {
    struct dirent **ents = NULL;
    int n = scandir(out_dir, &ents, NULL, NULL);
    if (n < 0) return;
    int64_t *older = malloc(sizeof(int64_t) * (size_t)(n + 1));
    int32_t k = 0;
    for (int i = 0; i < n; i++) {
        int64_t m = checkpoint_number(ents[i]->d_name);
        if (older && m >= 0 && m < n_saved) older[k++] = m;
        free(ents[i]);
    }
    free(ents);
    if (!older) return;
    /* newest first */
    for (int32_t i = 1; i < k; i++)
        for (int32_t j = i; j > 0 && older[j] > older[j - 1]; j--) { int64_t t = older[j]; older[j] = older[j - 1]; older[j - 1] = t; }
    for (int32_t i = keep - 1; i < k; i++) {
        char *from = path_fmt("%s/checkpoint-%lld", out_dir, (long long)older[i]);
        char *to = path_fmt("%s/.checkpoint-%lld.old-%ld", out_dir, (long long)older[i], (long)getpid());
        /* hidden first, then deleted: never a half-deleted checkpoint-M */
        if (from && to && rename(from, to) == 0) remove_tree(to);
        free(from);
        free(to);
    }
    free(older);
}

static lorac_status_t check_save_args(const char *out_dir, lorac_adamw_t *opt, const lorac_checkpoint_state_t *st,
                                      const lorac_checkpoint_save_params_t *sp) {
    if (!out_dir || !opt || !st) return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: NULL argument");
    lorac_adamw_counters_t c = lorac_adamw_get_counters(opt);
    int64_t counts[5] = {st->step, st->tokens, c.steps, c.skipped, c.skipped_in_row};
    for (int i = 0; i < 5; i++)
        if (counts[i] < 0 || !exact_int(counts[i]))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: step/token/optimizer counter %lld out of range",
                               (long long)counts[i]);
    if (!exact_int(st->data_epoch) || !exact_int(st->data_index) || !exact_int(st->data_flags))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: data position beyond 2^53");
    const char *tf = sp->tensors_file ? sp->tensors_file : "adapter_model.safetensors";
    if (sp->n_tensors > 0 && (!plain_name(tf) || reserved_name(tf)))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: \"%s\" cannot be a checkpoint file name", tf);
    for (int32_t i = 0; i < sp->n_files; i++) {
        const char *nm = sp->files[i].name;
        if (!nm || !plain_name(nm) || reserved_name(nm) || (sp->n_tensors > 0 && !strcmp(nm, tf)))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: \"%s\" cannot be a checkpoint file name",
                               nm ? nm : "(null)");
        for (int32_t j = 0; j < i; j++)
            if (!strcmp(sp->files[j].name, nm))
                return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: file \"%s\" given twice", nm);
    }
    if (st->trainer_json) {
        /* the whole text must be one object: it is embedded verbatim */
        cJSON *t = cJSON_ParseWithOpts(st->trainer_json, NULL, 1);
        int ok = cJSON_IsObject(t);
        cJSON_Delete(t);
        if (!ok) return lorac_error(LORAC_STATUS_INVALID_ARG, "checkpoint save: trainer_json is not one JSON object");
    }
    return LORAC_STATUS_OK;
}

/* Fills the temporary directory: tensors, the caller's files, the manifest
 * and, last, trainer_state.json. */
static lorac_status_t write_contents(const char *tmp, lorac_adamw_t *opt, const lorac_checkpoint_state_t *st,
                                     const lorac_checkpoint_save_params_t *sp) {
    lorac_status_t s = LORAC_STATUS_OK;
    char *path = NULL;
    manifest_t mf = {0};
#define IN_TMP(name) (free(path), (path = path_fmt("%s/%s", tmp, (name))) ? LORAC_STATUS_OK : lorac_error(LORAC_STATUS_NOMEM, "out of memory"))
    if (!(s = IN_TMP(PARAMS_FILE))) s = write_tensors(path, opt, 0);
    if (!s && !(s = IN_TMP(MOMENTS_FILE))) s = write_tensors(path, opt, 1);
    if (!s && sp->n_tensors > 0 && !(s = IN_TMP(sp->tensors_file ? sp->tensors_file : "adapter_model.safetensors")))
        s = lorac_safetensors_write(path, sp->tensors, sp->n_tensors, NULL, NULL, 0);
    for (int32_t i = 0; !s && i < sp->n_files; i++)
        if (!(s = IN_TMP(sp->files[i].name))) s = lorac_file_write_atomic(path, sp->files[i].data, sp->files[i].len);
    if (!s && sp->write_extra) s = sp->write_extra(tmp, sp->ctx);
    if (!s) s = build_manifest(tmp, &mf);
    if (!s) {
        char *text = state_to_json(st, lorac_adamw_get_counters(opt), &mf);
        if (!text) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        else if (!(s = IN_TMP(STATE_FILE))) s = lorac_file_write_atomic(path, text, strlen(text));
        free(text);
    }
#undef IN_TMP
    manifest_free(&mf);
    free(path);
    return s;
}

lorac_status_t lorac_checkpoint_save(const char *out_dir, lorac_adamw_t *opt, const lorac_checkpoint_state_t *st,
                                     const lorac_checkpoint_save_params_t *params, char **path_out) {
    if (path_out) *path_out = NULL;
    lorac_checkpoint_save_params_t defaults = lorac_checkpoint_default_save_params();
    const lorac_checkpoint_save_params_t *sp = params ? params : &defaults;
    lorac_status_t s = check_save_args(out_dir, opt, st, sp);
    if (s) return s;
    long pid = (long)getpid();
    long long n = (long long)st->step;
    char *tmp = path_fmt("%s/.checkpoint-%lld.tmp-%ld", out_dir, n, pid);
    char *old = path_fmt("%s/.checkpoint-%lld.old-%ld", out_dir, n, pid);
    char *final = path_fmt("%s/checkpoint-%lld", out_dir, n);
    int moved_aside = 0;
    if (!tmp || !old || !final) {
        s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        goto done;
    }
    remove_tree(tmp); /* a leftover of an earlier process with our pid */
    if (mkdir(tmp, 0755) != 0) {
        s = lorac_error(LORAC_STATUS_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    if ((s = write_contents(tmp, opt, st, sp)) || (s = fsync_dir(tmp))) goto fail;

    struct stat sb;
    if (lstat(final, &sb) == 0) {
        /* an earlier run's checkpoint-N: swap atomically where the kernel can,
         * so that checkpoint-N is whole at every moment */
#ifdef RENAME_EXCHANGE
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
            if ((s = fsync_dir(out_dir))) goto done; /* the new one is in place; tmp holds the old one */
            remove_tree(tmp);
            goto placed;
        }
#endif
        /* otherwise checkpoint-N is briefly absent (never partial): the
         * earlier checkpoints are what a crash here falls back to */
        if (rename(final, old) != 0) {
            s = lorac_error(LORAC_STATUS_IO, "%s: cannot move aside to %s: %s", final, old, strerror(errno));
            goto fail;
        }
        moved_aside = 1;
    }
    if (rename(tmp, final) != 0) {
        s = lorac_error(LORAC_STATUS_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
        if (moved_aside) rename(old, final); /* put the earlier one back */
        goto fail;
    }
    if ((s = fsync_dir(out_dir))) goto done;
    remove_tree(old);
#ifdef RENAME_EXCHANGE
placed:
#endif
    if (sp->keep_last > 0) apply_keep_last(out_dir, st->step, sp->keep_last);
    lorac_checkpoint_cleanup(out_dir);
    if (path_out) { *path_out = final; final = NULL; }
    goto done;
fail:
    remove_tree(tmp);
done:
    free(tmp);
    free(old);
    free(final);
    return s;
}

/* ---- finding and cleaning ------------------------------------------------------ */

typedef struct {
    int64_t n;
    char *name;
} found_t;

static int by_step_desc(const void *a, const void *b) {
    int64_t x = ((const found_t *)a)->n, y = ((const found_t *)b)->n;
    return x < y ? 1 : x > y ? -1 : 0;
}

lorac_status_t lorac_checkpoint_find_latest(const char *out_dir, int64_t *step_out, char **path_out, FILE *log) {
    *path_out = NULL;
    struct dirent **ents = NULL;
    int n = scandir(out_dir, &ents, NULL, NULL);
    if (n < 0) return lorac_error(LORAC_STATUS_NOT_FOUND, "%s: no checkpoints (%s)", out_dir, strerror(errno));
    found_t *f = calloc((size_t)n + 1, sizeof *f);
    int k = 0;
    for (int i = 0; i < n; i++) {
        int64_t m = checkpoint_number(ents[i]->d_name);
        if (f && m >= 0) { f[k].n = m; f[k].name = ents[i]->d_name; k++; }
    }
    lorac_status_t s = f ? LORAC_STATUS_NOT_FOUND : lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (f) qsort(f, (size_t)k, sizeof *f, by_step_desc);
    int broken = 0;
    for (int i = 0; f && i < k; i++) {
        char *dir = path_fmt("%s/%s", out_dir, f[i].name);
        if (!dir) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); break; }
        opened_t c;
        lorac_status_t v = open_checkpoint(dir, &c);
        if (!v && c.state.step != f[i].n) {
            v = lorac_error(LORAC_STATUS_FORMAT, "%s: trainer_state.json says step %lld", dir, (long long)c.state.step);
            close_checkpoint(&c);
        }
        if (!v) {
            close_checkpoint(&c);
            *step_out = f[i].n;
            *path_out = dir;
            s = LORAC_STATUS_OK;
            break;
        }
        if (v == LORAC_STATUS_NOMEM) { s = v; free(dir); break; }
        broken++;
        if (log) fprintf(log, "lorac: skipping %s: %s\n", dir, lorac_error_message());
        free(dir);
    }
    if (s == LORAC_STATUS_NOT_FOUND)
        s = lorac_error(LORAC_STATUS_NOT_FOUND, "%s: no whole checkpoint (%d broken)", out_dir, broken);
    for (int i = 0; i < n; i++) free(ents[i]);
    free(ents);
    free(f);
    return s;
}

int32_t lorac_checkpoint_cleanup(const char *out_dir) {
    struct dirent **ents = NULL;
    int n = scandir(out_dir, &ents, NULL, NULL);
    if (n < 0) return -1;
    int32_t removed = 0;
    for (int i = 0; i < n; i++) {
        long long step;
        long pid;
        char kind[4], end;
        const char *name = ents[i]->d_name;
        /* ".checkpoint-N.tmp-PID" or ".checkpoint-N.old-PID", nothing after */
        if (sscanf(name, ".checkpoint-%lld.%3[a-z]-%ld%c", &step, kind, &pid, &end) == 3 &&
            (!strcmp(kind, "tmp") || !strcmp(kind, "old")) && pid > 0) {
            /* another live process may be writing it right now */
            int alive = pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
            char *path = alive ? NULL : path_fmt("%s/%s", out_dir, name);
            if (path) { remove_tree(path); removed++; }
            free(path);
        }
        free(ents[i]);
    }
    free(ents);
    return removed;
}
