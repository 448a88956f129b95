#if canImport(Glibc)
import Glibc
#endif
import CVerbs
import Verbs

/// A file of fixed size mapped MAP_SHARED read-write: what a PMU region is.
public final class MappedFile {
    public let path: String
    public let descriptor: Int32
    public let address: UnsafeMutableRawPointer
    public let sizeBytes: Int

    /// Creates (or reuses) `path`, sets its size to `sizeBytes`, maps it.
    public init(path: String, sizeBytes: Int) throws(VerbsError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let code = errno
            throw VerbsError(.call, operation: "open", errno: code, message: "cannot open \(path)")
        }
        if ftruncate(fd, off_t(sizeBytes)) != 0 {
            let code = errno
            close(fd)
            throw VerbsError(.call, operation: "ftruncate", errno: code,
                             message: "cannot size \(path) to \(sizeBytes) bytes")
        }
        let mapped = mmap(nil, sizeBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            let code = errno
            close(fd)
            throw VerbsError(.call, operation: "mmap", errno: code,
                             message: "cannot map \(path) (\(sizeBytes) bytes, MAP_SHARED)")
        }
        self.path = path
        self.descriptor = fd
        self.address = mapped
        self.sizeBytes = sizeBytes
    }

    deinit {
        munmap(address, sizeBytes)
        close(descriptor)
    }

    public func sync() throws(VerbsError) {
        if msync(address, sizeBytes, MS_SYNC) != 0 {
            let code = errno
            throw VerbsError(.call, operation: "msync", errno: code, message: "cannot msync \(path)")
        }
    }

    /// Reads `count` bytes at `offset` from the file itself (pread, not through the mapping).
    public func readFile(offset: Int, count: Int) throws(VerbsError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes {
                pread(descriptor, $0.baseAddress! + done, count - done, off_t(offset + done))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let code = errno
                throw VerbsError(.call, operation: "pread", errno: n < 0 ? code : nil,
                                 message: "cannot read \(count) bytes at \(offset) of \(path)")
            }
            done += n
        }
        return bytes
    }

    /// The filesystem the file lives on (statfs f_type), e.g. "tmpfs".
    public var filesystemName: String {
        var info = statfs()
        guard fstatfs(descriptor, &info) == 0 else { return "?" }
        switch UInt(bitPattern: Int(info.f_type)) {
        case 0x0102_1994: return "tmpfs"
        case 0xEF53: return "ext2/3/4"
        case 0x5846_5342: return "xfs"
        case 0x0102_1997: return "9p"
        case 0x9123_683E: return "btrfs"
        case 0x9584_58F6: return "hugetlbfs"
        case 0x6969: return "nfs"
        case 0x794C_7630: return "overlayfs"
        default: return "fs magic 0x" + String(UInt(bitPattern: Int(info.f_type)), radix: 16)
        }
    }
}
