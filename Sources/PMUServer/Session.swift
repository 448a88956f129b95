import Logging
import NIOCore
import NIOPosix
import PMUCore
import PMUPair
import PMUStore
import PMUTransport

/// One client connection's server side, independent of the transport: the authentication state
/// machine and the verbs.
///
/// Requests execute in arrival order. Fast ones (write, read, close, stat, list, open for read)
/// run on the connection's event loop as they arrive; slow ones (create, delete, open for write:
/// they fsync) run on the blocking pool while reading pauses, so later requests still see their
/// effects. PERSIST runs on the pool without holding up later requests: it covers every write
/// that arrived before it, and a later write landing in the same pages is harmless.
///
/// Limits (WIRE_PROTOCOL.md sections 4 and 7): while the connection's unsent replies are over
/// their bound (`ReplySink.hasReplyRoom`) no request executes, queued or new; before
/// authentication only handshake-sized frames are decoded; admission goes through the server's
/// `AdmissionTable` (authenticating budget, client slots, per-client cap); an authenticated
/// connection without requests for `--idle-timeout` is closed.
///
/// Unchecked Sendable: confined to its event loop; work on the pool hops back before touching it.
final class Session: RequestHandler, @unchecked Sendable {
    enum Phase {
        case awaitingHello
        case challenged(clientId: String, clientNonce: [UInt8], serverNonce: [UInt8], secret: [UInt8]?)
        case authenticated(clientId: String)
        case closed
    }

    let info: ConnectionInfo
    let state: ServerState
    /// msync for PERSIST.
    let pool: NIOThreadPool
    /// Catalog work (create, delete, open for write): its own threads, so a flood of PERSISTs can
    /// never delay a takeover's fencing open.
    private let metadataPool: NIOThreadPool
    private var logger: Logger
    private(set) var phase: Phase = .awaitingHello
    /// Last request received, reply sent or replies drained; the idle timeout counts from it.
    /// On the loop's clock (`EventLoop.now`), which tests can advance.
    var lastActivity: NIODeadline
    private(set) var queue: [Frame<Request>] = []
    private(set) var busy = false { didSet { updateReading() } }
    /// PERSISTs this connection has on the pool; reading pauses at the cap (bounded queue).
    var persistsInFlight = 0 { didSet { updateReading() } }
    static let maxPersistsInFlight = 256
    private var readingPaused = false
    /// The large WRITE whose payload is arriving in pieces (Session+StreamedWrite.swift).
    var inboundWrite: InboundWrite?

    init(info: ConnectionInfo, state: ServerState, pool: NIOThreadPool, metadataPool: NIOThreadPool, logger: Logger) {
        self.info = info
        self.state = state
        self.pool = pool
        self.metadataPool = metadataPool
        self.logger = logger
        self.lastActivity = info.eventLoop.now
        self.logger[metadataKey: "connection"] = "\(info.id)"
        self.logger[metadataKey: "peer"] = "\(info.remoteAddress)"
        if let memory = info.memory { state.attach(memory, connection: info.id) }
        // A connection holds a place among those authenticating: one that does not authenticate
        // in time gives it back.
        let deadline = state.configuration.authenticationTimeout
        info.eventLoop.scheduleTask(in: deadline) { [weak self] in
            guard let self else { return }
            switch self.phase {
            case .awaitingHello, .challenged:
                self.logger.notice("authentication timed out; closing connection")
                self.refuse(0, PMUError(.notAuthenticated, "authentication did not complete within \(deadline); closing"))
            case .authenticated, .closed:
                break
            }
        }
        // Admitted to authenticate; when that budget is full the connection that has waited
        // longest makes room (closed on its own loop).
        let eventLoop = info.eventLoop
        state.arrive(connection: info.id) { [weak self] in
            eventLoop.execute { self?.displaced() }
        }
    }

    /// Closed to make room for a newer connection while this one was still authenticating.
    private func displaced() {
        switch phase {
        case .awaitingHello, .challenged:
            logger.notice("connection displaced: too many connections authenticating", metadata: ["maxAuthenticating": "\(state.configuration.maxAuthenticating)"])
            phase = .closed
            queue.removeAll()
            info.replies.sendAndCloseNow(
                .error(PMUError(.tooManyClients, "closed to make room: more than \(state.configuration.maxAuthenticating) connections were authenticating (--max-authenticating); authenticate promptly and try again")),
                requestId: 0)
        case .closed:
            // Already refused and in its grace period: give the descriptor back now.
            info.replies.close()
        case .authenticated:
            break
        }
    }

    // MARK: RequestHandler

    func handle(_ frame: Frame<Request>) {
        guard case .closed = phase else {
            lastActivity = info.eventLoop.now
            queue.append(frame)
            drain()
            return
        }
    }

    func malformedFrame(_ error: PMUError, requestId: UInt64?) {
        logger.notice("bad frame; closing connection", metadata: ["error": "\(error)", "request": "\(requestId.map { "\($0)" } ?? "-")"])
        phase = .closed
        info.replies.sendAndClose(.error(error), requestId: requestId ?? 0)
    }

    func connectionClosed() {
        phase = .closed
        queue.removeAll()
        // A payload cut short lands no further and is never answered.
        inboundWrite = nil
        state.connectionClosed(info.id)
        state.pair?.receiver?.connectionClosed(info.id)
        state.forming.connectionClosed(info.id)
        logger.debug("connection closed")
    }

    func repliesDrained() {
        lastActivity = info.eventLoop.now
        drain()
    }

    // MARK: Ordering

    /// Runs queued requests in order until one goes to the pool, the queue is empty, or the
    /// connection's unsent replies pass their bound (then `repliesDrained` resumes).
    private func drain() {
        while !busy, info.replies.hasReplyRoom, !queue.isEmpty {
            let frame = queue.removeFirst()
            if case .closed = phase { queue.removeAll(); return }
            dispatch(frame)
        }
    }

    private func updateReading() {
        let pause = busy || persistsInFlight >= Self.maxPersistsInFlight
        guard pause != readingPaused else { return }
        readingPaused = pause
        if pause { info.replies.pauseReading() } else { info.replies.resumeReading() }
    }

    /// Runs `work` on the metadata pool; reading pauses and later requests wait until it replies.
    func runBlocking(_ requestId: UInt64, _ work: @escaping @Sendable () throws(PMUError) -> Response) {
        busy = true
        let future = metadataPool.runIfActive(eventLoop: info.eventLoop) { () -> Response in
            do throws(PMUError) { return try work() } catch { return .error(error) }
        }
        future.whenComplete { [self] result in
            // Completion callbacks run on the connection's event loop.
            let response = (try? result.get()) ?? .error(PMUError(.shuttingDown, "server is shutting down"))
            if case .closed = self.phase {
                // The client left while its open or create ran: drop the key nobody will close.
                if case .grant(let grant) = response { try? self.state.close(key: grant.key, connection: self.info.id) }
                if case .remoteGrant(let grant, _) = response { try? self.state.close(key: grant.key, connection: self.info.id) }
            }
            self.reply(requestId, response)
            self.lastActivity = self.info.eventLoop.now
            self.busy = false
            self.drain()
        }
    }

    func reply(_ requestId: UInt64, _ response: Response) {
        if case .closed = phase { return }
        lastActivity = info.eventLoop.now
        info.replies.send(response, requestId: requestId)
    }

    // MARK: Verbs

    private func dispatch(_ frame: Frame<Request>) {
        let id = frame.requestId
        switch phase {
        case .closed:
            return
        case .awaitingHello:
            guard case .hello(let clientId, let clientNonce) = frame.message else {
                return refuse(id, PMUError(.notAuthenticated, "authenticate first: send HELLO, then AUTHENTICATE (pmuctl and the client library do this)"))
            }
            do throws(PMUError) {
                try NameRules.validateClientId(clientId)
            } catch {
                return refuse(id, error)
            }
            state.helloReceived(connection: info.id)
            let serverNonce = Authentication.randomNonce()
            // An unknown client gets a challenge like any other and fails at AUTHENTICATE with the
            // same error as a wrong secret, so ids cannot be probed.
            phase = .challenged(clientId: clientId, clientNonce: clientNonce, serverNonce: serverNonce, secret: state.secrets.secret(for: clientId))
            reply(id, .challenge(serverNonce: serverNonce))
        case .challenged(let clientId, let clientNonce, let serverNonce, let secret):
            guard case .authenticate(let proof) = frame.message else {
                return refuse(id, PMUError(.protocolViolation, "expected AUTHENTICATE after CHALLENGE"))
            }
            guard let secret,
                Authentication.proofsMatch(proof, Authentication.clientProof(secret: secret, clientId: clientId, clientNonce: clientNonce, serverNonce: serverNonce))
            else {
                logger.warning("authentication failed", metadata: ["client": "\(clientId)", "request": "\(id)"])
                return refuse(id, PMUError(.authenticationFailed, "authentication failed for client '\(clientId)': unknown client id or wrong secret"))
            }
            do throws(PMUError) {
                try state.authenticated(connection: info.id, clientId: clientId)
            } catch {
                logger.warning("refused authenticated client", metadata: ["client": "\(clientId)", "error": "\(error)", "request": "\(id)"])
                return refuse(id, error)
            }
            phase = .authenticated(clientId: clientId)
            info.replies.allowFullFrames()
            logger[metadataKey: "client"] = "\(clientId)"
            logger.info("client authenticated")
            if let idle = state.configuration.idleTimeout { scheduleIdleCheck(in: idle) }
            reply(id, .authenticated(serverProof: Authentication.serverProof(secret: secret, clientId: clientId, clientNonce: clientNonce, serverNonce: serverNonce)))
        case .authenticated(let clientId):
            execute(frame.message, id: id, clientId: clientId)
        }
    }

    /// Closes an authenticated connection that has neither sent a request nor drained a reply for
    /// `--idle-timeout`, giving its client slot back (TCP keepalive only catches vanished peers).
    /// Work it has on the pools counts as activity.
    private func scheduleIdleCheck(in delay: TimeAmount) {
        info.eventLoop.scheduleTask(in: delay) { [weak self] in
            guard let self, case .authenticated = self.phase, let timeout = self.state.configuration.idleTimeout else { return }
            let idle = self.info.eventLoop.now - self.lastActivity
            if idle < timeout || self.busy || self.persistsInFlight > 0 {
                self.scheduleIdleCheck(in: idle < timeout ? timeout - idle : timeout)
                return
            }
            self.logger.notice("idle timeout; closing connection", metadata: ["idleTimeout": "\(timeout)"])
            self.refuse(0, PMUError(.connectionClosed, "closed after \(timeout.nanoseconds / 1_000_000_000) s without requests (--idle-timeout); reconnect to continue"))
        }
    }

    private func refuse(_ id: UInt64, _ error: PMUError) {
        phase = .closed
        queue.removeAll()
        info.replies.sendAndClose(.error(error), requestId: id)
    }

    private func execute(_ request: Request, id: UInt64, clientId: String) {
        let state = self.state
        let connection = info.id
        let memory = info.memory
        let isAdmin = state.isAdmin(clientId)
        do throws(PMUError) {
            // The failover gate (NOT_PRIMARY, LEASE_LAPSED) covers every request that changes or
            // makes durable what this server holds, not only WRITE: a fenced or lease-lapsed
            // primary must acknowledge nothing that a takeover would not have.
            if let gate = state.configuration.writeGate, request.changesStoredState, let refusal = gate() { throw refusal }
            switch request {
            case .hello, .authenticate:
                throw PMUError(.protocolViolation, "this connection is already authenticated")

            case .write(let key, let offset, let data):
                if state.configuration.durableWrites {
                    // A taken-over portion has no partner: durable before acknowledged.
                    try writeDurably(key: key, offset: offset, data: data, id: id)
                    break
                }
                if let sender = state.pair?.sender {
                    // Acknowledged once in this server's mapping and in the partner's log.
                    try writeMirrored(sender, key: key, offset: offset, data: data, id: id)
                    break
                }
                try state.write(key: key, connection: connection, offset: offset, data: data)
                reply(id, .ok)

            case .read(let key, let offset, let length):
                guard Int(length) <= Limits.maxIOBytes else {
                    throw PMUError(.requestTooLarge, "read of \(length) bytes exceeds the per-request limit of \(Limits.maxIOBytes); split it (the client library does)")
                }
                let translation = try state.translateForRead(key: key, connection: connection, offset: offset, length: UInt64(length))
                let buffer = ByteBuffer(bytes: translation.region.mapping.bytes(at: offset, length: Int(length)))
                reply(id, .data(buffer))

            case .persist(let key, let offset, let length):
                // Checked now, against the state at arrival; the msync runs on the pool. Read rights
                // suffice: persisting changes no byte, and a backup may want the primary's writes durable.
                let translation = try state.translateForRead(key: key, connection: connection, offset: offset, length: length == 0 ? nil : length)
                let resolvedLength = translation.length
                let region = translation.region
                if persistThroughJournal(translation, offset: offset, id: id) { break }
                let replies = info.replies
                let sender = state.pair?.sender
                let mark = sender?.persistMark() ?? 0
                persistsInFlight += 1
                pool.runIfActive(eventLoop: info.eventLoop) { () -> Response in
                    do throws(PMUError) {
                        try region.mapping.persist(offset: offset, length: resolvedLength)
                        sender?.persisted(regionId: translation.regionId, offset: offset, length: resolvedLength, mark: mark)
                        return .ok
                    } catch {
                        return .error(error)
                    }
                }.whenComplete { [self] result in
                    // On the connection's event loop (the future was made for it).
                    self.persistsInFlight -= 1
                    replies.send((try? result.get()) ?? .error(PMUError(.shuttingDown, "server is shutting down")), requestId: id)
                }

            case .close(let key):
                try state.close(key: key, connection: connection)
                reply(id, .ok)

            case .stat(let name):
                guard let record = state.store.record(named: name),
                    AccessPolicy.mayView(clientId, owner: record.owner, readers: record.readers, writers: record.writers, isAdmin: isAdmin)
                else {
                    throw PMUError(.unknownRegion, "no region named \(NameRules.quoted(name)) visible to client '\(clientId)'")
                }
                reply(id, .info(record.info(openHandles: state.handleCount(regionId: record.id))))

            case .list(let after, let limit, let wantsCursor):
                let page = ListPage.build(
                    after: after, limit: limit, maxReplyBytes: info.maxReplyBytes, store: state.store,
                    visible: { AccessPolicy.mayView(clientId, owner: $0.owner, readers: $0.readers, writers: $0.writers, isAdmin: isAdmin) },
                    openHandles: { state.handleCount(regionId: $0) })
                reply(id, .list(entries: page.entries, more: page.more, cursor: wantsCursor ? page.cursor : nil))

            case .open(let name, let rights):
                try NameRules.validateRegionName(name)
                guard let record = state.store.record(named: name) else {
                    throw PMUError(.unknownRegion, "no region named \(NameRules.quoted(name)); create it first")
                }
                guard AccessPolicy.may(clientId, open: rights, owner: record.owner, readers: record.readers, writers: record.writers, isAdmin: isAdmin) else {
                    throw PMUError(.accessDenied, "client '\(clientId)' may not open region \(NameRules.quoted(name)) for \(rights); its owner or an admin can grant it")
                }
                if rights.contains(.write) {
                    try takeWriterRole(id, record: record, rights: rights) { _ throws(PMUError) in true }
                } else {
                    reply(id, try Session.grant(state: state, connection: connection, memory: memory, record: record, rights: rights, epoch: 0))
                }

            case .openResume(let name, let epoch, let token):
                try NameRules.validateRegionName(name)
                guard let record = state.store.record(named: name) else {
                    throw PMUError(.unknownRegion, "no region named \(NameRules.quoted(name)) on this server; a resuming writer must reconnect to the server that holds its region")
                }
                guard AccessPolicy.may(clientId, open: .readWrite, owner: record.owner, readers: record.readers, writers: record.writers, isAdmin: isAdmin) else {
                    throw PMUError(.accessDenied, "client '\(clientId)' may not open region \(NameRules.quoted(name)) for writing; its owner or an admin can grant it")
                }
                // The compare-and-set that makes a resume safe: decided under the catalog lock,
                // against the durable epoch, so no OPEN read-write can fall between check and bump.
                let grants = state.resumeGrants
                try takeWriterRole(id, record: record, rights: .readWrite, resumeToken: (token, clientId)) { (current: RegionRecord) throws(PMUError) in
                    let again = grants.matches(regionId: current.id, epoch: current.writerEpoch, token: token, clientId: clientId)
                    switch ResumeEpochRule.decide(stored: current.writerEpoch, asked: epoch, lastResumeMatches: again) {
                    case .raise: return true
                    case .grantAgain: return false
                    case .fenced:
                        throw PMUError(.fenced, "region \(NameRules.quoted(name)) has writer epoch \(current.writerEpoch), newer than this writer's \(epoch): another primary opened it for writing meanwhile; this writer must stop")
                    case .refused:
                        throw PMUError(.resumeRefused, "region \(NameRules.quoted(name)) has writer epoch \(current.writerEpoch), older than this writer's \(epoch): this server does not hold the catalog the writer wrote through (another store, or an update was lost); not resuming")
                    }
                }

            case .create(let create):
                try NameRules.validateRegionName(create.name)
                for member in create.readers + create.writers where member != AccessPolicy.anyone {
                    try NameRules.validateClientId(member)
                }
                try state.checkHandleRoom(connection: connection)
                runBlocking(id) { () throws(PMUError) -> Response in
                    // Mirrored: the create with its first writer epoch is in the partner's log
                    // before it is acknowledged (a replica must not lose an acknowledged region).
                    let mirror = try CatalogChangeMirror(state)
                    let record = try state.store.create(create, owner: clientId)
                    let updated = try state.store.update(id: record.id, { (current: inout RegionRecord) throws(PMUError) in
                        current.writerEpoch += 1
                    }, committed: mirror.committed)
                    try mirror.wait()
                    return try Session.grant(state: state, connection: connection, memory: memory, record: updated, rights: .readWrite, epoch: updated.writerEpoch)
                }
                logger.debug("create", metadata: ["region": "\(create.name)", "size": "\(create.sizeBytes)", "request": "\(id)"])

            case .delete(let name):
                runBlocking(id) { () throws(PMUError) -> Response in
                    let mirror = try CatalogChangeMirror(state)
                    let record = try state.store.delete(named: name, authorize: { (record: RegionRecord) throws(PMUError) in
                        guard AccessPolicy.mayDelete(clientId, owner: record.owner, isAdmin: isAdmin) else {
                            throw PMUError(.accessDenied, "only the owner ('\(record.owner)') or an admin may delete region \(NameRules.quoted(name))")
                        }
                        // Revoked before the delete commits: no key outlives its region.
                        state.revokeAll(regionId: record.id)
                    }, committed: mirror.committed)
                    // The region's writes need no replay any more (a trim still stops short of
                    // the delete's record until the partner has it).
                    defer { state.pair?.sender?.forget(regionId: record.id) }
                    state.resumeGrants.forget(regionId: record.id)
                    try mirror.wait()
                    return .ok
                }

            case .serverInfo:
                // Configuration and client ids are an operator's view, as PAIR_STATUS is.
                guard isAdmin else { throw PMUError(.accessDenied, "server info is for admins (--admin); client '\(clientId)' is not one") }
                reply(id, .data(ByteBuffer(string: ServerInfo(state: state).json)))

            case .mirrorOpen, .mirrorAppend, .mirrorTrim, .mirrorCatalog, .pairStatus, .pairTakeover, .pairGiveback, .replicaCatalog, .replicaRead:
                try pairRequest(request, id: id, clientId: clientId, isAdmin: isAdmin)

            case .formBegin, .formData, .formCommit, .formRebuild:
                try formRequest(request, id: id, clientId: clientId, isAdmin: isAdmin)
            }
        } catch {
            reply(id, .error(error))
        }
    }

    /// OPEN for writing and OPEN_RESUME: bumps the region's writer epoch durably (fencing, which
    /// syncs the catalog) after `check` accepted the current record, and grants `rights` (those
    /// the access check allowed: a write-only open stays write-only) at the new epoch.
    /// `check` runs under the catalog lock on the current record: it throws to refuse, returns
    /// true to raise the writer epoch (every OPEN read-write, a resume at its epoch) or false to
    /// grant at the stored epoch (a resume retried after its reply was lost). A resume's token is
    /// remembered once its raise is committed.
    private func takeWriterRole(_ id: UInt64, record: RegionRecord, rights: Rights, resumeToken: (token: [UInt8]?, clientId: String)? = nil, check: @escaping @Sendable (RegionRecord) throws(PMUError) -> Bool) throws(PMUError) {
        let (state, connection, memory) = (state, info.id, info.memory)
        try state.checkHandleRoom(connection: connection)
        runBlocking(id) { () throws(PMUError) -> Response in
            // Mirrored: the raised epoch is in the partner's log before the writer gets it, so
            // that a takeover's copy resumes this writer (OPEN_RESUME compares epochs).
            let mirror = try CatalogChangeMirror(state)
            var raised = false
            let updated = try state.store.update(id: record.id, { (current: inout RegionRecord) throws(PMUError) in
                raised = try check(current)
                if raised { current.writerEpoch += 1 }
            }, committed: mirror.committed)
            if raised, let resumeToken {
                state.resumeGrants.record(regionId: updated.id, epoch: updated.writerEpoch, token: resumeToken.token, clientId: resumeToken.clientId)
            }
            // Fence older writers now, even if mapping or granting fails below.
            state.raiseEpoch(regionId: updated.id, to: updated.writerEpoch, kind: updated.kind)
            try mirror.wait()
            return try Session.grant(state: state, connection: connection, memory: memory, record: updated, rights: rights, epoch: updated.writerEpoch)
        }
    }

    /// GRANT, or on a verbs connection GRANT_RDMA after registering the region's memory for this
    /// key (read-only memory region for read handles). A refused registration revokes the key.
    private static func grant(state: ServerState, connection: UInt64, memory: (any MemoryRegistrar)?, record: RegionRecord, rights: Rights, epoch: UInt64) throws(PMUError) -> Response {
        let mapping = try state.store.mapping(id: record.id)
        let region = ServedRegion(mapping: mapping, kind: record.kind)
        let key = try state.grant(connection: connection, record: record, rights: rights, epoch: epoch, region: region)
        let grant = RegionGrant(key: key, regionId: record.id, sizeBytes: record.sizeBytes, rights: rights, kind: record.kind, epoch: epoch)
        guard let memory else { return .grant(grant) }
        do throws(PMUError) {
            let remote = try memory.register(
                key: key, regionId: record.id, epoch: epoch, writable: rights.contains(.write),
                memory: GrantedMemory(base: mapping.base, lengthBytes: Int(mapping.sizeBytes), owner: mapping))
            if let raced = state.stillGranted(key: key, connection: connection, regionId: record.id, epoch: epoch, writable: rights.contains(.write), kind: record.kind) {
                throw raced
            }
            return .remoteGrant(grant, remote)
        } catch {
            try? state.close(key: key, connection: connection)
            throw error
        }
    }
}

extension Request {
    /// Whether the request changes regions or the catalog, or makes bytes durable: what a failover
    /// primary's write gate must refuse once it is fenced or its lease may lapse.
    var changesStoredState: Bool {
        switch self {
        // OPEN_RESUME too: a resume is for writing, so a server that would refuse the writes must
        // not take the epoch (the writer moves on to the serving primary instead).
        case .write, .persist, .create, .delete, .openResume, .formBegin, .formData, .formCommit, .formRebuild: true
        default: false
        }
    }
}
