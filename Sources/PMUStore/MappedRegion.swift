#if canImport(Glibc)
import Glibc
#endif
import PMUCore
import PMUMetrics

/// How a region's bytes are held in memory while the server serves it.
public enum RegionMemory: Sendable, Equatable {
    /// The region file mapped MAP_SHARED: writes are in the page cache at once (they survive kill -9
    /// of the server); PERSIST is msync. The NIC cannot pin these pages on a disk filesystem (see
    /// `shadow`).
    case fileMapping
    /// A shmem copy of the region file (anonymous MAP_SHARED: an unnamed shmem file), loaded when the region is first mapped: the memory
    /// RDMA registers when the data directory is on a filesystem with writeback (ext4, xfs), whose
    /// shared file mappings Linux >= 6.5 refuses to pin and older kernels pin unsoundly (msync can
    /// miss pages the NIC wrote). PERSIST copies the range out with pwrite and fdatasyncs the file,
    /// so a PERSIST survives power loss. Unpersisted bytes live only in the shadow: kill -9 of the
    /// server loses them, as power loss would. Cost: one shadow of the region's full size in RAM
    /// (pinned while a verbs client holds a grant) per region mapped since start, until the region
    /// is deleted; bounded by `StoreConfiguration.shadowLimitBytes`.
    case shadow
    /// Test mode (`--test-volatile-until-persist`): the file mapped MAP_PRIVATE, written back like
    /// `shadow` on PERSIST, so a kill -9 loses every unpersisted write, as the loss of the machine would.
    case volatileUntilPersist
}

/// A region's bytes in memory: the memory remote clients write into and read from.
///
/// Bytes written here are durable against an OS crash or power loss only once `persist` covering
/// them has returned; whether they survive kill -9 of the server before that depends on `memory`.
///
/// Unchecked Sendable: concurrent readers and writers of overlapping bytes race exactly as RDMA
/// READ and WRITE do on registered memory; ordering between clients is theirs to arrange. The
/// mapping itself is immutable and lives until the last reference (including in-flight I/O) is gone.
public final class MappedRegion: @unchecked Sendable {
    public let id: UInt64
    public let sizeBytes: UInt64
    public let base: UnsafeMutableRawPointer
    public let memory: RegionMemory
    public let path: String
    /// The mapped file's device and inode, so a writer that opens `path` later can tell it is
    /// still the same file (`RegionFileWriter`).
    let fileIdentity: (device: UInt64, inode: UInt64)?

    init(id: UInt64, path: String, sizeBytes: UInt64, memory: RegionMemory = .fileMapping) throws(PMUError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot open region file", path) }
        defer { close(fd) }
        guard sizeBytes <= UInt64(Int.max) else { throw PMUError(.invalidSize, "region of \(sizeBytes) bytes cannot be mapped") }
        let pointer: UnsafeMutableRawPointer
        switch memory {
        case .fileMapping, .volatileUntilPersist:
            let flags = memory == .fileMapping ? MAP_SHARED : MAP_PRIVATE
            guard let mapped = mmap(nil, Int(sizeBytes), PROT_READ | PROT_WRITE, flags, fd, 0), mapped != MAP_FAILED else {
                throw Sys.error(.ioError, "cannot map region file (\(sizeBytes) bytes)", path)
            }
            pointer = mapped
        case .shadow:
            pointer = try Self.loadShadow(from: fd, sizeBytes: sizeBytes, path: path)
        }
        var status = stat()
        self.fileIdentity = fstat(fd, &status) == 0 ? (UInt64(status.st_dev), UInt64(status.st_ino)) : nil
        self.id = id
        self.sizeBytes = sizeBytes
        self.base = pointer
        self.path = path
        self.memory = memory
    }

    /// Shmem of the region's size, filled from the file with pread. An anonymous MAP_SHARED
    /// mapping: the kernel backs it with an unnamed shmem file, as memfd_create would, without a
    /// descriptor, so shadows never count against the open-file limit (regions can outnumber it).
    /// Pinnable by ibv_reg_mr on every kernel (shmem has no writeback). It dies with the process.
    private static func loadShadow(from fd: Int32, sizeBytes: UInt64, path: String) throws(PMUError) -> UnsafeMutableRawPointer {
        guard let mapped = mmap(nil, Int(sizeBytes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0), mapped != MAP_FAILED else {
            throw Sys.error(.noSpace, "cannot map a shmem shadow of \(sizeBytes) bytes (out of memory or vm.overcommit limits?) for region file", path)
        }
        var done: UInt64 = 0
        while done < sizeBytes {
            // 8 MiB at a time: a bounded syscall, interruptible between chunks by nothing but EINTR.
            let n = pread(fd, mapped + Int(done), Int(min(sizeBytes - done, 8 << 20)), off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let failure = n == 0
                    ? PMUError(.ioError, "region file \(path) is shorter than its \(sizeBytes) bytes (read \(done))")
                    : Sys.error(.ioError, "cannot read region file into its shadow", path)
                munmap(mapped, Int(sizeBytes))
                throw failure
            }
            done += UInt64(n)
        }
        return mapped
    }

    /// Faults every page in writable (MADV_POPULATE_WRITE), so first writes find them present.
    public func populate() throws(PMUError) {
        let madvPopulateWrite: Int32 = 23 // Linux 5.14+; not in Glibc's module map
        guard madvise(base, Int(sizeBytes), madvPopulateWrite) == 0 else {
            throw Sys.error(.ioError, "cannot populate region mapping (MADV_POPULATE_WRITE needs Linux 5.14)", path)
        }
    }

    deinit {
        munmap(base, Int(sizeBytes))
    }

    /// Copies bytes into the region. Bounds were checked by the protection table; asserted again.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) {
        precondition(offset <= sizeBytes && UInt64(bytes.count) <= sizeBytes - offset, "write outside region")
        guard bytes.count > 0 else { return }
        (base + Int(offset)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    /// Bytes of the region without copying, valid while `self` is alive.
    public func bytes(at offset: UInt64, length: Int) -> UnsafeRawBufferPointer {
        precondition(offset <= sizeBytes && UInt64(length) <= sizeBytes - offset, "read outside region")
        return UnsafeRawBufferPointer(start: base + Int(offset), count: length)
    }

    /// Makes [offset, offset+length) durable: msync(MS_SYNC) of the pages covering it. On Linux this
    /// writes the dirty pages and waits, and the filesystem commits the extent changes it needs
    /// (the file was preallocated, so no block allocation remains to be made durable).
    public func persist(offset: UInt64, length: UInt64) throws(PMUError) {
        precondition(offset <= sizeBytes && length <= sizeBytes - offset, "persist outside region")
        guard length > 0 else { return }
        // Every PERSIST, mirrored write made durable and takeover sync passes here: the one place
        // sync latency and persisted bytes are measured (pmu_sync_duration_seconds).
        let started = PMUMetrics.now()
        var failed = true
        defer { PMUMetrics.synced(bytes: length, nanoseconds: PMUMetrics.now() &- started, failed: failed) }
        let page = UInt64(Sys.pageSize)
        let start = offset / page * page
        let end = offset + length
        if memory != .fileMapping {
            try writeBack(offset: start, length: min(sizeBytes, (end + page - 1) / page * page) - start)
            failed = false
            return
        }
        guard msync(base + Int(start), Int(end - start), MS_SYNC) == 0 else {
            throw Sys.error(.ioError, "msync failed for region file", path)
        }
        failed = false
    }

    /// PERSIST of a shadow (or the volatile double): pwrite the range's pages from memory to the
    /// file, then fdatasync. Whole pages: the file's page cache is then written in full pages.
    /// Every PERSIST copies its whole range: one-sided RDMA writes bypass the server's CPU, so the
    /// server cannot know which of its pages a client wrote since the last PERSIST.
    private func writeBack(offset: UInt64, length: UInt64) throws(PMUError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot open region file", path) }
        defer { close(fd) }
        var done: UInt64 = 0
        while done < length {
            let n = pwrite(fd, base + Int(offset + done), Int(length - done), off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw Sys.error(.ioError, "cannot write back region file", path)
            }
            done += UInt64(n)
        }
        guard fdatasync(fd) == 0 else { throw Sys.error(.ioError, "fdatasync failed for region file", path) }
    }
}
