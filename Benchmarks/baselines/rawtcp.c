// Raw TCP baselines for PMU's benchmarks: the machine's limit with no framing and no PMU.
//   rawtcp server PORT                         echo server: ping-pong replies, stream sink
//   rawtcp pingpong HOST PORT SIZE COUNT       SIZE-byte request, SIZE-byte... 8-byte reply; prints latencies
//   rawtcp stream HOST PORT CHUNK TOTAL        sends TOTAL bytes in CHUNK writes, waits for the ack
// Output: one JSON object on stdout. Bounded: COUNT and TOTAL are given; the server exits after
// its client disconnects when started with --once.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int full_read(int fd, void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r <= 0) return -1;
        done += r;
    }
    return 0;
}

static int full_write(int fd, const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(fd, (const char *)buf + done, n - done);
        if (r <= 0) return -1;
        done += r;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Protocol: a 16-byte header {u64 mode, u64 size} then mode 1: ping-pong of `size`-byte requests
// answered with 8 bytes; mode 2: `size` bytes streamed, answered with 8 bytes at the end.
static void serve(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    uint64_t header[2];
    if (full_read(fd, header, sizeof header)) return;
    char *buf = malloc(1 << 22);
    uint64_t ack = 1;
    if (header[0] == 1) {
        while (full_read(fd, buf, header[1]) == 0)
            if (full_write(fd, &ack, 8)) break;
    } else {
        uint64_t left = header[1];
        while (left > 0) {
            ssize_t r = read(fd, buf, left < (1 << 22) ? left : (1 << 22));
            if (r <= 0) break;
            left -= r;
        }
        full_write(fd, &ack, 8);
    }
    free(buf);
}

static int connect_to(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); exit(1); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "server") == 0) {
        int port = atoi(argv[2]);
        int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 16)) { perror("bind"); return 1; }
        for (;;) {  // one client at a time; the harness kills the server when done
            int fd = accept(ls, NULL, NULL);
            if (fd < 0) continue;
            serve(fd);
            close(fd);
        }
    }
    if (argc == 6 && strcmp(argv[1], "pingpong") == 0) {
        int fd = connect_to(argv[2], atoi(argv[3]));
        uint64_t size = strtoull(argv[4], 0, 10), count = strtoull(argv[5], 0, 10), header[2] = {1, size}, ack;
        full_write(fd, header, sizeof header);
        char *buf = calloc(1, size);
        double *lat = malloc(sizeof(double) * count);
        for (uint64_t i = 0; i < count; i++) {
            double t0 = now_us();
            if (full_write(fd, buf, size) || full_read(fd, &ack, 8)) return 1;
            lat[i] = now_us() - t0;
        }
        qsort(lat, count, sizeof(double), cmp_double);
        printf("{\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"count\":%llu}\n", lat[count / 2], lat[count * 99 / 100],
               lat[count * 999 / 1000], (unsigned long long)count);
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "stream") == 0) {
        int fd = connect_to(argv[2], atoi(argv[3]));
        uint64_t chunk = strtoull(argv[4], 0, 10), total = strtoull(argv[5], 0, 10), header[2] = {2, total}, ack;
        char *buf = calloc(1, chunk);
        double t0 = now_us();
        full_write(fd, header, sizeof header);
        for (uint64_t sent = 0; sent < total; sent += chunk) full_write(fd, buf, chunk < total - sent ? chunk : total - sent);
        full_read(fd, &ack, 8);
        double seconds = (now_us() - t0) / 1e6;
        printf("{\"gbps\":%.3f,\"bytes\":%llu,\"seconds\":%.3f}\n", total / seconds / 1e9, (unsigned long long)total, seconds);
        return 0;
    }
    fprintf(stderr, "usage: rawtcp server PORT | pingpong HOST PORT SIZE COUNT | stream HOST PORT CHUNK TOTAL\n");
    return 2;
}
