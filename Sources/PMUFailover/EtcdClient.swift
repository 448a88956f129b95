import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import PMUCore
import PMUTransport

/// etcd v3 through its JSON gateway on the client port (POST /v3/kv/range, /v3/kv/txn,
/// /v3/lease/grant, /v3/lease/keepalive; keys and values base64). Plain HTTP/1.1, one short
/// connection a request: no gRPC code generation, and nothing to go stale between calls.
/// Every call has a deadline; every answer is bounded (64 KiB) and parsed defensively.
public final class EtcdClient: Sendable {
    public let endpoint: Endpoint
    let group: any EventLoopGroup
    let timeoutMilliseconds: Int64
    static let maxResponseBytes = 64 * 1024

    public init(endpoint: Endpoint, group: any EventLoopGroup, timeoutMilliseconds: Int64 = 500) {
        self.endpoint = endpoint
        self.group = group
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    /// etcd's URL form, http://HOST:PORT.
    public static func parse(url: String) throws(PMUError) -> Endpoint {
        guard url.hasPrefix("http://") else {
            throw PMUError(.invalidArgument, "--etcd \(url): give http://HOST:PORT of etcd's client port (TLS is not supported)")
        }
        do { return try Endpoint(parsing: String(url.dropFirst("http://".count)).trimmingCharacters(in: CharacterSet(charactersIn: "/"))) } catch {
            throw PMUError(.invalidArgument, "--etcd \(url): \(error)")
        }
    }

    // MARK: leases

    public func grantLease(ttlSeconds: Int) async throws(PMUError) -> Int64 {
        let answer = try await call("/v3/lease/grant", ["TTL": "\(ttlSeconds)"])
        guard let id = Self.int64(answer["ID"]), id != 0 else { throw Self.unexpected("lease grant", answer) }
        return id
    }

    /// Renews the lease; returns its remaining TTL in seconds, 0 when the lease is gone.
    public func keepAlive(lease: Int64) async throws(PMUError) -> Int64 {
        let answer = try await call("/v3/lease/keepalive", ["ID": "\(lease)"])
        guard let result = answer["result"] as? [String: Any] else { throw Self.unexpected("lease keepalive", answer) }
        return Self.int64(result["TTL"]) ?? 0
    }

    public func revoke(lease: Int64) async throws(PMUError) {
        _ = try await call("/v3/lease/revoke", ["ID": "\(lease)"])
    }

    // MARK: keys

    public struct KeyValue: Sendable, Equatable {
        public var value: [UInt8]
        public var modRevision: Int64
        public var lease: Int64
    }

    public func get(_ key: String) async throws(PMUError) -> KeyValue? {
        let answer = try await call("/v3/kv/range", ["key": Self.b64(key)])
        guard let kvs = answer["kvs"] as? [[String: Any]], let first = kvs.first else { return nil }
        guard let value = (first["value"] as? String).flatMap({ Data(base64Encoded: $0) }) ?? (first["value"] == nil ? Data() : nil),
              let revision = Self.int64(first["mod_revision"]) else { throw Self.unexpected("range", answer) }
        return KeyValue(value: Array(value), modRevision: revision, lease: Self.int64(first["lease"]) ?? 0)
    }

    public func put(_ key: String, value: [UInt8], lease: Int64? = nil) async throws(PMUError) {
        var body: [String: Any] = ["key": Self.b64(key), "value": Data(value).base64EncodedString()]
        if let lease { body["lease"] = "\(lease)" }
        _ = try await call("/v3/kv/put", body)
    }

    /// Compare-and-set: writes `value` only if the key's mod_revision is `expectedRevision`
    /// (0: the key must not exist). Returns the new revision, nil if the compare failed.
    public func compareAndSet(_ key: String, expectedRevision: Int64, value: [UInt8]) async throws(PMUError) -> Int64? {
        let body: [String: Any] = [
            "compare": [["key": Self.b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": "\(expectedRevision)"]],
            "success": [["request_put": ["key": Self.b64(key), "value": Data(value).base64EncodedString()]]],
        ]
        let answer = try await call("/v3/kv/txn", body)
        guard (answer["succeeded"] as? Bool) == true else { return nil }
        guard let header = answer["header"] as? [String: Any], let revision = Self.int64(header["revision"]) else {
            throw Self.unexpected("txn", answer)
        }
        return revision
    }

    // MARK: HTTP

    static func b64(_ key: String) -> String { Data(key.utf8).base64EncodedString() }

    static func int64(_ value: Any?) -> Int64? {
        if let text = value as? String { return Int64(text) }
        if let number = value as? NSNumber { return number.int64Value }
        return nil
    }

    static func unexpected(_ what: String, _ answer: [String: Any]) -> PMUError {
        PMUError(.ioError, "etcd answered \(what) with something unexpected: \(String(describing: answer).prefix(200))")
    }

    func call(_ path: String, _ body: [String: Any]) async throws(PMUError) -> [String: Any] {
        let payload: Data
        do { payload = try JSONSerialization.data(withJSONObject: body) } catch { throw PMUError(.internalError, "cannot encode etcd request: \(error)") }
        let (status, bytes): (Int, [UInt8])
        do {
            (status, bytes) = try await post(path, payload: Array(payload))
        } catch let error as PMUError {
            throw error
        } catch {
            throw PMUError(.serverUnavailable, "etcd at \(endpoint) unreachable (\(path)): \(error)")
        }
        // The keepalive stream answers one JSON object per line; the first is the answer.
        let firstLine = bytes.split(separator: UInt8(ascii: "\n"), maxSplits: 1).first.map(Array.init) ?? []
        guard let object = (try? JSONSerialization.jsonObject(with: Data(firstLine))) as? [String: Any] else {
            throw PMUError(.ioError, "etcd at \(endpoint) answered \(path) with HTTP \(status) and no JSON object")
        }
        guard status == 200 else {
            throw PMUError(.ioError, "etcd at \(endpoint) refused \(path): HTTP \(status) \(object["message"] ?? object["error"] ?? "")")
        }
        return object
    }

    private func post(_ path: String, payload: [UInt8]) async throws -> (Int, [UInt8]) {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: (Int, [UInt8]).self)
        let timeout = TimeAmount.milliseconds(timeoutMilliseconds)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(timeout)
                .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, limit: Self.maxResponseBytes))
                }
            }
                .connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            // The promise must be completed on every path (NIO traps on a leaked promise).
            promise.fail(error)
            throw error
        }
        let deadline = eventLoop.scheduleTask(in: timeout) {
            // Through the collector, which completes the promise once.
            channel.pipeline.fireErrorCaught(PMUError(.timedOut, "etcd at \(self.endpoint) did not answer \(path) within \(self.timeoutMilliseconds) ms"))
        }
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "Host", value: "\(endpoint)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: "\(payload.count)")
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: payload))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        return try await promise.futureResult.get()
    }
}

/// Collects one HTTP response (status + body up to `limit` bytes). The keepalive stream is
/// answered as soon as its first line is in, without waiting for the stream's end.
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<(Int, [UInt8])>
    let limit: Int
    var status = 0
    var body: [UInt8] = []
    var done = false

    init(promise: EventLoopPromise<(Int, [UInt8])>, limit: Int) {
        self.promise = promise
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(var buffer):
            guard body.count + buffer.readableBytes <= limit else {
                finish(.failure(PMUError(.ioError, "etcd's answer exceeds \(limit) bytes")))
                context.close(promise: nil)
                return
            }
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
            if body.contains(UInt8(ascii: "\n")) { finish(.success((status, body))) }
        case .end: finish(.success((status, body)))
        }
    }

    private func finish(_ result: Result<(Int, [UInt8]), any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(PMUError(.connectionClosed, "etcd closed the connection before answering")))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }
}
