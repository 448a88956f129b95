import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore

/// The TCP transport's client side: one connection, many requests in flight, replies matched by
/// id. Bounded (`RequestLimits.maxPendingRequests` in flight), with deadlines (a request past
/// `requestTimeout` closes the connection) and cancellation (a cancelled task's request fails
/// CANCELLED at once; its late reply is dropped).
public final class TCPClientTransport: ClientTransport, @unchecked Sendable {
    private let channel: Channel
    private let pending: PendingReplies
    private let sweep: RepeatedTask?

    private init(channel: Channel, pending: PendingReplies) {
        self.channel = channel
        self.pending = pending
        // One timer per connection finds requests past their deadline (not one per request).
        self.sweep = pending.limits.sweepInterval.map { interval in
            channel.eventLoop.scheduleRepeatedTask(initialDelay: TimeAmount(interval), delay: TimeAmount(interval)) { [pending] task in
                guard pending.failure == nil else { return task.cancel() }
                if let what = pending.expired() {
                    pending.failAll(pending.timedOut(what))
                    channel.close(promise: nil)
                    task.cancel()
                }
            }
        }
    }

    public static func connect(
        to endpoint: Endpoint, group: any EventLoopGroup, connectTimeout: Duration = .seconds(10), limits: RequestLimits = .default
    ) async throws -> TCPClientTransport {
        try limits.validate()
        let pending = PendingReplies(limits: limits)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(TimeAmount(connectTimeout))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                // A server machine that vanishes without a FIN is noticed (no request waits forever on a dead peer's kernel).
                .channelOption(.socketOption(.so_keepalive), value: 1)
                .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 1024 * 1024))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder<Response>()))
                        try channel.pipeline.syncOperations.addHandler(ClientFrameHandler(pending: pending))
                    }
                }
                .connect(host: endpoint.host, port: endpoint.port)
                .get()
        } catch {
            if case ChannelError.connectTimeout = error {
                throw PMUError(.timedOut, "cannot connect to pmu-server at \(endpoint): no answer within \(connectTimeout) (ClientConfiguration.connectTimeout)")
            }
            let reason = (error as? NIOConnectionError)?.connectionErrors.first.map { "\($0.error)" } ?? "\(error)"
            throw PMUError(.connectionClosed, "cannot connect to pmu-server at \(endpoint) (is it running and listening there?): \(reason)")
        }
        return TCPClientTransport(channel: channel, pending: pending)
    }

    public func send(_ request: Request) async throws -> Response {
        try await sendPipelined([request])[0]
    }

    /// Every request is written before any reply is awaited (writes issued from one task reach
    /// the event loop in order). Cancelling the task fails every request still pending with
    /// CANCELLED; the connection stays usable.
    public func sendPipelined(_ requests: [Request]) async throws -> [Response] {
        var sent: [(id: UInt64, future: EventLoopFuture<Response>)] = []
        sent.reserveCapacity(requests.count)
        do {
            for (index, request) in requests.enumerated() {
                let id = try await pending.reserve("\(request.opcode)")
                let promise = channel.eventLoop.makePromise(of: Response.self)
                guard pending.attach(id, promise) else {
                    let error = pending.failure ?? RequestTable<EventLoopPromise<Response>>.cancelled("\(request.opcode)")
                    promise.fail(error) // a promise must never be dropped uncompleted
                    throw error
                }
                TCPFrameWriter.write(Frame(requestId: id, message: request), to: channel, flush: index == requests.count - 1)
                sent.append((id, promise.futureResult))
            }
        } catch {
            // reserve throws only when the connection failed (which failed every sent request
            // too) or the task was cancelled: the requests already written go the same way.
            if !sent.isEmpty { channel.flush() }
            for (id, _) in sent { pending.cancel(id)?.fail(RequestTable<EventLoopPromise<Response>>.cancelled("a request")) }
            throw error
        }
        let ids = sent.map(\.id)
        return try await withTaskCancellationHandler {
            var responses: [Response] = []
            responses.reserveCapacity(sent.count)
            for (_, future) in sent { responses.append(try await future.get()) }
            return responses
        } onCancel: {
            for id in ids { pending.cancel(id)?.fail(RequestTable<EventLoopPromise<Response>>.cancelled("a request")) }
        }
    }

    /// Writes the request at once, without a task, and returns the future of its reply, completed
    /// on this connection's event loop; nil when `maxPendingRequests` are in flight (use `send`,
    /// which waits for a place). For callers already on an event loop (pmu-server mirroring its
    /// writes): no task, no continuation, and no thread hop when called on `eventLoop`.
    public func sendNow(_ request: Request) -> EventLoopFuture<Response>? {
        switch pending.reserveNow("\(request.opcode)") {
        case nil:
            return nil
        case .failure(let error)?:
            return channel.eventLoop.makeFailedFuture(error)
        case .success(let id)?:
            let promise = channel.eventLoop.makePromise(of: Response.self)
            guard pending.attach(id, promise) else {
                let error = pending.failure ?? RequestTable<EventLoopPromise<Response>>.cancelled("\(request.opcode)")
                promise.fail(error)
                return promise.futureResult
            }
            TCPFrameWriter.write(Frame(requestId: id, message: request), to: channel, flush: true)
            return promise.futureResult
        }
    }

    public func close() async {
        sweep?.cancel()
        try? await channel.close()
    }

    /// The connection's event loop, for tasks that want to run where replies arrive.
    public var eventLoop: any EventLoop { channel.eventLoop }
    public var replyEventLoop: (any EventLoop)? { channel.eventLoop }
    public var transportDescription: String { "tcp" }
}

/// Promises of requests awaiting replies (the shared `RequestTable`, with NIO promises).
final class PendingReplies: @unchecked Sendable {
    private let table: RequestTable<EventLoopPromise<Response>>

    init(limits: RequestLimits) {
        table = RequestTable(limits: limits)
    }

    var limits: RequestLimits { table.limits }
    var failure: PMUError? { table.failure }

    func reserve(_ what: String) async throws(PMUError) -> UInt64 { try await table.reserve(what) }
    func reserveNow(_ what: String) -> Result<UInt64, PMUError>? { table.reserveNow(what) }
    func attach(_ id: UInt64, _ promise: EventLoopPromise<Response>) -> Bool { table.attach(id, promise) }
    func cancel(_ id: UInt64) -> EventLoopPromise<Response>? { table.cancel(id) }
    func expired() -> String? { table.expired() }
    func timedOut(_ what: String) -> PMUError { table.timedOut(what) }

    func complete(_ frame: Frame<Response>) -> Bool {
        guard let promise = table.complete(frame.requestId) else { return false }
        promise.succeed(frame.message)
        return true
    }

    func failAll(_ error: PMUError) {
        for promise in table.failAll(error) { promise.fail(table.failure ?? error) }
    }
}

final class ClientFrameHandler: ChannelInboundHandler {
    typealias InboundIn = Frame<Response>
    private let pending: PendingReplies
    /// The last error reply that came with id 0 or an unknown id: the server's reason for closing.
    private var lastConnectionError: PMUError?

    init(pending: PendingReplies) {
        self.pending = pending
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if !pending.complete(frame), frame.requestId == 0, case .error(let error) = frame.message {
            // An error for no request (id 0) is about the connection (TOO_MANY_CLIENTS, timeout):
            // every waiting request fails with it rather than with a bare "connection closed".
            lastConnectionError = error
            pending.failAll(PMUError(error.code, "server closed the connection: \(error.message)"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let reason = (error as? FrameDecodingError)?.error
            ?? lastConnectionError.map { PMUError($0.code, "server closed the connection: \($0.message)") }
            ?? PMUError(.connectionClosed, "connection to pmu-server failed: \(error)")
        pending.failAll(reason)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let reason = lastConnectionError.map { PMUError($0.code, "server closed the connection: \($0.message)") }
        pending.failAll(reason ?? PMUError(.connectionClosed, "pmu-server closed the connection"))
        context.fireChannelInactive()
    }
}
