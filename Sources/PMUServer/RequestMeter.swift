import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUMetrics
import PMUTransport

/// Measures every request of one connection where it enters and where its reply leaves, around
/// the session: the transport hands frames to `MeteredHandler`, which notes verb and arrival
/// time and passes them on; the session's replies go out through `MeteredReplies`, which matches
/// each to its request by id and records verb, result code and latency (`PMUMetrics.request`).
/// Being a wrapper, it sees every verb, present and future, without a line in Session.swift.
///
/// Also logs each request at debug level with its connection and request ids, verb, result and
/// microseconds, the log line `--log-level debug` adds per request.
///
/// Bounded: a connection has at most `maxTracked` requests awaiting replies tracked; beyond that
/// (a client pipelining more than the session will ever queue) their replies count with verb
/// NONE and no latency, as do replies to no request (the authentication timeout's error).
final class RequestMeter: Sendable {
    static let maxTracked = 4096

    struct Pending {
        var verb: Opcode
        var startedNanoseconds: UInt64
        var writeBytes: Int
    }

    private let connection: UInt64
    private let logger: Logger
    /// Request id → requests with that id awaiting their reply, oldest first (a client may reuse ids).
    private let pending = NIOLockedValueBox<(byId: [UInt64: [Pending]], count: Int)>(([:], 0))

    init(connection: UInt64, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    func received(_ frame: Frame<Request>) {
        var writeBytes = 0
        if case .write(_, _, let data) = frame.message { writeBytes = data.readableBytes }
        received(requestId: frame.requestId, opcode: frame.message.opcode, writeBytes: writeBytes)
    }

    /// A request known from its head (a streamed WRITE), measured from there.
    func received(requestId: UInt64, opcode: Opcode, writeBytes: Int) {
        let entry = Pending(verb: opcode, startedNanoseconds: PMUMetrics.now(), writeBytes: writeBytes)
        // Not tracked past the bound: its reply then counts with verb NONE.
        let tracked = pending.withLockedValue { state -> Bool in
            guard state.count < Self.maxTracked else { return false }
            state.byId[requestId, default: []].append(entry)
            state.count += 1
            return true
        }
        if tracked, opcode == .persist { PMUMetrics.persistQueued(1) }
    }

    func replied(_ response: Response, requestId: UInt64) {
        let entry = pending.withLockedValue { state -> Pending? in
            guard var list = state.byId[requestId], !list.isEmpty else { return nil }
            let first = list.removeFirst()
            state.byId[requestId] = list.isEmpty ? nil : list
            state.count -= 1
            return first
        }
        let result: String
        if case .error(let error) = response { result = "\(error.code)" } else { result = "OK" }
        guard let entry else {
            PMUMetrics.request(verb: "NONE", result: result, nanoseconds: 0)
            return
        }
        let nanoseconds = PMUMetrics.now() &- entry.startedNanoseconds
        PMUMetrics.request(verb: Self.name(entry.verb), result: result, nanoseconds: nanoseconds)
        switch (entry.verb, response) {
        case (.persist, _):
            PMUMetrics.persistQueued(-1)
        case (.write, .ok):
            PMUMetrics.count(PMUMetrics.bytesWritten, by: entry.writeBytes)
        case (.read, .data(let data)):
            PMUMetrics.count(PMUMetrics.bytesRead, by: data.readableBytes)
        case (.write, .error(let error)) where error.code == .fenced:
            PMUMetrics.count(PMUMetrics.fencedWrites)
        case (.authenticate, .error(let error)) where error.code == .authenticationFailed:
            PMUMetrics.count(PMUMetrics.authenticationFailures)
        default:
            break
        }
        logger.debug("request", metadata: [
            "request": "\(requestId)", "verb": "\(Self.name(entry.verb))", "result": "\(result)", "micros": "\(nanoseconds / 1000)",
        ])
    }

    /// The connection closed: requests still awaiting replies will get none. PERSISTs among them
    /// leave the queue depth (their syncs, if running, still count in the store's figures).
    func closed() {
        let persists = pending.withLockedValue { state -> Int in
            let count = state.byId.values.reduce(0) { $0 + $1.filter { $0.verb == .persist }.count }
            state = ([:], 0)
            return count
        }
        if persists > 0 { PMUMetrics.persistQueued(-persists) }
    }

    /// The verb's name in docs/WIRE_PROTOCOL.md, the `verb` label.
    static func name(_ opcode: Opcode) -> String {
        switch opcode {
        case .hello: "HELLO"
        case .authenticate: "AUTHENTICATE"
        case .create: "CREATE"
        case .open: "OPEN"
        case .openResume: "OPEN_RESUME"
        case .write: "WRITE"
        case .read: "READ"
        case .persist: "PERSIST"
        case .close: "CLOSE"
        case .delete: "DELETE"
        case .list: "LIST"
        case .stat: "STAT"
        case .mirrorOpen: "MIRROR_OPEN"
        case .mirrorAppend: "MIRROR_APPEND"
        case .mirrorTrim: "MIRROR_TRIM"
        case .mirrorCatalog: "MIRROR_CATALOG"
        case .pairStatus: "PAIR_STATUS"
        case .pairTakeover: "PAIR_TAKEOVER"
        case .pairGiveback: "PAIR_GIVEBACK"
        case .replicaCatalog: "REPLICA_CATALOG"
        case .replicaRead: "REPLICA_READ"
        case .serverInfo: "SERVER_INFO"
        case .formBegin: "FORM_BEGIN"
        case .formData: "FORM_DATA"
        case .formCommit: "FORM_COMMIT"
        case .formRebuild: "FORM_REBUILD"
        // Verbs added later are labelled by opcode until named here.
        default: "OPCODE_0x" + String(opcode.rawValue, radix: 16)
        }
    }
}

/// The session's reply sink, recording each reply before passing it on.
struct MeteredReplies: ReplySink {
    let inner: any ReplySink
    let meter: RequestMeter

    func send(_ response: Response, requestId: UInt64) {
        meter.replied(response, requestId: requestId)
        inner.send(response, requestId: requestId)
    }

    func sendAndClose(_ response: Response, requestId: UInt64) {
        meter.replied(response, requestId: requestId)
        inner.sendAndClose(response, requestId: requestId)
    }

    func sendAndCloseNow(_ response: Response, requestId: UInt64) {
        meter.replied(response, requestId: requestId)
        inner.sendAndCloseNow(response, requestId: requestId)
    }

    func close() { inner.close() }
    func pauseReading() { inner.pauseReading() }
    func resumeReading() { inner.resumeReading() }
    var hasReplyRoom: Bool { inner.hasReplyRoom }
    func allowFullFrames() { inner.allowFullFrames() }
}

/// What the transport talks to: notes each request, then hands it to the session.
final class MeteredHandler: RequestHandler {
    let session: any RequestHandler
    let meter: RequestMeter

    /// A session for `info` whose requests and replies are measured.
    static func wrap(_ info: ConnectionInfo, logger: Logger, makeSession: (ConnectionInfo) -> any RequestHandler) -> MeteredHandler {
        var logger = logger
        logger[metadataKey: "connection"] = "\(info.id)"
        let meter = RequestMeter(connection: info.id, logger: logger)
        var metered = info
        metered.replies = MeteredReplies(inner: info.replies, meter: meter)
        return MeteredHandler(session: makeSession(metered), meter: meter)
    }

    private init(session: any RequestHandler, meter: RequestMeter) {
        self.session = session
        self.meter = meter
    }

    func handle(_ frame: Frame<Request>) {
        meter.received(frame)
        session.handle(frame)
    }

    func beginWrite(requestId: UInt64, key: AccessKey, offset: UInt64, length: Int) {
        meter.received(requestId: requestId, opcode: .write, writeBytes: length)
        session.beginWrite(requestId: requestId, key: key, offset: offset, length: length)
    }

    func writePayload(_ bytes: ByteBuffer, last: Bool) { session.writePayload(bytes, last: last) }

    func malformedFrame(_ error: PMUError, requestId: UInt64?) { session.malformedFrame(error, requestId: requestId) }

    func connectionClosed() {
        session.connectionClosed()
        meter.closed()
    }

    func repliesDrained() { session.repliesDrained() }
}
