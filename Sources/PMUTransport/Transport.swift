import NIOCore
import PMUCore

// The one transport protocol PMU speaks, in two halves. The server's sessions and the client
// library are written against these. Two implementations: TCP (SwiftNIO: TCPServerTransport,
// TCPClientTransport), where every message is a frame on the stream, and RDMA verbs
// (RDMAServerTransport, RDMAClientTransport), where control messages travel as frames in
// SEND/RECV slots and WRITE and READ data moves by one-sided operations on registered memory.

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
    /// False while the connection's unsent replies are over its bound: the session then executes
    /// none of its requests until `RequestHandler.repliesDrained` (requests already decoded wait
    /// in its queue). Read on the connection's event loop.
    var hasReplyRoom: Bool { get }
    /// AUTHENTICATE succeeded: accept frames up to the protocol maximum from now on (before it,
    /// only handshake-sized ones). Call on the connection's event loop.
    func allowFullFrames()
    /// Like `sendAndClose`, but closes as soon as the reply is written, without the grace period
    /// that protects a pipelining client's view of the error: for connections displaced to make
    /// room, whose descriptors must be given back at once.
    func sendAndCloseNow(_ response: Response, requestId: UInt64)
}

extension ReplySink {
    /// Verbs: replies go out through a fixed set of pre-registered send slots (credits + 8 of
    /// 64 KiB) and a client with more than its credits outstanding is disconnected, so unsent
    /// replies are bounded by construction.
    public var hasReplyRoom: Bool { true }
    /// Verbs: every request lands in a pre-posted 16 KiB receive slot whatever the session's
    /// state, so a frame limit would bound no memory.
    public func allowFullFrames() {}
    public func sendAndCloseNow(_ response: Response, requestId: UInt64) { sendAndClose(response, requestId: requestId) }
}

/// What a transport knows about an accepted connection.
public struct ConnectionInfo: Sendable {
    public var id: UInt64
    public var remoteAddress: String
    public var eventLoop: any EventLoop
    public var replies: any ReplySink
    /// Set by transports whose clients access region memory directly (RDMA verbs): the session
    /// registers each granted region with it and answers GRANT_RDMA instead of GRANT. nil on TCP.
    public var memory: (any MemoryRegistrar)? = nil
    /// Largest reply frame the connection carries (verbs: its reply slot); LIST pages stay
    /// within half of it and set `more`.
    public var maxReplyBytes: Int = Limits.maxFrameBytes

    /// Public for in-process transports (the session tests).
    public init(id: UInt64, remoteAddress: String, eventLoop: any EventLoop, replies: any ReplySink,
                memory: (any MemoryRegistrar)? = nil, maxReplyBytes: Int = Limits.maxFrameBytes) {
        self.id = id
        self.remoteAddress = remoteAddress
        self.eventLoop = eventLoop
        self.replies = replies
        self.memory = memory
        self.maxReplyBytes = maxReplyBytes
    }
}

/// Region memory a grant exposes to one-sided access. `owner` keeps the mapping alive while the
/// memory is registered (the transport holds it until it deregisters).
public struct GrantedMemory: @unchecked Sendable {
    public var base: UnsafeMutableRawPointer
    public var lengthBytes: Int
    public var owner: AnyObject

    public init(base: UnsafeMutableRawPointer, lengthBytes: Int, owner: AnyObject) {
        self.base = base
        self.lengthBytes = lengthBytes
        self.owner = owner
    }
}

/// One connection's memory registrations, one per granted handle (RDMA verbs: one memory region
/// in the connection's own protection domain, so its rkey works on no other connection). The
/// server's protection table stays in charge: it calls these as keys come and go, and every
/// invalidation has taken effect (the rkey is dead) when the call returns. Thread-safe.
public protocol MemoryRegistrar: Sendable {
    func register(key: AccessKey, regionId: UInt64, epoch: UInt64, writable: Bool, memory: GrantedMemory) throws(PMUError) -> RemoteAccess
    /// CLOSE of one key.
    func invalidate(key: AccessKey)
    /// DELETE: every key of the region.
    func invalidate(regionId: UInt64)
    /// Takeover of a checkpoint region: writable keys from epochs before `epoch`. One-sided
    /// writes bypass the per-WRITE epoch check, so this is what fences them.
    func fence(regionId: UInt64, below epoch: UInt64)
}

/// A client transport that can move region data by one-sided operations (RDMA WRITE and READ
/// against a grant's RemoteAccess) instead of WRITE and READ frames.
public protocol OneSidedTransport: Sendable {
    /// Largest transfer one call moves (the client library splits larger ones).
    var maxTransferBytes: Int { get }
    /// Returns once the write has completed at the server (the bytes are in region memory).
    func write(_ remote: RemoteAccess, offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError)
    func read(_ remote: RemoteAccess, offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer
    /// Writes `bytes` (at most `maxTransferBytes`) and sends `request` (a PERSIST of them) behind
    /// the write without waiting for its completion, in one round trip; returns the request's reply.
    func writeThenSend(_ remote: RemoteAccess, offset: UInt64, _ bytes: ByteBuffer, then request: Request) async throws(PMUError) -> Response
}

/// The server side of one connection. Called on the connection's event loop, in arrival order.
public protocol RequestHandler: AnyObject {
    func handle(_ frame: Frame<Request>)
    /// A large WRITE arriving in pieces (TCP, `RequestStreamDecoder`): its header and fixed
    /// fields now, then `writePayload` with exactly `length` bytes in all, the last marked. No
    /// other call but `connectionClosed` comes in between.
    func beginWrite(requestId: UInt64, key: AccessKey, offset: UInt64, length: Int)
    func writePayload(_ bytes: ByteBuffer, last: Bool)
    /// A frame that could not be decoded. The transport closes the connection after the reply.
    func malformedFrame(_ error: PMUError, requestId: UInt64?)
    func connectionClosed()
    /// The connection's unsent replies fell back under half its bound: requests held back by
    /// `ReplySink.hasReplyRoom` may run again.
    func repliesDrained()
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
    /// The optional capability of moving region data one-sided (RDMA verbs); nil: WRITE and READ frames.
    var oneSided: (any OneSidedTransport)? { get }
    /// e.g. "tcp" or "rdma (rxe0 port 1)", for logs and `PMUClient.transportDescription`.
    var transportDescription: String { get }
    /// The event loop replies are completed on, if any: running under it as task executor saves
    /// a thread hop per request (`PMUClient.taskExecutor`).
    var replyEventLoop: (any EventLoop)? { get }
    /// Where a latency-sensitive task should run to continue on the thread that completes its
    /// requests (`PMUClient.taskExecutor`): by default the reply event loop's executor.
    var taskExecutor: (any TaskExecutor)? { get }
    /// The optional capability of sending without a task: writes the request at once and returns
    /// the future of its reply (completed on `replyEventLoop`), or nil when the transport cannot
    /// (none can, but TCP) or has no place for it now (then `send`).
    func sendNow(_ request: Request) -> EventLoopFuture<Response>?
}

extension ClientTransport {
    public var oneSided: (any OneSidedTransport)? { nil }
    public var replyEventLoop: (any EventLoop)? { nil }
    public var taskExecutor: (any TaskExecutor)? { replyEventLoop.map { EventLoopTaskExecutor(eventLoop: $0) } }
    public func sendNow(_ request: Request) -> EventLoopFuture<Response>? { nil }

    /// Fallback for transports that cannot pipeline: one request at a time, same results.
    public func sendPipelined(_ requests: [Request]) async throws -> [Response] {
        var responses: [Response] = []
        for request in requests { responses.append(try await send(request)) }
        return responses
    }
}
