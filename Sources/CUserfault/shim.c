#define _GNU_SOURCE
#include "CUserfault.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

// Local definitions for what Debian 12's linux-libc-dev 6.1 lacks (values from kernel 6.7+).
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};
struct pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 12 u64 fields in the kernel ABI");
_Static_assert(sizeof(struct page_region) == 24, "page_region is 3 u64 fields in the kernel ABI");

uint64_t cuf_feature_wp_hugetlbfs_shmem(void) { return UFFD_FEATURE_WP_HUGETLBFS_SHMEM; }
uint64_t cuf_feature_wp_unpopulated(void) { return UFFD_FEATURE_WP_UNPOPULATED; }
uint64_t cuf_feature_wp_async(void) { return UFFD_FEATURE_WP_ASYNC; }

int cuf_userfaultfd(int nonblocking, int user_mode_only) {
    int flags = O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0) | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    long fd = syscall(SYS_userfaultfd, flags);
    return fd < 0 ? -errno : (int)fd;
}

int cuf_api(int fd, uint64_t requested, uint64_t *available, uint64_t *ioctls) {
    struct uffdio_api api;
    memset(&api, 0, sizeof api);
    api.api = UFFD_API;
    api.features = requested;
    if (ioctl(fd, UFFDIO_API, &api) != 0) return -errno;
    if (available) *available = api.features;
    if (ioctls) *ioctls = api.ioctls;
    return 0;
}

int cuf_register_wp(int fd, void *start, uint64_t length, uint64_t *ioctls) {
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = (uint64_t)(uintptr_t)start;
    reg.range.len = length;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return -errno;
    if (ioctls) *ioctls = reg.ioctls;
    return 0;
}

int cuf_unregister(int fd, void *start, uint64_t length) {
    struct uffdio_range range = { .start = (uint64_t)(uintptr_t)start, .len = length };
    return ioctl(fd, UFFDIO_UNREGISTER, &range) != 0 ? -errno : 0;
}

int cuf_writeprotect(int fd, void *start, uint64_t length, int protect, int dont_wake) {
    struct uffdio_writeprotect wp;
    memset(&wp, 0, sizeof wp);
    wp.range.start = (uint64_t)(uintptr_t)start;
    wp.range.len = length;
    wp.mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (dont_wake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) != 0 ? -errno : 0;
}

int cuf_read_write_faults(int fd, uint64_t *addresses, int max) {
    enum { batch = 64 };
    struct uffd_msg messages[batch];
    if (max > batch) max = batch;
    if (max <= 0) return -EINVAL;
    ssize_t got = read(fd, messages, sizeof(struct uffd_msg) * (size_t)max);
    if (got < 0) return -errno;
    int count = 0;
    for (ssize_t i = 0; i < got / (ssize_t)sizeof(struct uffd_msg); i++) {
        if (messages[i].event != UFFD_EVENT_PAGEFAULT) continue;
        uint64_t flags = messages[i].arg.pagefault.flags;
        if (!(flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE))) continue;
        addresses[count++] = messages[i].arg.pagefault.address;
    }
    return count;
}

int cuf_pagemap_scan_written(int pagemap_fd, void *start, uint64_t length, int clear,
                             uint64_t *ranges, int max_ranges, uint64_t *walk_end) {
    enum { batch = 512 };
    struct page_region regions[batch];
    if (max_ranges > batch) max_ranges = batch;
    if (max_ranges <= 0) return -EINVAL;
    struct pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.flags = clear ? (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) : 0;
    arg.start = (uint64_t)(uintptr_t)start;
    arg.end = arg.start + length;
    arg.vec = (uint64_t)(uintptr_t)regions;
    arg.vec_len = (uint64_t)max_ranges;
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    long got = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
    if (got < 0) return -errno;
    for (long i = 0; i < got; i++) {
        ranges[2 * i] = regions[i].start;
        ranges[2 * i + 1] = regions[i].end;
    }
    if (walk_end) *walk_end = arg.walk_end;
    return (int)got;
}

int cuf_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}
