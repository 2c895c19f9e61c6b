/*
 * common.c - status strings, the ABI version and the build description.
 */
#include "internal.h"

// ---------------------------------------------------------------------------
// Status codes

typedef struct status_text {
    const char *name;
    const char *text;
} status_text;

static const status_text STATUS[NANO_STATUS_COUNT] = {
    {"NANO_OK", "ok"},
    {"NANO_ERR_BAD_MAGIC", "bad magic: not a Nano model file"},
    {"NANO_ERR_UNSUPPORTED_VERSION", "unsupported format version"},
    {"NANO_ERR_UNKNOWN_MODEL_TYPE", "unknown model type (or one the file's layout cannot hold)"},
    {"NANO_ERR_UNKNOWN_QUANT_TYPE", "unknown quant type for the file's layout"},
    {"NANO_ERR_BAD_HEADER", "bad header field (config length or reserved bytes)"},
    {"NANO_ERR_BAD_CONFIG", "bad model config (zero, absurd or inconsistent dimensions)"},
    {"NANO_ERR_BAD_GROUP_SIZE", "bad Q8_0 group size (zero, or does not divide a row length)"},
    {"NANO_ERR_TRUNCATED", "truncated file (header, tokenizer section or parameters)"},
    {"NANO_ERR_BAD_TOKEN_RECORD", "bad tokenizer record"},
    {"NANO_ERR_TRAILING_BYTES", "trailing bytes after the last tensor"},
    {"NANO_ERR_SIZE_OVERFLOW", "sizes in the header overflow or exceed the file"},
    {"NANO_ERR_UNSUPPORTED_QUANT", "parameters of this quant type cannot be loaded"},
    {"NANO_ERR_IO", "cannot open or read the file (or it is not a regular file)"},
    {"NANO_ERR_OUT_OF_MEMORY", "out of memory"},
    {"NANO_ERR_BAD_ARGUMENT", "bad argument"},
    {"NANO_ERR_BAD_TOKEN", "token id outside the vocabulary"},
    {"NANO_ERR_BUFFER_TOO_SMALL", "output buffer too small"},
    {"NANO_ERR_UNSUPPORTED", "not supported by this engine"},
    {"NANO_ERR_LORA_MISMATCH", "LoRA shapes do not fit the model"},
    {"NANO_ERR_NO_TOKENIZER", "the model has no usable tokenizer (or lacks a needed special token)"},
    {"NANO_ERR_CONTEXT_FULL", "context full"},
    {"NANO_ERR_CANCELLED", "cancelled"},
    {"NANO_ERR_STATE", "call out of order"},
    {"NANO_ERR_NON_FINITE", "non-finite weights (NaN, infinity or an overflowing Q8_0 scale) or NaN logits"},
};

const char *nano_status_string(nano_status status) {
    if ((int)status < 0 || (int)status >= NANO_STATUS_COUNT) return "unknown status";
    return STATUS[status].text;
}

const char *nano_status_name(nano_status status) {
    if ((int)status < 0 || (int)status >= NANO_STATUS_COUNT) return "NANO_ERR_UNKNOWN";
    return STATUS[status].name;
}

int nano_abi_version(void) { return NANO_ABI_VERSION; }

// ---------------------------------------------------------------------------
// Build description

#ifdef _OPENMP
#define BUILD_OPENMP "openmp"
#else
#define BUILD_OPENMP "no openmp"
#endif

#if defined(__clang__)
#define BUILD_CC "clang " __clang_version__
#elif defined(__GNUC__)
#define BUILD_CC "gcc " __VERSION__
#else
#define BUILD_CC "cc"
#endif

#define NANO_STR_(x) #x
#define NANO_STR(x) NANO_STR_(x)

const char *nano_build_info(void) {
    return "nano abi " NANO_STR(NANO_ABI_VERSION) ", " BUILD_CC ", " BUILD_OPENMP;
}
