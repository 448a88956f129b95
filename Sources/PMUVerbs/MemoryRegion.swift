import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// Access rights of a memory region (enum ibv_access_flags).
public struct AccessFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let localWrite = AccessFlags(rawValue: Int32(IBV_ACCESS_LOCAL_WRITE.rawValue))
    public static let remoteWrite = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_WRITE.rawValue))
    public static let remoteRead = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_READ.rawValue))
    public static let remoteAtomic = AccessFlags(rawValue: Int32(IBV_ACCESS_REMOTE_ATOMIC.rawValue))

    /// What a PMU region needs: the NIC writes into it for remote writes (LOCAL_WRITE is
    /// required whenever REMOTE_WRITE is set), and remote peers read and write it.
    public static let region: AccessFlags = [.localWrite, .remoteWrite, .remoteRead]
}

/// Memory registered with a protection domain (ibv_reg_mr / ibv_dereg_mr). The pages are pinned
/// by the kernel until deregistration; `lkey` names the region in local work requests, `rkey` is
/// what a remote peer needs (with the address) to READ or WRITE it.
public final class MemoryRegion {
    /// nil once deregistered. Guarded by `lock`: CLOSE, a takeover's fence and connection teardown
    /// may deregister the same region from different threads, and ibv_dereg_mr twice is a
    /// use-after-free.
    private var pointer: UnsafeMutablePointer<ibv_mr>?
    /// Heap-allocated: a pthread mutex must not move, and `&storedProperty` does not promise that.
    private let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        return lock
    }()
    public let protectionDomain: ProtectionDomain
    public let address: UnsafeMutableRawPointer
    public let lengthBytes: Int
    public let lkey: UInt32
    public let rkey: UInt32
    public let access: AccessFlags

    public init(protectionDomain: ProtectionDomain, address: UnsafeMutableRawPointer,
                lengthBytes: Int, access: AccessFlags) throws(VerbsError) {
        guard let mr = CVerbs_ibv_reg_mr(protectionDomain.pointer, address, lengthBytes,
                                         access.rawValue) else {
            let code = errno
            throw MemoryRegion.registrationError(errno: code, address: address,
                                                 lengthBytes: lengthBytes)
        }
        self.pointer = mr
        self.protectionDomain = protectionDomain
        self.address = address
        self.lengthBytes = lengthBytes
        self.lkey = mr.pointee.lkey
        self.rkey = mr.pointee.rkey
        self.access = access
    }

    public var isRegistered: Bool { pointer != nil }

    /// Deregisters now (ibv_dereg_mr): from then on the rkey is invalid, remote accesses with it
    /// complete in error on the peer, and the pages are unpinned. Idempotent.
    public func deregister() throws(VerbsError) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard let mr = pointer else { return }
        let rc = ibv_dereg_mr(mr)
        if rc != 0 {
            throw VerbsError.call("ibv_dereg_mr", errno: rc > 0 ? rc : errno,
                                  "cannot deregister memory region (rkey \(hex(rkey)))",
                                  hint: "EBUSY: a memory window is still bound to it")
        }
        pointer = nil
    }

    deinit {
        if let mr = pointer { _ = ibv_dereg_mr(mr) }
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// The error for a refused registration, with the causes that errno points at.
    static func registrationError(errno code: Int32, address: UnsafeMutableRawPointer,
                                  lengthBytes: Int) -> VerbsError {
        let what = "cannot register \(lengthBytes) bytes at \(address)"
        switch code {
        case ENOMEM, EAGAIN, EPERM:
            var limit = rlimit()
            getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit)
            return VerbsError(
                .memoryRegistration, operation: "ibv_reg_mr", errno: code,
                message: what + " (locked-memory limit RLIMIT_MEMLOCK: soft \(limitText(limit.rlim_cur)), "
                    + "hard \(limitText(limit.rlim_max)))",
                hint: "registered memory is pinned and counts against RLIMIT_MEMLOCK unless the process "
                    + "has CAP_IPC_LOCK: raise it to at least the region size, e.g. `ulimit -l unlimited` "
                    + "in the shell that starts the server (raising the hard limit needs root), "
                    + "LimitMEMLOCK=infinity in a systemd unit, `<user> - memlock unlimited` in "
                    + "/etc/security/limits.conf, or `docker run --ulimit memlock=-1`")
        case EFAULT:
            return VerbsError(
                .memoryRegistration, operation: "ibv_reg_mr", errno: code,
                message: what + ": the kernel could not pin these pages",
                hint: "the range must be mapped readable and writable in full; a writable MAP_SHARED "
                    + "mapping of a file on a filesystem that tracks dirty pages (ext4, xfs, btrfs, "
                    + "nfs, 9p, ...) cannot be pinned long-term on newer kernels: keep registered "
                    + "region files on tmpfs (/dev/shm) or hugetlbfs")
        case EOPNOTSUPP:
            return VerbsError(
                .memoryRegistration, operation: "ibv_reg_mr", errno: code,
                message: what + ": the kernel does not support pinning this kind of memory "
                    + "(e.g. a file on fs-dax)",
                hint: "keep registered region files on tmpfs (/dev/shm) or hugetlbfs")
        case EINVAL:
            return VerbsError(
                .memoryRegistration, operation: "ibv_reg_mr", errno: code,
                message: what + ": invalid arguments",
                hint: "REMOTE_WRITE and REMOTE_ATOMIC require LOCAL_WRITE; the length must be > 0")
        default:
            return VerbsError(.memoryRegistration, operation: "ibv_reg_mr", errno: code, message: what)
        }
    }

    // RLIM_INFINITY is ((rlim_t) -1), which Swift cannot import as a constant.
    private static func limitText(_ value: rlim_t) -> String {
        value == rlim_t.max ? "unlimited" : "\(value / 1024) KiB"
    }
}

func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
