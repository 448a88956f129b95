#if canImport(Glibc)
import Glibc
#endif
import PMUCore

/// The data directory's layout and its lock (docs/DATA_FILES.md):
///
///     DIR/LOCK             flock'd by the running server; holds its pid
///     DIR/catalog          region metadata, an append-only checksummed log
///     DIR/regions/ID.region   one preallocated file per region, named by 16 hex digits of its id
///     DIR/regions/ID.tmp   a region file whose create has not committed yet
///     DIR/journal/         the write journal: PMULog segments, `trim`, `boot` (WriteJournal)
public final class DataDirectory: @unchecked Sendable {
    public let path: String
    private var lockFD: Int32

    var catalogPath: String { path + "/catalog" }
    var catalogTempPath: String { path + "/catalog.new" }
    var regionsPath: String { path + "/regions" }
    /// The write journal's log directory (`WriteJournal`).
    public var journalPath: String { path + "/journal" }

    func regionPath(id: UInt64) -> String { regionsPath + "/" + Self.hex(id) + ".region" }
    func tempRegionPath(id: UInt64) -> String { regionsPath + "/" + Self.hex(id) + ".tmp" }

    static func hex(_ id: UInt64) -> String {
        let digits = String(id, radix: 16)
        return String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }

    /// Opens (creating the last path component if missing) and locks the data directory.
    ///
    /// Only the final component is created: a mistyped parent should fail loudly, not grow a tree.
    public init(path: String) throws(PMUError) {
        self.path = path
        if !Sys.exists(path) {
            guard mkdir(path, 0o700) == 0 else {
                throw Sys.error(.ioError, "cannot create data directory", path)
            }
        }
        guard Sys.isDirectory(path) else {
            throw PMUError(.ioError, "data directory \(path) exists but is not a directory")
        }
        guard access(path, W_OK | X_OK) == 0 else {
            throw Sys.error(.ioError, "data directory is not writable by this user:", path)
        }
        let lockPath = path + "/LOCK"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot open lock file", lockPath) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = (try? Sys.readWholeFile(lockPath)).map { String(decoding: $0, as: UTF8.self) } ?? "?"
            close(fd)
            throw PMUError(
                .ioError,
                "data directory \(path) is in use by another pmu-server (pid \(holder.isEmpty ? "?" : holder)); stop it or choose another --data-dir")
        }
        let pid = Array(String(getpid()).utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
        self.lockFD = fd
        if !Sys.exists(regionsPath) {
            guard mkdir(regionsPath, 0o700) == 0 else { throw Sys.error(.ioError, "cannot create", regionsPath) }
            try Sys.fsyncPath(path, directory: true)
        }
    }

    /// Releases the LOCK before this object goes (a partner giving a taken-over portion back:
    /// its owner may start on it right after). Nothing may write the directory after this.
    public func releaseLock() {
        if lockFD >= 0 { close(lockFD) }
        lockFD = -1
    }

    deinit {
        // Closing the descriptor releases the flock; the LOCK file itself stays (its presence means nothing).
        if lockFD >= 0 { close(lockFD) }
    }
}
