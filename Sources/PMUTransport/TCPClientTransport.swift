import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore

/// The TCP transport's client side: one connection, many requests in flight, replies matched by id.
public final class TCPClientTransport: ClientTransport, @unchecked Sendable {
    private let channel: Channel
    private let pending: PendingReplies

    private init(channel: Channel, pending: PendingReplies) {
        self.channel = channel
        self.pending = pending
    }

    public static func connect(to endpoint: Endpoint, group: any EventLoopGroup, connectTimeoutSeconds: Int64 = 10) async throws -> TCPClientTransport {
        let pending = PendingReplies()
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(connectTimeoutSeconds))
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
            let reason = (error as? NIOConnectionError)?.connectionErrors.first.map { "\($0.error)" } ?? "\(error)"
            throw PMUError(.connectionClosed, "cannot connect to pmu-server at \(endpoint) (is it running and listening there?): \(reason)")
        }
        return TCPClientTransport(channel: channel, pending: pending)
    }

    public func send(_ request: Request) async throws -> Response {
        let promise = channel.eventLoop.makePromise(of: Response.self)
        guard let id = pending.register(promise) else {
            let error = pending.closedError
            promise.fail(error) // a promise must never be dropped uncompleted
            throw error
        }
        TCPFrameWriter.write(Frame(requestId: id, message: request), to: channel, flush: true)
        return try await promise.futureResult.get()
    }

    public func sendPipelined(_ requests: [Request]) async throws -> [Response] {
        var futures: [EventLoopFuture<Response>] = []
        for request in requests {
            let promise = channel.eventLoop.makePromise(of: Response.self)
            guard let id = pending.register(promise) else {
                let error = pending.closedError
                promise.fail(error)
                for future in futures { _ = try? await future.get() }
                throw error
            }
            // Writes issued from one thread run on the event loop in the order issued.
            TCPFrameWriter.write(Frame(requestId: id, message: request), to: channel, flush: request == requests.last)
            futures.append(promise.futureResult)
        }
        var responses: [Response] = []
        for future in futures { responses.append(try await future.get()) }
        return responses
    }

    public func close() async {
        try? await channel.close()
    }

    /// The connection's event loop, for tasks that want to run where replies arrive.
    public var eventLoop: any EventLoop { channel.eventLoop }
}

/// Promises of requests awaiting replies. Locked because `send` runs on any thread.
final class PendingReplies: @unchecked Sendable {
    private let lock = NIOLock()
    private var nextId: UInt64 = 1
    private var waiting: [UInt64: EventLoopPromise<Response>] = [:]
    private var closedWith: PMUError?

    var closedError: PMUError {
        lock.withLock { closedWith } ?? PMUError(.connectionClosed, "connection to pmu-server is closed")
    }

    func register(_ promise: EventLoopPromise<Response>) -> UInt64? {
        lock.withLock {
            guard closedWith == nil else { return nil }
            defer { nextId += 1 }
            waiting[nextId] = promise
            return nextId
        }
    }

    func complete(_ frame: Frame<Response>) -> Bool {
        guard let promise = lock.withLock({ waiting.removeValue(forKey: frame.requestId) }) else { return false }
        promise.succeed(frame.message)
        return true
    }

    func failAll(_ error: PMUError) {
        let all = lock.withLock { () -> [EventLoopPromise<Response>] in
            if closedWith == nil { closedWith = error }
            defer { waiting.removeAll() }
            return Array(waiting.values)
        }
        for promise in all { promise.fail(error) }
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
