#if canImport(Glibc)
import Glibc
#endif
import PMUCore
import PMUMetrics

/// A region's file mapped MAP_SHARED: the memory remote clients write into and read from.
///
/// Bytes written here are in the page cache at once (they survive kill -9 of the server); they are
/// durable against an OS crash or power loss only once `persist` covering them has returned.
///
/// Unchecked Sendable: concurrent readers and writers of overlapping bytes race exactly as RDMA
/// READ and WRITE do on registered memory; ordering between clients is theirs to arrange. The
/// mapping itself is immutable and lives until the last reference (including in-flight I/O) is gone.
public final class MappedRegion: @unchecked Sendable {
    public let id: UInt64
    public let sizeBytes: UInt64
    public let base: UnsafeMutableRawPointer
    let path: String
    /// Fault injection (`--test-volatile-until-persist`): mapped MAP_PRIVATE, so written bytes
    /// live in this process's memory only and reach the file only when `persist` writes them
    /// there. A kill -9 then loses every unpersisted write, as the loss of the machine would.
    let volatileUntilPersist: Bool

    init(id: UInt64, path: String, sizeBytes: UInt64, volatileUntilPersist: Bool = false) throws(PMUError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot open region file", path) }
        defer { close(fd) }
        let flags = volatileUntilPersist ? MAP_PRIVATE : MAP_SHARED
        guard let pointer = mmap(nil, Int(sizeBytes), PROT_READ | PROT_WRITE, flags, fd, 0), pointer != MAP_FAILED else {
            throw Sys.error(.ioError, "cannot map region file (\(sizeBytes) bytes)", path)
        }
        self.id = id
        self.sizeBytes = sizeBytes
        self.base = pointer
        self.path = path
        self.volatileUntilPersist = volatileUntilPersist
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
        if volatileUntilPersist {
            try writeBack(offset: start, length: end - start)
            failed = false
            return
        }
        guard msync(base + Int(start), Int(end - start), MS_SYNC) == 0 else {
            throw Sys.error(.ioError, "msync failed for region file", path)
        }
        failed = false
    }

    /// The volatile double's PERSIST: pwrite the private pages' bytes to the file, then fdatasync.
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
