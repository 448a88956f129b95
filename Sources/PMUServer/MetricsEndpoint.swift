import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import PMUTransport
import Prometheus

/// `--metrics-listen HOST:PORT`: GET /metrics over HTTP/1.1 in Prometheus's text format, for a
/// Prometheus server to scrape. Nothing else is served (404), nothing is accepted but GET and
/// HEAD (405). Off unless asked for; meant for loopback or a monitoring network, like the data
/// port it carries no authentication, and it exposes counts only, never region contents.
///
/// Bounded: at most `maxConnections` scrapers at once (more are closed on accept), one request a
/// connection (answered with `Connection: close`), `requestTimeout` to send it, request headers
/// capped by NIO's HTTP parser (80 KiB) and bodies discarded after `maxBodyBytes`.
final class MetricsEndpoint: Sendable {
    static let maxConnections = 16
    static let maxBodyBytes = 64 * 1024
    static let requestTimeout = TimeAmount.seconds(10)

    private let registry: PrometheusCollectorRegistry
    /// Sets the state gauges (regions, connections, free space, ...) just before each scrape.
    private let refresh: @Sendable () -> Void
    private let logger: Logger
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)
    private let open = NIOLockedValueBox(0)

    init(registry: PrometheusCollectorRegistry, logger: Logger, refresh: @escaping @Sendable () -> Void) {
        self.registry = registry
        self.refresh = refresh
        self.logger = logger
    }

    /// Binds and serves; returns the bound address (port 0 picks one).
    func start(endpoint: Endpoint, group: any EventLoopGroup) async throws -> Endpoint {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] child in
                guard self.admit() else { return child.close() }
                child.closeFuture.whenComplete { _ in self.open.withLockedValue { $0 -= 1 } }
                child.eventLoop.scheduleTask(in: Self.requestTimeout) { child.close(promise: nil) }
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try child.pipeline.syncOperations.addHandler(ScrapeHandler(endpoint: self))
                }
            }
        let server = try await bootstrap.bind(host: endpoint.host, port: endpoint.port).get()
        channel.withLockedValue { $0 = server }
        let port = server.localAddress?.port ?? endpoint.port
        logger.info("metrics listening", metadata: ["address": "\(Endpoint(host: endpoint.host, port: port))", "path": "/metrics"])
        return Endpoint(host: endpoint.host, port: port)
    }

    func stop() async {
        let server = channel.withLockedValue { channel in defer { channel = nil }; return channel }
        try? await server?.close()
    }

    private func admit() -> Bool {
        open.withLockedValue { count in
            guard count < Self.maxConnections else { return false }
            count += 1
            return true
        }
    }

    fileprivate func scrape() -> [UInt8] {
        refresh()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 * 1024)
        registry.emit(into: &bytes)
        return MetricsBackend.withHelp(bytes)
    }
}

/// One connection: waits for the request's end, answers it, closes.
private final class ScrapeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: MetricsEndpoint
    private var head: HTTPRequestHead?
    private var bodyBytes = 0

    init(endpoint: MetricsEndpoint) { self.endpoint = endpoint }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body(let body):
            bodyBytes += body.readableBytes
            if bodyBytes > MetricsEndpoint.maxBodyBytes { context.close(promise: nil) }
        case .end:
            guard let head else { return context.close(promise: nil) }
            respond(context: context, to: head)
        }
    }

    private func respond(context: ChannelHandlerContext, to request: HTTPRequestHead) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let (status, body, type): (HTTPResponseStatus, [UInt8], String)
        if path != "/metrics" {
            (status, body, type) = (.notFound, Array("not found: metrics are at /metrics\n".utf8), "text/plain; charset=utf-8")
        } else if request.method != .GET && request.method != .HEAD {
            (status, body, type) = (.methodNotAllowed, Array("use GET /metrics\n".utf8), "text/plain; charset=utf-8")
        } else {
            (status, body, type) = (.ok, endpoint.scrape(), "text/plain; version=0.0.4; charset=utf-8")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
