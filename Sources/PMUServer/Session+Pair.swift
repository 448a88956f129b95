import NIOCore
import PMUCore
import PMUPair
import PMUStore

/// The session's pair verbs, kept out of Session.swift: mirrored WRITEs on the owner, the
/// MIRROR_* messages on the partner, and pair administration.
extension Session {
    /// WRITE on a mirrored server: copied into the region and mirrored in one step (ordered by
    /// the region), answered when the partner has it, or in degraded mode once it is durable here.
    func writeMirrored(_ sender: MirrorSender, key: AccessKey, offset: UInt64, data: ByteBuffer, id: UInt64) throws(PMUError) {
        let eventLoop = info.eventLoop
        var pending: EventLoopFuture<WriteOutcome>?
        var target: MappedRegion?
        try state.write(key: key, connection: info.id, offset: offset, data: data) { translation in
            target = translation.region.mapping
            pending = sender.write(regionId: translation.regionId, epoch: translation.epoch, offset: offset, data: data, eventLoop: eventLoop) {
                data.withUnsafeReadableBytes { translation.region.mapping.write($0, at: offset) }
            }
        }
        guard let pending, let target else { return reply(id, .ok) }
        let length = UInt64(data.readableBytes)
        pending.whenComplete { [self] result in
            switch result {
            case .success(.mirrored): self.reply(id, .ok)
            case .success(.localOnly): self.persistThenReply(target, offset: offset, length: length, id: id)
            case .failure(let error): self.reply(id, .error((error as? PMUError) ?? PMUError(.internalError, "\(error)")))
            }
        }
    }

    /// One catalog change (CREATE, DELETE, an OPEN for writing) of a mirrored owner: admitted as a
    /// write would be when made, `committed` handed to the store (it runs under the catalog lock,
    /// so the change takes its mirror sequence in commit order), then `wait` returns once the
    /// partner's log holds it, or, degraded, at once (the change is durable here already).
    /// Unpaired, all three do nothing. `wait` blocks: metadata pool only, never an event loop.
    final class CatalogChangeMirror: @unchecked Sendable {
        private let sender: MirrorSender?
        private var pending: EventLoopFuture<WriteOutcome>?

        init(_ state: ServerState) throws(PMUError) {
            sender = state.pair?.sender
            try sender?.admitCatalogChange()
        }

        func committed(_ entry: CatalogEntry) {
            pending = sender?.mirrorCatalogChange(entry)
        }

        func wait() throws(PMUError) {
            guard let pending else { return }
            do {
                _ = try pending.wait()
            } catch {
                throw (error as? PMUError) ?? PMUError(.internalError, "mirroring a catalog change: \(error)")
            }
        }
    }

    /// WRITE where durability comes from this server alone (a taken-over portion).
    func writeDurably(key: AccessKey, offset: UInt64, data: ByteBuffer, id: UInt64) throws(PMUError) {
        var target: MappedRegion?
        try state.write(key: key, connection: info.id, offset: offset, data: data) { translation in
            target = translation.region.mapping
            data.withUnsafeReadableBytes { translation.region.mapping.write($0, at: offset) }
        }
        guard let target else { return reply(id, .ok) }
        persistThenReply(target, offset: offset, length: UInt64(data.readableBytes), id: id)
    }

    private func persistThenReply(_ mapping: MappedRegion, offset: UInt64, length: UInt64, id: UInt64) {
        pool.runIfActive(eventLoop: info.eventLoop) { () -> Response in
            do throws(PMUError) {
                try mapping.persist(offset: offset, length: length)
                return .ok
            } catch {
                return .error(PMUError(error.code, "write applied but not made durable, so not acknowledged: \(error.message)"))
            }
        }.whenComplete { [self] result in
            self.reply(id, (try? result.get()) ?? .error(PMUError(.shuttingDown, "server is shutting down")))
        }
    }

    func pairRequest(_ request: Request, id: UInt64, clientId: String, isAdmin: Bool) throws(PMUError) {
        guard let pair = state.pair else {
            throw PMUError(.invalidArgument, "this pmu-server runs unpaired (no --partner, --mirror-client)")
        }
        switch request {
        case .mirrorOpen, .mirrorAppend, .mirrorTrim, .mirrorCatalog:
            guard let receiver = pair.receiver, pair.mayMirror(clientId) else {
                throw PMUError(.accessDenied, "client '\(clientId)' may not mirror into this server; its --mirror-client (or --partner-client) names who may")
            }
            try mirror(request, receiver: receiver, id: id)
        case .pairStatus:
            guard isAdmin || pair.mayMirror(clientId) else {
                throw PMUError(.accessDenied, "pair status is for admins and the pair's mirror client")
            }
            reply(id, .data(ByteBuffer(string: pair.statusJSON())))
        case .replicaCatalog(let after, let limit):
            guard pair.mayReplicate(clientId) else { throw Self.replicaDenied(clientId) }
            let page = state.store.list(after: after, limit: Int(min(limit, UInt32(Limits.maxListEntries))))
            reply(id, .list(entries: page.records.map { $0.info(openHandles: 0) }, more: page.more, cursor: nil))
        case .replicaRead(let regionId, let offset, let length):
            guard pair.mayReplicate(clientId) else { throw Self.replicaDenied(clientId) }
            guard Int(length) <= Limits.maxIOBytes else {
                throw PMUError(.requestTooLarge, "REPLICA_READ of \(length) bytes exceeds the per-request limit of \(Limits.maxIOBytes)")
            }
            let mapping = try state.store.mapping(id: regionId)
            let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
            guard !overflow, end <= mapping.sizeBytes else {
                throw PMUError(.outOfBounds, "REPLICA_READ [\(offset), +\(length)) is outside region id \(regionId) of \(mapping.sizeBytes) bytes")
            }
            var data = ByteBufferAllocator().buffer(capacity: Int(length))
            data.writeBytes(mapping.bytes(at: offset, length: Int(length)))
            reply(id, .data(data))
        case .pairTakeover, .pairGiveback:
            guard isAdmin else { throw PMUError(.accessDenied, "only an admin may take over the partner's portion or give it back") }
            let promise = info.eventLoop.makePromise(of: Response.self)
            let giveback = request == .pairGiveback
            Task {
                do throws(PMUError) {
                    promise.succeed(.data(ByteBuffer(string: giveback ? try await pair.giveback() : try await pair.takeover())))
                } catch {
                    promise.succeed(.error(error))
                }
            }
            promise.futureResult.whenSuccess { [self] response in self.reply(id, response) }
        default:
            throw PMUError(.internalError, "not a pair request")
        }
    }

    /// Answers OK once `sync` (nil: nothing to sync) has run off the event loop.
    private func syncThenReply(_ sync: (@Sendable () throws(PMUError) -> Void)?, id: UInt64) {
        guard let sync else { return reply(id, .ok) }
        pool.runIfActive(eventLoop: info.eventLoop) { () -> Response in
            do throws(PMUError) {
                try sync()
                return .ok
            } catch {
                return .error(error)
            }
        }.whenComplete { [self] result in
            self.reply(id, (try? result.get()) ?? .error(PMUError(.shuttingDown, "server is shutting down")))
        }
    }

    static func replicaDenied(_ clientId: String) -> PMUError {
        PMUError(.accessDenied, "client '\(clientId)' may not copy this server's portion; only the pair's client (--mirror-client, or --partner-client) may")
    }

    private func mirror(_ request: Request, receiver: MirrorReceiver, id: UInt64) throws(PMUError) {
        let connection = info.id
        switch request {
        case .mirrorOpen(let portion, let instance):
            let highest = try receiver.open(portion: portion, instance: instance, connection: connection)
            var data = ByteBuffer()
            data.writeInteger(highest, endianness: .little)
            reply(id, .data(data))
        case .mirrorAppend(let append) where receiver.appendBlocks:
            // Group commit: written now, in arrival order; synced off the event loop while this
            // connection's next appends are written, so one fdatasync answers all of them.
            syncThenReply(try receiver.appendForGroupCommit(append, connection: connection), id: id)
        case .mirrorAppend(let append):
            try receiver.append(append, connection: connection)
            reply(id, .ok)
        case .mirrorCatalog(let sequence, let entry):
            syncThenReply(try receiver.appendCatalogForGroupCommit(sequence: sequence, entry: entry, connection: connection), id: id)
        case .mirrorTrim(let through) where receiver.trimBlocks:
            runBlocking(id) { () throws(PMUError) -> Response in
                try receiver.trim(through: through, connection: connection)
                return .ok
            }
        case .mirrorTrim(let through):
            try receiver.trim(through: through, connection: connection)
            reply(id, .ok)
        default:
            throw PMUError(.internalError, "not a mirror request")
        }
    }
}
