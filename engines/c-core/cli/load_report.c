/* What a file given on a command line is when it cannot be used: see load_report.h. */
#include "load_report.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define HAVE_POSIX_FILES 1 /* stat, open: say why a file could not be loaded */
#endif

/* Up to n first bytes of the file at path into buf: the count read, 0 when none
 * could be (only a regular file is read: a FIFO is not waited on). */
static size_t first_bytes(const char *path, unsigned char *buf, size_t n) {
    size_t got = 0;
#ifdef HAVE_POSIX_FILES
    struct stat sb;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return 0;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode)) {
        ssize_t r = read(fd, buf, n);
        got = r > 0 ? (size_t)r : 0;
    }
    close(fd);
#else
    (void)path, (void)buf, (void)n;
#endif
    return got;
}

/* Files people give by mistake, told by their first bytes (as nano_format's BadMagic
 * tells them), with what to do instead. */
static const struct {
    const char *magic;
    size_t len;
    const char *what;
    int checkpoint; /* torch.save's zip archive: nano_train.export makes a model of it */
} OTHER_FILES[] = {
    {"PK\003\004", 4, "a zip archive, probably a PyTorch checkpoint (.pt)", 1},
    {"GGUF", 4, "a GGUF file (llama.cpp's format), which this engine does not read", 0},
    {"{", 1, "a JSON file (a vocabulary?), not a model: a Nano model file holds its own vocabulary", 0},
};

/* After a BAD_MAGIC line: ": what the file is" when its first bytes say, and for a
 * training checkpoint how to export it (`as_lora`: it was given with -l). */
static void print_other_file(const char *path, int as_lora) {
    unsigned char head[4];
    size_t n = first_bytes(path, head, sizeof head), i;
    for (i = 0; i < sizeof OTHER_FILES / sizeof OTHER_FILES[0]; i++) {
        if (n < OTHER_FILES[i].len || memcmp(head, OTHER_FILES[i].magic, OTHER_FILES[i].len) != 0) continue;
        fprintf(stderr, ": %s", OTHER_FILES[i].what);
        if (OTHER_FILES[i].checkpoint)
            fprintf(stderr, ": export it first with python -m nano_train.export --ckpt %s %s", path,
                    as_lora ? "--out BASE.bin --lora-out LORA.bin" : "--out MODEL.bin");
        return;
    }
}

/* A file the loader could not open or read (NANO_ERR_IO): why, as the system says
 * it (no such file, no permission), or what is there instead of a file (a folder,
 * a FIFO). Returns 1, the exit status. */
static int report_io(const char *prog, const char *path, int as_lora) {
#ifdef HAVE_POSIX_FILES
    struct stat sb;
    const char *kind = NULL;
    int fd;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "%s: error: %s: %s (NANO_ERR_IO)\n", prog, path, strerror(errno));
        return 1;
    }
    if (S_ISDIR(sb.st_mode)) kind = "a folder (a directory)";
    else if (S_ISFIFO(sb.st_mode)) kind = "a FIFO (a pipe)";
    else if (S_ISCHR(sb.st_mode)) kind = "a character device";
    else if (S_ISBLK(sb.st_mode)) kind = "a block device";
    else if (!S_ISREG(sb.st_mode)) kind = "not a regular file";
    if (kind) {
        fprintf(stderr, "%s: error: %s: %s, not %s (NANO_ERR_IO)\n", prog, path, kind,
                as_lora ? "a LoRA module" : "a model file");
        return 1;
    }
    if ((fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY)) < 0) {
        fprintf(stderr, "%s: error: %s: %s (NANO_ERR_IO)\n", prog, path, strerror(errno));
        return 1;
    }
    close(fd);
#else
    (void)as_lora;
#endif
    /* it opens now: a read or map error, or it changed meanwhile */
    fprintf(stderr, "%s: error: %s: %s (%s)\n", prog, path, nano_status_string(NANO_ERR_IO),
            nano_status_name(NANO_ERR_IO));
    return 1;
}

/* Whether the file at path loads as a model (one given where a LoRA module goes). */
static int loads_as_model(const char *path) {
    nano_model *m = NULL;
    nano_model_params mp = nano_model_default_params();
    if (nano_model_load_file(path, &mp, &m) != NANO_OK) return 0;
    nano_model_free(m);
    return 1;
}

int nano_report_load(const char *prog, nano_status st, const char *path, const char *detail, int as_lora) {
    if (st == NANO_ERR_IO) return report_io(prog, path, as_lora);
    if (as_lora && st == NANO_ERR_UNKNOWN_MODEL_TYPE && loads_as_model(path)) {
        /* (not the status's text: the type is known, it is not a LoRA's) */
        fprintf(stderr, "%s: error: %s: a model file, not a LoRA module (%s): give it with -m; -l takes a LoRA "
                        "module (python -m nano_train.export ... --lora-out FILE writes one)\n", prog, path,
                nano_status_name(st));
        return 1;
    }
    fprintf(stderr, "%s: error: %s: %s (%s)", prog, path, nano_status_string(st), nano_status_name(st));
    if (detail[0]) fprintf(stderr, ": %s", detail);
    if (st == NANO_ERR_BAD_MAGIC) print_other_file(path, as_lora);
    fputc('\n', stderr);
    return 1;
}

int nano_report_lora_as_model(const char *prog, const char *path, int takes_lora) {
    fprintf(stderr, "%s: error: %s: %s (%s): the file is a LoRA module, not a model: give the base model with -m%s\n",
            prog, path, nano_status_string(NANO_ERR_UNSUPPORTED), nano_status_name(NANO_ERR_UNSUPPORTED),
            takes_lora ? " and the LoRA with -l" : "");
    return 1;
}

int nano_report_lora_mismatch(const char *prog, const char *path, const nano_model *m, const nano_lora *lora) {
    nano_model_info mi, li;
    nano_model_get_info(m, &mi);
    nano_lora_get_info(lora, &li);
    /* (head_dim, also compared, is n_embd / n_head in every file that runs) */
    fprintf(stderr, "%s: error: %s: %s (%s): the LoRA is for (n_layer, n_embd, n_head, n_kv_head) = (%u, %u, %u, "
                    "%u), the model is (%u, %u, %u, %u)\n", prog, path, nano_status_string(NANO_ERR_LORA_MISMATCH),
            nano_status_name(NANO_ERR_LORA_MISMATCH), li.n_layer, li.n_embd, li.n_head, li.n_kv_head, mi.n_layer,
            mi.n_embd, mi.n_head, mi.n_kv_head);
    return 1;
}
