import NIOCore
import PMUCore

/// A client that rides out a failover (issue 13): when its connection dies, or the server says
/// it is not (or no longer) the serving primary, it reconnects with exponential backoff to the
/// same address (the service address the new primary takes) or to the next of a list of
/// endpoints (issue 12's pair, whose takeover serves at another address), authenticates again,
/// re-opens every region it had open with the same rights, and retries the operation.
///
/// What a retry means: WRITE and PERSIST carry no request id the server remembers across
/// connections, so an operation whose acknowledgement was lost is sent again. A write of the
/// same bytes at the same offset is idempotent, so a caller that owns its byte ranges (as a
/// checkpoint writer does) sees exactly-once effects; two writers racing on the same bytes must
/// not rely on retries. Re-opening a checkpoint region `.readWrite` takes the writer role with a
/// new epoch, so an earlier writer elsewhere is fenced, as it would be by any reopen; a checkpoint
/// writer that should carry on as the same primary uses `ResumingCheckpointPrimary`, which
/// resumes only where that is safe (docs/ARCHITECTURE.md section 12a).
///
/// Bounds: each failed operation retries for at most `policy.deadline`; backoff grows from
/// `initialBackoff` to `maxBackoff`. Errors that a new connection cannot cure (bad arguments,
/// access denied, FENCED, ...) are thrown at once.
public actor ReconnectingClient {
    public struct Policy: Sendable {
        public var endpoints: [Endpoint]
        public var initialBackoff: Duration = .milliseconds(10)
        public var maxBackoff: Duration = .milliseconds(500)
        public var deadline: Duration = .seconds(15)
        /// Connect + authenticate limit of one attempt while reconnecting (the configuration's
        /// `connectTimeout` is used for the first connection). Short, because a SYN sent while
        /// the service address moves goes to the old host's MAC and is retransmitted only after
        /// TCP's initial 1 s timeout; a fresh attempt after the gratuitous ARP gets through at once.
        public var attemptTimeout: Duration = .milliseconds(500)

        public init(endpoints: [Endpoint]) { self.endpoints = endpoints }
    }

    public let policy: Policy
    private var configuration: ClientConfiguration
    private var client: PMUClient?
    private var endpointIndex = 0
    private var regions: [String: (rights: Rights, handle: RegionHandle?)] = [:]
    /// Connections made after the first (a count for tests and status lines).
    public private(set) var reconnects = 0
    /// The last error that caused a reconnect.
    public private(set) var lastReconnectReason: PMUError?

    /// `configuration.endpoint` is tried first, then `endpoints` in turn (when given).
    public init(_ configuration: ClientConfiguration, endpoints: [Endpoint] = []) {
        self.configuration = configuration
        var policy = Policy(endpoints: [configuration.endpoint] + endpoints.filter { $0 != configuration.endpoint })
        if policy.endpoints.isEmpty { policy.endpoints = [configuration.endpoint] }
        self.policy = policy
    }

    public init(_ configuration: ClientConfiguration, policy: Policy) {
        self.configuration = configuration
        self.policy = policy.endpoints.isEmpty ? Policy(endpoints: [configuration.endpoint]) : policy
    }

    public var endpoint: Endpoint { policy.endpoints[endpointIndex] }

    /// Errors a new connection (or the new primary) may cure. Not IO_ERROR: after a failed msync or
    /// fdatasync Linux may mark the dirty pages clean, so a retried PERSIST could succeed without
    /// the bytes ever reaching the disk; an I/O error on PERSIST is final and goes to the caller.
    static func isRetryable(_ error: PMUError) -> Bool {
        switch error.code {
        case .connectionClosed, .timedOut, .notPrimary, .leaseLapsed, .shuttingDown, .serverUnavailable: true
        default: false
        }
    }

    // MARK: regions

    public func create(_ name: String, sizeBytes: UInt64, kind: RegionKind = .raw) async throws(PMUError) {
        let handle = try await retrying { client throws(PMUError) in try await client.createRegion(name, sizeBytes: sizeBytes, kind: kind) }
        regions[name] = (.readWrite, handle)
    }

    public func open(_ name: String, rights: Rights = .read) async throws(PMUError) {
        regions[name] = (rights, nil)
        _ = try await handle(name)
    }

    public func write(_ name: String, at offset: UInt64, _ bytes: [UInt8]) async throws(PMUError) {
        try await withRegion(name) { client, handle throws(PMUError) in try await client.write(handle, at: offset, bytes) }
    }

    public func read(_ name: String, at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        try await withRegion(name) { client, handle throws(PMUError) in try await client.read(handle, at: offset, length: length) }
    }

    public func persist(_ name: String, offset: UInt64 = 0, length: UInt64 = 0) async throws(PMUError) {
        try await withRegion(name) { client, handle throws(PMUError) in try await client.persist(handle, offset: offset, length: length) }
    }

    /// Moves to the next endpoint (a server that refused in a way only another one can cure).
    func advanceEndpoint() {
        endpointIndex = (endpointIndex + 1) % policy.endpoints.count
    }

    public func disconnect() async {
        await client?.disconnect()
        client = nil
    }

    // MARK: retry

    private func handle(_ name: String) async throws(PMUError) -> RegionHandle {
        guard let entry = regions[name] else {
            throw PMUError(.invalidArgument, "region \(NameRules.quoted(name)) was not opened on this client; call open first")
        }
        if let handle = entry.handle { return handle }
        let handle = try await retrying { client throws(PMUError) in try await client.openRegion(name, rights: entry.rights) }
        regions[name] = (entry.rights, handle)
        return handle
    }

    private func withRegion<T: Sendable>(_ name: String, _ body: (PMUClient, RegionHandle) async throws(PMUError) -> T) async throws(PMUError) -> T {
        let started = ContinuousClock.now
        var backoff = policy.initialBackoff
        while true {
            let handle = try await handle(name)
            let connection = try await connected()
            do throws(PMUError) {
                return try await body(connection, handle)
            } catch {
                guard Self.isRetryable(error), ContinuousClock.now - started < policy.deadline else { throw error }
                await drop(because: error)
                try await pause(&backoff)
            }
        }
    }

    func retrying<T: Sendable>(_ body: (PMUClient) async throws(PMUError) -> T) async throws(PMUError) -> T {
        let started = ContinuousClock.now
        var backoff = policy.initialBackoff
        while true {
            let connection = try await connected()
            do throws(PMUError) {
                return try await body(connection)
            } catch {
                guard Self.isRetryable(error), ContinuousClock.now - started < policy.deadline else { throw error }
                await drop(because: error)
                try await pause(&backoff)
            }
        }
    }

    /// The connection, made (or made again) with backoff across the endpoints until the deadline.
    func connected() async throws(PMUError) -> PMUClient {
        if let client { return client }
        let started = ContinuousClock.now
        var backoff = policy.initialBackoff
        var last: PMUError?
        while ContinuousClock.now - started < policy.deadline {
            var attempt = configuration
            attempt.endpoint = policy.endpoints[endpointIndex]
            if lastReconnectReason != nil || last != nil { attempt.connectTimeout = min(configuration.connectTimeout, policy.attemptTimeout) }
            do throws(PMUError) {
                let fresh = try await PMUClient.connect(attempt)
                if lastReconnectReason != nil { reconnects += 1 }
                client = fresh
                // Handles of the old connection are gone with it: reopened lazily by handle(_:).
                return fresh
            } catch {
                guard Self.isRetryable(error) || error.code == .connectionClosed else { throw error }
                last = error
                endpointIndex = (endpointIndex + 1) % policy.endpoints.count
                try await pause(&backoff)
            }
        }
        throw PMUError(.serverUnavailable, "no server answered at \(policy.endpoints.map { "\($0)" }.joined(separator: ", ")) within \(policy.deadline): \(last?.description ?? "")")
    }

    func drop(because error: PMUError) async {
        lastReconnectReason = error
        await client?.disconnect()
        client = nil
        for name in regions.keys { regions[name]?.handle = nil }
        // NOT_PRIMARY: this endpoint is a monitor or fenced; try the next one first.
        if error.code == .notPrimary { endpointIndex = (endpointIndex + 1) % policy.endpoints.count }
    }

    func pause(_ backoff: inout Duration) async throws(PMUError) {
        do { try await Task.sleep(for: backoff) } catch { throw PMUError(.cancelled, "the calling task was cancelled while reconnecting") }
        backoff = min(backoff * 2, policy.maxBackoff)
    }
}
