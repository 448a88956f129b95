import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore
import PMUTransport

/// How a client reaches and authenticates to a pmu-server.
public struct ClientConfiguration: Sendable {
    public var endpoint: Endpoint
    public var clientId: String
    public var secret: [UInt8]
    /// Bytes per WRITE/READ request when a transfer is split (at most Limits.maxIOBytes).
    public var chunkBytes: Int = 4 * 1024 * 1024
    /// Chunks of one transfer in flight at once: enough to keep the pipe full, bounded so a large
    /// transfer never queues unbounded memory.
    public var chunksInFlight: Int = 4
    /// tcp, rdma (verbs: control by SEND/RECV, data by one-sided RDMA WRITE/READ) or auto (rdma
    /// when this machine has an RDMA device with an active port, else tcp). For rdma the
    /// endpoint's host must be an IPv4 address the RDMA device reaches.
    public var transport: TransportChoice = .tcp
    /// Connecting and authenticating together must finish within this, or `connect` throws
    /// TIMED_OUT (a server that accepts but never answers does not hang a primary).
    public var connectTimeout: Duration = .seconds(10)
    /// A request with no reply after this long throws TIMED_OUT and closes the connection (its
    /// outcome is unknown; reconnect to go on). nil waits forever. Long PERSISTs of large dirty
    /// ranges on slow disks are what might need more.
    public var requestTimeout: Duration? = .seconds(30)
    /// Requests in flight on the connection at once (over verbs also bounded by its 16 credits);
    /// callers beyond it wait their turn, cancellably.
    public var maxPendingRequests: Int = 1024
    /// Over verbs: how the connection's completion thread waits (event, adaptive, busy; see
    /// `RDMAPolling`). Default: PMU_RDMA_POLL, else adaptive (50 µs).
    public var rdmaPolling: RDMAPolling = .default

    var requestLimits: RequestLimits {
        RequestLimits(requestTimeout: requestTimeout, maxPendingRequests: maxPendingRequests)
    }

    public init(endpoint: Endpoint = .default, clientId: String, secret: [UInt8]) {
        self.endpoint = endpoint
        self.clientId = clientId
        self.secret = secret
    }
}

/// The PMU client library: one authenticated connection to one pmu-server.
///
/// Every method throws `PMUError`, carrying the server's code and message, or CONNECTION_CLOSED.
/// Calls may be made concurrently from many tasks; they are pipelined on the one connection.
///
/// Durability: a write is durable against an OS crash or power loss once a `persist` covering it
/// has returned. Before that it is in the server's page cache: it survives the server process
/// being killed (kill -9), but not the server machine losing power.
public final class PMUClient: Sendable {
    public let configuration: ClientConfiguration
    let transport: any ClientTransport
    /// The same transport when it moves region data one-sided (verbs).
    private let oneSided: (any OneSidedTransport)?
    /// "tcp" or "rdma (rxe0 port 1)": what this client ended up using.
    public let transportDescription: String
    /// Which transport `connect` chose and why, e.g. "tcp (no RDMA device ...)", for the one log
    /// line `--transport auto` owes its user.
    public let transportReason: String
    /// Run latency-sensitive loops under `withTaskExecutorPreference(client.taskExecutor)` to avoid
    /// a thread hop per request: on TCP the connection's event loop (EventLoopTaskExecutor), over
    /// verbs the completion thread (CompletionThreadExecutor). nil for other transports.
    public let taskExecutor: (any TaskExecutor)?

    private init(configuration: ClientConfiguration, transport: any ClientTransport, reason: String) {
        self.transportReason = reason
        self.configuration = configuration
        self.transport = transport
        self.oneSided = transport.oneSided
        self.transportDescription = transport.transportDescription
        self.taskExecutor = transport.taskExecutor
    }

    /// Connects and authenticates (challenge-response; the secret never crosses the wire, and the
    /// server proves it knows the secret too).
    public static func connect(
        _ configuration: ClientConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(PMUError) -> PMUClient {
        try NameRules.validateClientId(configuration.clientId)
        guard (1...Limits.maxIOBytes).contains(configuration.chunkBytes), configuration.chunksInFlight >= 1 else {
            throw PMUError(.invalidArgument, "chunkBytes must be 1...\(Limits.maxIOBytes) and chunksInFlight at least 1; got \(configuration.chunkBytes) and \(configuration.chunksInFlight)")
        }
        if configuration.connectTimeout <= .zero {
            throw PMUError(.invalidArgument, "connectTimeout must be positive; got \(configuration.connectTimeout)")
        }
        try configuration.requestLimits.validate()
        var transport: (any ClientTransport)? = nil
        let resolved = try configuration.transport.resolve()
        var reason = resolved.reason
        if resolved.useRDMA {
            do {
                transport = try await RDMAClientTransport.connect(
                    to: configuration.endpoint, bounceBuffers: configuration.chunksInFlight, bounceBytes: configuration.chunkBytes,
                    connectTimeout: configuration.connectTimeout, limits: configuration.requestLimits, polling: configuration.rdmaPolling)
            } catch {
                // `auto` tries TCP when the server cannot be reached over verbs.
                if configuration.transport != .auto { throw error }
                reason = "tcp (verbs connection to \(configuration.endpoint) failed: \(Self.pmuError(error).message))"
            }
        }
        if transport == nil {
            do {
                transport = try await TCPClientTransport.connect(
                    to: configuration.endpoint, group: group, connectTimeout: configuration.connectTimeout, limits: configuration.requestLimits)
            } catch {
                throw Self.pmuError(error)
            }
        }
        guard let transport else { throw PMUError(.internalError, "no transport") }
        let client = PMUClient(configuration: configuration, transport: transport, reason: reason)
        do throws(PMUError) {
            try await withDeadline(configuration.connectTimeout, "authenticating to pmu-server at \(configuration.endpoint)") { () async throws(PMUError) in
                try await client.authenticate()
            }
        } catch {
            await transport.close()
            throw error
        }
        return client
    }

    private func authenticate() async throws(PMUError) {
        let clientNonce = Authentication.randomNonce()
        let id = configuration.clientId
        guard case .challenge(let serverNonce) = try await call(.hello(clientId: id, clientNonce: clientNonce)) else {
            throw PMUError(.protocolViolation, "server did not answer HELLO with a challenge")
        }
        let proof = Authentication.clientProof(secret: configuration.secret, clientId: id, clientNonce: clientNonce, serverNonce: serverNonce)
        guard case .authenticated(let serverProof) = try await call(.authenticate(proof: proof)) else {
            throw PMUError(.protocolViolation, "server did not answer AUTHENTICATE")
        }
        let expected = Authentication.serverProof(secret: configuration.secret, clientId: id, clientNonce: clientNonce, serverNonce: serverNonce)
        guard Authentication.proofsMatch(serverProof, expected) else {
            throw PMUError(.authenticationFailed, "the server at \(configuration.endpoint) could not prove it knows client '\(id)'s secret; not trusting it")
        }
    }

    public func disconnect() async {
        await transport.close()
    }

    // MARK: Regions

    public func createRegion(
        _ name: String, sizeBytes: UInt64, kind: RegionKind = .raw, readers: [String] = [], writers: [String] = []
    ) async throws(PMUError) -> RegionHandle {
        try NameRules.validateRegionName(name)
        let request = CreateRegion(name: name, sizeBytes: sizeBytes, kind: kind, readers: readers, writers: writers)
        let (grant, remote) = try await expectGrant(.create(request))
        return RegionHandle(name: name, grant: grant, remote: remote)
    }

    /// Opens an existing region. `.readWrite` takes the writer role: for checkpoint regions, any
    /// earlier writer's handles are fenced from then on.
    public func openRegion(_ name: String, rights: Rights = .read) async throws(PMUError) -> RegionHandle {
        try NameRules.validateRegionName(name)
        let (grant, remote) = try await expectGrant(.open(name: name, rights: rights))
        return RegionHandle(name: name, grant: grant, remote: remote)
    }

    /// Takes the writer role back after a reconnect (OPEN_RESUME): granted only if the region's
    /// writer epoch is still `epoch`, at `epoch` + 1; FENCED if another writer opened it since.
    /// Pass the same `token` (`Limits.resumeTokenBytes` random bytes) on every retry of one resume:
    /// if an earlier try's reply was lost after the server raised the epoch, the retry is granted
    /// at `epoch` + 1 again instead of FENCED (by the same server process only).
    public func resumeRegion(_ name: String, epoch: UInt64, token: [UInt8]? = nil) async throws(PMUError) -> RegionHandle {
        try NameRules.validateRegionName(name)
        if let token, token.count != Limits.resumeTokenBytes {
            throw PMUError(.invalidArgument, "a resume token is \(Limits.resumeTokenBytes) bytes, not \(token.count)")
        }
        let (grant, remote) = try await expectGrant(.openResume(name: name, epoch: epoch, token: token))
        return RegionHandle(name: name, grant: grant, remote: remote)
    }

    public func close(_ handle: RegionHandle) async throws(PMUError) {
        try await expectOK(.close(key: handle.grant.key))
    }

    public func delete(_ name: String) async throws(PMUError) {
        try await expectOK(.delete(name: name))
    }

    public func stat(_ name: String) async throws(PMUError) -> RegionInfo {
        guard case .info(let info) = try await call(.stat(name: name)) else { throw unexpected("STAT") }
        return info
    }

    /// One LIST page: regions this client may see with names strictly after `after` (bytewise),
    /// at most `limit`, and the cursor to continue from (nil when nothing follows). A page may be
    /// empty although more follow: the server examines a bounded number of names per request.
    public func listPage(after: String = "", limit: Int = Limits.maxListEntries) async throws(PMUError) -> (entries: [RegionInfo], next: String?) {
        let request = Request.list(after: after, limit: UInt32(clamping: max(0, limit)), wantsCursor: true)
        guard case .list(var entries, var more, var cursor) = try await call(request) else { throw unexpected("LIST") }
        let cap = limit <= 0 || limit > Limits.maxListEntries ? Limits.maxListEntries : limit
        if entries.count > cap {
            // An older server reads the cursor flag as a limit above 1024 and sends up to 1024.
            entries = Array(entries.prefix(cap))
            more = true
            cursor = entries.last?.name
        }
        // An older server sends no cursor: it never answers an empty page while more follow.
        guard more, let next = cursor ?? entries.last?.name else { return (entries, nil) }
        // Names strictly increasing and the cursor not behind them: a server that repeated itself
        // would otherwise keep a paging loop going forever.
        var previous = after
        for entry in entries {
            guard SortedNameIndex.precedes(previous, entry.name) else {
                throw PMUError(.protocolViolation, "LIST reply is out of order: \(NameRules.quoted(entry.name)) after \(NameRules.quoted(previous))")
            }
            previous = entry.name
        }
        guard SortedNameIndex.precedes(after, next), !SortedNameIndex.precedes(next, previous) else {
            throw PMUError(.protocolViolation, "LIST reply's cursor \(NameRules.quoted(next)) does not advance past \(NameRules.quoted(previous))")
        }
        return (entries, next)
    }

    /// Regions this client may see, sorted by name, after `after`: pages through LIST (the server
    /// bounds each page's work; its cursor carries a client that sees few regions past the rest).
    /// With a `limit`, the first `limit` of them. Without, all of them, bounded: more than
    /// `maxListed` regions or `maxListPages` pages fail with `INVALID_ARGUMENT`.
    public func list(after: String = "", limit: Int? = nil) async throws(PMUError) -> [RegionInfo] {
        let bound = limit ?? Self.maxListed
        var all: [RegionInfo] = []
        var cursor = after
        for _ in 0..<Self.maxListPages {
            let page = try await listPage(after: cursor, limit: min(max(bound - all.count, 1), Limits.maxListEntries))
            all += page.entries
            if let limit, all.count >= limit { return Array(all.prefix(limit)) }
            guard all.count <= bound else {
                throw PMUError(.invalidArgument, "the server lists more than \(bound) regions; page with listPage(after:) or give a limit")
            }
            guard let next = page.next else { return all }
            cursor = next
        }
        throw PMUError(.invalidArgument, "LIST did not finish within \(Self.maxListPages) pages; page with listPage(after:) or give a limit")
    }

    /// Bounds on `list()`: 20 times the default --max-regions, and enough pages of 4,096 examined
    /// names for 400 million regions.
    public static let maxListed = 1_000_000
    public static let maxListPages = 100_000

    // MARK: Data

    /// Writes `bytes` at `offset`, split into chunks sent concurrently. Returns when the server has
    /// placed every byte in the region (visible to readers, not yet durable: see `persist`).
    public func write(_ handle: RegionHandle, at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        let total = bytes.readableBytes
        try checkEnd(handle, offset: offset, length: total)
        if let oneSided, let remote = handle.remote {
            return try await writeOneSided(oneSided, handle, remote, at: offset, bytes)
        }
        if total <= configuration.chunkBytes {
            return try await expectOK(.write(key: handle.grant.key, offset: offset, data: bytes))
        }
        let chunk = configuration.chunkBytes
        try await forEachChunk(total: total) { (start: Int) async throws(PMUError) in
            let slice = bytes.getSlice(at: bytes.readerIndex + start, length: min(chunk, total - start))!
            try await self.expectOK(.write(key: handle.grant.key, offset: offset + UInt64(start), data: slice))
        }
    }

    public func write(_ handle: RegionHandle, at offset: UInt64, _ bytes: [UInt8]) async throws(PMUError) {
        try await write(handle, at: offset, ByteBuffer(bytes: bytes))
    }

    /// Reads `length` bytes at `offset`, split into chunks read concurrently.
    public func read(_ handle: RegionHandle, at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        guard length >= 0 else { throw PMUError(.invalidArgument, "read length \(length) is negative") }
        try checkEnd(handle, offset: offset, length: length)
        if let oneSided, let remote = handle.remote {
            return try await readOneSided(oneSided, handle, remote, at: offset, length: length)
        }
        if length <= configuration.chunkBytes {
            return try await readChunk(handle, at: offset, length: length)
        }
        let chunk = configuration.chunkBytes
        let result = ResultBuffer(length: length)
        try await forEachChunk(total: length) { (start: Int) async throws(PMUError) in
            let part = try await self.readChunk(handle, at: offset + UInt64(start), length: min(chunk, length - start))
            result.set(part, at: start)
        }
        return result.take()
    }

    /// Makes [offset, offset+length) durable; `length` 0 means to the end of the region. When it
    /// returns, every write to that range that returned before this call was made is on stable storage.
    public func persist(_ handle: RegionHandle, offset: UInt64 = 0, length: UInt64 = 0) async throws(PMUError) {
        try await expectOK(.persist(key: handle.grant.key, offset: offset, length: length))
    }

    /// Writes `bytes` at `offset` and makes them durable. For a write that fits one request the
    /// WRITE and the PERSIST travel together (one round trip); larger ones are written in chunks,
    /// then persisted. When it returns the bytes are on stable storage.
    public func writeDurably(_ handle: RegionHandle, at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        let length = UInt64(bytes.readableBytes)
        guard length > 0 else { return }
        if let remote = handle.remote, let oneSided {
            // One-sided: the PERSIST's SEND is posted right behind the RDMA WRITE (RC delivers it
            // after the write's data is placed); larger writes go in chunks, then PERSIST.
            guard bytes.readableBytes <= min(configuration.chunkBytes, oneSided.maxTransferBytes) else {
                try await write(handle, at: offset, bytes)
                return try await persist(handle, offset: offset, length: length)
            }
            try checkOneSided(handle, offset: offset, length: bytes.readableBytes, write: true)
            let response: Response
            do {
                response = try await oneSided.writeThenSend(remote, offset: offset, bytes, then: .persist(key: handle.grant.key, offset: offset, length: length))
            } catch {
                throw Self.fencedIfTakenOver(error, handle)
            }
            if case .error(let error) = response { throw error }
            guard case .ok = response else { throw unexpected("PERSIST") }
            return
        }
        guard bytes.readableBytes <= configuration.chunkBytes else {
            try await write(handle, at: offset, bytes)
            return try await persist(handle, offset: offset, length: length)
        }
        let responses: [Response]
        do {
            responses = try await transport.sendPipelined([
                .write(key: handle.grant.key, offset: offset, data: bytes),
                .persist(key: handle.grant.key, offset: offset, length: length),
            ])
        } catch {
            throw Self.pmuError(error)
        }
        for response in responses {
            if case .error(let error) = response { throw error }
            guard case .ok = response else { throw unexpected("WRITE+PERSIST") }
        }
    }

    /// A range whose end does not fit 64 bits is refused before chunk offsets (offset + start)
    /// are computed from it; every other bounds question is the server's (OUT_OF_BOUNDS there).
    private func checkEnd(_ handle: RegionHandle, offset: UInt64, length: Int) throws(PMUError) {
        guard offset.addingReportingOverflow(UInt64(length)).overflow == false else {
            throw PMUError(.outOfBounds, "range [\(offset), \(offset) + \(length)) is outside region \(NameRules.quoted(handle.name)) of \(handle.sizeBytes) bytes (its end is past 2^64)")
        }
    }

    // MARK: One-sided (verbs)

    /// Checks what the server would check for a WRITE/READ frame, so a mistake gets the same
    /// error as over TCP instead of a remote access error that kills the connection.
    private func checkOneSided(_ handle: RegionHandle, offset: UInt64, length: Int, write: Bool) throws(PMUError) {
        if write, !handle.rights.contains(.write) {
            throw PMUError(.permissionDenied, "handle for region \(NameRules.quoted(handle.name)) was opened read-only")
        }
        guard offset <= handle.sizeBytes, UInt64(length) <= handle.sizeBytes - offset else {
            throw PMUError(.outOfBounds, "\(length) bytes at offset \(offset) are outside region \(NameRules.quoted(handle.name)) of \(handle.sizeBytes) bytes")
        }
    }

    private func writeOneSided(_ oneSided: any OneSidedTransport, _ handle: RegionHandle, _ remote: RemoteAccess, at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        let total = bytes.readableBytes
        try checkOneSided(handle, offset: offset, length: total, write: true)
        let chunk = min(configuration.chunkBytes, oneSided.maxTransferBytes)
        do {
            if total <= chunk { return try await oneSided.write(remote, offset: offset, bytes) }
            try await forEachChunk(total: total, chunk: chunk) { (start: Int) async throws(PMUError) in
                let slice = bytes.getSlice(at: bytes.readerIndex + start, length: min(chunk, total - start))!
                try await oneSided.write(remote, offset: offset + UInt64(start), slice)
            }
        } catch {
            throw Self.fencedIfTakenOver(error, handle)
        }
    }

    /// Over verbs a fenced writer is not told FENCED: the server deregistered its memory region
    /// at the takeover, so its next one-sided write fails with a remote access error. For a
    /// read-write handle of a checkpoint region that is what such an error means (unless this
    /// client closed the handle itself), so it is reported as FENCED and the checkpoint writer
    /// stops exactly as over TCP.
    static func fencedIfTakenOver(_ error: PMUError, _ handle: RegionHandle) -> PMUError {
        guard error.code == .remoteAccess, handle.kind != .raw, handle.rights.contains(.write) else { return error }
        return PMUError(.fenced, "region \(NameRules.quoted(handle.name)): the server revoked this writer's remote key (another primary opened the region for writing); this writer must stop. (\(error.message))")
    }

    private func readOneSided(_ oneSided: any OneSidedTransport, _ handle: RegionHandle, _ remote: RemoteAccess, at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        try checkOneSided(handle, offset: offset, length: length, write: false)
        let chunk = min(configuration.chunkBytes, oneSided.maxTransferBytes)
        @Sendable func readExactly(_ at: UInt64, _ count: Int) async throws(PMUError) -> ByteBuffer {
            let part = try await oneSided.read(remote, offset: at, length: count)
            guard part.readableBytes == count else {
                throw PMUError(.protocolViolation, "one-sided read returned \(part.readableBytes) bytes for \(count)")
            }
            return part
        }
        if length <= chunk { return try await readExactly(offset, length) }
        let result = ResultBuffer(length: length)
        try await forEachChunk(total: length, chunk: chunk) { (start: Int) async throws(PMUError) in
            result.set(try await readExactly(offset + UInt64(start), min(chunk, length - start)), at: start)
        }
        return result.take()
    }

    // MARK: Plumbing

    private func readChunk(_ handle: RegionHandle, at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        guard case .data(let data) = try await call(.read(key: handle.grant.key, offset: offset, length: UInt32(length))) else {
            throw unexpected("READ")
        }
        guard data.readableBytes == length else {
            throw PMUError(.protocolViolation, "server returned \(data.readableBytes) bytes for a read of \(length)")
        }
        return data
    }

    /// Runs `body` for each chunk start offset, at most `chunksInFlight` at a time; the first error wins.
    private func forEachChunk(total: Int, chunk: Int? = nil, _ body: @escaping @Sendable (Int) async throws(PMUError) -> Void) async throws(PMUError) {
        let chunk = chunk ?? configuration.chunkBytes
        let window = max(1, configuration.chunksInFlight)
        let starts = stride(from: 0, to: total, by: chunk).map { $0 }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = 0
                while next < min(window, starts.count) {
                    let start = starts[next]
                    group.addTask { try await body(start) }
                    next += 1
                }
                while try await group.next() != nil {
                    if next < starts.count {
                        let start = starts[next]
                        group.addTask { try await body(start) }
                        next += 1
                    }
                }
            }
        } catch {
            throw Self.pmuError(error)
        }
    }

    func call(_ request: Request) async throws(PMUError) -> Response {
        let response: Response
        do {
            response = try await transport.send(request)
        } catch {
            throw Self.pmuError(error)
        }
        if case .error(let error) = response { throw error }
        return response
    }

    private func expectOK(_ request: Request) async throws(PMUError) {
        guard case .ok = try await call(request) else { throw unexpected("\(request.opcode)") }
    }

    private func expectGrant(_ request: Request) async throws(PMUError) -> (RegionGrant, RemoteAccess?) {
        switch try await call(request) {
        case .grant(let grant): return (grant, nil)
        case .remoteGrant(let grant, let remote): return (grant, remote)
        default: throw unexpected("\(request.opcode)")
        }
    }

    private func unexpected(_ what: String) -> PMUError {
        PMUError(.protocolViolation, "unexpected reply type to \(what)")
    }

    static func pmuError(_ error: any Error) -> PMUError {
        if let error = error as? PMUError { return error }
        if error is CancellationError { return PMUError(.cancelled, "the calling task was cancelled") }
        return PMUError(.connectionClosed, "\(error)")
    }
}

/// Runs `body`, cancelling it and throwing TIMED_OUT if it has not finished after `timeout`.
/// For once-per-connection steps (the handshake); requests have the transport's own deadlines,
/// which cost a task group less per call.
func withDeadline(_ timeout: Duration, _ what: String, _ body: @escaping @Sendable () async throws(PMUError) -> Void) async throws(PMUError) {
    do {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { try await body(); return true }
            group.addTask { try await Task.sleep(for: timeout); return false }
            let finished = try await group.next()!
            group.cancelAll()
            if !finished { throw PMUError(.timedOut, "\(what): no answer within \(timeout) (ClientConfiguration.connectTimeout)") }
        }
    } catch {
        throw PMUClient.pmuError(error)
    }
}

/// Assembles concurrently read chunks; each chunk writes a disjoint range.
private final class ResultBuffer: @unchecked Sendable {
    private var buffer: ByteBuffer
    private let lock = NIOLock()

    init(length: Int) {
        // Zeroed, not merely reserved: no byte of uninitialised memory can ever be returned.
        buffer = ByteBuffer(repeating: 0, count: length)
    }

    func set(_ part: ByteBuffer, at index: Int) {
        lock.withLock { _ = buffer.setBuffer(part, at: index) }
    }

    func take() -> ByteBuffer { lock.withLock { buffer } }
}
