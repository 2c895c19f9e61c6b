/*
 * nano - run, inspect and benchmark Nano models from the command line.
 *
 * Usage:
 *   nano run -m MODEL [-l LORA] [-p PROMPT | -p - | --multi-turn] [--instruct] [--system TEXT] [--allow-special]
 *            [-t TEMP]
 *            [-k TOP_K] [--top-p P] [--min-p P] [-r PENALTY] [-n MAX_TOKENS] [-s SEED]
 *            [--stop TEXT]... [--threads N] [--ctx N] [--batch N] [--portable] [--profile] [--ids]
 *   nano info MODEL
 *   nano seq2seq -m MODEL [-l LORA] [--threads N] [--causal] INPUT | -
 *   nano bench -m MODEL [-p PROMPT_TOKENS] [-n TOKENS] [--threads N] [--portable]
 *   nano --help | nano --version
 *
 * Without -p, `nano run` is an interactive chat (instruct mode): one question
 * per line of standard input (a terminal or a pipe), one answer per line.
 * In that chat and in `nano seq2seq -m MODEL -` every input line gets exactly
 * one output line: an answer's line breaks, carriage returns and backslashes
 * are written as \n, \r and \\ (README: "One answer per line").
 * --system TEXT puts a system text before every instruct-mode question, as
 * nano_train's `prepare sft --system prepend` trained the model on it.
 * --multi-turn makes the chat a conversation: each question is asked after the
 * earlier turns (nano_train.sampling.chat_prompt builds the same prompt).
 * This is the only file that may exit(); the library never does.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_report.h"
#include "nano.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
#include <unistd.h>
#define HAVE_ISATTY 1
#define HAVE_POSIX_FILES 1 /* stat: is a stray argument a file (did you mean -m)? */
#endif

#include <time.h>

static const char *USAGE =
    "usage: nano <command> [options]\n"
    "       nano --version     the library's ABI, compiler and threading\n"
    "\n"
    "commands:\n"
    "  run      generate text (continuation, instruct, or an interactive chat)\n"
    "  info     show a model file's header, config, tokenizer and tensor table\n"
    "  seq2seq  one forward over INPUT and the argmax at every position (full attention)\n"
    "  bench    time prefill and decode on random tokens\n"
    "\n"
    "nano run -m MODEL [options]\n"
    "  -m, --model PATH     model file (.bin)\n"
    "  -l, --lora PATH      LoRA module to attach\n"
    "  -p, --prompt TEXT    prompt ('-' reads it from standard input, without its final\n"
    "                       newlines); without -p: interactive chat, one question per input line,\n"
    "                       one answer per output line (escaped as in 'nano seq2seq ... -')\n"
    "                       (a model with full attention runs seq2seq instead, as 'nano seq2seq')\n"
    "  --instruct           wrap the prompt as " NANO_SPECIAL_INSTRUCT " PROMPT " NANO_SPECIAL_RESPONSE "\n"
    "  --allow-special      read special-token text in the -p prompt as those tokens (-p '" NANO_SPECIAL_BOS "'\n"
    "                       starts a document, for a model trained with --bos_eos); not with --instruct\n"
    "  --system TEXT        instruct mode (--instruct, or the chat): put TEXT and a line break before\n"
    "                       the prompt or every question (with --multi-turn: the earliest one kept), as\n"
    "                       'prepare sft' puts a system message (an empty TEXT adds nothing)\n"
    "  --multi-turn         the chat (no -p) keeps the conversation: each question is asked after the\n"
    "                       earlier questions and answers, laid out as 'prepare sft' lays out a\n"
    "                       multi-turn record; the oldest turns are dropped (with a note) while the\n"
    "                       prompt is over half the context\n"
    "  -t, --temperature T  0 = greedy (default 1.0)\n"
    "  -k, --top-k K        keep the K most likely tokens (0 = off)\n"
    "  --top-p P            nucleus sampling, 0 < P <= 1 (1 = off)\n"
    "  --min-p P            drop tokens below P * the top probability (0 = off)\n"
    "  -r, --repetition-penalty R   > 0 (1 = off)\n"
    "  -n, --max-tokens N   stop after N tokens (0 = until a stop token or the context is full;\n"
    "                       default 256)\n"
    "  -s, --seed S         sampler seed (default 0)\n"
    "  --stop TEXT          end the text where TEXT appears, as nano_train.sample --stop (repeatable;\n"
    "                       a special token's text stops at that token; " NANO_SPECIAL_EOS " always stops)\n"
    "  --threads N          threads (default: OpenMP's)\n"
    "  --ctx N              context length (default: the model's block size)\n"
    "  --batch N            prefill block size (default 64)\n"
    "  --portable           plain C kernels (no AVX2)\n"
    "  --profile            print timings and tokens/s to standard error\n"
    "  --ids                print only the token ids, prompt then generated, comma-separated\n"
    "                       on one line (the prompt's count goes to standard error)\n"
    "\n"
    "nano info MODEL\n"
    "nano seq2seq -m MODEL [-l LORA] [--threads N] [--causal] INPUT\n"
    "  -l, --lora PATH      LoRA module to attach (as for 'nano run')\n"
    "  --causal             causal attention, whatever the file says (default: full attention,\n"
    "                       unless a 2026.101 file records causal)\n"
    "  INPUT '-' reads one input per line of standard input and prints one answer per line\n"
    "  (an empty line gives an empty line; as in the chat, an answer's line breaks, carriage\n"
    "  returns and backslashes are written \\n, \\r and \\\\)\n"
    "nano bench -m MODEL [-p, --prompt-tokens N (default 128)] [-n, --tokens N (default 128)]\n"
    "           (defaults shrink to fit a context under 256 tokens)\n"
    "           [--threads N] [--ctx N] [--portable]\n"
    "\n"
    "examples:\n"
    "  nano run -m psycho.bin -p '今天' -t 0 -n 32\n"
    "  nano run -m model.bin --instruct -p 'What is a dipole?' -t 0.7 -k 40 --profile\n"
    "  nano run -m model.bin --instruct --system 'Answer briefly.' -p 'What is a dipole?'\n"
    "  echo 'hello' | nano run -m model.bin\n"
    "  printf 'Who are you?\\nWhy?\\n' | nano run -m model.bin --multi-turn -t 0\n"
    "  nano seq2seq -m sort6_f32.bin 251212\n"
    "  printf '251212\\n987654\\n' | nano seq2seq -m sort6_f32.bin -\n";

// ---------------------------------------------------------------------------
// Errors and argument parsing

#define MAX_COUNT (1L << 30) /* the largest -k and -n of `nano run`, nano_train.sample and nano-wss */

/* A usage error (exit status 2); `model_hint`: a stray argument that names a
 * model file, given without its -m, or NULL. */
static void vdie_usage(const char *model_hint, const char *fmt, va_list ap) {
    fprintf(stderr, "nano: error: ");
    vfprintf(stderr, fmt, ap);
    if (model_hint) fprintf(stderr, " (did you mean -m %s?)", model_hint);
    fprintf(stderr, "\n(run 'nano --help' for usage)\n");
    exit(2);
}

#ifdef __GNUC__
static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
static void die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vdie_usage(NULL, fmt, ap);
    va_end(ap); /* (not reached) */
}

/* Print "nano: error: WHAT: reason (NAME)"; returns 1, the exit status. */
static int report(nano_status st, const char *what) {
    fprintf(stderr, "nano: error: %s: %s (%s)\n", what, nano_status_string(st), nano_status_name(st));
    return 1;
}

static void die_status(nano_status st, const char *what) { exit(report(st, what)); }

/* Load parameters whose error_detail is detail[size]. */
static nano_model_params load_params(char *detail, size_t size) {
    nano_model_params mp = nano_model_default_params();
    mp.error_detail = detail;
    mp.error_detail_size = size;
    return mp;
}

static long parse_long(const char *opt, const char *v, long lo, long hi) {
    char *end = NULL;
    long x;
    errno = 0;
    x = strtol(v, &end, 10);
    /* strtol would also take leading spaces and a '+' */
    if (!(isdigit((unsigned char)v[0]) || (v[0] == '-' && isdigit((unsigned char)v[1]))) || errno || !end ||
        *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "nano: error: %s: expected an integer in [%ld, %ld], got '%s'\n"
                        "(run 'nano --help' for usage)\n", opt, lo, hi, v);
        exit(2);
    }
    return x;
}

static unsigned long long parse_u64(const char *opt, const char *v) {
    char *end = NULL;
    unsigned long long x;
    errno = 0;
    /* strtoull would take leading spaces and a '-' (" -1" becomes 2^64 - 1) */
    if (!isdigit((unsigned char)v[0])) die_usage("%s: expected a non-negative integer, got '%s'", opt, v);
    x = strtoull(v, &end, 10);
    if (errno || !end || *end || end == v) die_usage("%s: expected a non-negative integer, got '%s'", opt, v);
    return x;
}

/* Whether v is a decimal number, as nano_train.sample reads one: [+-], digits with a
 * '.' among or after them (one digit at least), then an optional exponent e[+-]digits.
 * strtod would also take spaces before it, hex floats (0x1p-3), inf and nan. */
static int is_decimal(const char *v) {
    int digits = 0;
    if (*v == '+' || *v == '-') v++;
    for (; isdigit((unsigned char)*v); v++) digits++;
    if (*v == '.')
        for (v++; isdigit((unsigned char)*v); v++) digits++;
    if (!digits) return 0;
    if (*v == 'e' || *v == 'E') {
        v++;
        if (*v == '+' || *v == '-') v++;
        if (!isdigit((unsigned char)*v)) return 0;
        while (isdigit((unsigned char)*v)) v++;
    }
    return *v == '\0';
}

/* A float setting: a decimal number within float's range (1e39 would be inf). One
 * too close to 0 for a float is 0, also below a double's range (1e-400: strtod's
 * ERANGE), as nano_train.sample and nano-wss read it. */
static float parse_float(const char *opt, const char *v) {
    double x;
    if (!is_decimal(v)) die_usage("%s: expected a finite number, got '%s'", opt, v);
    x = strtod(v, NULL);
    if (!(x >= -FLT_MAX && x <= FLT_MAX)) die_usage("%s: expected a finite number, got '%s'", opt, v);
    return (float)x;
}

static int is_decimal(const char *v);

/* The next argument as the value of option argv[*i]. One that looks like an option (a
 * '-' and more, not a negative number, no space) is not taken, as nano_train.sample's
 * argparse does not take it: `-p --instruct` read "--instruct" as the prompt. Such a
 * value goes after '=' (-p=-x). */
static const char *need_value(int argc, char **argv, int *i) {
    const char *v;
    if (*i + 1 >= argc) die_usage("%s: missing value%s", argv[*i], "");
    v = argv[*i + 1];
    if (v[0] == '-' && v[1] && !is_decimal(v) && !strchr(v, ' '))
        die_usage("%s: missing value (the next argument, '%s', is an option; a value that starts with '-' goes "
                  "after '=': %s=VALUE)", argv[*i], v, argv[*i]);
    return argv[++*i];
}

/* Whether argument a is long option l, '_' standing for '-' between its words
 * (--top_p is --top-p, as nano_train's commands take both spellings). */
static int is_long(const char *a, const char *l) {
    if (strncmp(a, "--", 2) != 0) return 0;
    for (; *a && *l; a++, l++)
        if (*a != *l && !(*a == '_' && *l == '-')) return 0;
    return *a == *l;
}

static int is_opt(const char *a, const char *s, const char *l) {
    return (s && strcmp(a, s) == 0) || (l && is_long(a, l));
}

/* An argument read as an option: "--name=value" is the long option --name with its
 * value, and "-xVALUE" or "-x=VALUE" the short option -x with its (as argparse reads
 * them, and so nano_train.sample); any other is all name. */
typedef struct option_arg {
    const char *name;
    const char *value; /* after the '=', or NULL */
    int used;          /* value was taken by the option */
    char buf[32];      /* the name of --name=value or -xVALUE */
} option_arg;

static void split_option(const char *a, option_arg *o) {
    const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
    o->name = a;
    o->value = NULL;
    o->used = 0;
    if (a[0] == '-' && a[1] && a[1] != '-' && a[2]) { /* -t0.5 and -t=0.5: a short option with its value */
        o->buf[0] = '-';
        o->buf[1] = a[1];
        o->buf[2] = '\0';
        o->name = o->buf;
        o->value = a + 2 + (a[2] == '=');
        return;
    }
    if (!eq || (size_t)(eq - a) >= sizeof o->buf) return; /* (no option has a name that long) */
    memcpy(o->buf, a, (size_t)(eq - a));
    o->buf[eq - a] = '\0';
    o->name = o->buf;
    o->value = eq + 1;
}

/* The value of option o (at argv[*i]): the one after its '=', else the next argument. */
static const char *option_value(option_arg *o, int argc, char **argv, int *i) {
    if (!o->value) return need_value(argc, argv, i);
    o->used = 1;
    return o->value;
}

/* Whether path names an existing regular file. */
static int is_file(const char *path) {
#ifdef HAVE_POSIX_FILES
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
#else
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
#endif
}

/* die_usage for a command line with a stray argument: when `stray` names a file
 * and the command line has no -m, the model was most likely given without its
 * -m, and the error says so. */
static void die_usage_stray(int argc, char **argv, const char *stray, const char *fmt, ...) {
    va_list ap;
    int i, has_model = 0;
    for (i = 2; i < argc; i++) has_model |= is_opt(argv[i], "-m", "--model");
    va_start(ap, fmt);
    vdie_usage(!has_model && stray && is_file(stray) ? stray : NULL, fmt, ap);
    va_end(ap); /* (not reached) */
}

// ---------------------------------------------------------------------------
// Loading

static nano_model *load_model(const char *path) {
    nano_model *m = NULL;
    char detail[256];
    nano_model_params mp = load_params(detail, sizeof detail);
    nano_status st = nano_model_load_file(path, &mp, &m);
    if (st != NANO_OK) exit(nano_report_load("nano", st, path, detail, 0));
    return m;
}

/* load_model for a command that runs the model: a LoRA module given as the model
 * is refused at once, saying where it goes (`takes_lora`: the command has -l). */
static nano_model *load_model_to_run(const char *path, int takes_lora) {
    nano_model *m = load_model(path);
    nano_model_info info;
    nano_model_get_info(m, &info);
    if (info.model_type != NANO_MODEL_TYPE_LORA) return m;
    nano_model_free(m);
    exit(nano_report_lora_as_model("nano", path, takes_lora));
}

/* Load the LoRA module at path into *lora and attach it to ctx, a context of m:
 * 0, or the exit status after printing the error (a module that does not fit
 * names both shapes, as nano_train.convert.load_lora_bin does). The caller
 * frees *lora after ctx, also on failure. */
static int attach_lora(nano_context *ctx, const nano_model *m, const char *path, nano_lora **lora) {
    char detail[256];
    nano_model_params mp = load_params(detail, sizeof detail);
    nano_status st = nano_lora_load_file(path, &mp, lora);
    if (st != NANO_OK) return nano_report_load("nano", st, path, detail, 1);
    st = nano_context_set_lora(ctx, *lora);
    if (st == NANO_ERR_LORA_MISMATCH) return nano_report_lora_mismatch("nano", path, m, *lora);
    return st == NANO_OK ? 0 : report(st, path);
}

/* A context for m in *out; 0, or the exit status (2: a bad --ctx, 1: the
 * library's error) after printing the error. */
static int make_context(const nano_model *m, const char *path, uint32_t n_ctx, uint32_t n_batch, int threads,
                        uint32_t attention, int portable, nano_context **out) {
    nano_context_params cp = nano_context_default_params();
    nano_model_info info;
    nano_status st;
    nano_model_get_info(m, &info);
    *out = NULL;
    if (n_ctx > info.block_size) {
        fprintf(stderr, "nano: error: --ctx: %u is larger than the model's block size %u\n", n_ctx,
                info.block_size);
        return 2;
    }
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_threads = threads;
    cp.attention = attention;
    cp.kernels = portable ? NANO_KERNELS_PORTABLE : NANO_KERNELS_AUTO;
    st = nano_context_init(m, &cp, out);
    return st == NANO_OK ? 0 : report(st, path);
}

/* All of f (standard input) in a NUL-terminated buffer; *len: its length.
 * NULL when out of memory (errno ENOMEM) or when f cannot be read (errno). */
static char *read_stream(FILE *f, size_t *len_out) {
    size_t cap = 4096, len = 0;
    char *buf = (char *)malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        size_t got;
        if (len + 1 >= cap) {
            char *nb = (char *)realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        errno = 0;
        got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        if (!errno) errno = EIO;
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

/* One line of f without its line break, in a buffer grown as needed (*buf,
 * *cap, as getline keeps them); its length in *len, NUL bytes included (a
 * NUL-terminated copy would end early and hide the rest of the line).
 * Returns 1 for a line, 0 at the end of the input, -1 when it cannot be read
 * (out of memory or a read error; errno says which). */
static int read_line(FILE *f, char **buf, size_t *cap, size_t *len) {
    ssize_t n;
    errno = 0;
    n = getline(buf, cap, f);
    if (n < 0) {
        if (feof(f) && !ferror(f)) return 0;
        if (!errno) errno = EIO;
        return -1;
    }
    *len = (size_t)n;
    while (*len && ((*buf)[*len - 1] == '\n' || (*buf)[*len - 1] == '\r')) (*len)--;
    (*buf)[*len] = '\0';
    return 1;
}

/* CRLF and a lone CR as LF, in place, as nano_train.sample and `prepare pretrain`
 * read text (Windows and old Mac line breaks); the new length. */
static size_t unify_line_breaks(char *s, size_t len) {
    size_t i, j = 0;
    for (i = 0; i < len; i++) {
        if (s[i] != '\r') s[j++] = s[i];
        else if (i + 1 >= len || s[i + 1] != '\n') s[j++] = '\n'; /* a CR before LF is dropped */
    }
    s[j] = '\0';
    return j;
}

/* Why read_line failed, on standard error; returns 1, the exit status. */
static int input_failed(void) {
    if (errno == ENOMEM) fprintf(stderr, "nano: error: standard input: a line too long for memory\n");
    else fprintf(stderr, "nano: error: reading standard input: %s\n", strerror(errno));
    return 1;
}

/* 1 after the error "WHAT is not UTF-8: byte 0xNN at offset K" where text[n] is not
 * (as nano_train.sample refuses it): a byte that starts no character would reach the
 * model as <|unknown|>, not as typed; 0 when it is UTF-8. */
static int not_utf8(const char *what, const char *text, size_t n) {
    size_t i, k;
    for (i = 0; i < n; i += k) {
        if ((k = nano_utf8_char_bytes(text + i, n - i))) continue;
        fprintf(stderr, "nano: error: %s is not UTF-8: byte 0x%02x at offset %zu\n", what, (unsigned char)text[i], i);
        return 1;
    }
    return 0;
}

/* A line holding a NUL byte (the text after the NUL cannot be passed on as text) or
 * not UTF-8 is that line's error; 0 when it is neither. */
static int line_refused(const char *line, size_t len, const char *where) {
    char what[64];
    const char *nul = (const char *)memchr(line, '\0', len);
    if (nul) {
        fprintf(stderr, "nano: error: %s: the line holds a NUL byte (at byte %zu)\n", where, (size_t)(nul - line));
        return 1;
    }
    snprintf(what, sizeof what, "%s: the line", where);
    return not_utf8(what, line, len);
}

/* n bytes of answer text to standard output. `escape` (the line-batch modes,
 * one answer per line): a line break is written \n, a carriage return \r
 * and a backslash \\, so that no answer spans two lines and every answer
 * can be read back exactly. */
static void write_text(const char *s, size_t n, int escape) {
    size_t i, start = 0;
    if (!escape) {
        fwrite(s, 1, n, stdout);
        return;
    }
    for (i = 0; i < n; i++) {
        const char *rep = s[i] == '\n' ? "\\n" : s[i] == '\r' ? "\\r" : s[i] == '\\' ? "\\\\" : NULL;
        if (!rep) continue;
        fwrite(s + start, 1, i - start, stdout);
        fputs(rep, stdout);
        start = i + 1;
    }
    fwrite(s + start, 1, n - start, stdout);
}

/* Standard output after a write: 0, or 1 with an error message when it could
 * not be written (a full disk, a closed pipe), so that no command reports
 * success for output that was lost. */
static int stdout_failed(void) {
    if (fflush(stdout) == 0 && !ferror(stdout)) return 0;
    fprintf(stderr, "nano: error: writing standard output: %s\n", errno ? strerror(errno) : "write error");
    return 1;
}

/* An encoding that failed with NANO_ERR_NO_TOKENIZER although the model has a
 * tokenizer: say which token the vocabulary lacks (the instruct marks, or the
 * <|unknown|> that a character not in it would become). Else as report. */
static int report_no_vocabulary(const char *what) {
    fprintf(stderr, "nano: error: %s: the model file carries no vocabulary, so no text can be encoded: export it "
                    "with one (python -m nano_train.export writes its checkpoint's), or run it with "
                    "python -m nano_train.sample --tokenizer VOCAB.json (NANO_ERR_NO_TOKENIZER)\n", what);
    return 1;
}

static int report_encode(nano_status st, const nano_tokenizer *tok, uint32_t mode, const char *what) {
    if (st == NANO_ERR_NO_TOKENIZER && !tok) return report_no_vocabulary(what);
    if (st == NANO_ERR_NO_TOKENIZER && tok) {
        int marks = nano_tokenizer_find(tok, NANO_SPECIAL_INSTRUCT, sizeof(NANO_SPECIAL_INSTRUCT) - 1) >= 0 &&
                    nano_tokenizer_find(tok, NANO_SPECIAL_RESPONSE, sizeof(NANO_SPECIAL_RESPONSE) - 1) >= 0;
        if (mode == NANO_MODE_INSTRUCT && !marks) {
            fprintf(stderr, "nano: error: %s: instruct mode needs the special tokens %s and %s, which the "
                            "vocabulary lacks (NANO_ERR_NO_TOKENIZER)\n", what, NANO_SPECIAL_INSTRUCT,
                    NANO_SPECIAL_RESPONSE);
            return 1;
        }
        if (nano_tokenizer_unknown_id(tok) < 0) {
            fprintf(stderr, "nano: error: %s: a character of it is not in the vocabulary, which has no %s token "
                            "to stand for it (NANO_ERR_NO_TOKENIZER)\n", what, NANO_SPECIAL_UNKNOWN);
            return 1;
        }
    }
    return report(st, what);
}

/* A note on standard error when characters of the prompt are not in the
 * vocabulary: each became <|unknown|>, so the model was not given the text as
 * typed (nano_train.sample says the same). */
static void note_unknown_count(uint32_t unknown, const char *what) {
    if (unknown)
        fprintf(stderr, "nano: note: %s: %u character%s not in the vocabulary and became %s\n", what, unknown,
                unknown == 1 ? " is" : "s are", NANO_SPECIAL_UNKNOWN);
}

// ---------------------------------------------------------------------------
// seq2seq (also what `nano run` does with a full-attention model)

typedef struct seq2seq_state {
    nano_context *ctx;
    nano_lora *lora;    /* attached to ctx, or NULL */
    const nano_tokenizer *tok;
    int32_t *ids, *out; /* [n_ctx + 1] each */
    size_t cap;         /* n_ctx: the longest input */
    char *text;         /* decoded answer, grown as needed */
    size_t text_cap;
} seq2seq_state;

/* The context (with the LoRA module at lora_path attached, unless NULL),
 * tokenizer and buffers for seq2seq on m (the file `path`): 0, or the exit
 * status after printing the error. */
static int seq2seq_init(seq2seq_state *q, const nano_model *m, const char *path, uint32_t n_ctx, int threads,
                        uint32_t attention, int portable, const char *lora_path) {
    nano_model_info info;
    int rc;
    memset(q, 0, sizeof *q);
    nano_model_get_info(m, &info);
    /* a Qwen or a Q4K file (a LoRA module is refused as it is loaded, by load_model_to_run):
     * what it is matters more than its (lack of) tokenizer */
    if (!info.runnable) return report(NANO_ERR_UNSUPPORTED, path);
    q->tok = nano_model_tokenizer(m);
    if (!q->tok) return report_no_vocabulary(path);
    if ((rc = make_context(m, path, n_ctx, 0, threads, attention, portable, &q->ctx))) return rc;
    if (lora_path && (rc = attach_lora(q->ctx, m, lora_path, &q->lora))) return rc;
    q->cap = nano_context_n_ctx(q->ctx);
    q->ids = (int32_t *)malloc((q->cap + 1) * sizeof(int32_t));
    q->out = (int32_t *)malloc((q->cap + 1) * sizeof(int32_t));
    return q->ids && q->out ? 0 : report(NANO_ERR_OUT_OF_MEMORY, "seq2seq");
}

static void seq2seq_free(seq2seq_state *q) {
    free(q->text);
    free(q->ids);
    free(q->out);
    nano_context_free(q->ctx);
    nano_lora_free(q->lora);
}

/* Encode input (input_len bytes), run it, print the decoded argmax answer and
 * a newline. `where` names the input in errors ("INPUT" or "line N").
 * `batch` (one answer per input line): the answer is escaped (write_text), and
 * an input that fails gets an empty line in place of its answer, so that a
 * batch's answers stay on their inputs' lines. Returns 0, or 1 after printing
 * an error. */
static int seq2seq_print(seq2seq_state *q, const char *input, size_t input_len, const char *where, int batch) {
    size_t n = 0, len;
    nano_status st = nano_tokenizer_encode(q->tok, input, input_len, 0, q->ids, q->cap, &n);
    if (st == NANO_ERR_BUFFER_TOO_SMALL)
        fprintf(stderr, "nano: error: %s: %zu tokens; the context holds at most %zu\n", where, n, q->cap);
    else if (st != NANO_OK)
        report_encode(st, q->tok, NANO_MODE_CONTINUE, where);
    else if ((st = nano_seq2seq(q->ctx, q->ids, (uint32_t)n, q->out)) != NANO_OK) {
        char what[64];
        snprintf(what, sizeof what, "seq2seq: %s", where); /* NaN logits, say */
        report(st, what);
    }
    if (st != NANO_OK) {
        if (batch) fputc('\n', stdout);
        return 1;
    }
    { /* (special tokens are not read from input: each <|unknown|> stood for a character) */
        int32_t unk = nano_tokenizer_unknown_id(q->tok);
        uint32_t unknown = 0;
        size_t i;
        for (i = 0; unk >= 0 && i < n; i++) unknown += q->ids[i] == unk;
        note_unknown_count(unknown, where);
    }
    nano_tokenizer_decode(q->tok, q->out, n, NULL, 0, &len);
    if (len + 1 > q->text_cap) {
        char *nb = (char *)realloc(q->text, len + 1);
        if (!nb) return report(NANO_ERR_OUT_OF_MEMORY, "seq2seq");
        q->text = nb;
        q->text_cap = len + 1;
    }
    if ((st = nano_tokenizer_decode(q->tok, q->out, n, q->text, q->text_cap, &len)) != NANO_OK)
        return report(st, "decode");
    write_text(q->text, len, batch);
    fputc('\n', stdout);
    return 0;
}

/* One input per line of f, one answer per line: an empty line gives an empty
 * line, a line that fails (a NUL byte in it, too long, ...) gives an error on
 * standard error and an empty line, and the batch goes on. Returns 0 if
 * every line was answered, else 1. */
static int seq2seq_lines(seq2seq_state *q, FILE *f) {
    char *line = NULL, where[48];
    size_t line_cap = 0, len = 0;
    unsigned long lineno = 0;
    int rc = 0, got;
    while ((got = read_line(f, &line, &line_cap, &len)) > 0) {
        lineno++;
        snprintf(where, sizeof where, "line %lu", lineno);
        if (len == 0) {
            fputc('\n', stdout);
        } else if (line_refused(line, len, where)) {
            fputc('\n', stdout);
            rc = 1;
        } else {
            rc |= seq2seq_print(q, line, len, where, 1);
        }
        if (stdout_failed()) {
            rc = 1;
            break;
        }
    }
    if (got < 0) rc = input_failed();
    free(line);
    return rc;
}

// ---------------------------------------------------------------------------
// run

typedef struct run_opts {
    const char *model, *lora, *prompt;
    const char *system; /* --system TEXT, or NULL */
    int instruct, profile, ids, portable, threads;
    int multi_turn; /* --multi-turn: the chat keeps the conversation */
    uint32_t n_ctx, n_batch;
    nano_session_params sp;
    unsigned not_seq2seq; /* bit i: NOT_SEQ2SEQ[i] was given */
    const char **stops;   /* the --stop TEXTs, as given */
    size_t n_stops;
    /* the --stop TEXTs resolved (resolve_stops): the special tokens among them are
     * stop ids in sp.stop_tokens, the others are matched on the generated text */
    nano_stop_texts *stop;
} run_opts;

/* The options of `nano run` that a full-attention model's seq2seq forward has
 * no use for; given for such a model, they are named in a note. */
static const struct {
    const char *s, *l;
} NOT_SEQ2SEQ[] = {{"-t", "--temperature"}, {"-k", "--top-k"}, {NULL, "--top-p"}, {NULL, "--min-p"},
                   {"-r", "--repetition-penalty"}, {"-n", "--max-tokens"}, {"-s", "--seed"}, {NULL, "--stop"},
                   {NULL, "--instruct"}, {NULL, "--system"}, {NULL, "--allow-special"}, {NULL, "--ids"},
                   {NULL, "--profile"}, {NULL, "--batch"}, {NULL, "--multi-turn"}};

static void note_option(run_opts *o, const char *a) {
    size_t i;
    for (i = 0; i < sizeof NOT_SEQ2SEQ / sizeof NOT_SEQ2SEQ[0]; i++)
        if (is_opt(a, NOT_SEQ2SEQ[i].s, NOT_SEQ2SEQ[i].l)) o->not_seq2seq |= 1u << i;
}

/* A chat answer gathered before it is written (see chat). */
typedef struct text_buf {
    char *p;
    size_t len, cap;
} text_buf;

static int text_append(text_buf *b, const char *s, size_t n) {
    if (n == 0) return 0;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + n) cap *= 2;
        if (!(p = (char *)realloc(b->p, cap))) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* The question as `prepare sft --system prepend` trained the model on it
 * (nano_train's data.with_system): the system text, a line break, then the
 * question; no system text (NULL or "") leaves the question as it is. Joined
 * in *b (reused from question to question), NUL-terminated. Returns the text
 * to ask, or NULL when out of memory. */
static const char *with_system(const char *system, const char *question, size_t question_len, text_buf *b) {
    size_t n = system ? strlen(system) : 0;
    if (n == 0) return question;
    if (question_len > (size_t)-1 - n - 2) return NULL;
    b->len = 0;
    if (text_append(b, system, n) || text_append(b, "\n", 1) || text_append(b, question, question_len) ||
        text_append(b, "", 1))
        return NULL;
    return b->p;
}

/* Peak resident memory of this process in KiB (Linux: VmHWM), or -1. */
static long peak_rss_kib(void) {
    long kib = -1;
#ifdef __linux__
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kib = strtol(line + 6, NULL, 10);
    fclose(f);
#endif
    return kib;
}

/* The time of s's newest token, sampled: ms from the start of the prompt's forward. */
static double sampled_ms(const nano_session *s) {
    nano_session_stats st;
    nano_session_get_stats(s, &st);
    return st.ttft_ms + st.decode_ms;
}

/* --profile, as nano_train.sample --profile says it: the tokens counted are the
 * `printed` ones (not a stop token, nor the tokens of a stop text), the first
 * `printed` of those sampled (at sampled[k]: sampled_ms); the time to the first
 * token runs to when it was sampled, held back or not, and the decode rate from
 * the first printed token to the last (none for fewer than 2). */
static void print_stats(const nano_session *s, const nano_context *ctx, uint32_t printed, const double *sampled) {
    nano_session_stats st;
    int threads = (int)nano_context_threads(ctx);
    nano_session_get_stats(s, &st);
    fprintf(stderr, "nano: prompt %u token%s in %.2f ms (%.1f tokens/s), ", st.prompt_tokens,
            st.prompt_tokens == 1 ? "" : "s", st.prefill_ms, st.prefill_tokens_per_s);
    if (printed == 0)
        fprintf(stderr, "no token generated");
    else if (printed == 1)
        fprintf(stderr, "time to first token %.2f ms, 1 token generated, no decode rate (it needs 2 tokens)",
                sampled[0]);
    else
        fprintf(stderr, "time to first token %.2f ms, %u tokens generated, decode %.1f tokens/s", sampled[0], printed,
                (printed - 1) * 1e3 / (sampled[printed - 1] - sampled[0]));
    fprintf(stderr, ", %d thread%s, peak memory %ld KiB\n", threads, threads == 1 ? "" : "s", peak_rss_kib());
}

static void note_unknown(const nano_session *s, const char *what) {
    nano_session_stats stats;
    note_unknown_count(nano_session_get_stats(s, &stats) == NANO_OK ? stats.unknown_tokens : 0, what);
}

/* A prompt that leaves the context no room for a new token (NANO_ERR_CONTEXT_FULL
 * from nano_session_start): its length in tokens (counted again, as the session
 * counts it: the instruct template adds two), the context's, and what to do. A
 * reference layout cannot record full attention, so a full-attention (seq2seq)
 * model such as sort6, whose inputs fill its block, reads as causal there: when
 * the prompt fits a seq2seq forward but no context, `nano seq2seq` is named too.
 * Returns 1. */
static int report_context_full(const nano_context *ctx, const char *prompt, uint32_t mode, const run_opts *o,
                               const char *what) {
    const nano_model *m = nano_context_model(ctx);
    uint32_t n_ctx = nano_context_n_ctx(ctx);
    int instruct = mode == NANO_MODE_INSTRUCT;
    nano_model_info info;
    size_t n_text = 0, n;
    /* ids NULL with cap 0: only the count */
    nano_status st = nano_tokenizer_encode(nano_model_tokenizer(m), prompt, strlen(prompt),
                                           !instruct && o->sp.allow_special, NULL, 0, &n_text);
    if (st != NANO_OK && st != NANO_ERR_BUFFER_TOO_SMALL) return report(NANO_ERR_CONTEXT_FULL, what);
    nano_model_get_info(m, &info);
    n = n_text + (instruct ? 2 : 0);
    fprintf(stderr, "nano: error: %s: %s (%s): the prompt is %zu token%s%s and the context holds %u: no room for "
                    "a new token", what, nano_status_string(NANO_ERR_CONTEXT_FULL),
            nano_status_name(NANO_ERR_CONTEXT_FULL), n, n == 1 ? "" : "s",
            !instruct ? "" : o->system && o->system[0] ? " with the --system text and the instruct marks"
                                                       : " with the instruct marks", n_ctx);
    if (n < info.block_size)
        fprintf(stderr, " (a longer --ctx, up to the block size %u, or a shorter prompt)", info.block_size);
    else
        fprintf(stderr, " (a shorter prompt: a context holds at most the model's block size, %u)", info.block_size);
    /* no context holds it for generation, but a seq2seq forward would take it */
    if (!info.has_extension && n >= info.block_size && n_text <= info.block_size)
        fprintf(stderr, "; a full-attention model runs with nano seq2seq -m %s INPUT (layout %s cannot record "
                        "the attention kind: it reads as causal)", o->model, info.layout);
    fputc('\n', stderr);
    return 1;
}

/* A generation that ended because the context filled before -n tokens came:
 * how far it got, and whether a longer --ctx would leave more room. */
static void note_context_filled(nano_session *s, const run_opts *o, const nano_context *ctx, const char *what) {
    uint32_t n, n_prompt, n_ctx = nano_context_n_ctx(ctx);
    nano_model_info info;
    nano_session_tokens(s, &n, &n_prompt);
    nano_model_get_info(nano_context_model(ctx), &info);
    fprintf(stderr, "nano: note: %s: the context (%u tokens) filled after %u generated token%s, short of -n %u; ",
            what, n_ctx, n - n_prompt, n - n_prompt == 1 ? "" : "s", o->sp.max_tokens);
    if (n_ctx < info.block_size)
        fprintf(stderr, "a longer --ctx, up to the block size %u, leaves more room\n", info.block_size);
    else
        fprintf(stderr, "no context holds more than the model's block size, %u\n", info.block_size);
}

// ---------------------------------------------------------------------------
// --stop TEXT, as nano_train.sample's: the library's stop texts (nano_stop_texts_*)

/* The text of token id ("" for a model without a vocabulary, as the session gives it). */
static const char *token_text(const nano_tokenizer *tok, int32_t id, size_t *len) {
    const char *text;
    if (nano_tokenizer_token_text(tok, id, &text, len) == NANO_OK) return text;
    *len = 0;
    return "";
}

/* s[n] on standard error, each byte that starts no well-formed character (as the
 * tokenizer reads them: nano_utf8_char_bytes) written \xNN. */
static void put_text_stderr(const char *s, size_t n) {
    size_t i, k;
    for (i = 0; i < n; i += k) {
        k = nano_utf8_char_bytes(s + i, n - i);
        if (k == 0) fprintf(stderr, "\\x%02x", (unsigned char)s[i]);
        else fwrite(s + i, 1, k, stderr);
        if (k == 0) k = 1;
    }
}

/* The error for a --stop TEXT the vocabulary cannot write, naming the characters it
 * has no token for (each once, in order); returns 2, the exit status. */
static int report_stop_never_occurs(const nano_tokenizer *tok, const char *text) {
    size_t n = strlen(text), len = 0;
    char *missing = (char *)malloc(n + 1);
    if (!missing || nano_stop_texts_missing(tok, text, n, missing, n + 1, &len) != NANO_OK) {
        free(missing);
        return report(NANO_ERR_OUT_OF_MEMORY, "--stop");
    }
    fputs("nano: error: --stop '", stderr);
    put_text_stderr(text, n);
    fputs("': can never occur: ", stderr);
    if (len) {
        fputs("the vocabulary has no token for '", stderr);
        put_text_stderr(missing, len);
        fputs("'\n", stderr);
    } else {
        fputs("the vocabulary cannot write it\n", stderr);
    }
    free(missing);
    return 2;
}

/* Resolve the --stop TEXTs (nano_stop_texts_init): the text of a special token becomes
 * a stop id (sp.stop_tokens: that token ends the generation unprinted, as <|eos|> always
 * does), any other is matched on the generated text. An empty text, or one the
 * vocabulary cannot write (it could never be generated), is an error. Returns 0, or
 * the exit status after printing the error (2: a bad TEXT). */
static int resolve_stops(run_opts *o, const nano_tokenizer *tok) {
    uint32_t bad = 0, n_ids = 0;
    const char *text;
    nano_status st;
    if (!o->n_stops) return 0;
    st = nano_stop_texts_init(tok, o->stops, (uint32_t)o->n_stops, &o->stop, &bad); /* n_stops < argc */
    text = o->stops[bad];
    if (st == NANO_ERR_BAD_ARGUMENT) {
        fprintf(stderr, "nano: error: --stop '': the text is empty: give the text to stop at\n");
        return 2;
    }
    if (st == NANO_ERR_NO_TOKENIZER && !tok) {
        fprintf(stderr, "nano: error: --stop '%s': %s has no vocabulary to read it with\n", text, o->model);
        return 2;
    }
    if (st == NANO_ERR_NO_TOKENIZER) return report_stop_never_occurs(tok, text);
    if (st != NANO_OK) return report(st, "--stop");
    o->sp.stop_tokens = nano_stop_texts_ids(o->stop, &n_ids);
    o->sp.n_stop_tokens = n_ids;
    return 0;
}

/* The generated tokens gen[from..to): to standard output when `stream` (`escape`: see
 * write_text; nothing with --ids: generate prints them at the end), and gathered in
 * `answer` unless it is NULL. Returns 0; 1 after printing the error; -1 when standard
 * output failed. */
static int put_tokens(const nano_tokenizer *tok, const int32_t *gen, uint32_t from, uint32_t to,
                      const run_opts *o, int escape, int stream, text_buf *answer, const char *what) {
    uint32_t k;
    size_t len;
    int show = stream && !o->ids;
    if (from >= to) return 0;
    for (k = from; k < to; k++) {
        const char *text = token_text(tok, gen[k], &len);
        if (show) write_text(text, len, escape);
        if (answer && text_append(answer, text, len)) return report(NANO_ERR_OUT_OF_MEMORY, what);
    }
    return show && stdout_failed() ? -1 : 0;
}

/* The generation that s was started on: its tokens streamed to standard output
 * (`stream`), or, without it, gathered in `answer` and written whole once it has
 * ended well (`escape`: the chat's one line per answer, see write_text). With
 * `answer` (and `stream`), the text put out is gathered there too: what was
 * printed. With --stop texts, tokens that could begin one wait (nano_stop_texts_check) and a
 * stop text ends it. *n_shown (unless NULL): how many of the generated tokens were put
 * out. Returns 0; 1 after printing the error (`what` names the input); -1 when
 * standard output failed. */
static int run_started(nano_session *s, const run_opts *o, const nano_context *ctx, const char *what, int escape,
                       int stream, text_buf *answer, uint32_t *n_shown) {
    const nano_tokenizer *tok = nano_model_tokenizer(nano_context_model(ctx));
    nano_token_event ev;
    const int32_t *t;
    uint32_t n, n_prompt, i, shown = 0; /* shown: the generated tokens put out so far */
    int stopped = 0, rc = 0;
    double *sampled = NULL; /* --profile: when each generated token was sampled (sampled_ms) */
    nano_status st = NANO_OK;
    if (answer) answer->len = 0;
    if (o->profile && !(sampled = (double *)malloc(nano_context_n_ctx(ctx) * sizeof *sampled)))
        return report(NANO_ERR_OUT_OF_MEMORY, what);
    while (!stopped && (st = nano_session_step(s, &ev)) == NANO_OK && !ev.done) {
        uint32_t upto;
        t = nano_session_tokens(s, &n, &n_prompt);
        upto = n - n_prompt;
        if (sampled) sampled[upto - 1] = sampled_ms(s);
        if (nano_stop_texts_count(o->stop) &&
            (st = nano_stop_texts_check(o->stop, t + n_prompt, n - n_prompt, &upto, &stopped)) != NANO_OK)
            break;
        if ((rc = put_tokens(tok, t + n_prompt, shown, upto, o, escape, stream, answer, what))) goto out;
        shown = upto;
    }
    if (st != NANO_OK && st != NANO_ERR_CANCELLED) {
        rc = report(st, what);
        goto out;
    }
    t = nano_session_tokens(s, &n, &n_prompt);
    if (!stopped) { /* the tokens held back for a stop text that never came */
        if ((rc = put_tokens(tok, t + n_prompt, shown, n - n_prompt, o, escape, stream, answer, what))) goto out;
        shown = n - n_prompt;
    }
    if (!stream && !o->ids && answer && answer->len) write_text(answer->p, answer->len, escape);
    if (o->ids) { /* the prompt, then the generated tokens put out */
        for (i = 0; i < n_prompt + shown; i++) printf(i ? ",%d" : "%d", (int)t[i]);
        printf("\n");
        fprintf(stderr, "nano: %u prompt tokens, %u generated\n", n_prompt, shown);
    } else {
        printf("\n");
    }
    if (stdout_failed()) {
        rc = -1;
        goto out;
    }
    if (st == NANO_OK && !stopped && ev.stop_reason == NANO_STOP_CONTEXT_FULL && o->sp.max_tokens)
        note_context_filled(s, o, ctx, what);
    if (o->profile) print_stats(s, ctx, shown, sampled);
out:
    if (n_shown) *n_shown = shown;
    free(sampled);
    return rc;
}

/* One generation from a text prompt, streamed to standard output, or with `answer`
 * gathered there and written whole once it has ended well (run_started). Returns 0;
 * 1 after printing the error (`what` names the input); -1 when standard output failed. */
static int generate(nano_session *s, const char *prompt, uint32_t mode, const run_opts *o,
                    const nano_context *ctx, const char *what, int escape, text_buf *answer) {
    nano_status st = nano_session_start(s, prompt, mode);
    if (st == NANO_ERR_CONTEXT_FULL) return report_context_full(ctx, prompt, mode, o, what);
    if (st != NANO_OK) return report_encode(st, nano_model_tokenizer(nano_context_model(ctx)), mode, what);
    note_unknown(s, what);
    return run_started(s, o, ctx, what, escape, answer == NULL, answer, NULL);
}

// ---------------------------------------------------------------------------
// --multi-turn: the chat keeps the conversation, laid out as `prepare sft` lays out a
// multi-turn record (nano_train.sampling.chat_prompt builds the same ids)

/* One turn kept: the question's ids, alone and (with --system) after the system
 * text (the form it takes when it is the earliest question kept), and the answer's
 * ids as the training data has them (answer_ids). */
typedef struct chat_turn {
    int32_t *q, *qs, *a; /* qs: NULL without a system text */
    size_t nq, nqs, na;
} chat_turn;

typedef struct conversation {
    chat_turn *turns; /* oldest first */
    size_t n, cap;
    int32_t instruct, response, eos;
    int32_t *ids; /* [n_ctx]: the prompt being asked (it is shorter than the context) */
} conversation;

static void turn_free(chat_turn *t) {
    free(t->q);
    free(t->qs);
    free(t->a);
}

static void conversation_free(conversation *c) {
    size_t i;
    for (i = 0; i < c->n; i++) turn_free(&c->turns[i]);
    free(c->turns);
    free(c->ids);
}

/* text[len] encoded (no special tokens) into a new array *ids of *n ids. */
static nano_status encode_new(const nano_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n) {
    nano_status st = nano_tokenizer_encode(tok, text, len, 0, NULL, 0, n);
    *ids = NULL;
    if (st != NANO_OK && st != NANO_ERR_BUFFER_TOO_SMALL) return st;
    if (!(*ids = (int32_t *)malloc((*n + 1) * sizeof **ids))) return NANO_ERR_OUT_OF_MEMORY;
    return nano_tokenizer_encode(tok, text, len, 0, *ids, *n, n);
}

/* The printed tokens gen[n] of an answer as the training data holds an answer
 * (nano_train.sampling.answer_ids): each run of ordinary tokens, its text encoded
 * again (prepare sft's tokenization), each special token kept as itself: a generated
 * <|unknown|> stays one token, where its text would be 11 characters. A new array
 * *ids of *n_ids ids; `run` is scratch space for a run's text. */
static nano_status answer_ids(const nano_tokenizer *tok, const int32_t *gen, uint32_t n, text_buf *run,
                              int32_t **ids, size_t *n_ids) {
    int32_t *out = NULL, *piece = NULL, *p;
    size_t len = 0, n_piece;
    uint32_t k = 0;
    nano_status st = NANO_OK;
    while (k < n) {
        if (nano_tokenizer_is_special(tok, gen[k])) {
            piece = NULL;
            n_piece = 1;
        } else {
            run->len = 0;
            for (; k < n && !nano_tokenizer_is_special(tok, gen[k]); k++) {
                size_t tl;
                const char *text = token_text(tok, gen[k], &tl);
                if (text_append(run, text, tl)) {
                    st = NANO_ERR_OUT_OF_MEMORY;
                    goto fail;
                }
            }
            if ((st = encode_new(tok, run->p ? run->p : "", run->len, &piece, &n_piece)) != NANO_OK) goto fail;
        }
        if (!(p = (int32_t *)realloc(out, (len + n_piece + 1) * sizeof *out))) {
            st = NANO_ERR_OUT_OF_MEMORY;
            goto fail;
        }
        out = p;
        if (piece) memcpy(out + len, piece, n_piece * sizeof *out);
        else out[len] = gen[k++];
        len += n_piece;
        free(piece);
        piece = NULL;
    }
    *ids = out;
    *n_ids = len;
    return NANO_OK;
fail:
    free(piece);
    free(out);
    return st;
}

/* The special tokens a conversation is laid out with, and room for a prompt of the
 * context's n_ctx tokens; 0, or 1 after printing which the model's vocabulary lacks
 * (or that there is no memory). */
static int conversation_init(conversation *c, const nano_tokenizer *tok, const char *model, uint32_t n_ctx) {
    static const char *const marks[] = {NANO_SPECIAL_INSTRUCT, NANO_SPECIAL_RESPONSE, NANO_SPECIAL_EOS};
    int32_t *ids[3];
    int i;
    memset(c, 0, sizeof *c);
    ids[0] = &c->instruct;
    ids[1] = &c->response;
    ids[2] = &c->eos;
    if (!tok) {
        fprintf(stderr, "nano: error: --multi-turn: %s has no vocabulary (NANO_ERR_NO_TOKENIZER)\n", model);
        return 1;
    }
    for (i = 0; i < 3; i++) {
        *ids[i] = nano_tokenizer_find(tok, marks[i], strlen(marks[i]));
        if (*ids[i] < 0 || !nano_tokenizer_is_special(tok, *ids[i])) {
            fprintf(stderr, "nano: error: --multi-turn: a conversation is laid out with the special tokens %s, "
                            "%s and %s, and the vocabulary of %s has no %s (NANO_ERR_NO_TOKENIZER)\n",
                    NANO_SPECIAL_INSTRUCT, NANO_SPECIAL_RESPONSE, NANO_SPECIAL_EOS, model, marks[i]);
            return 1;
        }
    }
    c->ids = (int32_t *)malloc((size_t)n_ctx * sizeof *c->ids);
    return c->ids ? 0 : report(NANO_ERR_OUT_OF_MEMORY, "--multi-turn");
}

/* Append n ids to c->ids at *at (within the context: ask_in_conversation checked). */
static void put_ids(conversation *c, size_t *at, const int32_t *ids, size_t n) {
    if (n) memcpy(c->ids + *at, ids, n * sizeof *ids);
    *at += n;
}

/* Ask `question` (line[len], NUL-terminated) in the conversation: the earlier turns,
 * each <|instruct_mark|> Q <|response_mark|> A <|eos|>, then <|instruct_mark|>
 * question <|response_mark|>, the system text before the earliest question. While
 * that prompt would leave less than half of the context for the answer, the oldest
 * turns are dropped (a note says so), down to the question alone. An answer that
 * ends well becomes the newest turn. Returns as generate does, or 2 when the
 * answer, already written, cannot be kept (1 after the error). */
static int ask_in_conversation(conversation *c, nano_session *s, const char *line, size_t len, const run_opts *o,
                               const nano_context *ctx, const char *where, int escape, text_buf *answer,
                               text_buf *joined) {
    const nano_tokenizer *tok = nano_model_tokenizer(nano_context_model(ctx));
    size_t n_ctx = nano_context_n_ctx(ctx), rest = 0, n = 0, n_all = 0, d, i, at = 0;
    int32_t unknown = nano_tokenizer_unknown_id(tok);
    uint32_t n_unknown = 0, shown = 0, n_tokens, n_prompt;
    chat_turn t = {NULL, NULL, NULL, 0, 0, 0};
    const char *question = with_system(o->system, line, len, joined); /* the question alone, if no turn is kept */
    const int32_t *own;
    size_t n_own;
    nano_status st;
    int r;
    if (!question) return report(NANO_ERR_OUT_OF_MEMORY, where);
    st = encode_new(tok, line, len, &t.q, &t.nq);
    if (st == NANO_OK && question != line) st = encode_new(tok, question, strlen(question), &t.qs, &t.nqs);
    if (st != NANO_OK) {
        turn_free(&t);
        return report_encode(st, tok, NANO_MODE_INSTRUCT, where);
    }
    /* the turns after the first kept: each 3 marks, its question and its answer */
    for (i = 0; i < c->n; i++) rest += 3 + c->turns[i].nq + c->turns[i].na;
    for (d = 0; d < c->n; d++) {
        const chat_turn *first = &c->turns[d];
        rest -= 3 + first->nq + first->na;
        n = 3 + (first->qs ? first->nqs : first->nq) + first->na + rest + 2 + t.nq;
        if (d == 0) n_all = n;
        if (2 * n <= n_ctx) break;
    }
    if (d == c->n) n = 2 + (t.qs ? t.nqs : t.nq); /* the question alone, with the system text */
    if (n >= n_ctx) { /* it alone leaves no room for a new token: the chat's error for the line */
        turn_free(&t);
        return report_context_full(ctx, question, NANO_MODE_INSTRUCT, o, where);
    }
    for (i = d; i < c->n; i++) {
        const chat_turn *k = &c->turns[i];
        put_ids(c, &at, &c->instruct, 1);
        if (i == d && k->qs) put_ids(c, &at, k->qs, k->nqs);
        else put_ids(c, &at, k->q, k->nq);
        put_ids(c, &at, &c->response, 1);
        put_ids(c, &at, k->a, k->na);
        put_ids(c, &at, &c->eos, 1);
    }
    own = d == c->n && t.qs ? t.qs : t.q; /* the new question's ids, the system text's with them if there */
    n_own = d == c->n && t.qs ? t.nqs : t.nq;
    put_ids(c, &at, &c->instruct, 1);
    put_ids(c, &at, own, n_own);
    put_ids(c, &at, &c->response, 1);
    if ((st = nano_session_start_tokens(s, c->ids, (uint32_t)n)) != NANO_OK) {
        turn_free(&t);
        return report(st, where);
    }
    if (d) {
        char count[32] = "";
        if (d > 1) snprintf(count, sizeof count, "%zu ", d);
        fprintf(stderr, "nano: note: %s: dropped the %soldest turn%s of the conversation: with %s the prompt "
                        "would be %zu tokens, more than half of the context (%zu tokens), which the answer "
                        "needs\n", where, count, d == 1 ? "" : "s", d == 1 ? "it" : "them", n_all, n_ctx);
        for (i = 0; i < d; i++) turn_free(&c->turns[i]);
        memmove(c->turns, c->turns + d, (c->n - d) * sizeof *c->turns);
        c->n -= d;
    }
    for (i = 0; unknown >= 0 && i < n_own; i++) n_unknown += own[i] == unknown;
    note_unknown_count(n_unknown, where);
    if (c->n == c->cap) { /* room for the new turn, made before its answer is written */
        size_t cap = c->cap ? 2 * c->cap : 8;
        chat_turn *p = (chat_turn *)realloc(c->turns, cap * sizeof *p);
        if (!p) {
            turn_free(&t);
            return report(NANO_ERR_OUT_OF_MEMORY, where);
        }
        c->turns = p;
        c->cap = cap;
    }
    r = run_started(s, o, ctx, where, escape, !escape, answer, &shown);
    if (r == 0) {
        const int32_t *gen = nano_session_tokens(s, &n_tokens, &n_prompt) + n_prompt;
        if ((st = answer_ids(tok, gen, shown, joined, &t.a, &t.na)) != NANO_OK) {
            report_encode(st, tok, NANO_MODE_INSTRUCT, where); /* (out of memory: the texts were made of tokens) */
            r = 2;
        }
    }
    if (r == 0) c->turns[c->n++] = t;
    else turn_free(&t);
    return r;
}

/* The chat: one instruct-mode question per line of standard input, one answer
 * per line (escaped: write_text), as the seq2seq batch: an empty line gets an
 * empty line, and a question that fails (a NUL byte in it, too long for the
 * context, NaN logits halfway through the answer, ...) gets its error on
 * standard error and an empty answer line, and the chat goes on: for that,
 * each escaped answer is gathered and written once it has ended well. A
 * person at a terminal (standard input and output both one) reads the answers
 * as they are, streamed, line breaks and all: escaping is for programs
 * reading one answer per line. With --system, every question gets the
 * system text before it (with_system). With --multi-turn, each question is
 * asked after the earlier turns of the conversation (ask_in_conversation),
 * the system text before the earliest one kept. Returns 0 if every question
 * was answered, else 1. */
static int chat(nano_session *s, const run_opts *o, const nano_context *ctx) {
    char *line = NULL, where[48];
    text_buf answer = {NULL, 0, 0}, joined = {NULL, 0, 0};
    const char *question;
    size_t cap = 0, len = 0;
    unsigned long lineno = 0;
    int tty = 0, escape = 1, rc = 0, got;
    conversation conv;
#ifdef HAVE_ISATTY
    tty = isatty(0);
    escape = !(tty && isatty(1));
#endif
    if (o->multi_turn &&
        conversation_init(&conv, nano_model_tokenizer(nano_context_model(ctx)), o->model, nano_context_n_ctx(ctx)))
        return 1;
    for (;;) {
        int r;
        if (tty) {
            fputs("> ", stderr);
            fflush(stderr);
        }
        if ((got = read_line(stdin, &line, &cap, &len)) <= 0) break;
        lineno++;
        snprintf(where, sizeof where, "line %lu", lineno);
        if (len == 0 || line_refused(line, len, where)) {
            if (len) rc = 1;
            fputc('\n', stdout);
            if (stdout_failed()) {
                rc = 1;
                break;
            }
            continue;
        }
        if (o->multi_turn) r = ask_in_conversation(&conv, s, line, len, o, ctx, where, escape, &answer, &joined);
        else if (!(question = with_system(o->system, line, len, &joined))) r = report(NANO_ERR_OUT_OF_MEMORY, where);
        else r = generate(s, question, NANO_MODE_INSTRUCT, o, ctx, where, escape, escape ? &answer : NULL);
        if (r < 0) {
            rc = 1;
            break;
        }
        if (r > 0) {
            rc = 1;
            if (r == 1) fputc('\n', stdout); /* (2: its answer line was written) */
            if (stdout_failed()) break;
        }
    }
    if (got < 0) rc = input_failed();
    if (o->multi_turn) conversation_free(&conv);
    free(line);
    free(answer.p);
    free(joined.p);
    return rc;
}

/* `nano run` on a full-attention model does what nano_train.sample does with
 * one: a seq2seq forward (argmax at every position) over the prompt, or over
 * each line in a chat; with -l, the LoRA module attached as for generation. */
static int run_seq2seq(const nano_model *m, const run_opts *o) {
    seq2seq_state q;
    size_t i;
    int rc, first = 1;
    fprintf(stderr, "nano: %s has full attention: one seq2seq forward per input, as `nano seq2seq`", o->model);
    for (i = 0; i < sizeof NOT_SEQ2SEQ / sizeof NOT_SEQ2SEQ[0]; i++) {
        if (!(o->not_seq2seq & (1u << i))) continue;
        fprintf(stderr, "%s%s", first ? "; not used for it: " : ", ", NOT_SEQ2SEQ[i].l);
        first = 0;
    }
    fputc('\n', stderr);
    rc = seq2seq_init(&q, m, o->model, o->n_ctx, o->threads, NANO_ATTENTION_MODE_FILE, o->portable, o->lora);
    if (rc == 0)
        rc = o->prompt ? seq2seq_print(&q, o->prompt, strlen(o->prompt), "prompt", 0) : seq2seq_lines(&q, stdin);
    seq2seq_free(&q);
    return rc;
}

static int cmd_run(int argc, char **argv) {
    run_opts o;
    nano_model *m;
    nano_model_info info;
    nano_lora *lora = NULL;
    nano_context *ctx = NULL;
    nano_session *s = NULL;
    nano_status st;
    char *stdin_prompt = NULL;
    text_buf joined = {NULL, 0, 0};
    const char *prompt;
    int i, rc = 0;
    memset(&o, 0, sizeof o);
    o.sp = nano_session_default_params();
    o.sp.max_tokens = 256;
    if (!(o.stops = (const char **)malloc((size_t)argc * sizeof *o.stops))) die_status(NANO_ERR_OUT_OF_MEMORY, "run");
    for (i = 2; i < argc; i++) {
        option_arg arg;
        const char *a, *v;
        split_option(argv[i], &arg);
        a = arg.name;
        note_option(&o, a);
        if (is_opt(a, "-m", "--model")) o.model = option_value(&arg, argc, argv, &i);
        else if (is_opt(a, "-l", "--lora")) o.lora = option_value(&arg, argc, argv, &i);
        else if (is_opt(a, "-p", "--prompt")) o.prompt = option_value(&arg, argc, argv, &i);
        else if (is_opt(a, NULL, "--instruct")) o.instruct = 1;
        else if (is_opt(a, NULL, "--multi-turn")) o.multi_turn = 1;
        else if (is_opt(a, NULL, "--allow-special")) o.sp.allow_special = 1;
        else if (is_opt(a, NULL, "--system")) o.system = option_value(&arg, argc, argv, &i);
        else if (is_opt(a, "-t", "--temperature")) {
            o.sp.sampler.temperature = parse_float(a, v = option_value(&arg, argc, argv, &i));
            if (!(o.sp.sampler.temperature >= 0.0f)) die_usage("%s: must be >= 0, got '%s'", a, v);
        } else if (is_opt(a, "-k", "--top-k"))
            o.sp.sampler.top_k = (int32_t)parse_long(a, option_value(&arg, argc, argv, &i), 0, MAX_COUNT);
        else if (is_opt(a, NULL, "--top-p")) {
            o.sp.sampler.top_p = parse_float(a, v = option_value(&arg, argc, argv, &i));
            if (!(o.sp.sampler.top_p > 0.0f && o.sp.sampler.top_p <= 1.0f))
                die_usage("%s: must be in (0, 1], got '%s'", a, v);
        } else if (is_opt(a, NULL, "--min-p")) {
            o.sp.sampler.min_p = parse_float(a, v = option_value(&arg, argc, argv, &i));
            if (!(o.sp.sampler.min_p >= 0.0f && o.sp.sampler.min_p <= 1.0f))
                die_usage("%s: must be in [0, 1], got '%s'", a, v);
        } else if (is_opt(a, "-r", "--repetition-penalty")) {
            o.sp.sampler.repetition_penalty = parse_float(a, v = option_value(&arg, argc, argv, &i));
            if (!(o.sp.sampler.repetition_penalty > 0.0f)) die_usage("%s: must be > 0, got '%s'", a, v);
        } else if (is_opt(a, "-n", "--max-tokens"))
            o.sp.max_tokens = (uint32_t)parse_long(a, option_value(&arg, argc, argv, &i), 0, MAX_COUNT);
        else if (is_opt(a, "-s", "--seed")) o.sp.sampler.seed = parse_u64(a, option_value(&arg, argc, argv, &i));
        else if (is_opt(a, NULL, "--stop")) o.stops[o.n_stops++] = option_value(&arg, argc, argv, &i);
        else if (is_opt(a, NULL, "--threads"))
            o.threads = (int)parse_long(a, option_value(&arg, argc, argv, &i), 1, NANO_MAX_THREADS);
        else if (is_opt(a, NULL, "--ctx"))
            o.n_ctx = (uint32_t)parse_long(a, option_value(&arg, argc, argv, &i), 1, 1L << 30);
        else if (is_opt(a, NULL, "--batch"))
            o.n_batch = (uint32_t)parse_long(a, option_value(&arg, argc, argv, &i), 1, 1L << 20);
        else if (is_opt(a, NULL, "--portable")) o.portable = 1;
        else if (is_opt(a, NULL, "--profile")) o.profile = 1;
        else if (is_opt(a, NULL, "--ids")) o.ids = 1;
        else if (is_opt(a, "-h", "--help")) {
            fputs(USAGE, stdout);
            free(o.stops);
            return 0;
        } else die_usage_stray(argc, argv, argv[i], "run: unknown option '%s'", argv[i]);
        if (arg.value && !arg.used) die_usage("%s takes no value, got '%s'", a, argv[i]);
    }
    if (!o.model) die_usage("run: -m MODEL is required%s%s", "", "");
    /* SFT data may hold an empty question: only instruct mode takes an empty prompt (as nano_train.sample) */
    if (o.prompt && o.prompt[0] == '\0' && !o.instruct)
        die_usage("-p: the prompt is empty (only --instruct takes an empty one)%s%s", "", "");
    /* an instruct prompt's text is never read as special tokens (the template's marks are the only ones) */
    if (o.sp.allow_special && (o.instruct || !o.prompt))
        die_usage("--allow-special is for a continuation prompt (-p without --instruct)%s: instruct mode never "
                  "reads the text as special tokens%s", o.prompt ? "" : "; the chat (no -p) is instruct mode", "");
    if (o.multi_turn && o.prompt)
        die_usage("--multi-turn is for the chat (no -p): it keeps the conversation from line to line, and -p "
                  "asks one prompt%s%s", "", "");
    /* the chat (no -p) is instruct mode already; a -p run is with --instruct */
    if (o.system && o.prompt && !o.instruct)
        die_usage("--system needs instruct mode (--instruct with -p, or the chat without -p): the system text "
                  "goes into the instruct template%s%s", "", "");

    /* From here on every error frees what was made and returns its status. */
    m = load_model_to_run(o.model, 1);
    nano_model_get_info(m, &info);
    if (o.prompt && strcmp(o.prompt, "-") == 0) {
        /* the whole of standard input, line breaks read as \n, without the final ones
         * (as nano_train.sample) */
        size_t len = 0;
        stdin_prompt = read_stream(stdin, &len);
        if (!stdin_prompt) {
            rc = errno == ENOMEM ? report(NANO_ERR_OUT_OF_MEMORY, "standard input") : input_failed();
            goto done;
        }
        if (strlen(stdin_prompt) != len) {
            fprintf(stderr, "nano: error: -p -: standard input holds a NUL byte (at byte %zu)\n",
                    strlen(stdin_prompt));
            rc = 2;
            goto done;
        }
        len = unify_line_breaks(stdin_prompt, len);
        while (len && stdin_prompt[len - 1] == '\n') stdin_prompt[--len] = '\0';
        if (len == 0 && !o.instruct) {
            fprintf(stderr, "nano: error: -p -: the prompt is empty (standard input had no text; only --instruct "
                            "takes an empty one)\n");
            rc = 2;
            goto done;
        }
        o.prompt = stdin_prompt;
    }
    if ((o.prompt && not_utf8(stdin_prompt ? "-p -: standard input" : "-p: the prompt", o.prompt, strlen(o.prompt))) ||
        (o.system && not_utf8("--system: the text", o.system, strlen(o.system)))) {
        rc = 1;
        goto done;
    }
    if (info.attention == NANO_ATTENTION_FULL) {
        rc = run_seq2seq(m, &o);
        goto done;
    }
    if ((rc = resolve_stops(&o, nano_model_tokenizer(m)))) goto done;
    if ((rc = make_context(m, o.model, o.n_ctx, o.n_batch, o.threads, NANO_ATTENTION_MODE_FILE, o.portable, &ctx)))
        goto done;
    if (o.lora && (rc = attach_lora(ctx, m, o.lora, &lora))) goto done;
    st = nano_session_init(ctx, &o.sp, &s);
    if (st != NANO_OK) rc = report(st, "session");
    else if (!o.prompt) rc = chat(s, &o, ctx);
    else if (!(prompt = with_system(o.system, o.prompt, strlen(o.prompt), &joined)))
        rc = report(NANO_ERR_OUT_OF_MEMORY, "prompt");
    else rc = generate(s, prompt, o.instruct ? NANO_MODE_INSTRUCT : NANO_MODE_CONTINUE, &o, ctx, "prompt", 0,
                       NULL) != 0;
done:
    free(stdin_prompt);
    free(joined.p);
    free(o.stops);
    nano_stop_texts_free(o.stop);
    nano_session_free(s);
    nano_context_free(ctx);
    nano_lora_free(lora);
    nano_model_free(m);
    return rc;
}

// ---------------------------------------------------------------------------
// info

static const char *model_type_name(uint32_t t) {
    switch (t) {
    case NANO_MODEL_TYPE_NANO: return "nano";
    case NANO_MODEL_TYPE_QWEN2: return "qwen2";
    case NANO_MODEL_TYPE_QWEN3: return "qwen3";
    case NANO_MODEL_TYPE_LORA: return "lora";
    default: return "?";
    }
}

static const char *quant_name(uint32_t q) {
    switch (q) {
    case NANO_QUANT_TYPE_F32: return "f32";
    case NANO_QUANT_TYPE_Q8_0: return "q8_0";
    case NANO_QUANT_TYPE_Q4K: return "q4k";
    default: return "?";
    }
}

static void print_escaped(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
        else putchar(c);
    }
}

static int cmd_info(int argc, char **argv) {
    nano_model *m;
    nano_model_info c;
    const nano_tokenizer *tok;
    uint32_t i;
    const char *path = NULL;
    int a;
    for (a = 2; a < argc; a++) {
        if (is_opt(argv[a], "-h", "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (argv[a][0] == '-' && argv[a][1]) die_usage("info: unknown option '%s'%s", argv[a], "");
        if (path) die_usage("info: one MODEL only (got '%s' and '%s')", path, argv[a]);
        path = argv[a];
    }
    if (!path) die_usage("info: MODEL is required%s%s", "", "");
    m = load_model(path);
    nano_model_get_info(m, &c);
    printf("file          %s (%llu bytes)\n", path, (unsigned long long)c.file_size);
    printf("layout        %s (version %d.%d)%s\n", c.layout, (int)c.major, (int)c.minor,
           c.has_extension ? ", Nano extension" : "");
    printf("model type    %s (%u)\n", model_type_name(c.model_type), c.model_type);
    printf("quant         %s (code 0x%02X)", quant_name(c.quant_type), c.quant_code);
    if (c.quant_type == NANO_QUANT_TYPE_Q8_0) printf(", group size %u", c.group_size);
    printf("\n");
    if (c.model_type == NANO_MODEL_TYPE_LORA) {
        printf("config        rank %u, alpha %u (scale %g), n_layer %u, n_embd %u, n_head %u, n_kv_head %u, "
               "n_hidden %u\n",
               c.lora_rank, c.lora_alpha, (double)c.lora_alpha / c.lora_rank, c.n_layer, c.n_embd, c.n_head,
               c.n_kv_head, c.n_hidden);
    } else {
        printf("config        block_size %u, vocab_size %u, n_layer %u, n_embd %u, n_head %u, n_kv_head %u, "
               "n_hidden %u, head_dim %u, %s classifier\n",
               c.block_size, c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_hidden, c.head_dim,
               c.tied ? "tied" : "separate");
        printf("attention     %s%s\n", c.attention == NANO_ATTENTION_FULL ? "full" : "causal",
               c.has_extension ? "" : " (implied: the layout cannot record it)");
        printf("position      %s, norm eps %g, rope theta %g\n",
               c.position == NANO_POSITION_LEARNED ? "learned" : "rope", (double)c.norm_eps,
               (double)c.rope_theta);
    }
    printf("parameters    %llu weights, %llu bytes at 0x%llX\n", (unsigned long long)c.n_params,
           (unsigned long long)c.params_size, (unsigned long long)c.params_offset);
    printf("runnable      %s\n", c.runnable ? "yes" : "no (inspect only)");
    tok = nano_model_tokenizer(m);
    if (!tok) {
        printf("tokenizer     none\n");
    } else {
        uint32_t V = nano_tokenizer_vocab_size(tok), shown = 0;
        int trie = nano_tokenizer_get_kind(tok) == NANO_TOKENIZER_KIND_TRIE;
        printf("tokenizer     %s, %u tokens, %llu bytes at 0x%llX, longest %u %s", trie ? "trie" : "bpe", V,
               (unsigned long long)c.tokenizer_size, (unsigned long long)c.tokenizer_offset,
               nano_tokenizer_max_token_length(tok), trie ? "code points" : "bytes");
        if (trie) printf(", %u special", nano_tokenizer_n_special(tok));
        printf("\n");
        if (trie) {
            printf("special       ");
            for (i = 0; i < V && shown < 16; i++)
                if (nano_tokenizer_is_special(tok, (int32_t)i)) {
                    const char *t;
                    size_t n;
                    nano_tokenizer_token_text(tok, (int32_t)i, &t, &n);
                    printf("%s%u ", shown ? ", " : "", i);
                    print_escaped(t, n);
                    shown++;
                }
            printf("\n");
        }
        printf("first tokens  ");
        for (i = 0; i < V && i < 24; i++) {
            const char *t;
            size_t n;
            nano_tokenizer_token_text(tok, (int32_t)i, &t, &n);
            printf("%s", i ? " | " : "");
            print_escaped(t, n);
        }
        printf("\n");
    }
    printf("tensors       %u\n", c.n_tensors);
    printf("  %-14s %-6s %-22s %12s %12s\n", "name", "dtype", "shape", "offset", "bytes");
    for (i = 0; i < c.n_tensors; i++) {
        nano_tensor_info t;
        char name[64], shape[64];
        uint32_t d;
        size_t k = 0;
        nano_model_get_tensor(m, i, &t);
        if (t.layer >= 0) snprintf(name, sizeof name, "%s.%d", t.name, (int)t.layer);
        else snprintf(name, sizeof name, "%s", t.name);
        shape[k++] = '[';
        for (d = 0; d < t.n_dims; d++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, d ? ", %u" : "%u", t.dims[d]);
        snprintf(shape + k, sizeof shape - k, "]");
        printf("  %-14s %-6s %-22s %#12llx %12llu\n", name, quant_name(t.quant_type), shape,
               (unsigned long long)t.offset, (unsigned long long)t.size);
    }
    nano_model_free(m);
    return 0;
}

// ---------------------------------------------------------------------------
// seq2seq

static int cmd_seq2seq(int argc, char **argv) {
    const char *model = NULL, *lora = NULL, *input = NULL;
    int threads = 0, causal = 0, i, rc;
    nano_model *m;
    seq2seq_state q;
    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (is_opt(a, "-m", "--model")) model = need_value(argc, argv, &i);
        else if (is_opt(a, "-l", "--lora")) lora = need_value(argc, argv, &i);
        else if (is_opt(a, NULL, "--threads")) threads = (int)parse_long(a, need_value(argc, argv, &i), 1, NANO_MAX_THREADS);
        else if (is_opt(a, NULL, "--causal")) causal = 1;
        else if (is_opt(a, "-h", "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (a[0] == '-' && a[1]) die_usage("seq2seq: unknown option '%s'%s", a, "");
        else if (input)
            die_usage_stray(argc, argv, is_file(input) ? input : a, "seq2seq: one INPUT only (got '%s' and '%s')",
                            input, a);
        else input = a;
    }
    if (!model) die_usage_stray(argc, argv, input, "seq2seq: -m MODEL is required");
    if (!input) die_usage("seq2seq: INPUT is required%s%s", "", "");
    if (input[0] == '\0') die_usage("seq2seq: INPUT is empty%s%s", "", "");
    m = load_model_to_run(model, 1);
    rc = seq2seq_init(&q, m, model, 0, threads, causal ? NANO_ATTENTION_MODE_CAUSAL : NANO_ATTENTION_MODE_FILE, 0,
                      lora);
    if (rc == 0) /* INPUT '-': one independent forward per line */
        rc = strcmp(input, "-") == 0                           ? seq2seq_lines(&q, stdin)
             : not_utf8("INPUT", input, strlen(input)) ? 1
                                                       : seq2seq_print(&q, input, strlen(input), "INPUT", 0);
    seq2seq_free(&q);
    nano_model_free(m);
    return rc;
}

// ---------------------------------------------------------------------------
// bench

static double now_ms(void) {
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
#else
    return (double)clock() * 1e3 / CLOCKS_PER_SEC;
#endif
}

static int cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    int threads = 0, portable = 0, set_prompt = 0, set_gen = 0, i;
    uint32_t n_prompt = 128, n_gen = 128, n_ctx = 0, t, V, reps, room;
    nano_model *m;
    nano_context *ctx;
    nano_model_info info;
    int32_t *ids;
    nano_rng rng;
    double t0, t_prefill, t_decode, best_prefill = 1e30, best_decode = 1e30;
    nano_status st;
    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (is_opt(a, "-m", "--model")) model = need_value(argc, argv, &i);
        else if (is_opt(a, "-p", "--prompt-tokens")) {
            n_prompt = (uint32_t)parse_long(a, need_value(argc, argv, &i), 1, 1L << 20);
            set_prompt = 1;
        } else if (is_opt(a, "-n", "--tokens")) {
            n_gen = (uint32_t)parse_long(a, need_value(argc, argv, &i), 1, 1L << 20);
            set_gen = 1;
        }
        else if (is_opt(a, NULL, "--threads")) threads = (int)parse_long(a, need_value(argc, argv, &i), 1, NANO_MAX_THREADS);
        else if (is_opt(a, NULL, "--ctx")) n_ctx = (uint32_t)parse_long(a, need_value(argc, argv, &i), 1, 1L << 30);
        else if (is_opt(a, NULL, "--portable")) portable = 1;
        else if (is_opt(a, "-h", "--help")) {
            fputs(USAGE, stdout);
            return 0;
        } else die_usage_stray(argc, argv, a, "bench: unknown option '%s'", a);
    }
    if (!model) die_usage("bench: -m MODEL is required%s%s", "", "");
    m = load_model_to_run(model, 0);
    nano_model_get_info(m, &info);
    if ((i = make_context(m, model, n_ctx, 0, threads, NANO_ATTENTION_MODE_CAUSAL, portable, &ctx))) {
        nano_model_free(m);
        return i;
    }
    room = nano_context_n_ctx(ctx);
    if (n_prompt + n_gen > room && !(set_prompt && set_gen)) {
        /* a default (128 + 128) shrinks to fit a small model's context */
        if (!set_prompt && !set_gen) n_prompt = room / 2;
        else if (!set_prompt) n_prompt = room > n_gen ? room - n_gen : 0;
        if (!set_gen) n_gen = room > n_prompt ? room - n_prompt : 0;
        if (n_prompt && n_gen)
            fprintf(stderr, "nano: bench: the context holds %u tokens: timing %u prompt + %u decode tokens\n", room,
                    n_prompt, n_gen);
    }
    if (n_prompt == 0 || n_gen == 0 || n_prompt + n_gen > room) {
        if (n_prompt + n_gen > room)
            fprintf(stderr, "nano: error: bench: %u prompt + %u decode tokens exceed the context (%u)\n", n_prompt,
                    n_gen, room);
        else /* a default shrunk to nothing: the context has no room for both phases */
            fprintf(stderr, "nano: error: bench: the context holds %u token%s, too few to time a prompt and "
                            "decoding (at least 1 + 1)\n", room, room == 1 ? "" : "s");
        nano_context_free(ctx);
        nano_model_free(m);
        return 2;
    }
    V = info.vocab_size;
    ids = (int32_t *)malloc(((size_t)n_prompt + n_gen) * sizeof(int32_t));
    if (!ids) die_status(NANO_ERR_OUT_OF_MEMORY, "bench");
    nano_rng_seed(&rng, 1);
    for (t = 0; t < n_prompt + n_gen; t++) ids[t] = (int32_t)(nano_rng_next(&rng) % V);
    for (reps = 0; reps < 3; reps++) {
        nano_context_reset(ctx);
        t0 = now_ms();
        st = nano_eval(ctx, ids, n_prompt, NULL, 0);
        if (st != NANO_OK) die_status(st, "prefill");
        t_prefill = now_ms() - t0;
        t0 = now_ms();
        for (t = 0; t < n_gen; t++) {
            st = nano_eval(ctx, &ids[n_prompt + t], 1, NULL, 0);
            if (st != NANO_OK) die_status(st, "decode");
        }
        t_decode = now_ms() - t0;
        if (t_prefill < best_prefill) best_prefill = t_prefill;
        if (t_decode < best_decode) best_decode = t_decode;
    }
    printf("model    %s: %s %s, n_layer %u, n_embd %u, vocab %u, %llu bytes\n", model, info.layout,
           quant_name(info.quant_type), info.n_layer, info.n_embd, V, (unsigned long long)info.file_size);
    printf("threads  %d\n", (int)nano_context_threads(ctx));
    printf("prefill  %u tokens: %.2f ms, %.1f tokens/s\n", n_prompt, best_prefill, n_prompt * 1e3 / best_prefill);
    printf("decode   %u tokens: %.2f ms, %.1f tokens/s\n", n_gen, best_decode, n_gen * 1e3 / best_decode);
    free(ids);
    nano_context_free(ctx);
    nano_model_free(m);
    return 0;
}

// ---------------------------------------------------------------------------

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : NULL;
    int rc = 2;
    if (!cmd) {
        fputs(USAGE, stderr);
        return 2;
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(USAGE, stdout);
        return stdout_failed();
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("nano (%s)\n", nano_build_info());
        return stdout_failed();
    }
    if (strcmp(cmd, "run") == 0) rc = cmd_run(argc, argv);
    else if (strcmp(cmd, "info") == 0) rc = cmd_info(argc, argv);
    else if (strcmp(cmd, "seq2seq") == 0) rc = cmd_seq2seq(argc, argv);
    else if (strcmp(cmd, "bench") == 0) rc = cmd_bench(argc, argv);
    else die_usage("unknown command '%s'%s", cmd, "");
    /* output that could not be written is a failure, whatever the command said */
    if (rc == 0 && stdout_failed()) rc = 1;
    return rc;
}
