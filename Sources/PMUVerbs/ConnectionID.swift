import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// What each side asks for while connecting (struct rdma_conn_param).
public struct ConnectionParameters: Sendable {
    /// RDMA READs this side accepts in flight as target (server: ≥ 1, or the peer's READs fail).
    public var responderResources: UInt8 = 1
    /// RDMA READs this side may have in flight as initiator (client: ≥ 1 to use RDMA READ).
    public var initiatorDepth: UInt8 = 1
    /// Transport retries before IBV_WC_RETRY_EXC_ERR (max 7).
    public var retryCount: UInt8 = 7
    /// Retries when the peer has no receive posted; 7 = forever.
    public var rnrRetryCount: UInt8 = 7
    /// Sent with the request/accept (at most 56 bytes on RC over RoCE/IB).
    public var privateData: [UInt8] = []
    public init() {}
}

/// An rdma_cm identifier (rdma_create_id / rdma_destroy_id): a listening endpoint, or one side
/// of a connection. Addresses are IPv4 here.
public final class ConnectionID {
    public let pointer: UnsafeMutablePointer<rdma_cm_id>
    /// Events for this ID arrive here; kept open while the ID exists.
    public let channel: EventChannel

    /// A new ID for reliable-connected (TCP-like port space) communication.
    public init(channel: EventChannel) throws(VerbsError) {
        var id: UnsafeMutablePointer<rdma_cm_id>? = nil
        if rdma_create_id(channel.pointer, &id, nil, RDMA_PS_TCP) != 0 || id == nil {
            let code = errno
            throw VerbsError.call("rdma_create_id", errno: code, "cannot create an rdma_cm ID")
        }
        self.pointer = id!
        self.channel = channel
    }

    /// Takes ownership of the ID of an incoming connection (from CONNECT_REQUEST).
    public init(adopting pointer: UnsafeMutablePointer<rdma_cm_id>, channel: EventChannel) {
        self.pointer = pointer
        self.channel = channel
    }

    deinit {
        rdma_destroy_id(pointer)
    }

    /// The device this ID is bound to, once bound to a local RDMA address or resolved.
    public var context: Context? {
        pointer.pointee.verbs.map { Context(borrowing: $0) }
    }

    /// Binds to `address`:`port` (port 0: any). Binding to an address of an RDMA-capable
    /// interface also picks the device.
    public func bind(address: String, port: UInt16) throws(VerbsError) {
        var address4 = try ConnectionID.socketAddress(address, port: port)
        let rc = withUnsafeMutablePointer(to: &address4) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_bind_addr(pointer, $0) }
        }
        if rc != 0 {
            let code = errno
            throw VerbsError.call("rdma_bind_addr", errno: code, "cannot bind to \(address):\(port)",
                                  hint: code == EADDRNOTAVAIL || code == ENODEV
                                      ? "\(address) is not an address of this host with an RDMA device on its interface"
                                      : code == EADDRINUSE ? "another process listens on port \(port)" : nil)
        }
    }

    public func listen(backlog: Int32 = 8) throws(VerbsError) {
        if rdma_listen(pointer, backlog) != 0 {
            let code = errno
            throw VerbsError.call("rdma_listen", errno: code, "cannot listen")
        }
    }

    public var localPort: UInt16 { UInt16(bigEndian: rdma_get_src_port(pointer)) }

    /// rdma_cm's timeout argument: whole milliseconds, at least 1 (0 is EINVAL for
    /// rdma_resolve_route), at most Int32.max. Sub-second parts count: a reconnect's 500 ms attempt
    /// (ReconnectingClient.Policy.attemptTimeout) once became 0 here and every attempt failed.
    static func milliseconds(_ timeout: Duration) -> Int32 {
        let (seconds, attoseconds) = timeout.components
        guard seconds >= 0 else { return 1 }
        guard seconds < Int64(Int32.max) / 1000 else { return Int32.max }
        return Int32(max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    /// Resolves `address`:`port` to an RDMA device and GID, then the route; waits for both events.
    public func resolve(address: String, port: UInt16, timeout: Duration) throws(VerbsError) {
        var address4 = try ConnectionID.socketAddress(address, port: port)
        let milliseconds = Self.milliseconds(timeout)
        let rc = withUnsafeMutablePointer(to: &address4) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                rdma_resolve_addr(pointer, nil, $0, milliseconds)
            }
        }
        if rc != 0 {
            let code = errno
            throw VerbsError.call("rdma_resolve_addr", errno: code, "cannot resolve \(address):\(port)")
        }
        _ = try channel.expect(RDMA_CM_EVENT_ADDR_RESOLVED, timeout: timeout + .seconds(1),
                               while: "rdma_resolve_addr \(address)")
        if rdma_resolve_route(pointer, milliseconds) != 0 {
            let code = errno
            throw VerbsError.call("rdma_resolve_route", errno: code, "cannot resolve the route to \(address)")
        }
        _ = try channel.expect(RDMA_CM_EVENT_ROUTE_RESOLVED, timeout: timeout + .seconds(1),
                               while: "rdma_resolve_route \(address)")
    }

    /// Client side: sends the connect request and waits for ESTABLISHED.
    public func connect(_ parameters: ConnectionParameters, timeout: Duration) throws(VerbsError) {
        let rc = ConnectionID.withParameters(parameters) { rdma_connect(pointer, $0) }
        if rc != 0 {
            let code = errno
            throw VerbsError.call("rdma_connect", errno: code, "cannot send the connect request")
        }
        _ = try channel.expect(RDMA_CM_EVENT_ESTABLISHED, timeout: timeout, while: "rdma_connect")
    }

    /// Server side, on the ID of a CONNECT_REQUEST that has its QP: accepts and waits for
    /// ESTABLISHED.
    public func accept(_ parameters: ConnectionParameters, timeout: Duration) throws(VerbsError) {
        let rc = ConnectionID.withParameters(parameters) { rdma_accept(pointer, $0) }
        if rc != 0 {
            let code = errno
            throw VerbsError.call("rdma_accept", errno: code, "cannot accept the connection")
        }
        _ = try channel.expect(RDMA_CM_EVENT_ESTABLISHED, timeout: timeout, while: "rdma_accept")
    }

    /// Sets the QP's local ACK timeout to 4.096 µs × 2^`exponent` (rdma_set_option
    /// RDMA_OPTION_ID_ACK_TIMEOUT); call before connect/accept. Retries × this is how long a
    /// peer may stall before the connection fails with IBV_WC_RETRY_EXC_ERR: under emulation
    /// (soft-RoCE in a TCG VM) the default of a few tens of ms is far too short.
    public func setAckTimeout(exponent: UInt8) throws(VerbsError) {
        var value = exponent
        if rdma_set_option(pointer, Int32(RDMA_OPTION_ID), Int32(RDMA_OPTION_ID_ACK_TIMEOUT), &value, 1) != 0 {
            let code = errno
            throw VerbsError.call("rdma_set_option", errno: code, "cannot set the ACK timeout")
        }
    }

    /// Server side: accepts without waiting; ESTABLISHED arrives on the channel later (a server
    /// with many connections reads every event in one loop).
    public func acceptWithoutWaiting(_ parameters: ConnectionParameters) throws(VerbsError) {
        let rc = ConnectionID.withParameters(parameters) { rdma_accept(pointer, $0) }
        if rc != 0 {
            let code = errno
            throw VerbsError.call("rdma_accept", errno: code, "cannot accept the connection")
        }
    }

    /// Refuses a CONNECT_REQUEST (the peer sees REJECTED).
    public func reject() {
        _ = rdma_reject(pointer, nil, 0)
    }

    /// Starts a disconnect (the QP goes to ERR; outstanding work requests flush). The peer and
    /// this side get DISCONNECTED.
    public func disconnect() throws(VerbsError) {
        if rdma_disconnect(pointer) != 0 {
            let code = errno
            throw VerbsError.call("rdma_disconnect", errno: code, "cannot disconnect")
        }
    }

    private static func withParameters(_ parameters: ConnectionParameters,
                                       _ body: (UnsafeMutablePointer<rdma_conn_param>) -> Int32) -> Int32 {
        parameters.privateData.withUnsafeBytes { data in
            var param = rdma_conn_param()
            param.private_data = data.baseAddress
            param.private_data_len = UInt8(clamping: data.count)
            param.responder_resources = parameters.responderResources
            param.initiator_depth = parameters.initiatorDepth
            param.retry_count = parameters.retryCount
            param.rnr_retry_count = parameters.rnrRetryCount
            return body(&param)
        }
    }

    static func socketAddress(_ address: String, port: UInt16) throws(VerbsError) -> sockaddr_in {
        var result = sockaddr_in()
        result.sin_family = sa_family_t(AF_INET)
        result.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &result.sin_addr) == 1 else {
            throw VerbsError(.call, operation: "inet_pton", message: "\(address) is not an IPv4 address")
        }
        return result
    }
}
