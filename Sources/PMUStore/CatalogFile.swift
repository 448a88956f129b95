#if canImport(Glibc)
import Glibc
#endif
import PMUCore

/// `fallocate(2)`: Glibc declares it only under _GNU_SOURCE, which Swift's Glibc module lacks.
@_silgen_name("fallocate")
private func sys_fallocate(_ fd: Int32, _ mode: Int32, _ offset: Int64, _ length: Int64) -> Int32
/// FALLOC_FL_KEEP_SIZE from <linux/falloc.h>: allocate blocks past the end without growing the file.
private let fallocKeepSize: Int32 = 0x01

/// The catalog log on disk: append one record, fdatasync, and only then let it take effect.
///
/// The file keeps `headroomBytes` of blocks allocated past its end (FALLOC_FL_KEEP_SIZE: the size,
/// and so what recovery reads, is unchanged), so appends land in blocks it already owns and keep
/// working on a full filesystem: an OPEN read-write (an epoch bump) or a DELETE must not fail with
/// NO_SPACE just because the log's last block filled. The headroom is renewed when half is used.
///
/// Not thread-safe; RegionStore serialises access under its catalog lock.
final class CatalogFile {
    private let path: String
    private let tempPath: String
    private let directoryPath: String
    private var fd: Int32
    private(set) var lengthBytes: Int
    private(set) var recordsSinceCompaction: Int
    /// Set when a compaction's rename may not be durable: appending more would risk records that
    /// a restart could not find. Metadata changes then fail until the server restarts.
    private var broken: PMUError?
    private let headroomBytes: Int
    /// End of the blocks known to be allocated (file size plus preallocated headroom).
    private var allocatedEnd = 0
    /// Told when the headroom cannot be renewed (full disk); once per failure streak.
    private let warn: @Sendable (String) -> Void
    private var warned = false

    /// Opens the log for appending at `validBytes`, cutting off a torn tail first.
    init(
        path: String, tempPath: String, directoryPath: String, validBytes: Int, records: Int, headroomBytes: Int = 0,
        warn: @escaping @Sendable (String) -> Void = { _ in }
    ) throws(PMUError) {
        self.path = path
        self.tempPath = tempPath
        self.directoryPath = directoryPath
        self.headroomBytes = headroomBytes
        self.warn = warn
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot open catalog", path) }
        if let size = Sys.fileSize(path), size != UInt64(validBytes) {
            guard ftruncate(fd, off_t(validBytes)) == 0, fdatasync(fd) == 0 else {
                throw Sys.error(.ioError, "cannot truncate torn tail of catalog", path)
            }
        }
        guard lseek(fd, off_t(validBytes), SEEK_SET) >= 0 else { throw Sys.error(.ioError, "cannot seek catalog", path) }
        lengthBytes = validBytes
        recordsSinceCompaction = records
        allocatedEnd = validBytes
        renewHeadroom()
    }

    deinit { close(fd) }

    /// Allocated but not yet written bytes past the log's end: part of `--reserve-free`.
    var unusedHeadroomBytes: Int { max(0, allocatedEnd - lengthBytes) }

    /// Best effort: on a full disk the log still has what is left of its headroom.
    private func renewHeadroom() {
        guard headroomBytes > 0, allocatedEnd - lengthBytes < headroomBytes / 2 else { return }
        if sys_fallocate(fd, fallocKeepSize, Int64(lengthBytes), Int64(headroomBytes)) == 0 {
            allocatedEnd = lengthBytes + headroomBytes
            warned = false
        } else if !warned {
            warned = true
            warn("cannot preallocate \(headroomBytes) bytes of catalog headroom (\(String(cString: strerror(errno)))); \(unusedHeadroomBytes) bytes are left for metadata changes")
        }
    }

    /// Appends and syncs. On failure the log is cut back to where it was, so a half-written record
    /// can never sit in front of a later good one (which recovery would call corruption).
    func append(_ record: [UInt8]) throws(PMUError) {
        if let broken { throw broken }
        do throws(PMUError) {
            try Sys.writeAll(fd, record, path: path)
            guard fdatasync(fd) == 0 else { throw Sys.error(.ioError, "cannot fdatasync catalog", path) }
        } catch {
            _ = ftruncate(fd, off_t(lengthBytes))
            _ = lseek(fd, off_t(lengthBytes), SEEK_SET)
            _ = fdatasync(fd)
            throw error
        }
        lengthBytes += record.count
        allocatedEnd = max(allocatedEnd, lengthBytes)
        recordsSinceCompaction += 1
        renewHeadroom()
    }

    /// Replaces the log with a snapshot of the live state: write catalog.new, fsync, rename over
    /// the log, fsync the directory. A crash at any point leaves either the old or the new log whole.
    func compact(to records: [[UInt8]]) throws(PMUError) {
        let tempFD = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard tempFD >= 0 else { throw Sys.error(.ioError, "cannot create", tempPath) }
        var total = 0
        do throws(PMUError) {
            for record in records {
                try Sys.writeAll(tempFD, record, path: tempPath)
                total += record.count
            }
            guard fsync(tempFD) == 0 else { throw Sys.error(.ioError, "cannot fsync", tempPath) }
        } catch {
            close(tempFD)
            unlink(tempPath)
            throw error
        }
        close(tempFD)
        // Open the new log before the rename, so that once the rename happens appends can only go
        // to the file that is now the catalog (never to the replaced one).
        let newFD = open(tempPath, O_RDWR | O_CLOEXEC)
        guard newFD >= 0 else {
            let failure = Sys.error(.ioError, "cannot reopen compacted catalog", tempPath)
            unlink(tempPath)
            throw failure
        }
        guard rename(tempPath, path) == 0 else {
            let failure = Sys.error(.ioError, "cannot rename compacted catalog over", path)
            close(newFD)
            unlink(tempPath)
            throw failure
        }
        close(fd)
        fd = newFD
        _ = lseek(fd, 0, SEEK_END)
        lengthBytes = total
        allocatedEnd = total
        recordsSinceCompaction = records.count
        renewHeadroom()
        // Until this fsync the rename may not be durable; either log is whole, so a crash loses nothing.
        do throws(PMUError) {
            try Sys.fsyncPath(directoryPath, directory: true)
        } catch {
            broken = PMUError(.ioError, "the catalog's directory could not be synced after compaction (\(error.message)); metadata changes are refused until pmu-server restarts")
            throw error
        }
    }
}
