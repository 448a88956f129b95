import NIOCore
import PMUCore

// The one transport protocol PMU speaks, in two halves. The server's sessions and the client
// library are written against these; TCP (SwiftNIO) implements them now, RDMA verbs later, where
// WRITE and READ data moves by one-sided operations and only control messages travel as frames.

/// Where a server session sends replies. Thread-safe: replies to slow operations (persist, create)
/// come from worker threads.
public protocol ReplySink: Sendable {
    func send(_ response: Response, requestId: UInt64)
    /// Sends the reply, then closes the connection (bad frames, failed authentication).
    func sendAndClose(_ response: Response, requestId: UInt64)
    func close()
    /// Stops delivering requests until `resumeReading` (the session is waiting on slow work and
    /// must not queue unbounded input). Call on the connection's event loop.
    func pauseReading()
    func resumeReading()
}

/// What a transport knows about an accepted connection.
public struct ConnectionInfo: Sendable {
    public var id: UInt64
    public var remoteAddress: String
    public var eventLoop: any EventLoop
    public var replies: any ReplySink
}

/// The server side of one connection. Called on the connection's event loop, in arrival order.
public protocol RequestHandler: AnyObject {
    func handle(_ frame: Frame<Request>)
    /// A frame that could not be decoded. The transport closes the connection after the reply.
    func malformedFrame(_ error: PMUError, requestId: UInt64?)
    func connectionClosed()
}

public protocol ServerTransport: Sendable {
    /// Binds and starts accepting; returns the bound address (useful with port 0).
    func start(makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) async throws -> Endpoint
    /// Stops accepting and closes every connection.
    func stop() async
}

/// The client side: send a request, await its reply. Requests may be issued concurrently; each
/// reply is matched to its request by id, so many can be in flight on one connection.
public protocol ClientTransport: Sendable {
    func send(_ request: Request) async throws -> Response
    /// Sends every request before waiting for any reply; the server executes them in order, so a
    /// WRITE followed by a PERSIST costs one round trip instead of two.
    func sendPipelined(_ requests: [Request]) async throws -> [Response]
    func close() async
}

extension ClientTransport {
    /// Fallback for transports that cannot pipeline: one request at a time, same results.
    public func sendPipelined(_ requests: [Request]) async throws -> [Response] {
        var responses: [Response] = []
        for request in requests { responses.append(try await send(request)) }
        return responses
    }
}
