import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// A protection domain (ibv_alloc_pd / ibv_dealloc_pd). Memory regions and queue pairs of one PD
/// can be used together; an rkey is only honoured on QPs of the PD it was registered in.
public final class ProtectionDomain {
    public let pointer: UnsafeMutablePointer<ibv_pd>
    /// Kept so that the device stays open while the PD exists.
    public let context: Context

    public init(context: Context) throws(VerbsError) {
        guard let pd = ibv_alloc_pd(context.pointer) else {
            let code = errno
            throw VerbsError.call("ibv_alloc_pd", errno: code,
                                  "cannot allocate a protection domain on \(context.name)")
        }
        self.pointer = pd
        self.context = context
    }

    deinit {
        // Fails with EBUSY while MRs or QPs of this PD exist; they hold a reference to us, so
        // by the time we get here they are gone.
        _ = ibv_dealloc_pd(pointer)
    }
}
