/*
 * platform_stdio.c - the platform layer for targets with only the C standard
 * library (WASM, bare-metal newlib/picolibc): files are read whole with
 * fopen/fread, time comes from clock(). Build with PLATFORM=stdio.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

nano_status nano_platform_map(const char *path, int use_mmap, nano_file_map *out) {
    FILE *f;
    long end;
    unsigned char *buf;
    size_t size;
    (void)use_mmap;
    if (!path || !out) return NANO_ERR_BAD_ARGUMENT;
    out->data = NULL;
    out->size = 0;
    out->impl = NULL;
    f = fopen(path, "rb");
    if (!f) return NANO_ERR_IO;
    if (fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NANO_ERR_IO;
    }
    size = (size_t)end;
    buf = (unsigned char *)malloc(size + 1);
    if (!buf) {
        fclose(f);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    if (fread(buf, 1, size, f) != size) {
        free(buf);
        fclose(f);
        return NANO_ERR_IO;
    }
    fclose(f);
    out->data = buf;
    out->size = size;
    out->impl = buf;
    return NANO_OK;
}

void nano_platform_unmap(nano_file_map *map) {
    if (!map || !map->impl) return;
    free(map->impl);
    map->impl = NULL;
    map->data = NULL;
    map->size = 0;
}

double nano_platform_now_ms(void) { return (double)clock() * 1e3 / (double)CLOCKS_PER_SEC; }

const char *nano_platform_name(void) { return "stdio (read)"; }
