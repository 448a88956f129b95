#if canImport(Glibc)
import Glibc
#endif
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
    /// A connection's replies handed to NIO and not yet written to its socket: above this the
    /// channel turns unwritable and its session stops executing requests; it resumes below half.
    private let maxUnsentReplyBytes: Int
    /// WRITE payloads of at least this many bytes are handed to the session in pieces as they
    /// arrive (`RequestStreamDecoder`); Int.max: every frame is gathered whole.
    private let minStreamedWritePayload: Int
    private let state = NIOLockedValueBox<(server: Channel?, connections: [ObjectIdentifier: Channel], nextId: UInt64)>((nil, [:], 1))

    public static let defaultMaxUnsentReplyBytes = 16 * 1024 * 1024

    public init(
        endpoint: Endpoint, group: any EventLoopGroup, logger: Logger, maxUnsentReplyBytes: Int = TCPServerTransport.defaultMaxUnsentReplyBytes,
        minStreamedWritePayload: Int = RequestStreamDecoder.minStreamedPayload
    ) {
        precondition(maxUnsentReplyBytes >= 2 && minStreamedWritePayload >= 1)
        self.minStreamedWritePayload = minStreamedWritePayload
        self.endpoint = endpoint
        self.group = group
        self.logger = logger
        self.maxUnsentReplyBytes = maxUnsentReplyBytes
    }

    public func start(makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) async throws -> Endpoint {
        let logger = self.logger
        let minStreamed = minStreamedWritePayload
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Out of descriptors (EMFILE), accept fails and the listening socket stays readable:
            // without a pause the loop retries at 100% CPU. Pause accepting and say so.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPause(logger: logger))
                }
            }
            .childChannelOption(.writeBufferWaterMark, value: .init(low: maxUnsentReplyBytes / 2, high: maxUnsentReplyBytes))
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
                let frameLimit = FrameSizeLimit.handshake()
                let info = ConnectionInfo(
                    id: id, remoteAddress: channel.remoteAddress?.description ?? "?", eventLoop: channel.eventLoop,
                    replies: ChannelReplySink(channel: channel, gate: gate, frameLimit: frameLimit))
                return channel.eventLoop.makeCompletedFuture {
                    let handler = makeHandler(info)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RequestStreamDecoder(limit: frameLimit, minStreamedPayload: minStreamed)))
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

/// Pauses accepting for 1 s when `accept` fails for want of descriptors or memory (retrying
/// sooner only burns CPU until connections close), with one warning per pause; other accept
/// errors concern one connection and pass on.
///
/// Not NIO's `AcceptBackoffHandler`, which it replaced: that handler applies its pause at the
/// channel's next `read()`, and NIO makes none while the read whose first accept failed is still
/// pending. The listening socket is level-triggered and stays readable, so the event loop
/// retried accept about 40,000 times a second (measured by HostileClientTests' failure count).
/// Switching `autoRead` off unregisters the socket at once; switching it back on re-arms it.
/// Confined to the listening channel's event loop.
final class AcceptPause: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Channel
    static let pause = TimeAmount.seconds(1)
    private let logger: Logger
    private var paused = false
    private var failedSinceWarning = 0

    init(logger: Logger) { self.logger = logger }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            logger.debug("accept failed", metadata: ["error": "\(error)"])
            return
        }
        guard !paused else {
            failedSinceWarning += 1
            return
        }
        paused = true
        logger.warning("accept failed; pausing accepts for 1 s", metadata: [
            "error": "\(error)",
            "failedSinceLastWarning": "\(failedSinceWarning)",
            "hint": "\(error.errnoCode == EMFILE ? "out of file descriptors (EMFILE): raise the open-file limit (ulimit -n, LimitNOFILE=) or lower --max-clients" : "system resources exhausted")",
        ])
        failedSinceWarning = 0
        let channel = context.channel
        channel.setOption(.autoRead, value: false).whenFailure { _ in }
        channel.eventLoop.scheduleTask(in: Self.pause) {
            self.paused = false
            channel.setOption(.autoRead, value: true).whenFailure { _ in }
        }
    }
}

/// Reading stops while the session is busy, while the connection's unsent replies are over their
/// bound, and for good once the connection is being closed with an error (whatever else the peer
/// sends would only be read into memory and dropped).
/// Event-loop confined (only touched from handlers and sink calls on the loop).
final class ReadGate: @unchecked Sendable {
    private let channel: Channel
    var sessionPaused = false { didSet { apply() } }
    var unwritable = false { didSet { apply() } }
    var closing = false { didSet { apply() } }

    init(channel: Channel) { self.channel = channel }

    private func apply() {
        channel.eventLoop.preconditionInEventLoop()
        channel.setOption(.autoRead, value: !(sessionPaused || unwritable || closing)).whenFailure { _ in }
    }

    /// From any thread.
    func stopForGood() {
        if channel.eventLoop.inEventLoop {
            closing = true
        } else {
            channel.eventLoop.execute { self.closing = true }
        }
    }
}

struct ChannelReplySink: ReplySink {
    let channel: Channel
    let gate: ReadGate
    let frameLimit: FrameSizeLimit

    func pauseReading() { gate.sessionPaused = true }
    func resumeReading() { gate.sessionPaused = false }

    /// NIO's writability is the bound: the channel turns unwritable once the bytes it holds
    /// unwritten pass the high water mark (`maxUnsentReplyBytes`).
    var hasReplyRoom: Bool { channel.isWritable }

    func allowFullFrames() {
        channel.eventLoop.preconditionInEventLoop()
        frameLimit.allowFullFrames()
    }

    func sendAndCloseNow(_ response: Response, requestId: UInt64) {
        gate.stopForGood()
        let promise = channel.eventLoop.makePromise(of: Void.self)
        TCPFrameWriter.write(Frame(requestId: requestId, message: response), to: channel, flush: true, promise: promise)
        let channel = self.channel
        promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
        // A peer that does not read would keep the write pending: close regardless, soon.
        channel.eventLoop.scheduleTask(in: .milliseconds(100)) { channel.close(promise: nil) }
    }

    func send(_ response: Response, requestId: UInt64) {
        TCPFrameWriter.write(Frame(requestId: requestId, message: response), to: channel, flush: true)
    }

    func sendAndClose(_ response: Response, requestId: UInt64) {
        gate.stopForGood()
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
        // A peer that does not read (replies over their bound) would keep the write pending, and
        // the connection with its slot, forever: close regardless after a while.
        channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Feeds decoded frames to the session and turns decoding errors into an error reply + close.
/// While the connection's unsent replies are over their bound (the channel is unwritable) reading
/// pauses and the session executes nothing, so a client that pipelines reads but never drains
/// replies cannot make the server buffer without bound; `repliesDrained` resumes it.
final class ServerFrameHandler: ChannelInboundHandler {
    typealias InboundIn = InboundRequest
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
        switch unwrapInboundIn(data) {
        case .frame(let frame): handler.handle(frame)
        case .writeHead(let requestId, let key, let offset, let length): handler.beginWrite(requestId: requestId, key: key, offset: offset, length: length)
        case .writePayload(let bytes, let last): handler.writePayload(bytes, last: last)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !failed else { return }
        failed = true
        gate.closing = true
        if let decoding = error as? FrameDecodingError {
            handler.malformedFrame(decoding.error, requestId: decoding.requestId)
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        gate.unwritable = !writable
        if writable { handler.repliesDrained() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handler.connectionClosed()
        context.fireChannelInactive()
    }
}
