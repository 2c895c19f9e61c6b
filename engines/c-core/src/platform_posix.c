/*
 * platform_posix.c - the platform layer for POSIX systems: files are memory
 * mapped (or read when mapping is not wanted or fails), time from
 * clock_gettime(CLOCK_MONOTONIC). The build picks this file or
 * platform_stdio.c; the core calls only the functions in internal.h.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct posix_map {
    int mapped; /* 1: munmap; 0: free */
    void *base;
    size_t size;
} posix_map;

static nano_status read_all(int fd, size_t size, void **out) {
    /* size + 1 so that an empty file still gets a distinct allocation */
    unsigned char *buf = (unsigned char *)malloc(size + 1);
    size_t done = 0;
    if (!buf) return NANO_ERR_OUT_OF_MEMORY;
    while (done < size) {
        ssize_t got = read(fd, buf + done, size - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            free(buf);
            return NANO_ERR_IO;
        }
        done += (size_t)got;
    }
    *out = buf;
    return NANO_OK;
}

nano_status nano_platform_map(const char *path, int use_mmap, nano_file_map *out) {
    struct stat st;
    posix_map *pm;
    int fd;
    nano_status status = NANO_OK;
    if (!path || !out) return NANO_ERR_BAD_ARGUMENT;
    out->data = NULL;
    out->size = 0;
    out->impl = NULL;
    /* O_NONBLOCK: opening a FIFO (or a device) for reading would otherwise wait,
     * forever, for a writer. Only regular files are models; for them the flag
     * changes nothing, and it is cleared before any read all the same. */
    do {
        fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return NANO_ERR_IO;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
        (unsigned long long)st.st_size > (unsigned long long)SIZE_MAX - 1) {
        close(fd);
        return NANO_ERR_IO;
    }
    {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
            close(fd);
            return NANO_ERR_IO;
        }
    }
    pm = (posix_map *)calloc(1, sizeof(*pm));
    if (!pm) {
        close(fd);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    pm->size = (size_t)st.st_size;
    if (use_mmap && pm->size > 0) {
        void *base = mmap(NULL, pm->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base != MAP_FAILED) {
            pm->mapped = 1;
            pm->base = base;
        }
    }
    if (!pm->mapped) status = read_all(fd, pm->size, &pm->base);
    close(fd);
    if (status != NANO_OK) {
        free(pm);
        return status;
    }
    out->data = (const uint8_t *)pm->base;
    out->size = pm->size;
    out->impl = pm;
    return NANO_OK;
}

void nano_platform_unmap(nano_file_map *map) {
    posix_map *pm;
    if (!map || !map->impl) return;
    pm = (posix_map *)map->impl;
    if (pm->mapped)
        munmap(pm->base, pm->size);
    else
        free(pm->base);
    free(pm);
    map->impl = NULL;
    map->data = NULL;
    map->size = 0;
}

double nano_platform_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

const char *nano_platform_name(void) { return "posix (mmap)"; }
