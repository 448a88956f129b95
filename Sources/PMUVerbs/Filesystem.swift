import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// Which filesystem a path is on, for the one question the verbs transport asks: can its files'
/// shared mappings be registered (pinned long-term, writable) soundly?
public enum RegistrableFilesystem {
    static let tmpfsMagic: UInt = 0x0102_1994
    static let hugetlbfsMagic: UInt = 0x9584_58f6

    /// The statfs f_type of `path`, or nil if it cannot be read.
    public static func magic(of path: String) -> UInt? {
        var info = statfs()
        guard statfs(path, &info) == 0 else { return nil }
        return UInt(truncatingIfNeeded: info.f_type)
    }

    /// True for tmpfs and hugetlbfs: shmem pages are not dirty-tracked by writeback, so the kernel
    /// lets them be pinned writable (FOLL_LONGTERM) on every kernel, and nothing is lost by a NIC
    /// writing them behind the page cache's back.
    public static func allowsRegistration(_ path: String) -> Bool {
        guard let magic = magic(of: path) else { return false }
        return magic == tmpfsMagic || magic == hugetlbfsMagic
    }

    public static func name(of path: String) -> String {
        switch magic(of: path) {
        case tmpfsMagic: "tmpfs"
        case hugetlbfsMagic: "hugetlbfs"
        case 0xEF53: "ext2/3/4"
        case 0x5846_5342: "xfs"
        case 0x9123_683E: "btrfs"
        case 0x0102_1997: "9p"
        case nil: "unknown (statfs failed)"
        case let other?: "filesystem 0x" + String(other, radix: 16)
        }
    }
}

