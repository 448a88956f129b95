// Local durability baseline: write into a preallocated MAP_SHARED file, then msync(MS_SYNC).
//   localmsync FILE SIZE COUNT          SIZE-byte write + msync of its pages, COUNT times: latency
//   localmsync FILE TOTAL CHUNK bulk    TOTAL bytes written in CHUNK copies, then one msync: GB/s
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: localmsync FILE SIZE COUNT | FILE TOTAL CHUNK bulk\n"); return 2; }
    int bulk = argc == 5 && strcmp(argv[4], "bulk") == 0;
    uint64_t a = strtoull(argv[2], 0, 10), b = strtoull(argv[3], 0, 10);
    uint64_t fileSize = bulk ? a : (a * 1024 > (64 << 20) ? a * 1024 : (64 << 20));
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || posix_fallocate(fd, 0, fileSize)) { perror("fallocate"); return 1; }
    fsync(fd);
    char *map = mmap(0, fileSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    if (bulk) {
        char *src = malloc(b);
        memset(src, 0xAB, b);
        double t0 = now_us();
        for (uint64_t off = 0; off < a; off += b) memcpy(map + off, src, b < a - off ? b : a - off);
        double t1 = now_us();
        msync(map, a, MS_SYNC);
        double t2 = now_us();
        printf("{\"write_gbps\":%.3f,\"durable_gbps\":%.3f,\"bytes\":%llu}\n", a / (t1 - t0) / 1e3, a / (t2 - t0) / 1e3, (unsigned long long)a);
    } else {
        uint64_t size = a, count = b, page = 4096, span = fileSize / 2;
        char *src = malloc(size);
        memset(src, 0xCD, size);
        double *lat = malloc(sizeof(double) * count);
        for (uint64_t i = 0; i < count; i++) {
            uint64_t off = (i * ((size + page - 1) / page * page)) % span;
            double t0 = now_us();
            memcpy(map + off, src, size);
            msync(map + off / page * page, (off % page + size + page - 1) / page * page, MS_SYNC);
            lat[i] = now_us() - t0;
        }
        qsort(lat, count, sizeof(double), cmp_double);
        printf("{\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"count\":%llu}\n", lat[count / 2], lat[count * 99 / 100],
               lat[count * 999 / 1000], (unsigned long long)count);
    }
    unlink(argv[1]);
    return 0;
}
