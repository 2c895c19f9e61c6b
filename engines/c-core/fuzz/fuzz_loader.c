/*
 * fuzz_loader.c - libFuzzer target: any bytes through nano_model_load_buffer
 * (and nano_lora_load_buffer); a file that loads is then run for a few tokens
 * (or its tokenizer exercised) so that the views it hands out are checked too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nano_model *m = NULL;
    nano_lora *lora = NULL;
    nano_model_info info;
    uint8_t *copy;
    /* a private copy: ASan then catches any read past the end */
    copy = (uint8_t *)malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    {
        /* the error detail, whole and cut short: a heap buffer of exactly its size,
         * so ASan catches a write past it; it must come back NUL-terminated */
        size_t cap = 1 + (size ? data[0] % 200 : 0);
        char *detail = (char *)malloc(cap);
        nano_model_params mp = nano_model_default_params();
        if (!detail) {
            free(copy);
            return 0;
        }
        mp.error_detail = detail;
        mp.error_detail_size = cap;
        if (nano_lora_load_buffer(copy, size, &mp, &lora) == NANO_OK) nano_lora_free(lora);
        if (strlen(detail) >= cap) abort();
        if (nano_model_load_buffer(copy, size, &mp, &m) != NANO_OK) {
            if (strlen(detail) >= cap) abort();
            free(detail);
            free(copy);
            return 0;
        }
        if (detail[0]) abort(); /* a load that worked leaves "" */
        free(detail);
    }
    nano_model_get_info(m, &info);
    {
        uint32_t i;
        for (i = 0; i < info.n_tensors; i++) {
            nano_tensor_info t;
            nano_model_get_tensor(m, i, &t);
        }
    }
    if (nano_model_tokenizer(m)) {
        const nano_tokenizer *tok = nano_model_tokenizer(m);
        int32_t ids[64];
        size_t n = 0;
        char buf[256];
        size_t len;
        nano_tokenizer_encode(tok, "<|eos|>hello, 世界 \xff", 20, 1, ids, 64, &n);
        if (n > 64) n = 64;
        nano_tokenizer_decode(tok, ids, n, buf, sizeof buf, &len);
    }
    /* Run tiny models only: the fuzzer wants many executions per second. */
    if (info.runnable && (uint64_t)info.n_layer * info.n_embd * info.n_hidden < (1u << 16) &&
        info.vocab_size <= 4096 && info.block_size >= 1) {
        nano_context *ctx = NULL;
        nano_context_params cp = nano_context_default_params();
        cp.n_ctx = info.block_size < 8 ? info.block_size : 8;
        cp.n_threads = 1;
        if (nano_context_init(m, &cp, &ctx) == NANO_OK) {
            int32_t toks[4] = {0, 1, 2, 3};
            uint32_t n = cp.n_ctx < 4 ? cp.n_ctx : 4, i;
            for (i = 0; i < n; i++) toks[i] = (int32_t)(toks[i] % info.vocab_size);
            nano_eval(ctx, toks, n, NULL, 0);
            nano_context_free(ctx);
        }
    }
    nano_model_free(m);
    free(copy);
    return 0;
}
