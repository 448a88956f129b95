import CVerbs
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUVerbs

/// The RDMA verbs transport's server side (librdmacm + libibverbs). Control frames travel as
/// SEND/RECV and reach the same `RequestHandler` as on TCP; region data moves by the client's
/// one-sided RDMA WRITE and READ into memory registered through `ConnectionInfo.memory`.
///
/// One thread reads connection-manager events (connect requests, established, disconnects) for
/// every connection; each connection has a completion thread (RDMAServerConnection). Listening
/// needs an address of an interface with an RDMA device (rdma_cm's port space is separate from
/// TCP's, so the same port number can serve both transports on one host).
public final class RDMAServerTransport: ServerTransport, @unchecked Sendable {
    private let endpoint: Endpoint
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = NIOLockedValueBox<State>(State())
    private let stopping = ManagedAtomicFlag()
    /// How long `stop` waits for the transport's threads before it logs and detaches them.
    static let stopDeadline: Duration = .seconds(10)

    struct State {
        var connections: [UnsafeMutablePointer<rdma_cm_id>: RDMAServerConnection] = [:]
        var nextId: UInt64 = 1
        var listener: ConnectionID?
        var channel: EventChannel?
        var thread: JoinableThread?
    }

    /// Description of the device listening, for the start-up log line ("rxe0 port 1").
    public private(set) var deviceDescription = ""

    private let polling: RDMAPolling

    public init(endpoint: Endpoint, group: any EventLoopGroup, logger: Logger, polling: RDMAPolling = .default) {
        self.polling = polling
        self.endpoint = endpoint
        self.group = group
        self.logger = logger
    }

    /// Binds to the endpoint and checks its device's port, without listening. pmu-server calls
    /// this before it opens its store: whether verbs can serve this address decides how region
    /// memory is held (shmem shadows on a disk filesystem), so `auto` must know before, not
    /// after, the regions are mapped. `start` binds if this was not called.
    public func bind() throws(PMUError) {
        guard (0...65535).contains(endpoint.port) else { throw PMUError(.invalidArgument, "port \(endpoint.port) out of range") }
        guard state.withLockedValue({ $0.listener == nil }) else { return }
        let channel: EventChannel
        let listener: ConnectionID
        do throws(VerbsError) {
            channel = try EventChannel()
            listener = try ConnectionID(channel: channel)
            try listener.bind(address: endpoint.host, port: UInt16(endpoint.port))
            // Bound to an RDMA interface's address, the ID knows its device: check the port now,
            // so a down link fails at start rather than at the first client.
            guard let context = listener.context else {
                throw VerbsError(.noDevice, operation: "rdma_bind_addr",
                                 message: "\(endpoint.host) is not the address of an interface with an RDMA device",
                                 hint: "listen on the IP address of the RDMA (RoCE/soft-RoCE) interface, e.g. --listen 10.11.12.1:7690; `rdma link show` lists devices and their netdevs")
            }
            let port = try context.requireActivePort(listener.pointer.pointee.port_num)
            deviceDescription = "\(context.name) port \(port.portNumber)"
        } catch {
            throw PMUError.rdma(error, "cannot listen for RDMA connections on \(endpoint)")
        }
        state.withLockedValue {
            $0.listener = listener
            $0.channel = channel
        }
    }

    public func start(makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) async throws -> Endpoint {
        try bind()
        let (listener, channel) = state.withLockedValue { ($0.listener!, $0.channel!) }
        do throws(VerbsError) {
            try listener.listen(backlog: 128)
        } catch {
            throw PMUError.rdma(error, "cannot listen for RDMA connections on \(endpoint)")
        }
        let bound = Endpoint(host: endpoint.host, port: Int(listener.localPort))
        // Under the lock, so a concurrent `stop` sees either no thread (and releases the
        // listener itself) or the thread it must join.
        let started = state.withLockedValue { state -> PMUError? in
            guard !stopping.isSet else { return PMUError(.shuttingDown, "the RDMA transport was stopped while starting") }
            do throws(PMUError) {
                state.thread = try JoinableThread(name: "pmu-rdma-cm") { [self] in eventLoop(channel: channel, makeHandler: makeHandler) }
                return nil
            } catch {
                return error
            }
        }
        if let started { throw started }
        return bound
    }

    /// Stops accepting, ends every connection, and joins the rdma_cm thread and every
    /// connection's completion thread (each notices within its 200 ms wait and releases its
    /// verbs objects before it ends). Waits by sleeping, not by blocking a pool thread, for at
    /// most `stopDeadline`: a thread still running then (a verbs call stuck in the kernel) is
    /// logged and detached; it keeps what it uses alive until it ends, so nothing is freed
    /// under it.
    public func stop() async {
        guard stopping.setOnce() else { return }
        let deadline = ContinuousClock.now.advanced(by: Self.stopDeadline)
        // Bound but never started: no thread owns the listener; release it here.
        let listenerThread = state.withLockedValue { state -> JoinableThread? in
            if state.thread == nil { state.listener = nil; state.channel = nil }
            return state.thread
        }
        guard let listenerThread else { return }
        var ending = state.withLockedValue { Array($0.connections.values) }
        for connection in ending { connection.shutdown("server stopping") }
        var threads = [listenerThread]
        if await listenerThread.join(until: deadline) {
            // Accepted before the rdma_cm thread saw `stopping`: end those too.
            let known = Set(ending.map(\.id))
            let late = state.withLockedValue { $0.connections.values.filter { !known.contains($0.id) } }
            for connection in late { connection.shutdown("server stopping") }
            ending += late
            threads = []
        }
        // A connection that never got its thread was released by its `shutdown`.
        threads += ending.compactMap(\.completionThread)
        await JoinableThread.joinAll(threads, until: deadline, logger: logger, what: "RDMA transport stop")
    }

    private func eventLoop(channel: EventChannel, makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) {
        while !stopping.isSet {
            let event: ConnectionEvent
            do {
                event = try channel.next(timeout: .milliseconds(200))
            } catch {
                if error.kind != .timeout { logger.warning("rdma_cm event channel", metadata: ["error": "\(error)"]) }
                continue
            }
            handle(event, channel: channel, makeHandler: makeHandler)
        }
        state.withLockedValue {
            $0.listener = nil
            $0.channel = nil
        }
    }

    private func handle(_ event: ConnectionEvent, channel: EventChannel, makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) {
        switch event.type {
        case RDMA_CM_EVENT_CONNECT_REQUEST:
            let id = ConnectionID(adopting: event.id, channel: channel)
            let number = state.withLockedValue { state -> UInt64 in
                defer { state.nextId += 1 }
                return state.nextId
            }
            do {
                let connection = try RDMAServerConnection(
                    connection: id, id: number, eventLoop: group.next(), logger: logger, polling: polling,
                    onFinished: { [weak self] connection in self?.remove(connection) })
                state.withLockedValue { $0.connections[event.id] = connection }
                var parameters = ConnectionParameters()
                // The client's RDMA READs need responder resources here (else they fail).
                let maxReads: Int32 = (try? id.context?.maxReadsInFlight()) ?? 1
                parameters.responderResources = UInt8(clamping: max(1, min(maxReads, 16)))
                parameters.initiatorDepth = 0
                do {
                    try? id.setAckTimeout(exponent: RDMALimits.ackTimeoutExponent)
                    try id.acceptWithoutWaiting(parameters)
                } catch {
                    connection.shutdown("rdma_accept failed: \(error)")
                    throw error
                }
            } catch {
                logger.warning("refused an RDMA connection", metadata: ["error": "\(error)"])
                id.reject()
            }
        case RDMA_CM_EVENT_ESTABLISHED:
            guard let connection = state.withLockedValue({ $0.connections[event.id] }) else { return }
            connection.established(makeHandler: makeHandler)
        case RDMA_CM_EVENT_DISCONNECTED, RDMA_CM_EVENT_CONNECT_ERROR, RDMA_CM_EVENT_UNREACHABLE,
             RDMA_CM_EVENT_REJECTED, RDMA_CM_EVENT_DEVICE_REMOVAL:
            guard let connection = state.withLockedValue({ $0.connections[event.id] }) else { return }
            connection.shutdown("rdma_cm \(event.name)")
        default:
            break
        }
    }

    private func remove(_ connection: RDMAServerConnection) {
        _ = state.withLockedValue { $0.connections.removeValue(forKey: connection.idPointer) }
    }
}
