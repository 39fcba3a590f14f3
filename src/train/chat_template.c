/* Chat templates: rendering conversations the way the models' Jinja
 * templates do, as pieces that say which text is in the loss, and
 * recognising a template family from tokenizer_config.json.
 *
 * lorac does not run Jinja. The handful of template families in use are
 * written out here; a template is recognised by the strings only its family
 * writes, and anything else is refused rather than rendered approximately
 * (training on a format the model never sees at inference is a silent bug). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/dataset_internal.h"

/* ---- byte strings ---- */
int dbuf_put(dbuf_t *b, const char *s, size_t n) { return lorac_bytes_append(&b->s, &b->len, &b->cap, s, n); }

int dbuf_puts(dbuf_t *b, const char *s) { return dbuf_put(b, s, strlen(s)); }

void dbuf_free(dbuf_t *b) {
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

/* ---- names ---- */
static const char *const k_names[CHAT_COUNT] = {"chatml", "llama-2",      "llama-3",      "llama-3.1", "zephyr",
                                                 "mistral", "mistral-v0.1", "mistral-v0.2", "mistral-v1",
                                                 "mistral-v3", "qwen3",        "gemma",        "gemma3",
                                                 "phi3",    "phi4",         "phi4-unsloth", "phi4-mini"};

int chat_tpl_from_name(const char *name) {
    static const struct { const char *alias; chat_tpl_t t; } aliases[] = {
        {"chatml", CHAT_CHATML},     {"llama-2", CHAT_LLAMA2},    {"llama2", CHAT_LLAMA2},
        {"llama-3", CHAT_LLAMA3},    {"llama3", CHAT_LLAMA3},     {"llama-3.1", CHAT_LLAMA31},
        {"llama3.1", CHAT_LLAMA31},  {"llama-3.2", CHAT_LLAMA31}, {"llama3.2", CHAT_LLAMA31},
        {"zephyr", CHAT_ZEPHYR},     {"mistral", CHAT_MISTRAL},   {"mistral-nemo", CHAT_MISTRAL},
        {"mistral-v0.1", CHAT_MISTRAL_V01}, {"mistral-v0.2", CHAT_MISTRAL_V02}, {"mixtral", CHAT_MISTRAL_V02},
        {"mistral-v1", CHAT_MISTRAL_V1},    {"mistral-v3", CHAT_MISTRAL_V3}, {"mistral-v0.3", CHAT_MISTRAL_V3},
        {"mistral-v3-tekken", CHAT_MISTRAL}, /* llama.cpp's names for v0.3's and NeMo's */
        {"qwen3", CHAT_QWEN3},       {"gemma", CHAT_GEMMA},       {"gemma2", CHAT_GEMMA},
        {"gemma3", CHAT_GEMMA3},     {"phi3", CHAT_PHI3},         {"phi-3", CHAT_PHI3},
        {"phi-3.5", CHAT_PHI3},      {"phi4", CHAT_PHI4},         {"phi-4", CHAT_PHI4},
        {"phi4-unsloth", CHAT_PHI4_UNSLOTH}, {"phi4-mini", CHAT_PHI4_MINI}, {"phi-4-mini", CHAT_PHI4_MINI},
    };
    if (!name) return -1;
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (!strcmp(name, aliases[i].alias)) return (int)aliases[i].t;
    return -1;
}

const char *chat_tpl_name(chat_tpl_t t) { return (int)t >= 0 && t < CHAT_COUNT ? k_names[t] : NULL; }

const char *lorac_dataset_chat_template_name(const char *name) {
    int t = chat_tpl_from_name(name);
    return t < 0 ? NULL : k_names[t];
}

/* Default BOS / EOS strings of a template ("<s>", "</s>", "<|begin_of_text|>"). */
static const char *chat_tpl_default_bos(chat_tpl_t t) {
    return t == CHAT_LLAMA3 || t == CHAT_LLAMA31 ? "<|begin_of_text|>" : t == CHAT_GEMMA || t == CHAT_GEMMA3 ? "<bos>" : "<s>";
}

static const char *chat_tpl_default_eos(chat_tpl_t t) {
    return t == CHAT_GEMMA || t == CHAT_GEMMA3 ? "<eos>" : t == CHAT_PHI3 || t == CHAT_PHI4_MINI ? "<|endoftext|>"
           : t == CHAT_PHI4 || t == CHAT_PHI4_UNSLOTH ? "<|im_end|>" : "</s>";
}

const char *lorac_dataset_chat_end_of_turn(const char *template_name, const char *eos) {
    switch (chat_tpl_from_name(template_name)) {
    case CHAT_CHATML:
    case CHAT_QWEN3:
    case CHAT_PHI4:
    case CHAT_PHI4_UNSLOTH: return "<|im_end|>";
    case CHAT_LLAMA3:
    case CHAT_LLAMA31: return "<|eot_id|>";
    case CHAT_GEMMA:
    case CHAT_GEMMA3: return "<end_of_turn>";
    case CHAT_PHI3:
    case CHAT_PHI4_MINI: return "<|end|>";
    case CHAT_LLAMA2:
    case CHAT_ZEPHYR:
    case CHAT_MISTRAL:
    case CHAT_MISTRAL_V01:
    case CHAT_MISTRAL_V02:
    case CHAT_MISTRAL_V1:
    case CHAT_MISTRAL_V3: return eos ? eos : chat_tpl_default_eos(CHAT_ZEPHYR);
    default: return NULL;
    }
}

/* Special strings the template writes, which must be single tokens; returns
 * how many were stored in out (at most 8). */
static size_t chat_tpl_specials(chat_tpl_t t, const char *bos, const char *eos, const char **out) {
    size_t n = 0;
    switch (t) {
    case CHAT_CHATML:
    case CHAT_QWEN3: out[n++] = "<|im_start|>"; out[n++] = "<|im_end|>"; break;
    case CHAT_LLAMA2: out[n++] = bos; out[n++] = eos; break;
    case CHAT_LLAMA3:
    case CHAT_LLAMA31:
        out[n++] = bos; out[n++] = "<|start_header_id|>"; out[n++] = "<|end_header_id|>"; out[n++] = "<|eot_id|>";
        break;
    case CHAT_ZEPHYR: out[n++] = eos; break;
    case CHAT_MISTRAL:
    case CHAT_MISTRAL_V3: out[n++] = bos; out[n++] = "[INST]"; out[n++] = "[/INST]"; out[n++] = eos; break;
    case CHAT_MISTRAL_V01: /* [INST] and [/INST] are plain text in these models' vocabularies */
    case CHAT_MISTRAL_V02:
    case CHAT_MISTRAL_V1: out[n++] = bos; out[n++] = eos; break;
    case CHAT_GEMMA:
    case CHAT_GEMMA3: out[n++] = bos; out[n++] = "<start_of_turn>"; out[n++] = "<end_of_turn>"; break;
    case CHAT_PHI3:
    case CHAT_PHI4_MINI:
        out[n++] = "<|system|>"; out[n++] = "<|user|>"; out[n++] = "<|assistant|>"; out[n++] = "<|end|>"; out[n++] = eos;
        break;
    case CHAT_PHI4:
    case CHAT_PHI4_UNSLOTH: out[n++] = "<|im_start|>"; out[n++] = "<|im_sep|>"; out[n++] = "<|im_end|>"; break;
    case CHAT_COUNT: break;
    }
    return n;
}

/* ---- rendering ---- */
void chat_render_free(chat_render_t *r) {
    dbuf_free(&r->text);
    free(r->pieces);
    r->pieces = NULL;
    r->n = r->cap = 0;
}

/* Starts a new piece at the end of the text. */
static int piece(chat_render_t *r, bool trainable, bool chunk_start) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        chat_piece_t *p = realloc(r->pieces, cap * sizeof *p);
        if (!p) return -1;
        r->pieces = p;
        r->cap = cap;
    }
    if (dbuf_put(&r->text, "", 0)) return -1; /* text.s exists even when empty */
    r->pieces[r->n++] = (chat_piece_t){r->text.len, r->text.len, trainable, chunk_start};
    return 0;
}

/* Appends to the current piece. */
static int add_n(chat_render_t *r, const char *s, size_t n) {
    if (dbuf_put(&r->text, s, n)) return -1;
    r->pieces[r->n - 1].end = r->text.len;
    return 0;
}
static int add(chat_render_t *r, const char *s) { return add_n(r, s, strlen(s)); }

/* The length of the UTF-8 whitespace character that takes exactly the n
 * bytes at p, or 0: the code points Python's str.isspace() accepts (U+0009
 * to U+000D, U+001C to U+0020, U+0085, U+00A0, U+1680, U+2000 to U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000). */
static size_t space_len(const unsigned char *p, size_t n) {
    if (n == 1) return (p[0] >= 0x09 && p[0] <= 0x0d) || (p[0] >= 0x1c && p[0] <= 0x20);
    if (n == 2) return p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0) ? 2 : 0;
    if (n != 3) return 0;
    if (p[0] == 0xe1) return p[1] == 0x9a && p[2] == 0x80 ? 3 : 0;
    if (p[0] == 0xe3) return p[1] == 0x80 && p[2] == 0x80 ? 3 : 0;
    if (p[0] != 0xe2) return 0;
    if (p[1] == 0x80) return p[2] <= 0x8a || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf ? 3 : 0;
    return p[1] == 0x81 && p[2] == 0x9f ? 3 : 0;
}

/* Python's str.strip() / Jinja's trim: whitespace as Python defines it,
 * Unicode spaces included (a reply ending in U+3000 loses it there too). */
static int add_stripped(chat_render_t *r, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t a = 0, b = strlen(s), k;
    for (bool more = true; more && a < b;) {
        more = false;
        for (k = 1; k <= 3 && a + k <= b; k++)
            if (space_len(u + a, k)) { a += k; more = true; break; }
    }
    for (bool more = true; more && b > a;) {
        more = false;
        for (k = 1; k <= 3 && k <= b - a; k++)
            if (space_len(u + b - k, k)) { b -= k; more = true; break; }
    }
    return add_n(r, s + a, b - a);
}

static int is_role(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant");
}

/* Templates that raise an exception unless user and assistant alternate
 * from message `first` on: is m[i] the role its place asks for? */
static lorac_status_t check_turn(chat_tpl_t t, const lorac_chat_message_t *m, size_t i, size_t first, bool system_ok) {
    const char *want = (i - first) % 2 == 0 ? "user" : "assistant";
    if (!strcmp(m[i].role, want)) return LORAC_STATUS_OK;
    return lorac_error(LORAC_STATUS_FORMAT,
                       "%s chat template: message %zu is \"%s\" where \"%s\" was expected (roles must alternate "
                       "user/assistant%s)", k_names[t], i + 1, m[i].role, want,
                       system_ok ? " after an optional first system message" : ", starting with user");
}

#define TRY(x) do { if (x) return lorac_error(LORAC_STATUS_NOMEM, "out of memory rendering a conversation"); } while (0)

/* A ChatML turn's header "<|im_start|>{role}\n" (not in the loss), then a
 * piece for its body, in the loss when trainable. */
static int chatml_open(chat_render_t *r, const char *role, bool trainable) {
    return piece(r, false, true) || add(r, "<|im_start|>") || add(r, role) || add(r, "\n") || piece(r, trainable, false);
}

/* Ends the body with "<|im_end|>"; the newline after it is out of the loss
 * (the next turn's header follows). */
static int chatml_close(chat_render_t *r) { return add(r, "<|im_end|>") || piece(r, false, true) || add(r, "\n"); }

/* <|im_start|>{role}\n{content}<|im_end|>\n; the reply and its <|im_end|> are
 * in the loss, the newline after it is not. */
static lorac_status_t render_chatml(chat_render_t *r, const char *default_system, const lorac_chat_message_t *m,
                                    size_t n) {
    if (default_system && (n == 0 || strcmp(m[0].role, "system")))
        TRY(chatml_open(r, "system", false) || add(r, default_system) || chatml_close(r));
    for (size_t i = 0; i < n; i++)
        TRY(chatml_open(r, m[i].role, !strcmp(m[i].role, "assistant")) || add(r, m[i].content) || chatml_close(r));
    return LORAC_STATUS_OK;
}

/* Python's s.lstrip('\n') / s.rstrip('\n') on the bytes [*a, *b). */
static void lstrip_newlines(const char *s, size_t *a, size_t b) { while (*a < b && s[*a] == '\n') ++*a; }
static void rstrip_newlines(const char *s, size_t a, size_t *b) { while (*b > a && s[*b - 1] == '\n') --*b; }

/* The last occurrence of `needle` in s[0, n), or NULL. */
static const char *last_in(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* Qwen3's template (Qwen3 0.6B-235B, thinking and not): ChatML, except
 * that a reply's own "<think>...</think>" is taken apart, as the template
 * does with content.split('</think>'): the reasoning is the text before
 * the first "</think>" (after its last "<think>", newlines trimmed), the
 * reply the text after the last. Replies before the last question (the
 * last user turn that is not a "<tool_response>...</tool_response>") lose
 * their reasoning; those after it keep it in a "<think>\n...\n</think>\n\n"
 * block, and the conversation's last reply always has one, empty when it
 * had no reasoning: what Qwen3 writes when thinking is turned off. The
 * block is in the loss with the reply. */
static lorac_status_t render_qwen3(chat_render_t *r, const lorac_chat_message_t *m, size_t n) {
    static const char close_tag[] = "</think>", open_tag[] = "<think>";
    size_t last_query = n > 0 ? n - 1 : 0;
    for (size_t i = n; i-- > 0;) {
        const char *c = m[i].content;
        size_t len = strlen(c);
        bool tool_response = !strncmp(c, "<tool_response>", 15) && len >= 16 && !strcmp(c + len - 16, "</tool_response>");
        if (!strcmp(m[i].role, "user") && !tool_response) { last_query = i; break; }
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].role, "assistant")) {
            TRY(chatml_open(r, m[i].role, false) || add(r, m[i].content) || chatml_close(r));
            continue;
        }
        const char *c = m[i].content;
        size_t len = strlen(c), ra = 0, rb = 0, ca = 0, cb = len; /* reasoning c[ra, rb), reply c[ca, cb) */
        const char *first_close = strstr(c, close_tag);
        if (first_close) {
            rb = (size_t)(first_close - c);
            rstrip_newlines(c, 0, &rb);
            const char *open = last_in(c, rb, open_tag);
            ra = open ? (size_t)(open - c) + sizeof open_tag - 1 : 0;
            lstrip_newlines(c, &ra, rb);
            ca = (size_t)(last_in(c, len, close_tag) - c) + sizeof close_tag - 1;
            lstrip_newlines(c, &ca, cb);
        }
        TRY(chatml_open(r, "assistant", true));
        if (i > last_query && (i == n - 1 || rb > ra)) {
            rstrip_newlines(c, ra, &rb); /* reasoning_content.strip('\n'); content.lstrip('\n') */
            lstrip_newlines(c, &ca, cb);
            TRY(add(r, "<think>\n") || add_n(r, c + ra, rb - ra) || add(r, "\n</think>\n\n"));
        }
        TRY(add_n(r, c + ca, cb - ca) || chatml_close(r));
    }
    return LORAC_STATUS_OK;
}

/* Llama 2's template: an optional system message folded into the first user
 * turn, user and assistant strictly alternating, each user turn opening with
 * BOS and each reply closing with EOS. */
static lorac_status_t render_llama2(chat_render_t *r, const lorac_chat_message_t *m, size_t n, const char *bos,
                                    const char *eos) {
    size_t first = 0;
    const char *system = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) { system = m[0].content; first = 1; }
    for (size_t i = first; i < n; i++) {
        lorac_status_t s = check_turn(CHAT_LLAMA2, m, i, first, true);
        if (s) return s;
        if ((i - first) % 2 == 0) {
            TRY(piece(r, false, true) || add(r, bos) || add(r, "[INST] "));
            if (i == first && system) {
                /* the template strips "<<SYS>>\n{system}\n<</SYS>>\n\n{user}" as a whole */
                dbuf_t c = {0};
                int bad = dbuf_puts(&c, "<<SYS>>\n") || dbuf_puts(&c, system) || dbuf_puts(&c, "\n<</SYS>>\n\n") ||
                          dbuf_puts(&c, m[i].content) || add_stripped(r, c.s);
                dbuf_free(&c);
                TRY(bad);
            } else {
                TRY(add_stripped(r, m[i].content));
            }
            TRY(add(r, " [/INST]"));
        } else {
            /* follows " [/INST]" with no special token between: same chunk */
            TRY(piece(r, true, false) || add(r, " ") || add_stripped(r, m[i].content) || add(r, " ") || add(r, eos));
        }
    }
    return LORAC_STATUS_OK;
}

/* Gemma's templates: BOS, then per message "<start_of_turn>{role}\n"
 * (assistant written "model"), the stripped content and "<end_of_turn>\n";
 * the reply and its <end_of_turn> are in the loss, the newline after it is
 * not. A message must be a user turn exactly where it falls on an even
 * place (the Jinja's "(role == 'user') != (loop.index0 % 2 == 0)" raises).
 * Gemma 1's and 2's (t = CHAT_GEMMA) refuse a first system message; Gemma
 * 3's puts it, unstripped, and a blank line before the first turn's content
 * (its first_user_prefix). */
static lorac_status_t render_gemma(chat_render_t *r, chat_tpl_t t, const lorac_chat_message_t *m, size_t n,
                                   const char *bos) {
    size_t first = 0;
    const char *prefix = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) {
        if (t == CHAT_GEMMA)
            return lorac_error(LORAC_STATUS_FORMAT, "gemma chat template: a system message is not supported (Gemma 1's "
                               "and 2's templates refuse it; Gemma 3's, --chat-template gemma3, takes one)");
        prefix = m[0].content;
        first = 1;
    }
    TRY(piece(r, false, true) || add(r, bos));
    for (size_t i = first; i < n; i++) {
        bool user = !strcmp(m[i].role, "user"), assistant = !strcmp(m[i].role, "assistant");
        if (user != ((i - first) % 2 == 0)) return check_turn(t, m, i, first, t == CHAT_GEMMA3);
        TRY(piece(r, false, true) || add(r, "<start_of_turn>") || add(r, assistant ? "model" : m[i].role) || add(r, "\n"));
        TRY(piece(r, assistant, false) || (i == first && prefix && (add(r, prefix) || add(r, "\n\n"))) ||
            add_stripped(r, m[i].content) || add(r, "<end_of_turn>"));
        TRY(piece(r, false, true) || add(r, "\n"));
    }
    return LORAC_STATUS_OK;
}

/* Phi-3.5's template: per message "<|{role}|>\n{content}<|end|>\n", a system
 * message only when its content is not empty (and wherever it comes), no
 * BOS, and EOS after the last turn (which lorac_dataset_chat_render_generation
 * replaces by the generation prompt, as the Jinja's else-branch does). The
 * reply and its <|end|> are in the loss; the newline after it and the final
 * EOS are not. No order of roles is enforced. */
static lorac_status_t render_phi3(chat_render_t *r, const lorac_chat_message_t *m, size_t n, const char *eos) {
    for (size_t i = 0; i < n; i++) {
        bool assistant = !strcmp(m[i].role, "assistant");
        if (!strcmp(m[i].role, "system") && !m[i].content[0]) continue;
        TRY(piece(r, false, true) || add(r, "<|") || add(r, m[i].role) || add(r, "|>\n"));
        TRY(piece(r, assistant, false) || add(r, m[i].content) || add(r, "<|end|>"));
        TRY(piece(r, false, true) || add(r, "\n"));
    }
    TRY(piece(r, false, true) || add(r, eos));
    return LORAC_STATUS_OK;
}

/* Phi-4-mini's template: per message "<|{role}|>{content}<|end|>" with no
 * newlines, a system message even when empty, no BOS, and EOS after the
 * last turn, replaced by the generation prompt (as Phi-3.5's). Its tools
 * branch (a system message with a "tools" key) is not taken: lorac's
 * messages carry no tools. The reply and its <|end|> are in the loss. */
static lorac_status_t render_phi4_mini(chat_render_t *r, const lorac_chat_message_t *m, size_t n, const char *eos) {
    for (size_t i = 0; i < n; i++) {
        TRY(piece(r, false, true) || add(r, "<|") || add(r, m[i].role) || add(r, "|>"));
        TRY(piece(r, !strcmp(m[i].role, "assistant"), false) || add(r, m[i].content) || add(r, "<|end|>"));
    }
    TRY(piece(r, false, true) || add(r, eos));
    return LORAC_STATUS_OK;
}

/* Phi-4's template (microsoft/phi-4): "<|im_start|>{role}<|im_sep|>
 * {content}<|im_end|>" with no newlines, where the assistant's header is
 * written at the end of each user turn rather than before each reply, so
 * that a conversation ending with a question ends with it whether or not a
 * generation prompt is asked for. Unsloth's copy (unsloth: true) writes
 * each message's own header and the generation prompt on request. No BOS,
 * no order of roles enforced. A reply and its <|im_end|> are in the loss.
 * Every piece starts at a special token or right after one: a chunk each. */
static lorac_status_t render_phi4(chat_render_t *r, const lorac_chat_message_t *m, size_t n, bool unsloth) {
    for (size_t i = 0; i < n; i++) {
        bool assistant = !strcmp(m[i].role, "assistant");
        if (!assistant || unsloth)
            TRY(piece(r, false, true) || add(r, "<|im_start|>") || add(r, m[i].role) || add(r, "<|im_sep|>"));
        TRY(piece(r, assistant, true) || add(r, m[i].content) || add(r, "<|im_end|>")); /* after a special token */
        if (!strcmp(m[i].role, "user") && !unsloth)
            TRY(piece(r, false, true) || add(r, "<|im_start|>assistant<|im_sep|>"));
    }
    return LORAC_STATUS_OK;
}

/* Llama 3: BOS, then per message a header and the stripped content closed by
 * <|eot_id|>. Llama 3.1/3.2 always open with a system block carrying the
 * knowledge-cutoff lines and the (first) system message. */
static lorac_status_t render_llama3(chat_render_t *r, const lorac_chat_message_t *m, size_t n, const char *bos,
                                    bool v31) {
    size_t first = 0;
    TRY(piece(r, false, true) || add(r, bos));
    if (v31) {
        const char *system = "";
        if (n > 0 && !strcmp(m[0].role, "system")) { system = m[0].content; first = 1; }
        TRY(add(r, "<|start_header_id|>system<|end_header_id|>\n\n"
                   "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n") ||
            add_stripped(r, system) || add(r, "<|eot_id|>"));
    }
    for (size_t i = first; i < n; i++) {
        bool assistant = !strcmp(m[i].role, "assistant");
        if (i > first || v31) TRY(piece(r, false, true));
        TRY(add(r, "<|start_header_id|>") || add(r, m[i].role) || add(r, "<|end_header_id|>\n\n"));
        TRY(piece(r, assistant, false) || add_stripped(r, m[i].content) || add(r, "<|eot_id|>"));
    }
    return LORAC_STATUS_OK;
}

/* Zephyr / TinyLlama-Chat: <|{role}|>\n{content}{eos}\n. Only the EOS is a
 * special token ("<|user|>" is plain text), so a chunk runs from the newline
 * after one EOS to the next EOS. */
static lorac_status_t render_zephyr(chat_render_t *r, const lorac_chat_message_t *m, size_t n, const char *eos) {
    for (size_t i = 0; i < n; i++) {
        bool assistant = !strcmp(m[i].role, "assistant");
        TRY(piece(r, false, i == 0) || add(r, "<|") || add(r, m[i].role) || add(r, "|>\n"));
        TRY(piece(r, assistant, false) || add(r, m[i].content) || add(r, eos));
        TRY(piece(r, false, true) || add(r, "\n"));
    }
    return LORAC_STATUS_OK;
}

/* Mistral's [INST] templates with [INST] and [/INST] as special tokens, as
 * Mistral NeMo writes it (t = CHAT_MISTRAL) and as Mistral 7B Instruct v0.3
 * and Mistral Large 2407 do (CHAT_MISTRAL_V3): BOS, then "[INST]{user}[/INST]"
 * and "{assistant}{eos}" strictly alternating after an optional first system
 * message; v3 writes "[INST] {user}[/INST]" and " {assistant stripped}{eos}"
 * (Jinja's trim), NeMo no spaces and no stripping. The system message goes
 * into the user turn that is the conversation's last message, and nowhere
 * else: a conversation that ends with a reply (a training example) loses it,
 * as the Jinja templates drop it. Every piece starts a chunk. */
static lorac_status_t render_mistral(chat_render_t *r, chat_tpl_t t, const lorac_chat_message_t *m, size_t n,
                                     const char *bos, const char *eos) {
    bool v3 = t == CHAT_MISTRAL_V3;
    size_t first = 0;
    const char *system = NULL;
    if (n > 0 && !strcmp(m[0].role, "system")) { system = m[0].content; first = 1; }
    TRY(piece(r, false, true) || add(r, bos));
    for (size_t i = first; i < n; i++) {
        lorac_status_t s = check_turn(t, m, i, first, true);
        if (s) return s;
        if ((i - first) % 2 == 0) {
            TRY(piece(r, false, true) || add(r, v3 ? "[INST] " : "[INST]"));
            if (system && i == n - 1) TRY(add(r, system) || add(r, "\n\n"));
            TRY(add(r, m[i].content) || add(r, "[/INST]"));
        } else if (v3) {
            TRY(piece(r, true, true) || add(r, " ") || add_stripped(r, m[i].content) || add(r, eos));
        } else {
            TRY(piece(r, true, true) || add(r, m[i].content) || add(r, eos));
        }
    }
    return LORAC_STATUS_OK;
}

/* The [INST] templates Mistral first published for Mistral 7B Instruct
 * v0.1 (v01: each reply closed by "{eos} ") and for Mixtral 8x7B Instruct
 * v0.1 and Mistral 7B v0.2 (v02: "{eos}"), and the one it later replaced
 * them with (v1): BOS, then "[INST] {user} [/INST]{assistant}" strictly
 * alternating, no stripping. v01 and v02 take no system message; v1 puts a
 * space before each [INST] and each reply, and folds an optional first
 * system message into the first user turn ("{system}\n\n{user}"). Only
 * BOS and EOS are special tokens, so a chunk runs from one to the next, and
 * a reply (with its EOS) shares the chunk of the " [/INST]" before it. */
static lorac_status_t render_mistral_spaced(chat_render_t *r, chat_tpl_t t, const lorac_chat_message_t *m, size_t n,
                                            const char *bos, const char *eos) {
    size_t first = 0;
    const char *system = NULL, *name = k_names[t];
    if (n > 0 && !strcmp(m[0].role, "system")) {
        if (t != CHAT_MISTRAL_V1)
            return lorac_error(LORAC_STATUS_FORMAT, "%s chat template: message 1 is \"system\"; the template takes only "
                               "user and assistant messages (mistral-v1 folds a system message into the first turn)", name);
        system = m[0].content;
        first = 1;
    }
    const char *lead = t == CHAT_MISTRAL_V1 ? " " : "";
    TRY(piece(r, false, true) || add(r, bos));
    for (size_t i = first; i < n; i++) {
        lorac_status_t s = check_turn(t, m, i, first, t == CHAT_MISTRAL_V1);
        if (s) return s;
        if ((i - first) % 2 == 0) {
            if (r->pieces[r->n - 1].trainable) TRY(piece(r, false, true)); /* after a reply's EOS */
            TRY(add(r, lead) || add(r, "[INST] "));
            if (system && i == first) TRY(add(r, system) || add(r, "\n\n"));
            TRY(add(r, m[i].content) || add(r, " [/INST]"));
        } else {
            TRY(piece(r, true, false) || add(r, lead) || add(r, m[i].content) || add(r, eos));
            if (t == CHAT_MISTRAL_V01) TRY(piece(r, false, true) || add(r, " "));
        }
    }
    return LORAC_STATUS_OK;
}

lorac_status_t chat_render_pieces(chat_tpl_t t, const char *default_system, const lorac_chat_message_t *m, size_t n,
                                  const char *bos, const char *eos, chat_render_t *r) {
    r->n = 0;
    r->text.len = 0;
    if (r->text.s) r->text.s[0] = '\0';
    if (!bos) bos = chat_tpl_default_bos(t);
    if (!eos) eos = chat_tpl_default_eos(t);
    for (size_t i = 0; i < n; i++) {
        if (!is_role(m[i].role))
            return lorac_error(LORAC_STATUS_FORMAT, "message %zu: unknown role \"%s\" (system, user or assistant)", i + 1,
                               m[i].role);
    }
    switch (t) {
    case CHAT_CHATML: return render_chatml(r, default_system, m, n);
    case CHAT_QWEN3: return render_qwen3(r, m, n);
    case CHAT_LLAMA2: return render_llama2(r, m, n, bos, eos);
    case CHAT_LLAMA3: return render_llama3(r, m, n, bos, false);
    case CHAT_LLAMA31: return render_llama3(r, m, n, bos, true);
    case CHAT_ZEPHYR: return render_zephyr(r, m, n, eos);
    case CHAT_MISTRAL:
    case CHAT_MISTRAL_V3: return render_mistral(r, t, m, n, bos, eos);
    case CHAT_MISTRAL_V01:
    case CHAT_MISTRAL_V02:
    case CHAT_MISTRAL_V1: return render_mistral_spaced(r, t, m, n, bos, eos);
    case CHAT_GEMMA:
    case CHAT_GEMMA3: return render_gemma(r, t, m, n, bos);
    case CHAT_PHI3: return render_phi3(r, m, n, eos);
    case CHAT_PHI4:
    case CHAT_PHI4_UNSLOTH: return render_phi4(r, m, n, t == CHAT_PHI4_UNSLOTH);
    case CHAT_PHI4_MINI: return render_phi4_mini(r, m, n, eos);
    case CHAT_COUNT: break;
    }
    return lorac_error(LORAC_STATUS_INVALID_ARG, "bad chat template id %d", (int)t);
}

lorac_status_t lorac_dataset_chat_render(const char *template_name, const char *default_system,
                                         const lorac_chat_message_t *messages, size_t n_messages, const char *bos,
                                         const char *eos, char **out, size_t *len) {
    *out = NULL;
    int t = chat_tpl_from_name(template_name);
    if (t < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown chat template '%s' (" LORAC_CHAT_TEMPLATES ")",
                           template_name ? template_name : "(null)");
    chat_render_t r = {0};
    lorac_status_t s = chat_render_pieces((chat_tpl_t)t, default_system, messages, n_messages, bos, eos, &r);
    if (!s && dbuf_put(&r.text, "", 0)) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (s) { chat_render_free(&r); return s; }
    free(r.pieces);
    *out = r.text.s;
    if (len) *len = r.text.len;
    return LORAC_STATUS_OK;
}

/* The assistant header each template's Jinja writes when
 * add_generation_prompt is true. */
static const char *generation_prompt(chat_tpl_t t) {
    switch (t) {
    case CHAT_CHATML:
    case CHAT_QWEN3: return "<|im_start|>assistant\n"; /* Qwen3: thinking on, its default */
    case CHAT_LLAMA3:
    case CHAT_LLAMA31: return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case CHAT_ZEPHYR:
    case CHAT_PHI3: return "<|assistant|>\n";
    case CHAT_GEMMA:
    case CHAT_GEMMA3: return "<start_of_turn>model\n";
    case CHAT_PHI4_UNSLOTH: return "<|im_start|>assistant<|im_sep|>";
    case CHAT_PHI4_MINI: return "<|assistant|>";
    case CHAT_PHI4: /* written after each user turn already */
    case CHAT_LLAMA2:  /* the text already ends with [/INST] */
    case CHAT_MISTRAL:
    case CHAT_MISTRAL_V01:
    case CHAT_MISTRAL_V02:
    case CHAT_MISTRAL_V1:
    case CHAT_MISTRAL_V3:
    case CHAT_COUNT: break;
    }
    return "";
}

lorac_status_t lorac_dataset_chat_render_generation(const char *template_name, const char *default_system,
                                                    const lorac_chat_message_t *messages, size_t n_messages,
                                                    const char *bos, const char *eos, bool enable_thinking, char **out,
                                                    size_t *len) {
    size_t n;
    lorac_status_t s = lorac_dataset_chat_render(template_name, default_system, messages, n_messages, bos, eos, out, &n);
    if (s) return s;
    dbuf_t b = {.s = *out, .len = n, .cap = n + 1};
    chat_tpl_t t = (chat_tpl_t)chat_tpl_from_name(template_name);
    /* Phi-3.5's and Phi-4-mini's end a conversation with EOS only without the generation prompt */
    const char *end = t == CHAT_PHI3 || t == CHAT_PHI4_MINI ? (eos ? eos : chat_tpl_default_eos(t)) : NULL;
    if (end && b.len >= strlen(end) && !memcmp(b.s + b.len - strlen(end), end, strlen(end))) b.s[b.len -= strlen(end)] = '\0';
    if (dbuf_puts(&b, generation_prompt(t)) ||
        (t == CHAT_QWEN3 && !enable_thinking && dbuf_puts(&b, "<think>\n\n</think>\n\n"))) {
        dbuf_free(&b);
        *out = NULL;
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory rendering a conversation");
    }
    *out = b.s;
    if (len) *len = b.len;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_dataset_chat_kwargs_parse(const char *json, size_t len, int *enable_thinking) {
    cJSON *o = cJSON_ParseWithLength(json, len);
    lorac_status_t s = LORAC_STATUS_OK;
    const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "enable_thinking") : NULL;
    if (!cJSON_IsObject(o))
        s = lorac_error(LORAC_STATUS_FORMAT, "chat template variables must be a JSON object, e.g. '{\"enable_thinking\": false}'");
    else if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v))
        s = lorac_error(LORAC_STATUS_FORMAT, "chat template variable \"enable_thinking\" must be true or false");
    else if (cJSON_IsBool(v))
        *enable_thinking = cJSON_IsTrue(v);
    cJSON_Delete(o);
    return s;
}

lorac_status_t lorac_dataset_chat_tokens(const char *template_name, const lorac_tokenizer_t *tok,
                                         const char *tokenizer_config, char **bos, char **eos) {
    *bos = *eos = NULL;
    int t = chat_tpl_from_name(template_name);
    if (t < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown chat template '%s' (" LORAC_CHAT_TEMPLATES ")",
                           template_name ? template_name : "(null)");
    char *cfg[2] = {NULL, NULL};
    lorac_status_t s = tokenizer_config ? chat_config_tokens(tokenizer_config, &cfg[0], &cfg[1]) : LORAC_STATUS_OK;
    if (s) return s;
    const char *def[2] = {chat_tpl_default_bos((chat_tpl_t)t), chat_tpl_default_eos((chat_tpl_t)t)};
    int32_t own[2] = {lorac_tokenizer_bos_id(tok), lorac_tokenizer_eos_id(tok)};
    char **dst[2] = {bos, eos};
    for (int i = 0; i < 2 && !s; i++) {
        const char *v = cfg[i];
        if (!v && lorac_tokenizer_token_id(tok, def[i]) >= 0) v = def[i];
        if (!v && own[i] >= 0) v = lorac_tokenizer_token_str(tok, own[i]);
        if (!(*dst[i] = strdup(v ? v : def[i]))) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    }
    free(cfg[0]);
    free(cfg[1]);
    const char *specials[8];
    size_t ns = s ? 0 : chat_tpl_specials((chat_tpl_t)t, *bos, *eos, specials);
    for (size_t i = 0; i < ns && !s; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        s = lorac_tokenizer_encode(tok, specials[i], strlen(specials[i]), false, &ids, &n);
        free(ids);
        if (s != LORAC_STATUS_NOMEM && (s || n != 1))
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "chat template %s writes \"%s\", which is not a single token of this "
                            "tokenizer; pick the model's own template with --chat-template", chat_tpl_name((chat_tpl_t)t),
                            specials[i]);
    }
    if (s) {
        free(*bos);
        free(*eos);
        *bos = *eos = NULL;
    }
    return s;
}

/* ---- recognition ---- */

/* The default system message of a chatml template: the literal text of a
 * "<|im_start|>system\n...<|im_end|>" string in the template (SmolLM2 and
 * Qwen2.5 write one for conversations without a system message). Occurrences
 * built from variables (quotes, braces, escapes inside) are passed over. */
static char *chatml_default_system(const char *jinja) {
    static const char open[] = "<|im_start|>system";
    for (const char *p = strstr(jinja, open); p; p = strstr(p + 1, open)) {
        const char *q = p + sizeof open - 1;
        if (*q == '\n') q += 1;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        size_t n = (size_t)(end - q);
        if (memchr(q, '\'', n) || memchr(q, '"', n) || memchr(q, '{', n) || memchr(q, '}', n) || memchr(q, '\\', n) ||
            memchr(q, '\n', n))
            continue;
        char *s = malloc(n + 1);
        if (!s) return NULL;
        memcpy(s, q, n);
        s[n] = '\0';
        return s;
    }
    return NULL;
}

/* Phi-3.5-mini-instruct's template, exactly: its four string pieces, each
 * newline written as a newline or as Jinja's \n escape (both render one),
 * the system message skipped when empty, and no BOS. */
static int phi35_template(const char *jinja) {
    static const char *const parts[] = {
        "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>@' + message['content'] + '<|end|>@'}}",
        "{% elif message['role'] == 'user' %}{{'<|user|>@' + message['content'] + '<|end|>@'}}",
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>@' + message['content'] + '<|end|>@'}}"
        "{% endif %}{% endfor %}",
        "{% if add_generation_prompt %}{{ '<|assistant|>@' }}{% else %}{{ eos_token }}{% endif %}",
    };
    if (strstr(jinja, "bos_token")) return 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        int found = 0;
        for (int escaped = 0; escaped < 2 && !found; escaped++) {
            char want[512];
            size_t k = 0;
            for (const char *p = parts[i]; *p && k + 2 < sizeof want; p++) {
                if (*p != '@') want[k++] = *p;
                else if (escaped) want[k++] = '\\', want[k++] = 'n';
                else want[k++] = '\n';
            }
            want[k] = '\0';
            found = strstr(jinja, want) != NULL;
        }
        if (!found) return 0;
    }
    return 1;
}

/* Phi-4's templates, character for character: microsoft/phi-4's, and the
 * copy Unsloth republished (every message with its header, and
 * add_generation_prompt). */
static const char k_phi4_jinja[] =
    "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + "
    "message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') %}"
    "{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}";
static const char k_phi4_mini_jinja[] =
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
    "+ '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}";
static const char k_phi4_unsloth_jinja[] =
    "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant"
    "<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}";

/* 1 when jinja is `want` with only whitespace around it. */
static int same_template(const char *jinja, const char *want) {
    while (*jinja == ' ' || *jinja == '\n' || *jinja == '\t' || *jinja == '\r') jinja++;
    size_t n = strlen(want);
    if (strncmp(jinja, want, n)) return 0;
    for (jinja += n; *jinja; jinja++)
        if (*jinja != ' ' && *jinja != '\n' && *jinja != '\t' && *jinja != '\r') return 0;
    return 1;
}

lorac_status_t lorac_dataset_chat_template_recognize(const char *jinja, const char **name, char **default_system) {
    static const char hint[] = "pass --chat-template " LORAC_CHAT_TEMPLATES " if the model was trained "
                               "with one of those";
    if (default_system) *default_system = NULL;
    *name = NULL;
    chat_tpl_t t;
    if (strstr(jinja, "<|im_sep|>")) { /* Phi-4's ChatML-like turns, which ChatML's rendering would get wrong */
        if (same_template(jinja, k_phi4_jinja)) t = CHAT_PHI4;
        else if (same_template(jinja, k_phi4_unsloth_jinja)) t = CHAT_PHI4_UNSLOTH;
        else
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "a Phi-4 template (<|im_sep|>) other than microsoft/phi-4's "
                               "and Unsloth's copy of it, which lorac cannot render exactly; %s", hint);
    } else if (strstr(jinja, "<|im_start|>") && (strstr(jinja, "<think>") || strstr(jinja, "</think>"))) {
        /* Qwen3's, exactly: the replies' reasoning taken apart, kept after the last question, an empty block
         * in the last reply, and a generation prompt that opens a thinking block only with enable_thinking
         * false (the revision that also checks "content is string" renders strings the same; a derived one
         * that always closes the block in the generation prompt does not) */
        if (!strstr(jinja, "'\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n')") ||
            !strstr(jinja, "{%- if loop.index0 > ns.last_query_index %}") ||
            !strstr(jinja, "{%- if loop.last or (not loop.last and reasoning_content) %}") ||
            !strstr(jinja, ".split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')") ||
            !strstr(jinja, ".split('</think>')[-1].lstrip('\\n')") ||
            !strstr(jinja, "{{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}"))
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "a ChatML template with <think> blocks other than Qwen3's "
                               "(QwQ's, SmolLM3's, one derived from Qwen3's) that lorac cannot render exactly; %s", hint);
        t = CHAT_QWEN3;
    } else if (strstr(jinja, "<|im_start|>")) t = CHAT_CHATML;
    else if (strstr(jinja, "<|start_header_id|>")) t = strstr(jinja, "Cutting Knowledge Date") ? CHAT_LLAMA31 : CHAT_LLAMA3;
    else if (strstr(jinja, "[INST]") && strstr(jinja, "<<SYS>>")) t = CHAT_LLAMA2;
    else if (strstr(jinja, "\"[INST]\" + message[\"content\"] + \"[/INST]\"") &&
             strstr(jinja, "\"[INST]\" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\"") &&
             strstr(jinja, "message[\"content\"] + eos_token"))
        t = CHAT_MISTRAL; /* NeMo's spelling exactly */
    else if (strstr(jinja, "\"[INST] \" + message[\"content\"] + \"[/INST]\"") &&
             strstr(jinja, "\"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\"") &&
             strstr(jinja, "loop.last and system_message is defined") &&
             strstr(jinja, "\" \" + message[\"content\"]|trim + eos_token"))
        t = CHAT_MISTRAL_V3; /* v0.3's: the system message only in a last user turn, replies trimmed */
    else if (strstr(jinja, "' [INST] ' + message['content'] + ' [/INST]'") &&
             strstr(jinja, "' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]'") &&
             strstr(jinja, "loop.first and system_message is defined") && strstr(jinja, "' ' + message['content'] + eos_token"))
        t = CHAT_MISTRAL_V1;
    else if (strstr(jinja, "'[INST] ' + message['content'] + ' [/INST]'") && !strstr(jinja, "system") &&
             strstr(jinja, "{{ bos_token }}{% for message in messages %}") &&
             (strstr(jinja, "message['content'] + eos_token + ' ' }}") || strstr(jinja, "message['content'] + eos_token}}") ||
              strstr(jinja, "message['content'] + eos_token }}")))
        t = strstr(jinja, "eos_token + ' '") ? CHAT_MISTRAL_V01 : CHAT_MISTRAL_V02;
    else if (strstr(jinja, "<|user|>") && strstr(jinja, "<|assistant|>") && !strstr(jinja, "<|end|>")) t = CHAT_ZEPHYR;
    else if (strstr(jinja, "<start_of_turn>") && strstr(jinja, "raise_exception('System role not supported')") &&
             (strstr(jinja, "'<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n'") ||
              strstr(jinja, "'<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n'")))
        t = CHAT_GEMMA; /* Gemma 1's and 2's, their newlines escaped in the Jinja or not */
    else if (strstr(jinja, "<start_of_turn>") &&
             strstr(jinja, "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}") &&
             strstr(jinja, "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}") &&
             strstr(jinja, "{{ message['content'] | trim }}") && strstr(jinja, "{{ '<end_of_turn>\\n' }}"))
        t = CHAT_GEMMA3;
    else if (phi35_template(jinja))
        t = CHAT_PHI3;
    else if (same_template(jinja, k_phi4_mini_jinja))
        t = CHAT_PHI4_MINI;
    else {
        const char *family = strstr(jinja, "[INST]")             ? "a Mistral-style [INST] template other than NeMo's, "
                                                                  "Mistral 7B v0.1's, Mixtral's, their later one "
                                                                  "and v0.3's"
                             : strstr(jinja, "<start_of_turn>") ? "a Gemma template other than Gemma 2's and 3's"
                             : strstr(jinja, "<|end|>")         ? "a Phi template other than Phi-3.5's and Phi-4-mini's"
                                                                : "a chat template";
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s that lorac cannot render exactly; %s", family, hint);
    }
    *name = k_names[t];
    if (t == CHAT_CHATML && default_system) {
        *default_system = chatml_default_system(jinja);
    }
    return LORAC_STATUS_OK;
}

/* A special-token entry of tokenizer_config.json: "<s>" or {"content": "<s>", ...}. */
static char *config_token(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) && v->valuestring[0] ? strdup(v->valuestring) : NULL;
}

static lorac_status_t read_config(const char *path, cJSON **out) {
    char *text;
    size_t len;
    lorac_status_t s = lorac_file_read(path, (size_t)64 << 20, &text, &len);
    if (s) return s;
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", path);
    }
    return LORAC_STATUS_OK;
}

lorac_status_t chat_config_tokens(const char *path, char **bos, char **eos) {
    *bos = *eos = NULL;
    cJSON *o;
    lorac_status_t s = read_config(path, &o);
    if (s) return s;
    *bos = config_token(o, "bos_token");
    *eos = config_token(o, "eos_token");
    cJSON_Delete(o);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_dataset_chat_template_text(const char *path, char **jinja) {
    *jinja = NULL;
    cJSON *o;
    lorac_status_t s = read_config(path, &o);
    if (s) return s;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "chat_template"), *found = NULL;
    if (cJSON_IsString(t)) found = t;
    else if (cJSON_IsArray(t)) { /* [{"name": "default", "template": ...}, {"name": "tool_use", ...}] */
        const cJSON *e;
        cJSON_ArrayForEach(e, t) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name"), *v = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (!found && cJSON_IsString(n) && !strcmp(n->valuestring, "default") && cJSON_IsString(v)) found = v;
        }
    }
    if (found) *jinja = strdup(found->valuestring);
    cJSON_Delete(o); /* t and found with it */
    if (found) return *jinja ? LORAC_STATUS_OK : lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    /* newer transformers save the template beside the config */
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) : 0, len;
    char *jpath = malloc(dir_len + 32);
    if (!jpath) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (slash) memcpy(jpath, path, dir_len);
    strcpy(jpath + dir_len, slash ? "/chat_template.jinja" : "chat_template.jinja");
    if (lorac_file_read(jpath, (size_t)16 << 20, jinja, &len) != LORAC_STATUS_OK) *jinja = NULL;
    lorac_error_clear();
    free(jpath);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_dataset_chat_template_from_config(const char *path, const char **name, char **default_system) {
    if (default_system) *default_system = NULL;
    *name = NULL;
    char *jinja;
    lorac_status_t s = lorac_dataset_chat_template_text(path, &jinja);
    if (s) return s;
    if (!jinja) s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s has no chat_template (nor a chat_template.jinja beside it); "
                                "pass --chat-template " LORAC_CHAT_TEMPLATES, path);
    else if ((s = lorac_dataset_chat_template_recognize(jinja, name, default_system))) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", lorac_error_message());
        s = lorac_error(s, "%s: the chat template is %s", path, msg);
    }
    free(jinja);
    return s;
}
