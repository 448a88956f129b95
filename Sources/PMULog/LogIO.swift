#if canImport(Glibc)
import Glibc
#endif
import PMUCore
import SystemPackage

/// The system calls the log makes, each turning a failure into a PMUError naming the call, the
/// path and the errno text.
enum LogIO {
    static func error(_ what: String, _ path: String, errno value: Int32 = errno, code: PMUErrorCode = .ioError) -> PMUError {
        PMUError(code, "\(what) \(path): \(Errno(rawValue: value))")
    }

    static func pwriteAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int, path: String) throws(PMUError) {
        let failure: Int32 = bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = pwrite(fd, raw.baseAddress! + done, raw.count - done, off_t(offset + done))
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += n
            }
            return 0
        }
        guard failure == 0 else { throw error("cannot write log segment", path, errno: failure, code: failure == ENOSPC ? .noSpace : .ioError) }
    }

    static func dataSync(_ fd: Int32, _ path: String) throws(PMUError) {
        guard fdatasync(fd) == 0 else { throw error("cannot fdatasync log segment", path) }
    }

    static func fullSync(_ fd: Int32, _ path: String) throws(PMUError) {
        guard fsync(fd) == 0 else { throw error("cannot fsync log segment", path) }
    }

    static func syncDirectory(_ path: String) throws(PMUError) {
        let fd = open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw error("cannot open log directory", path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw error("cannot fsync log directory", path) }
    }

    static func listDirectory(_ path: String) throws(PMUError) -> [String] {
        guard let dir = opendir(path) else { throw error("cannot list log directory", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// A segment is at most 1 GiB (checked by the configuration); a larger file is not ours.
    static func readWholeFile(_ path: String, maxBytes: Int = 1 << 30) throws(PMUError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw error("cannot open", path) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw error("cannot stat", path) }
        guard info.st_size >= 0, Int(info.st_size) <= maxBytes else {
            throw PMUError(.damaged, "\(path) is \(info.st_size) bytes, more than a log file may be (\(maxBytes)); not reading it")
        }
        var result = [UInt8](repeating: 0, count: Int(info.st_size))
        var done = 0
        while done < result.count {
            let n = result.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw error("cannot read", path)
            }
            if n == 0 { break }
            done += n
        }
        return Array(result.prefix(done))
    }

    static func zero(_ path: String, from: Int, to: Int) throws(PMUError) {
        guard to > from else { return }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw error("cannot open log segment", path) }
        defer { close(fd) }
        try pwriteAll(fd, [UInt8](repeating: 0, count: to - from), at: from, path: path)
        try dataSync(fd, path)
    }

    static let trimMagic: UInt32 = 0x5452_4D50 // "PMRT"

    /// `trim`: u32 magic, u32 crc32c(the two u64s), u64 trimmed-through origin, u64 next sequence.
    /// 24 bytes, inside one sector: written in place, torn writes are caught by the checksum.
    static func writeTrimFile(_ path: String, trimmedThrough: UInt64, nextSequence: UInt64, sync: Bool) throws(PMUError) {
        var body: [UInt8] = []
        withUnsafeBytes(of: trimmedThrough.littleEndian) { body.append(contentsOf: $0) }
        withUnsafeBytes(of: nextSequence.littleEndian) { body.append(contentsOf: $0) }
        var bytes: [UInt8] = []
        withUnsafeBytes(of: trimMagic.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: CRC32C.checksum(body).littleEndian) { bytes.append(contentsOf: $0) }
        bytes += body
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw error("cannot open log trim file", path) }
        defer { close(fd) }
        try pwriteAll(fd, bytes, at: 0, path: path)
        if sync { try dataSync(fd, path) }
    }

    /// nil when absent or damaged: the log then replays from its first record, which only redoes
    /// writes already durable.
    static func readTrimFile(_ path: String) throws(PMUError) -> (trimmedThrough: UInt64, nextSequence: UInt64)? {
        guard access(path, F_OK) == 0 else { return nil }
        let bytes = try readWholeFile(path, maxBytes: 4096)
        guard bytes.count >= 24 else { return nil }
        func u32(_ at: Int) -> UInt32 { bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) } }
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        guard u32(0) == trimMagic, u32(4) == CRC32C.checksum(bytes[8..<24]) else { return nil }
        return (u64(8), u64(16))
    }
}
