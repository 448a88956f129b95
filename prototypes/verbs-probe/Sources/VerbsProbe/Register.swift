#if canImport(Glibc)
import Glibc
#endif
import Verbs

/// `register`: can a MAP_SHARED mapping of this file be registered for remote write? Opens the
/// device directly (no connection), maps the file, calls ibv_reg_mr, writes through the mapping,
/// deregisters. For checking filesystems (tmpfs, ext4, 9p) and the locked-memory limit.
public enum RegisterCheck {
    public static func run(device: String?, path: String, sizeBytes: Int) throws(VerbsError) {
        let context = try DeviceList.open(name: device)
        let port = try context.requireActivePort()
        let file = try MappedFile(path: path, sizeBytes: sizeBytes)
        let protectionDomain = try ProtectionDomain(context: context)
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit)
        let limitText = limit.rlim_cur == rlim_t.max ? "unlimited" : "\(limit.rlim_cur >> 10) KiB"
        let clock = ContinuousClock()
        let start = clock.now
        let region = try MemoryRegion(protectionDomain: protectionDomain, address: file.address,
                                      lengthBytes: sizeBytes, access: .region)
        let milliseconds = Measure.microseconds(clock.now - start) / 1000
        file.address.storeBytes(of: 0x5A, as: UInt8.self)
        try file.sync()
        try region.deregister()
        Output.line("register: ok: \(path) (\(file.filesystemName), \(sizeBytes >> 10) KiB, MAP_SHARED, "
              + "LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ) on \(context.name) port \(port.portNumber), "
              + "RLIMIT_MEMLOCK \(limitText): registered in \(Measure.format(milliseconds)) ms, deregistered")
    }
}
