import CUserfault
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// The memory an application keeps its snapshotted state in: a memfd of a fixed size mapped
/// MAP_SHARED (so userfaultfd can write-protect it and, later, a NIC can register it), page-aligned,
/// populated at creation so every page has a page-table entry to protect.
///
/// The arena never moves or grows; `base` is valid until the arena is released. Reading and writing
/// it is the application's business; what a snapshot needs from writers is in `LiveSnapshotter`.
public final class SnapshotArena: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let sizeBytes: Int
    public let pageBytes: Int
    public let memfd: Int32

    public var pageCount: Int { sizeBytes / pageBytes }

    public static var systemPageBytes: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// Creates a zero-filled arena. Refuses a size that is not a positive multiple of the system
    /// page size, or over `SnapshotLayout.maxArenaBytes`, with INVALID_SIZE.
    public init(sizeBytes: Int, name: String = "pmu-snapshot-arena") throws(PMUError) {
        let page = Self.systemPageBytes
        guard sizeBytes > 0 else { throw PMUError(.invalidSize, "arena size \(sizeBytes) must be positive") }
        _ = try SnapshotLayout(pageBytes: UInt64(page), arenaBytes: UInt64(sizeBytes))
        let fd = cuf_memfd_create(name)
        guard fd >= 0 else { throw PMUError(.ioError, "memfd_create failed: \(String(cString: strerror(-fd)))") }
        guard ftruncate(fd, off_t(sizeBytes)) == 0 else {
            let error = errno
            close(fd)
            throw PMUError(.noSpace, "cannot size the arena memfd to \(sizeBytes) bytes: \(String(cString: strerror(error)))")
        }
        guard let mapped = mmap(nil, sizeBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0), mapped != MAP_FAILED else {
            let error = errno
            close(fd)
            throw PMUError(.noSpace, "cannot map an arena of \(sizeBytes) bytes: \(String(cString: strerror(error)))")
        }
        base = mapped
        self.sizeBytes = sizeBytes
        self.pageBytes = page
        memfd = fd
    }

    deinit {
        munmap(base, sizeBytes)
        close(memfd)
    }

    public func page(_ index: Int) -> UnsafeMutableRawPointer { base + index * pageBytes }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: sizeBytes) }
}
