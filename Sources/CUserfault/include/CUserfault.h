// CUserfault: what Swift cannot import from the kernel's userfaultfd and pagemap interfaces.
//
// Swift cannot call the variadic syscall() nor expand the _IOWR ioctl macros, and Debian 12's
// headers (linux-libc-dev 6.1) lack UFFD_FEATURE_WP_UNPOPULATED, UFFD_FEATURE_WP_ASYNC and
// PAGEMAP_SCAN (kernel 6.4 / 6.7). The definitions missing from the headers are given locally in
// shim.c, with the kernel's values; the kernel says at run time which of them it supports
// (cuf_api reports the feature bits; an unsupported ioctl fails with EINVAL or ENOTTY).
//
// Every function returns 0 (or a count) on success and -errno on failure: errno is thread-local
// and Swift code between the call and a read of errno could change it.
#ifndef CUSERFAULT_H
#define CUSERFAULT_H

#include <stdint.h>
#include <stddef.h>

// Feature bits (values as in the kernel's include/uapi/linux/userfaultfd.h).
uint64_t cuf_feature_wp_hugetlbfs_shmem(void); // write-protect shared memory (memfd, tmpfs)
uint64_t cuf_feature_wp_unpopulated(void);     // protect page-table entries never populated (6.4+)
uint64_t cuf_feature_wp_async(void);           // writes clear protection without a fault (6.7+)

// userfaultfd(O_CLOEXEC | extra flags): a descriptor, or -errno.
// user_mode_only asks for UFFD_USER_MODE_ONLY (unprivileged use; kernel writes then fail EFAULT).
int cuf_userfaultfd(int nonblocking, int user_mode_only);

// UFFDIO_API handshake asking for `requested` features. On success *available gets the kernel's
// answer (every feature it supports), *ioctls the ioctls the descriptor supports.
int cuf_api(int fd, uint64_t requested, uint64_t *available, uint64_t *ioctls);

// UFFDIO_REGISTER of [start, start+length) in write-protect mode.
int cuf_register_wp(int fd, void *start, uint64_t length, uint64_t *ioctls);
int cuf_unregister(int fd, void *start, uint64_t length);

// UFFDIO_WRITEPROTECT: protect (1) or un-protect (0) the range. Un-protecting wakes the threads
// waiting on a fault in the range unless dont_wake.
int cuf_writeprotect(int fd, void *start, uint64_t length, int protect, int dont_wake);

// Reads up to `max` messages (blocking unless the descriptor is non-blocking). For each
// write-protect or write fault, addresses[i] gets the faulting address and the count goes up;
// other events are skipped. Returns the count of faults (0 possible), or -errno (-EAGAIN when a
// non-blocking descriptor has nothing).
int cuf_read_write_faults(int fd, uint64_t *addresses, int max);

// PAGEMAP_SCAN on an open /proc/self/pagemap: lists the pages of [start, start+length) that were
// written since they were last write-protected (async mode: PAGE_IS_WRITTEN), as up to
// max_ranges [begin, end) pairs in ranges (2 * max_ranges uint64 values). clear != 0 re-protects
// what it reports in the same call. *walk_end gets where the scan stopped (== start+length when it
// covered everything). Returns the number of ranges, or -errno (-EINVAL / -ENOTTY: not supported).
int cuf_pagemap_scan_written(int pagemap_fd, void *start, uint64_t length, int clear,
                             uint64_t *ranges, int max_ranges, uint64_t *walk_end);

// memfd_create(name, MFD_CLOEXEC): a descriptor, or -errno.
int cuf_memfd_create(const char *name);

#endif
