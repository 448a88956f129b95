import CUserfault
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// A userfaultfd registered in synchronous write-protect mode on one arena.
///
/// Sync mode, not WP_ASYNC: copy-on-write needs the first write to a page not yet sent to stop
/// until its original is saved, which only a fault delivered to a handler gives. The same fault
/// tells us the page is dirty for the next incremental snapshot, so no PAGEMAP_SCAN is needed
/// (and one mapping cannot mix the sync and async modes: live-snapshots notes, pitfall 5).
final class WriteProtector: @unchecked Sendable {
    let fd: Int32
    let base: UnsafeMutableRawPointer
    let length: Int

    /// Sets up the descriptor and registers the arena, or throws with the reason (the caller
    /// falls back to copy mode and says so).
    init(arena: SnapshotArena) throws(PMUError) {
        let fd = cuf_userfaultfd(1, 0)
        guard fd >= 0 else {
            let hint = -fd == EPERM ? " (unprivileged: vm.unprivileged_userfaultfd is 0 and the process lacks CAP_SYS_PTRACE)" :
                -fd == ENOSYS ? " (the kernel has no userfaultfd)" : ""
            throw PMUError(.invalidArgument, "userfaultfd() failed: \(Self.describe(fd))\(hint)")
        }
        var available: UInt64 = 0
        let wanted = cuf_feature_wp_hugetlbfs_shmem()
        // Ask for the shared-memory WP feature; WP_UNPOPULATED too when offered (the arena is
        // populated anyway, so its absence is not fatal). A first API call learns what exists.
        var probe = cuf_api(fd, 0, &available, nil)
        close(fd)
        guard probe == 0 else { throw PMUError(.invalidArgument, "UFFDIO_API failed: \(Self.describe(probe))") }
        guard available & wanted != 0 else {
            throw PMUError(.invalidArgument, "the kernel's userfaultfd cannot write-protect shared memory (no UFFD_FEATURE_WP_HUGETLBFS_SHMEM; Linux 5.19+ needed)")
        }
        // UFFDIO_API may be called once per descriptor: open the real one.
        let real = cuf_userfaultfd(1, 0)
        guard real >= 0 else { throw PMUError(.invalidArgument, "userfaultfd() failed: \(Self.describe(real))") }
        let requested = wanted | (available & cuf_feature_wp_unpopulated())
        probe = cuf_api(real, requested, nil, nil)
        guard probe == 0 else {
            close(real)
            throw PMUError(.invalidArgument, "UFFDIO_API with write-protect features failed: \(Self.describe(probe))")
        }
        let registered = cuf_register_wp(real, arena.base, UInt64(arena.sizeBytes), nil)
        guard registered == 0 else {
            close(real)
            throw PMUError(.invalidArgument, "UFFDIO_REGISTER (write-protect) of the arena failed: \(Self.describe(registered))")
        }
        self.fd = real
        base = arena.base
        length = arena.sizeBytes
    }

    deinit {
        _ = cuf_unregister(fd, base, UInt64(length))
        close(fd)
    }

    func protect(_ offset: Int, _ count: Int) throws(PMUError) {
        let result = cuf_writeprotect(fd, base + offset, UInt64(count), 1, 0)
        guard result == 0 else { throw PMUError(.ioError, "UFFDIO_WRITEPROTECT failed: \(Self.describe(result))") }
    }

    /// Un-protects and wakes the writers waiting on a fault there. EAGAIN (the mm is changing)
    /// is retried; the kernel documents it as transient.
    func unprotect(_ offset: Int, _ count: Int) {
        while true {
            let result = cuf_writeprotect(fd, base + offset, UInt64(count), 0, 0)
            if result == 0 || result != -EAGAIN { return }
        }
    }

    static func describe(_ negativeErrno: Int32) -> String {
        "\(String(cString: strerror(-negativeErrno))) (errno \(-negativeErrno))"
    }
}
