#if canImport(Glibc)
import Glibc
#endif
import PMUCore

/// Writes into a region through its file (pwrite) instead of through the mapping: for the large,
/// streamed WRITEs of fresh regions, where copying into the mapping pays a page fault per 4 KiB
/// page, each zero-filling its new page-cache page before the copy overwrites it (docs/
/// BENCHMARKS.md, issue 15: 70% of a first write). A pwrite of whole pages fills the same page-
/// cache pages without faults and without zeroing them first. Only for `.fileMapping` regions:
/// their MAP_SHARED mapping and the file share those pages, so readers of the mapping see the
/// bytes at once, PERSIST's msync writes them back, and kill -9 keeps them, exactly as after a
/// copy into the mapping. (A shadow or MAP_PRIVATE mapping is not the file's page cache.)
///
/// One descriptor while a streamed WRITE is landing, closed when it ends (deinit).
public final class RegionFileWriter {
    private let fd: Int32
    public let mapping: MappedRegion

    /// Nil when the region is not a file mapping, its file cannot be opened (out of descriptors,
    /// deleted meanwhile) or is no longer the mapped one: the caller copies into the mapping instead.
    public init?(_ mapping: MappedRegion) {
        guard mapping.memory == .fileMapping, let identity = mapping.fileIdentity else { return nil }
        let fd = open(mapping.path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var status = stat()
        guard fstat(fd, &status) == 0, UInt64(status.st_dev) == identity.device, UInt64(status.st_ino) == identity.inode else {
            close(fd)
            return nil
        }
        self.fd = fd
        self.mapping = mapping
    }

    deinit { close(fd) }

    /// Writes `bytes` at `offset`; bounds as `MappedRegion.write`. A pwrite that fails (an I/O
    /// error of the page cache, not expected on a preallocated file) leaves the rest to a copy
    /// into the mapping, so the bytes land either way.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) {
        precondition(offset <= mapping.sizeBytes && UInt64(bytes.count) <= mapping.sizeBytes - offset, "write outside region")
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n > 0 {
                done += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                mapping.write(UnsafeRawBufferPointer(rebasing: bytes[done...]), at: offset + UInt64(done))
                return
            }
        }
    }
}
