import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore

/// The TCP transport's server side, on SwiftNIO.
public final class TCPServerTransport: ServerTransport, @unchecked Sendable {
    private let endpoint: Endpoint
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = NIOLockedValueBox<(server: Channel?, connections: [ObjectIdentifier: Channel], nextId: UInt64)>((nil, [:], 1))

    public init(endpoint: Endpoint, group: any EventLoopGroup, logger: Logger) {
        self.endpoint = endpoint
        self.group = group
        self.logger = logger
    }

    public func start(makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) async throws -> Endpoint {
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // Dead clients (machine gone, no FIN) are eventually noticed and their slots and keys freed.
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // Large receive buffers let 8 MiB WRITE frames arrive in few reads.
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 1024 * 1024))
            .childChannelInitializer { [weak self] channel in
                guard let self else { return channel.close() }
                let id = self.register(channel)
                let gate = ReadGate(channel: channel)
                let info = ConnectionInfo(
                    id: id, remoteAddress: channel.remoteAddress?.description ?? "?", eventLoop: channel.eventLoop,
                    replies: ChannelReplySink(channel: channel, gate: gate))
                return channel.eventLoop.makeCompletedFuture {
                    let handler = makeHandler(info)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder<Request>()))
                    try channel.pipeline.syncOperations.addHandler(ServerFrameHandler(handler: handler, gate: gate, logger: logger))
                }.flatMap {
                    channel.closeFuture.whenComplete { [weak self] _ in self?.unregister(channel) }
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
            }
        let server = try await bootstrap.bind(host: endpoint.host, port: endpoint.port).get()
        state.withLockedValue { $0.server = server }
        let port = server.localAddress?.port ?? endpoint.port
        return Endpoint(host: endpoint.host, port: port)
    }

    public func stop() async {
        let (server, connections) = state.withLockedValue { ($0.server, Array($0.connections.values)) }
        try? await server?.close()
        for connection in connections { try? await connection.close() }
    }

    private func register(_ channel: Channel) -> UInt64 {
        state.withLockedValue { state in
            state.connections[ObjectIdentifier(channel)] = channel
            defer { state.nextId += 1 }
            return state.nextId
        }
    }

    private func unregister(_ channel: Channel) {
        _ = state.withLockedValue { $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
    }
}

/// Reading stops while either the session is busy or the socket's send buffer is full.
/// Event-loop confined (only touched from handlers and sink calls on the loop).
final class ReadGate: @unchecked Sendable {
    private let channel: Channel
    var sessionPaused = false { didSet { apply() } }
    var unwritable = false { didSet { apply() } }

    init(channel: Channel) { self.channel = channel }

    private func apply() {
        channel.eventLoop.preconditionInEventLoop()
        channel.setOption(.autoRead, value: !(sessionPaused || unwritable)).whenFailure { _ in }
    }
}

struct ChannelReplySink: ReplySink {
    let channel: Channel
    let gate: ReadGate

    func pauseReading() { gate.sessionPaused = true }
    func resumeReading() { gate.sessionPaused = false }

    func send(_ response: Response, requestId: UInt64) {
        TCPFrameWriter.write(Frame(requestId: requestId, message: response), to: channel, flush: true)
    }

    func sendAndClose(_ response: Response, requestId: UInt64) {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        TCPFrameWriter.write(Frame(requestId: requestId, message: response), to: channel, flush: true, promise: promise)
        let channel = self.channel
        // Close our side only, then the rest shortly after: a full close while the client's next
        // request is in flight would answer it with a reset, and a reset can discard our error
        // reply from the client's receive buffer before it is read.
        promise.futureResult.whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Feeds decoded frames to the session and turns decoding errors into an error reply + close.
/// Reading pauses while the socket's send buffer is full, so a client that pipelines reads but
/// never drains replies cannot make the server buffer without bound.
final class ServerFrameHandler: ChannelInboundHandler {
    typealias InboundIn = Frame<Request>
    private let handler: any RequestHandler
    private let gate: ReadGate
    private let logger: Logger
    private var failed = false

    init(handler: any RequestHandler, gate: ReadGate, logger: Logger) {
        self.handler = handler
        self.gate = gate
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        handler.handle(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !failed else { return }
        failed = true
        if let decoding = error as? FrameDecodingError {
            handler.malformedFrame(decoding.error, requestId: decoding.requestId)
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        gate.unwritable = !context.channel.isWritable
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handler.connectionClosed()
        context.fireChannelInactive()
    }
}
