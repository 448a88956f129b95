#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PMUCore
import NIOConcurrencyHelpers
import SystemPackage

/// Thin helpers that turn a failed system call into a PMUError naming what was being done, the
/// path, and the errno text, so an operator can act on it without reading the source.
enum Sys {
    static func error(_ code: PMUErrorCode, _ what: String, _ path: String, errno value: Int32 = errno) -> PMUError {
        PMUError(code, "\(what) \(path): \(Errno(rawValue: value))")
    }

    /// Retries on EINTR; writes all bytes or throws.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(PMUError) {
        let failure: Int32 = bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += n
            }
            return 0
        }
        guard failure == 0 else {
            throw error(failure == ENOSPC ? .noSpace : .ioError, "cannot write", path, errno: failure)
        }
    }

    static func readWholeFile(_ path: String) throws(PMUError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw error(.ioError, "cannot open", path) }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw error(.ioError, "cannot read", path)
            }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        return result
    }

    static func fsyncPath(_ path: String, directory: Bool) throws(PMUError) {
        let fd = open(path, (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw error(.ioError, "cannot open for fsync", path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw error(.ioError, "cannot fsync", path) }
    }

    static func fileSize(_ path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt64(st.st_size)
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func listDirectory(_ path: String) throws(PMUError) -> [String] {
        guard let dir = opendir(path) else { throw error(.ioError, "cannot list", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Bytes an unprivileged process may still allocate on the filesystem holding `path`.
    static func freeBytes(_ path: String) -> UInt64? {
        var vfs = statvfs()
        guard statvfs(path, &vfs) == 0 else { return nil }
        return UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
    }

    /// Free bytes (as `freeBytes`) and the filesystem's size, with overflow-checked products.
    static func filesystemSpace(_ path: String) -> (freeBytes: UInt64, sizeBytes: UInt64)? {
        var vfs = statvfs()
        guard statvfs(path, &vfs) == 0 else { return nil }
        let free = UInt64(vfs.f_bavail).multipliedReportingOverflow(by: UInt64(vfs.f_frsize))
        let size = UInt64(vfs.f_blocks).multipliedReportingOverflow(by: UInt64(vfs.f_frsize))
        return (free.overflow ? .max : free.partialValue, size.overflow ? .max : size.partialValue)
    }

    static func nowMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    static let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))
}

extension NIOLock {
    /// `withLock` that keeps the body's typed error (NIOLock's own is `rethrows`, which erases it).
    func withTypedLock<T>(_ body: () throws(PMUError) -> T) throws(PMUError) -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
