/* Saying why a model or LoRA file given on a command line could not be used, in
 * one line on standard error: shared by nano (cli/nano.c) and nano-wss
 * (server/nano_wss.c), so that both explain the same mistakes the same way.
 * Each prints "PROG: error: PATH: ..." and returns 1, the exit status. */
#ifndef NANO_LOAD_REPORT_H
#define NANO_LOAD_REPORT_H

#include "nano.h"

/* A failed nano_model_load_file / nano_lora_load_file: the status and the loader's
 * detail; for a file that cannot be opened, the system's reason (no such file, no
 * permission) or what is there instead (a folder, a FIFO); for one that is not a
 * Nano file, what its first bytes say it is (a PyTorch checkpoint: how to export
 * it). `as_lora`: the file was given as the LoRA module. */
int nano_report_load(const char *prog, nano_status st, const char *path, const char *detail, int as_lora);

/* A LoRA module given as the model (`takes_lora`: the program has -l for it). */
int nano_report_lora_as_model(const char *prog, const char *path, int takes_lora);

/* NANO_ERR_LORA_MISMATCH from nano_context_set_lora: both shapes. */
int nano_report_lora_mismatch(const char *prog, const char *path, const nano_model *m, const nano_lora *lora);

#endif
