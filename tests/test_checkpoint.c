/* Checkpoints (lorac/optim.h): bit-exact save/load round trip, resume equal
 * to an uninterrupted run, clear errors for mismatched tensors, find_latest
 * skipping damaged and temporary directories, keep_last, cleanup, malformed
 * trainer_state.json, and crash safety: a writer process killed with SIGKILL
 * at many random moments always leaves the latest checkpoint whole. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lorac/optim.h"
#include "testlib.h"

static char g_root[4096];

static void rm_rf(const char *path) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", path);
}

static char *fresh_dir(const char *name) {
    static char buf[4][4200];
    static int k;
    char *d = buf[k++ % 4];
    snprintf(d, sizeof buf[0], "%s/%s", g_root, name);
    rm_rf(d);
    mkdir(d, 0755);
    return d;
}

static int exists(const char *dir, const char *name) {
    char p[4400];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- a small "model": a few named tensors with gradients ------------------- */

#define MAX_P 4
typedef struct {
    lorac_optim_param_t p[MAX_P];
    int32_t n;
    lorac_adamw_t *opt;
} model_t;

static void model_init(model_t *m, const int64_t *sizes, const char *const *names, int32_t n) {
    memset(m, 0, sizeof *m);
    m->n = n;
    for (int32_t i = 0; i < n; i++) {
        size_t bytes = sizeof(float) * (size_t)(sizes[i] ? sizes[i] : 1);
        m->p[i] = (lorac_optim_param_t){.name = names[i], .data = calloc(1, bytes), .grad = calloc(1, bytes), .n = sizes[i]};
    }
    lorac_adamw_params_t hp = lorac_adamw_default_params();
    hp.weight_decay = 0.01;
    if (lorac_adamw_init(m->p, n, hp, &m->opt)) fprintf(stderr, "init: %s\n", lorac_error_message());
}

static void model_free(model_t *m) {
    lorac_adamw_free(m->opt);
    for (int32_t i = 0; i < m->n; i++) { free(m->p[i].data); free(m->p[i].grad); }
}

/* Deterministic pseudo-random gradients for step s. */
static void model_grads(model_t *m, int64_t s) {
    lorac_rng_t r;
    lorac_rng_seed(&r, 1000 + (uint64_t)s);
    for (int32_t i = 0; i < m->n; i++)
        for (int64_t k = 0; k < m->p[i].n; k++) m->p[i].grad[k] = lorac_rng_normal(&r);
}

static void model_train(model_t *m, int64_t from, int64_t to) {
    for (int64_t s = from; s < to; s++) {
        model_grads(m, s);
        if (s == 4) m->p[0].grad[0] = NAN; /* one skipped step in the history */
        lorac_adamw_update(m->opt, lorac_schedule_lr(LORAC_SCHEDULE_COSINE, 1e-2, 2, 10, lorac_adamw_steps(m->opt)), 1.0,
                           0.5f, 1.0, NULL);
    }
}

static int model_equal(model_t *a, model_t *b) {
    if (a->n != b->n) return 0;
    for (int32_t i = 0; i < a->n; i++) {
        size_t bytes = sizeof(float) * (size_t)a->p[i].n;
        if (memcmp(a->p[i].data, b->p[i].data, bytes) || memcmp(lorac_adamw_exp_avg(a->opt, i), lorac_adamw_exp_avg(b->opt, i), bytes) ||
            memcmp(lorac_adamw_exp_avg_sq(a->opt, i), lorac_adamw_exp_avg_sq(b->opt, i), bytes))
            return 0;
    }
    lorac_adamw_counters_t x = lorac_adamw_get_counters(a->opt), y = lorac_adamw_get_counters(b->opt);
    return x.steps == y.steps && x.skipped == y.skipped && x.skipped_in_row == y.skipped_in_row;
}

static const int64_t SIZES[3] = {48, 0, 7};
static const char *const NAMES[3] = {"layers.0.q.lora_A", "layers.0.empty", "layers.1.v.lora_B"};

static lorac_status_t write_note(const char *dir, void *ctx) {
    char p[4200];
    snprintf(p, sizeof p, "%s/note.txt", dir);
    return lorac_file_write_atomic(p, ctx, strlen(ctx));
}

static lorac_checkpoint_state_t sample_state(int64_t step) {
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    st.step = step;
    st.data_epoch = 2;
    st.data_index = 17;
    st.data_flags = -1;
    st.data_seed = UINT64_MAX;
    st.rng_state[0] = 0x9E3779B97F4A7C15ull;
    st.rng_state[1] = 1;
    st.rng_state[3] = (1ull << 63) + 12345; /* beyond a double's 53 bits */
    st.tokens = 123456789;
    st.last_loss = 0.1 + 0.2; /* 17 significant digits to keep */
    st.best_loss = NAN;
    st.trainer_json = "{\"schedule\": \"cosine\", \"lr\": 0.0002, \"nested\": {\"a\": [1, 2, 3]}}";
    return st;
}

/* ---- round trip, resume, mismatches ------------------------------------------ */

static void test_round_trip(void) {
    char *out = fresh_dir("roundtrip");
    model_t a, b;
    model_init(&a, SIZES, NAMES, 3);
    model_train(&a, 0, 6);
    lorac_checkpoint_state_t st = sample_state(6);
    float adapter[6] = {1, 2, 3, 4, 5, 6};
    lorac_tensor_write_t tw = {.name = "base_model.model.x.lora_A.weight", .dtype = LORAC_DTYPE_F32, .n_dims = 2,
                               .shape = {2, 3}, .data = adapter};
    const char *cfg = "{\"peft_type\": \"LORA\", \"r\": 2}";
    lorac_checkpoint_file_t file = {"adapter_config.json", cfg, strlen(cfg)};
    lorac_checkpoint_save_params_t sp = lorac_checkpoint_default_save_params();
    sp.tensors = &tw;
    sp.n_tensors = 1;
    sp.files = &file;
    sp.n_files = 1;
    sp.write_extra = write_note;
    sp.ctx = "written by a callback";
    char *path = NULL;
    lorac_status_t s = lorac_checkpoint_save(out, a.opt, &st, &sp, &path);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(path && strstr(path, "/checkpoint-6") != NULL);
    const char *files[6] = {"params.safetensors", "optimizer.safetensors", "trainer_state.json", "adapter_model.safetensors",
                            "adapter_config.json", "note.txt"};
    for (int i = 0; i < 6; i++) CHECK_MSG(path && exists(path, files[i]), "%s missing", files[i]);
    CHECK(lorac_checkpoint_validate(path) == LORAC_STATUS_OK);

    /* into a fresh run with other values: everything comes back bit for bit */
    model_init(&b, SIZES, NAMES, 3);
    model_train(&b, 0, 2);
    lorac_checkpoint_state_t got = lorac_checkpoint_state_init();
    s = lorac_checkpoint_load(path, b.opt, &got);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(model_equal(&a, &b));
    CHECK(got.step == 6 && got.data_epoch == 2 && got.data_index == 17 && got.data_flags == -1);
    CHECK(got.data_seed == UINT64_MAX && got.tokens == 123456789);
    CHECK(!memcmp(got.rng_state, st.rng_state, sizeof st.rng_state));
    CHECK(got.last_loss == 0.1 + 0.2 && isnan(got.best_loss));
    lorac_adamw_counters_t c = lorac_adamw_get_counters(a.opt);
    CHECK(got.optimizer.steps == c.steps && got.optimizer.skipped == 1 && c.skipped == 1 && c.steps == 5);
    CHECK_MSG(got.trainer_json && !strcmp(got.trainer_json, "{\"schedule\":\"cosine\",\"lr\":0.0002,\"nested\":{\"a\":[1,2,3]}}"),
              "%s", got.trainer_json ? got.trainer_json : "(null)");
    lorac_checkpoint_state_clear(&got);
    CHECK(got.trainer_json == NULL);

    /* resume: 6 steps, checkpoint, 6 more == 12 steps straight */
    model_train(&a, 6, 12);
    model_train(&b, 6, 12);
    CHECK(model_equal(&a, &b));

    /* re-saving the same step replaces the earlier checkpoint whole */
    st.tokens = 42;
    free(path);
    CHECK(lorac_checkpoint_save(out, a.opt, &st, NULL, &path) == LORAC_STATUS_OK);
    CHECK(path && !exists(path, "adapter_config.json") && lorac_checkpoint_validate(path) == LORAC_STATUS_OK);
    CHECK(lorac_checkpoint_load(path, b.opt, &got) == LORAC_STATUS_OK && got.tokens == 42);
    lorac_checkpoint_state_clear(&got);
    /* nothing hidden is left behind */
    DIR *d = opendir(out);
    int hidden = 0;
    for (struct dirent *e; d && (e = readdir(d));) hidden += e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    CHECK(hidden == 0);
    free(path);
    model_free(&a);
    model_free(&b);
}

static void test_mismatch(void) {
    char *out = fresh_dir("mismatch");
    model_t a;
    model_init(&a, SIZES, NAMES, 3);
    model_train(&a, 0, 3);
    lorac_checkpoint_state_t st = sample_state(3);
    char *path = NULL;
    CHECK(lorac_checkpoint_save(out, a.opt, &st, NULL, &path) == LORAC_STATUS_OK);

    struct { int64_t sizes[3]; const char *names[3]; int32_t n; const char *expect; } cases[] = {
        {{48, 0, 8}, {NAMES[0], NAMES[1], NAMES[2]}, 3, "\"layers.1.v.lora_B\" has 7 values in the checkpoint, 8 in the run"},
        {{48, 0, 7}, {NAMES[0], NAMES[1], "layers.2.v.lora_B"}, 3, "trains \"layers.2.v.lora_B\" but the checkpoint has no"},
        {{48, 7, 0}, {NAMES[0], NAMES[2], 0}, 2, "checkpoint has tensor \"layers.0.empty\" that the run does not train"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_t b;
        model_init(&b, cases[i].sizes, cases[i].names, cases[i].n);
        b.p[0].data[0] = 7.0f;
        lorac_checkpoint_state_t got = lorac_checkpoint_state_init();
        got.step = -5;
        lorac_status_t s = lorac_checkpoint_load(path, b.opt, &got);
        CHECK(s == LORAC_STATUS_FORMAT);
        CHECK_MSG(strstr(lorac_error_message(), cases[i].expect) != NULL, "message: %s", lorac_error_message());
        /* nothing changed on failure */
        CHECK(b.p[0].data[0] == 7.0f && lorac_adamw_steps(b.opt) == 0 && got.step == -5 && got.trainer_json == NULL);
        model_free(&b);
    }

    /* bad save arguments are refused before anything is written */
    lorac_checkpoint_save_params_t sp = lorac_checkpoint_default_save_params();
    lorac_checkpoint_file_t bad_files[4] = {{"trainer_state.json", "x", 1}, {"a/b", "x", 1}, {"..", "x", 1}, {"params.safetensors", "x", 1}};
    st.step = 99;
    for (int i = 0; i < 4; i++) {
        sp.files = &bad_files[i];
        sp.n_files = 1;
        CHECK(lorac_checkpoint_save(out, a.opt, &st, &sp, NULL) == LORAC_STATUS_INVALID_ARG);
    }
    const char *bad_json[3] = {"[1]", "{\"a\": 1} trailing", "{"};
    for (int i = 0; i < 3; i++) {
        st.trainer_json = (char *)bad_json[i];
        CHECK(lorac_checkpoint_save(out, a.opt, &st, NULL, NULL) == LORAC_STATUS_INVALID_ARG);
    }
    st.trainer_json = NULL;
    st.step = -1;
    CHECK(lorac_checkpoint_save(out, a.opt, &st, NULL, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(!exists(out, "checkpoint-99") && !exists(out, "checkpoint--1"));
    free(path);
    model_free(&a);
}

/* ---- find_latest, keep_last, cleanup ---------------------------------------------- */

static void truncate_file(const char *dir, const char *name, off_t size) {
    char p[8800];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CHECK(truncate(p, size) == 0);
}

static void flip_byte(const char *dir, const char *name, long at) {
    char p[8800];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, at, SEEK_END);
    int c = fgetc(f);
    fseek(f, at, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static pid_t dead_pid(void) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static void test_find_latest(void) {
    char *out = fresh_dir("latest");
    model_t a;
    model_init(&a, SIZES, NAMES, 3);
    int64_t step;
    char *path = NULL;
    CHECK(lorac_checkpoint_find_latest(out, &step, &path, NULL) == LORAC_STATUS_NOT_FOUND && path == NULL);
    CHECK(lorac_checkpoint_find_latest("/nonexistent/lorac", &step, &path, NULL) == LORAC_STATUS_NOT_FOUND);
    for (int64_t s = 1; s <= 4; s++) {
        model_train(&a, s - 1, s);
        lorac_checkpoint_state_t st = sample_state(s);
        CHECK(lorac_checkpoint_save(out, a.opt, &st, NULL, NULL) == LORAC_STATUS_OK);
    }
    char dir[4400];
    /* newest first: 10 is an empty directory, 4 truncated, 3 has one byte
     * changed, "checkpoint-05" is not a canonical name, and a temporary
     * directory of a newer save is ignored */
    snprintf(dir, sizeof dir, "%s/checkpoint-10", out); mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/checkpoint-05", out); mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/checkpoint-4", out); truncate_file(dir, "optimizer.safetensors", 100);
    snprintf(dir, sizeof dir, "%s/checkpoint-3", out); flip_byte(dir, "params.safetensors", -3);
    char dead_tmp[64];
    snprintf(dead_tmp, sizeof dead_tmp, ".checkpoint-11.tmp-%d", (int)dead_pid());
    snprintf(dir, sizeof dir, "%s/%s", out, dead_tmp); mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/.checkpoint-12.tmp-%d", out, (int)getppid()); mkdir(dir, 0755); /* a live process */

    char *log_text = NULL;
    size_t log_len = 0;
    FILE *log = open_memstream(&log_text, &log_len);
    lorac_status_t s = lorac_checkpoint_find_latest(out, &step, &path, log);
    fclose(log);
    CHECK_MSG(s == LORAC_STATUS_OK && step == 2, "%d %lld %s", s, (long long)step, lorac_error_message());
    CHECK(path && strstr(path, "checkpoint-2"));
    printf("find_latest log:\n%s", log_text);
    CHECK(log_text && strstr(log_text, "checkpoint-10:") && strstr(log_text, "checkpoint-4: ") && strstr(log_text, "truncated"));
    CHECK(log_text && strstr(log_text, "checkpoint-3/params.safetensors: checksum"));
    CHECK(log_text && !strstr(log_text, "checkpoint-05") && !strstr(log_text, ".tmp"));
    CHECK(lorac_checkpoint_validate(dir) != LORAC_STATUS_OK);
    free(log_text);
    free(path);

    /* a checkpoint-N whose state says another step is not taken either */
    snprintf(dir, sizeof dir, "%s/checkpoint-2", out);
    char moved[4400];
    snprintf(moved, sizeof moved, "%s/checkpoint-7", out);
    CHECK(rename(dir, moved) == 0);
    CHECK(lorac_checkpoint_validate(moved) == LORAC_STATUS_OK);
    CHECK(lorac_checkpoint_find_latest(out, &step, &path, NULL) == LORAC_STATUS_OK && step == 1);
    free(path);

    /* cleanup removes the dead process's directory, not the live one's */
    CHECK(exists(out, dead_tmp));
    CHECK(lorac_checkpoint_cleanup(out) == 1);
    CHECK(!exists(out, dead_tmp));
    snprintf(dir, sizeof dir, ".checkpoint-12.tmp-%d", (int)getppid());
    CHECK(exists(out, dir));
    CHECK(lorac_checkpoint_cleanup("/nonexistent/lorac") == -1);

    /* keep_last 2: after saving 20, only 20 and the newest older one stay */
    lorac_checkpoint_save_params_t sp = lorac_checkpoint_default_save_params();
    sp.keep_last = 2;
    lorac_checkpoint_state_t st = sample_state(20);
    CHECK(lorac_checkpoint_save(out, a.opt, &st, &sp, NULL) == LORAC_STATUS_OK);
    CHECK(exists(out, "checkpoint-20") && exists(out, "checkpoint-10"));
    CHECK(!exists(out, "checkpoint-7") && !exists(out, "checkpoint-4") && !exists(out, "checkpoint-1"));
    CHECK(exists(out, "checkpoint-05")); /* not ours: never touched */
    model_free(&a);
}

/* ---- malformed trainer_state.json ------------------------------------------------- */

static void test_state_parse(void) {
    /* a valid state, then variations on it */
    const char *good =
        "{\"format\":\"lorac-checkpoint\",\"version\":1,\"step\":5,\"optimizer\":{\"steps\":4,\"skipped\":1,\"skipped_in_row\":0},"
        "\"data\":{\"epoch\":0,\"index\":3,\"flags\":1,\"seed\":\"42\"},\"rng_state\":[\"1\",\"2\",\"3\",\"18446744073709551615\"],"
        "\"tokens\":100,\"last_loss\":1.5,\"best_loss\":null,"
        "\"files\":[{\"name\":\"params.safetensors\",\"bytes\":8,\"checksum\":\"0123456789abcdef\"},"
        "{\"name\":\"optimizer.safetensors\",\"bytes\":8,\"checksum\":\"0123456789abcdef\"}],\"trainer\":{\"x\":1}}";
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    CHECK_MSG(lorac_checkpoint_state_parse(good, strlen(good), "good", &st) == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(st.step == 5 && st.optimizer.steps == 4 && st.rng_state[3] == UINT64_MAX && st.data_seed == 42 && st.last_loss == 1.5);
    CHECK(isnan(st.best_loss) && st.trainer_json && !strcmp(st.trainer_json, "{\"x\":1}"));
    lorac_checkpoint_state_clear(&st);

    struct { const char *from, *to, *expect; } bad[] = {
        {"\"version\":1", "\"version\":2", "version 2"},
        {"\"format\":\"lorac-checkpoint\"", "\"format\":\"other\"", "\"format\""},
        {"\"step\":5", "\"step\":-5", "\"step\""},
        {"\"step\":5", "\"step\":5.5", "\"step\""},
        {"\"step\":5", "\"step\":1e300", "\"step\""},
        {"\"step\":5", "\"step\":\"5\"", "\"step\""},
        {"\"step\":5,", "", "\"step\" missing"},
        {"\"skipped\":1", "\"skipped\":null", "optimizer.\"skipped\""},
        {"\"seed\":\"42\"", "\"seed\":42", "data.seed"},
        {"\"seed\":\"42\"", "\"seed\":\"-42\"", "data.seed"},
        {"\"seed\":\"42\"", "\"seed\":\"18446744073709551616\"", "does not fit"},
        {"\"seed\":\"42\"", "\"seed\":\"\"", "data.seed"},
        {"[\"1\",\"2\",\"3\",", "[\"1\",\"2\",", "rng_state"},
        {"\"last_loss\":1.5", "\"last_loss\":\"1.5\"", "last_loss"},
        {"\"name\":\"params.safetensors\"", "\"name\":\"../params.safetensors\"", "plain file name"},
        {"\"name\":\"params.safetensors\"", "\"name\":\"..\"", "plain file name"},
        {"\"name\":\"params.safetensors\"", "\"name\":\"trainer_state.json\"", "plain file name"},
        {"\"name\":\"params.safetensors\"", "\"name\":\"optimizer.safetensors\"", "listed twice"},
        {"\"name\":\"params.safetensors\"", "\"name\":\"adapter.safetensors\"", "does not list params.safetensors"},
        {"\"bytes\":8", "\"bytes\":-8", "\"bytes\""},
        {"\"checksum\":\"0123456789abcdef\"", "\"checksum\":\"0123456789ABCDEF\"", "checksum"},
        {"\"checksum\":\"0123456789abcdef\"", "\"checksum\":\"12\"", "checksum"},
        {"\"trainer\":{\"x\":1}", "\"trainer\":[1]", "\"trainer\""},
        {"\"files\":[", "\"files\":7,\"x\":[", "\"files\""},
        {"{\"format\"", "[{\"format\"", "not a JSON object"},
    };
    char text[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *at = strstr(good, bad[i].from);
        CHECK_MSG(at != NULL, "case %zu: pattern not in the good text", i);
        if (!at) continue;
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good), good, bad[i].to, at + strlen(bad[i].from));
        lorac_checkpoint_state_t s2 = lorac_checkpoint_state_init();
        lorac_status_t s = lorac_checkpoint_state_parse(text, strlen(text), "bad", &s2);
        CHECK_MSG(s == LORAC_STATUS_FORMAT || s == LORAC_STATUS_UNSUPPORTED, "case %zu (%s) parsed", i, bad[i].to);
        CHECK_MSG(strstr(lorac_error_message(), bad[i].expect) != NULL, "case %zu: message \"%s\" lacks \"%s\"", i,
                  lorac_error_message(), bad[i].expect);
        CHECK(s2.trainer_json == NULL);
    }
    /* every prefix of the good text is an error, never a crash */
    int prefix_ok = 0;
    for (size_t n = 0; n < strlen(good); n++) {
        lorac_checkpoint_state_t s2 = lorac_checkpoint_state_init();
        if (lorac_checkpoint_state_parse(good, n, "prefix", &s2) == LORAC_STATUS_OK) { prefix_ok++; lorac_checkpoint_state_clear(&s2); }
    }
    CHECK(prefix_ok == 0);
}

/* ---- SIGKILL during saves ------------------------------------------------------------ */

static const int64_t KILL_SIZES[3] = {30000, 1000, 7};
static const char *const KILL_NAMES[3] = {"big", "mid", "small"};

/* What checkpoint n of writer generation gen holds: every value derived from
 * (n, gen), so a verifier can recompute it and notice any mix of versions. */
static void kill_content(model_t *m, lorac_checkpoint_state_t *st, char *json, size_t json_len, int64_t n, int64_t gen) {
    for (int32_t i = 0; i < m->n; i++) {
        float *d[3] = {m->p[i].data, lorac_adamw_exp_avg(m->opt, i), lorac_adamw_exp_avg_sq(m->opt, i)};
        for (int k = 0; k < 3; k++)
            for (int64_t j = 0; j < m->p[i].n; j++) d[k][j] = (float)(n * 1000003 + gen * 7919 + i * 101 + k * 13 + j);
    }
    lorac_adamw_counters_t c = {.steps = n - 1, .skipped = 1, .skipped_in_row = 0};
    lorac_adamw_set_counters(m->opt, c);
    *st = lorac_checkpoint_state_init();
    st->step = n;
    st->data_index = n * 3;
    st->rng_state[0] = (uint64_t)n * 0x9E3779B97F4A7C15ull;
    st->rng_state[1] = (uint64_t)gen;
    snprintf(json, json_len, "{\"gen\": %lld}", (long long)gen);
    st->trainer_json = json;
}

/* The child: saves start, start+1, ... until killed (start re-saves an
 * existing checkpoint, which exercises the replace path). */
static void kill_writer(const char *out, int64_t start, int64_t gen) {
    model_t m;
    model_init(&m, KILL_SIZES, KILL_NAMES, 3);
    lorac_checkpoint_save_params_t sp = lorac_checkpoint_default_save_params();
    sp.keep_last = 3;
    char json[64];
    lorac_checkpoint_file_t f = {"adapter_config.json", "{\"r\": 8}", 8};
    sp.files = &f;
    sp.n_files = 1;
    for (int64_t n = start;; n++) {
        lorac_checkpoint_state_t st;
        kill_content(&m, &st, json, sizeof json, n, gen);
        if (lorac_checkpoint_save(out, m.opt, &st, &sp, NULL)) {
            fprintf(stderr, "writer: %s\n", lorac_error_message());
            _exit(3);
        }
    }
}

/* Loads the latest checkpoint and checks it against what its (n, gen) must hold. */
static int kill_verify(const char *out, int64_t *latest) {
    char *path = NULL;
    if (lorac_checkpoint_find_latest(out, latest, &path, stderr)) {
        fprintf(stderr, "no whole checkpoint: %s\n", lorac_error_message());
        return 0;
    }
    model_t got, want;
    model_init(&got, KILL_SIZES, KILL_NAMES, 3);
    model_init(&want, KILL_SIZES, KILL_NAMES, 3);
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init(), wst;
    int ok = lorac_checkpoint_load(path, got.opt, &st) == LORAC_STATUS_OK;
    cJSON *j = ok ? cJSON_Parse(st.trainer_json) : NULL;
    const cJSON *gen = cJSON_GetObjectItemCaseSensitive(j, "gen");
    ok = ok && cJSON_IsNumber(gen);
    if (ok) {
        char json[64];
        kill_content(&want, &wst, json, sizeof json, *latest, (int64_t)gen->valuedouble);
        ok = model_equal(&got, &want) && st.step == *latest && st.data_index == wst.data_index &&
             !memcmp(st.rng_state, wst.rng_state, sizeof wst.rng_state);
    }
    if (!ok) fprintf(stderr, "%s: content is not what step %lld wrote\n", path, (long long)*latest);
    /* every other checkpoint-N present must be whole as well */
    DIR *d = opendir(out);
    for (struct dirent *e; ok && d && (e = readdir(d));) {
        if (strncmp(e->d_name, "checkpoint-", 11)) continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", out, e->d_name);
        if (lorac_checkpoint_validate(p)) { fprintf(stderr, "%s\n", lorac_error_message()); ok = 0; }
    }
    if (d) closedir(d);
    cJSON_Delete(j);
    lorac_checkpoint_state_clear(&st);
    model_free(&got);
    model_free(&want);
    free(path);
    return ok;
}

static void test_kill9(void) {
    char *out = fresh_dir("kill9");
    /* checkpoint-1 exists before the first kill, and a save's duration sets
     * the range of the random kill moments */
    model_t m;
    model_init(&m, KILL_SIZES, KILL_NAMES, 3);
    char json[64];
    lorac_checkpoint_state_t st;
    double t0 = now();
    for (int64_t n = 1; n <= 3; n++) {
        kill_content(&m, &st, json, sizeof json, n, 0);
        CHECK(lorac_checkpoint_save(out, m.opt, &st, NULL, NULL) == LORAC_STATUS_OK);
    }
    double t_save = (now() - t0) / 3;
    model_free(&m);

    lorac_rng_t rng;
    lorac_rng_seed(&rng, 20240601);
    int64_t latest = 3, prev = 3;
    int iters = 0, failures = 0, leftovers = 0, max_iters = 150;
    double start = now();
    /* bounded in count and in time, whatever the disk's fsync costs */
    while (iters < max_iters && (now() - start < 15.0 || iters < 20)) {
        pid_t pid = fork();
        if (pid < 0) { CHECK(pid >= 0); break; }
        if (pid == 0) kill_writer(out, latest, iters + 1);
        /* up to about three saves' worth of time after the fork */
        useconds_t delay = (useconds_t)(lorac_rng_float(&rng) * (3.0 * t_save + 0.002) * 1e6);
        usleep(delay);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK_MSG(WIFSIGNALED(status), "writer exited on its own (status %d)", status);
        iters++;
        if (!kill_verify(out, &latest)) failures++;
        /* without renameat2's exchange a re-saved N is briefly absent, so
         * N - 1 (kept by keep_last) may be the latest; never older */
        if (latest < prev - 1) { failures++; fprintf(stderr, "latest went back from %lld to %lld\n", (long long)prev, (long long)latest); }
        prev = latest;
        leftovers += lorac_checkpoint_cleanup(out);
    }
    printf("kill -9: %d kills (save takes %.2f ms), latest checkpoint-%lld, %d kills left a partial save behind, %d failures, %.1f s\n",
           iters, t_save * 1e3, (long long)latest, leftovers, failures, now() - start);
    CHECK(iters >= 20);
    CHECK(failures == 0);
    CHECK(leftovers > 0); /* some kills did land inside a save */
    CHECK(latest > 3);    /* and some saves completed */
}

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    snprintf(g_root, sizeof g_root, "%s/test_checkpoint.%d", tl_tmpdir(), (int)getpid());
    rm_rf(g_root);
    CHECK(mkdir(g_root, 0755) == 0);
    test_round_trip();
    test_mismatch();
    test_find_latest();
    test_state_parse();
    test_kill9();
    int rc = tl_finish("test_checkpoint");
    if (rc == 0) rm_rf(g_root);
    return rc;
}
