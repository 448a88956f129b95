import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// One connection-manager event, copied out and already acknowledged.
public struct ConnectionEvent {
    public let type: rdma_cm_event_type
    /// The ID the event is about; for CONNECT_REQUEST a new ID for the incoming connection.
    public let id: UnsafeMutablePointer<rdma_cm_id>
    public let status: Int32
    /// Private data of CONNECT_REQUEST / ESTABLISHED / REJECTED (at most 56 bytes on RC over RoCE).
    public let privateData: [UInt8]

    public var name: String { String(cString: rdma_event_str(type)) }
}

/// An rdma_cm event channel (rdma_create_event_channel / rdma_destroy_event_channel): the
/// connection manager reports address and route resolution, connect requests, establishment
/// and disconnection on it.
public final class EventChannel {
    public let pointer: UnsafeMutablePointer<rdma_event_channel>

    public init() throws(VerbsError) {
        guard let channel = rdma_create_event_channel() else {
            let code = errno
            throw VerbsError.call("rdma_create_event_channel", errno: code,
                                  "cannot open the RDMA connection manager",
                                  hint: code == ENODEV || code == ENOENT
                                      ? "/dev/infiniband/rdma_cm is missing: load rdma_ucm (needs a kernel "
                                          + "with CONFIG_INFINIBAND; where the host has none, run in PMU's "
                                          + "soft-RoCE VM, scripts/rdma-vm/run-in-vm.sh)" : nil)
        }
        self.pointer = channel
    }

    deinit {
        rdma_destroy_event_channel(pointer)
    }

    /// Waits at most `timeout` for the next event (poll(2) on the channel's fd, then
    /// rdma_get_cm_event), copies it and acknowledges it.
    public func next(timeout: Duration) throws(VerbsError) -> ConnectionEvent {
        var descriptor = pollfd(fd: pointer.pointee.fd, events: Int16(POLLIN), revents: 0)
        let (seconds, attoseconds) = timeout.components
        let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        var ready: Int32
        repeat {
            ready = poll(&descriptor, 1, milliseconds)
        } while ready < 0 && errno == EINTR
        if ready < 0 {
            let code = errno
            throw VerbsError.call("poll", errno: code, "waiting for a connection-manager event failed")
        }
        if ready == 0 {
            throw VerbsError(.timeout, operation: "rdma_get_cm_event",
                             message: "no connection-manager event within \(timeout)")
        }
        var event: UnsafeMutablePointer<rdma_cm_event>? = nil
        if rdma_get_cm_event(pointer, &event) != 0 {
            let code = errno
            throw VerbsError.call("rdma_get_cm_event", errno: code, "cannot read a connection-manager event")
        }
        guard let event else {
            throw VerbsError(.call, operation: "rdma_get_cm_event", message: "returned no event")
        }
        let conn = event.pointee.param.conn
        var data: [UInt8] = []
        if let bytes = conn.private_data, conn.private_data_len > 0 {
            data = Array(UnsafeRawBufferPointer(start: bytes, count: Int(conn.private_data_len)))
        }
        let copy = ConnectionEvent(type: event.pointee.event, id: event.pointee.id,
                                   status: event.pointee.status, privateData: data)
        rdma_ack_cm_event(event)
        return copy
    }

    /// Waits for an event of type `expected`; any other event becomes a `.connection` error
    /// that names it and says what it usually means.
    public func expect(_ expected: rdma_cm_event_type, timeout: Duration,
                       while step: String) throws(VerbsError) -> ConnectionEvent {
        let event = try next(timeout: timeout)
        guard event.type == expected else {
            throw VerbsError(.connection, operation: step,
                             errno: event.status < 0 ? -event.status : nil,
                             message: "expected \(String(cString: rdma_event_str(expected))), got "
                                 + "\(event.name) (status \(event.status))",
                             hint: EventChannel.hint(for: event.type))
        }
        return event
    }

    static func hint(for type: rdma_cm_event_type) -> String? {
        switch type {
        case RDMA_CM_EVENT_ADDR_ERROR:
            return "the address is not reachable through an RDMA device: is the IP on an interface "
                + "with an rxe/RoCE device on it (`rdma link show`)?"
        case RDMA_CM_EVENT_ROUTE_ERROR:
            return "no route to the peer over the RDMA device"
        case RDMA_CM_EVENT_UNREACHABLE:
            return "the peer did not answer: is the server running and reachable on that address?"
        case RDMA_CM_EVENT_REJECTED:
            return "the peer refused: status 28 (IB_CM_REJ_CONSUMER_DEFINED) is the server's rdma_reject; "
                + "status 8 (invalid service ID) means no one listens on that port"
        case RDMA_CM_EVENT_CONNECT_ERROR:
            return "connection setup failed (QP transition or timeout)"
        case RDMA_CM_EVENT_DEVICE_REMOVAL:
            return "the RDMA device went away (rxe link deleted?)"
        default:
            return nil
        }
    }
}
