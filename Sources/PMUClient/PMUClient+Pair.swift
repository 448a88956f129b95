import NIOCore
import NIOPosix
import PMUTransport
import PMUCore

/// Server-to-server mirroring and pair administration (docs/WIRE_PROTOCOL.md, "Mirroring").
/// pmu-server uses the mirror calls as a client of its partner; pmuctl uses the pair calls.
extension PMUClient {
    /// MIRROR_OPEN: returns the highest sequence the partner's log holds for the portion.
    public func mirrorOpen(portion: String, instance: [UInt8]) async throws(PMUError) -> UInt64 {
        guard case .data(var data) = try await call(.mirrorOpen(portion: portion, instance: instance)),
            let highest = data.readInteger(endianness: .little, as: UInt64.self), data.readableBytes == 0
        else {
            throw PMUError(.protocolViolation, "MIRROR_OPEN reply is not DATA of 8 bytes (the partner runs an older pmu-server?)")
        }
        return highest
    }

    public func mirrorAppend(_ append: MirrorAppend) async throws(PMUError) {
        guard case .ok = try await call(.mirrorAppend(append)) else { throw PMUError(.protocolViolation, "unexpected reply to MIRROR_APPEND") }
    }

    /// MIRROR_APPEND without a task, for pmu-server's event loops: written at once, and the
    /// future completes on the connection's event loop (`taskExecutor`'s) when the partner
    /// answers; called on that loop, the whole round trip takes no thread hop. Takes the task
    /// path when every request place is taken.
    public func mirrorAppendNow(_ append: MirrorAppend) -> EventLoopFuture<Void> {
        sendNowExpectingOK(.mirrorAppend(append)) { [self] () async throws(PMUError) in try await mirrorAppend(append) }
    }

    /// MIRROR_CATALOG the same way: a catalog change the owner committed, at its mirror sequence.
    public func mirrorCatalogNow(sequence: UInt64, entry: CatalogEntry) -> EventLoopFuture<Void> {
        let request = Request.mirrorCatalog(sequence: sequence, entry: entry)
        return sendNowExpectingOK(request) { [self] () async throws(PMUError) in
            guard case .ok = try await call(request) else { throw PMUError(.protocolViolation, "unexpected reply to MIRROR_CATALOG") }
        }
    }

    /// MIRROR_TRIM the same way (pmu-server's heartbeat on its mirror channel).
    public func mirrorTrimNow(through: UInt64) -> EventLoopFuture<Void> {
        sendNowExpectingOK(.mirrorTrim(through: through)) { [self] () async throws(PMUError) in try await mirrorTrim(through: through) }
    }

    private func sendNowExpectingOK(_ request: Request, orWait: @escaping @Sendable () async throws(PMUError) -> Void) -> EventLoopFuture<Void> {
        if let reply = transport.sendNow(request) {
            return reply.flatMapThrowing { response in
                switch response {
                case .ok: return
                case .error(let error): throw error
                default: throw PMUError(.protocolViolation, "unexpected reply to \(request.opcode)")
                }
            }.flatMapErrorThrowing { error in throw Self.pmuError(error) }
        }
        let loop = transport.replyEventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        let promise = loop.makePromise(of: Void.self)
        Task {
            do throws(PMUError) {
                try await orWait()
                promise.succeed()
            } catch {
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    public func mirrorTrim(through: UInt64) async throws(PMUError) {
        guard case .ok = try await call(.mirrorTrim(through: through)) else { throw PMUError(.protocolViolation, "unexpected reply to MIRROR_TRIM") }
    }

    /// REPLICA_CATALOG: a page of the server's regions with ids and metadata, unfiltered (the
    /// pair's client only), names after `after`. Returns the entries and whether more follow.
    public func replicaCatalog(after: String, limit: Int = Limits.maxListEntries) async throws(PMUError) -> (entries: [RegionInfo], more: Bool) {
        guard case .list(let entries, let more, _) = try await call(.replicaCatalog(after: after, limit: UInt32(clamping: limit))) else {
            throw PMUError(.protocolViolation, "unexpected reply to REPLICA_CATALOG")
        }
        return (entries, more)
    }

    /// REPLICA_READ: `length` bytes of region `regionId` at `offset` (the pair's client only).
    public func replicaRead(regionId: UInt64, offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        guard case .data(let data) = try await call(.replicaRead(regionId: regionId, offset: offset, length: UInt32(clamping: length))) else {
            throw PMUError(.protocolViolation, "unexpected reply to REPLICA_READ")
        }
        guard data.readableBytes == length else {
            throw PMUError(.protocolViolation, "REPLICA_READ answered \(data.readableBytes) bytes for \(length) asked")
        }
        return data
    }

    /// PAIR_STATUS: the server's pair state as a JSON object.
    public func pairStatus() async throws(PMUError) -> String {
        try await jsonReply(.pairStatus)
    }

    /// PAIR_TAKEOVER: fence the partner, replay its mirror log into its portion, persist, serve.
    /// Returns the takeover report as a JSON object once the portion is being served.
    public func pairTakeover() async throws(PMUError) -> String {
        try await jsonReply(.pairTakeover)
    }

    /// PAIR_GIVEBACK: hand the taken-over portion back (stop serving it, persist, release it,
    /// clear the takeover), so its recovered owner can start on it and mirror again.
    public func pairGiveback() async throws(PMUError) -> String {
        try await jsonReply(.pairGiveback)
    }

    private func jsonReply(_ request: Request) async throws(PMUError) -> String {
        guard case .data(let data) = try await call(request) else { throw PMUError(.protocolViolation, "unexpected reply to \(request.opcode)") }
        return String(decoding: data.readableBytesView, as: UTF8.self)
    }
}
