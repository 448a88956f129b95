import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// A completion channel (ibv_create_comp_channel / ibv_destroy_comp_channel): a file descriptor
/// that becomes readable when an armed completion queue gets a completion, so a thread can sleep
/// in poll(2) instead of spinning on the CQ (an idle connection costs no CPU).
public final class CompletionChannel: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<ibv_comp_channel>
    public let context: Context

    public init(context: Context) throws(VerbsError) {
        guard let channel = ibv_create_comp_channel(context.pointer) else {
            let code = errno
            throw VerbsError.call("ibv_create_comp_channel", errno: code, "cannot create a completion channel on \(context.name)")
        }
        self.pointer = channel
        self.context = context
    }

    deinit {
        _ = ibv_destroy_comp_channel(pointer)
    }

    public var fileDescriptor: Int32 { pointer.pointee.fd }

    /// Reads and acknowledges one pending CQ event; call when `fileDescriptor` is readable.
    public func consumeEvent() throws(VerbsError) {
        var cq: UnsafeMutablePointer<ibv_cq>? = nil
        var context: UnsafeMutableRawPointer? = nil
        if ibv_get_cq_event(pointer, &cq, &context) != 0 {
            let code = errno
            throw VerbsError.call("ibv_get_cq_event", errno: code, "cannot read a completion event")
        }
        if let cq { ibv_ack_cq_events(cq, 1) }
    }
}

/// Waits until one of `descriptors` is readable or `timeoutMilliseconds` pass; returns which are.
public func waitReadable(_ descriptors: [Int32], timeoutMilliseconds: Int32) -> [Bool] {
    var fds = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    var ready: Int32
    repeat {
        ready = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress!, nfds_t($0.count), timeoutMilliseconds) }
    } while ready < 0 && errno == EINTR
    return fds.map { $0.revents != 0 }
}
