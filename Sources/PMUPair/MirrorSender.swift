#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUClient
import PMUCore

/// How an owner reaches its partner.
public struct PartnerConfiguration: Sendable {
    public var endpoint: Endpoint
    public var clientId: String
    public var secret: [UInt8]
    /// Bytes of mirrored writes not yet covered by a PERSIST that the owner lets pile up; a write
    /// beyond it is refused LOG_FULL before it touches the region (backpressure). Keep it well
    /// under the partner's log bound (records add 56 bytes of header, and only whole segments are
    /// reclaimed).
    public var maxUnpersistedBytes: UInt64
    /// What a WRITE does while the partner cannot be reached (`--partner-down`).
    public var partnerDown: PartnerDownPolicy
    /// A mirror channel that has not answered a heartbeat (sent every third of this while idle
    /// or busy) for this long is declared dead, and --partner-down applies (`--partner-timeout`).
    /// A closed connection is noticed at once.
    public var partnerTimeout: Duration

    public init(endpoint: Endpoint, clientId: String, secret: [UInt8], maxUnpersistedBytes: UInt64 = 96 << 20, partnerDown: PartnerDownPolicy = .durable, partnerTimeout: Duration = .seconds(3)) {
        self.endpoint = endpoint
        self.clientId = clientId
        self.secret = secret
        self.maxUnpersistedBytes = maxUnpersistedBytes
        self.partnerDown = partnerDown
        self.partnerTimeout = partnerTimeout
    }
}

/// Degraded mode: the promise "an acknowledged write survives the loss of one machine" is kept
/// either way; `durable` keeps serving at local-flush speed, `refuse` stops writes instead.
public enum PartnerDownPolicy: String, Sendable, CaseIterable {
    /// Each write is made durable here (msync of its range) before it is acknowledged.
    case durable
    /// Writes are refused SERVER_UNAVAILABLE until the partner is back.
    case refuse
}

/// How a write the sender admitted is to be acknowledged.
public enum WriteOutcome: Sendable, Equatable {
    /// In the partner's log: acknowledge now.
    case mirrored
    /// Applied here, but the partner is down (degraded mode): make the range durable here first.
    case localOnly
}

/// The owner's half of write mirroring: every WRITE to the portion is applied to the region and
/// appended to the partner's mirror log, and acknowledged when both are done. PERSIST reports
/// which writes are durable here, and the partner trims its log up to the oldest that is not.
///
/// Ordering: a region's lock is held while a write is applied and given its sequence, so writes
/// to overlapping bytes get sequences in the order they landed; the partner replays by sequence.
/// The sequence is taken after the copy, so a PERSIST whose mark covers a sequence was issued
/// after that write's bytes were in the mapping, and its msync covers them.
///
/// Channels: one connection to the partner per event loop of the server's group, so a session
/// mirrors on its own loop's connection and a mirrored write takes no thread hop on this server
/// (the partner sorts records by sequence at replay, so the order across channels is free).
/// They fail and reconnect together.
public final class MirrorSender: @unchecked Sendable {
    public let configuration: PartnerConfiguration
    public let portion: String
    private let instance: [UInt8]
    private let logger: Logger
    private let lock = NIOLock()
    /// The mirror channels, one per event loop (all or none): `client` is the first.
    private var channels: [(loop: any EventLoop, client: PMUClient)] = []
    private var client: PMUClient? { channels.first?.client }
    private let group: (any EventLoopGroup)?
    private var heartbeat: RepeatedTask?
    /// When the heartbeat in flight was sent (nil: none in flight).
    private var heartbeatSentNanoseconds: UInt64?
    private var lastHeartbeatMilliseconds: UInt64 = 0
    private var failure: PMUError? = PMUError(.serverUnavailable, "not connected to the partner yet")
    private var reconnecting = false
    private var stopped = false
    private var nextSequence: UInt64 = 1
    /// Mirrored writes not yet covered by a PERSIST, per region, in sequence order.
    private var unpersisted: [UInt64: [(sequence: UInt64, offset: UInt64, length: UInt64)]] = [:]
    private var unpersistedBytes: UInt64 = 0
    /// Sequences sent to the partner and not answered yet (writes and catalog changes): a trim
    /// never passes the oldest, since the partner drops a record that arrives already trimmed,
    /// and its replica would then lack it (the trim, on the first channel, can overtake an
    /// append on another channel).
    private var inFlight: Set<UInt64> = []
    private var catalogChanges: UInt64 = 0
    private var trimmedThrough: UInt64 = 0
    private var lastTrimMilliseconds: UInt64 = 0
    private var regionLocks: [UInt64: NIOLock] = [:]
    private var acknowledged: UInt64 = 0
    private var refused: UInt64 = 0
    private var degradedWrites: UInt64 = 0
    private var degradedSinceMilliseconds: UInt64? = nil
    /// The partner took this portion over: this server is a stale owner and accepts no write.
    private var superseded: PMUError? = nil

    /// Makes whole regions durable here (msync), nil meaning every region: the resync.
    private let persistRegions: @Sendable ([UInt64]?) throws(PMUError) -> Void

    /// `group`: the server's event loops, one mirror channel each (nil: one channel on NIO's
    /// singleton group).
    public init(configuration: PartnerConfiguration, portion: String, instance: [UInt8], logger: Logger, group: (any EventLoopGroup)? = nil, persistRegions: @escaping @Sendable ([UInt64]?) throws(PMUError) -> Void) {
        self.configuration = configuration
        self.group = group
        self.portion = portion
        self.instance = instance
        self.logger = logger
        self.persistRegions = persistRegions
    }

    /// Connects and opens the mirror. Errors that retrying cannot fix (wrong credentials, a
    /// partner that is this server, a portion the partner took over or mirrors from another
    /// server) are thrown, for the server to refuse to start; an unreachable partner is retried
    /// in the background, writes being refused until it answers.
    public func start() async throws(PMUError) {
        do throws(PMUError) {
            try await connect()
        } catch where Self.isPermanent(error) {
            throw error
        } catch {
            logger.warning("partner not reachable; mirrored writes are refused until it is", metadata: ["partner": "\(configuration.endpoint)", "error": "\(error)"])
            scheduleReconnect()
        }
    }

    public func stop() async {
        let clients = lock.withLock { () -> [PMUClient] in
            stopped = true
            heartbeat?.cancel()
            heartbeat = nil
            defer { channels = [] }
            return channels.map(\.client)
        }
        for client in clients { await client.disconnect() }
    }

    static func isPermanent(_ error: PMUError) -> Bool {
        [.authenticationFailed, .invalidArgument, .fenced, .regionExists, .accessDenied].contains(error.code)
    }

    private func connect() async throws(PMUError) {
        var clientConfiguration = ClientConfiguration(endpoint: configuration.endpoint, clientId: configuration.clientId, secret: configuration.secret)
        clientConfiguration.connectTimeout = .seconds(5)
        clientConfiguration.requestTimeout = .seconds(10)
        let loops: [any EventLoop] = group.map { Array($0.makeIterator()) } ?? [MultiThreadedEventLoopGroup.singleton.next()]
        var opened: [(loop: any EventLoop, client: PMUClient)] = []
        var highest: UInt64 = 0
        do throws(PMUError) {
            for loop in loops {
                let client: PMUClient
                do throws(PMUError) {
                    client = try await PMUClient.connect(clientConfiguration, group: loop)
                } catch where error.code == .authenticationFailed {
                    throw PMUError(.authenticationFailed, "partner \(configuration.endpoint) refused --partner-client '\(configuration.clientId)': \(error.message). Both servers' secrets files must hold that id with the secret in --partner-secret-file")
                }
                opened.append((loop, client))
                highest = max(highest, try await client.mirrorOpen(portion: portion, instance: instance))
            }
            try await resync(opened[0].client, highest: highest)
        } catch {
            for (_, client) in opened { await client.disconnect() }
            throw error
        }
        lock.withLock {
            channels = opened
            failure = nil
            degradedSinceMilliseconds = nil
            heartbeatSentNanoseconds = nil
            startHeartbeatLocked(on: opened[0].loop)
        }
        logger.info("mirroring to partner", metadata: ["partner": "\(configuration.endpoint)", "portion": "\(portion)", "nextSequence": "\(nextSequence)"])
    }

    /// Before mirroring (again): what the partner's log holds must not be able to overwrite a
    /// newer write at a takeover. Writes acknowledged while the partner was down went only to
    /// this server's file, so a log record older than them for the same bytes would clobber them
    /// at replay. Persist every region with mirrored-but-unpersisted writes, then trim the
    /// partner's log through every sequence used so far: it then holds nothing older than what
    /// comes next. (Writes made while this runs take new sequences and are mirrored.)
    private func resync(_ client: PMUClient, highest: UInt64) async throws(PMUError) {
        let (regions, through, wasDegraded) = lock.withLock { () -> ([UInt64], UInt64, Bool) in
            // Never reuse a sequence the partner's log may still hold.
            nextSequence = max(nextSequence, highest &+ 1)
            return (Array(unpersisted.keys), nextSequence - 1, degradedWrites > 0 || !unpersisted.isEmpty)
        }
        if highest > 0 && !wasDegraded && trimmedThrough == 0 {
            // A fresh start of this owner finds records of its previous run in the partner's log.
            // They are not replayed here (rejoin is not built): after an owner's machine was lost,
            // take over from the partner instead of restarting the owner.
            logger.warning("the partner's mirror log holds untrimmed records of this portion's previous run; they are trimmed now, not replayed (after a machine loss, use pmuctl pair takeover on the partner rather than restarting the owner)", metadata: ["highest": "\(highest)"])
        }
        guard wasDegraded || highest > 0 else { return }
        // A fresh start does not know which of its regions' pages are durable: all of them.
        try persistRegions(wasDegraded ? regions : nil)
        lock.withLock {
            for region in regions {
                for write in unpersisted[region] ?? [] where write.sequence <= through { unpersistedBytes -= write.length }
                unpersisted[region]?.removeAll { $0.sequence <= through }
                if unpersisted[region]?.isEmpty == true { unpersisted[region] = nil }
            }
            trimmedThrough = max(trimmedThrough, through)
        }
        try await client.mirrorTrim(through: through)
        logger.notice("resynced with partner: persisted regions with unmirrored writes and trimmed the partner's log", metadata: ["regions": "\(regions.count)", "through": "\(through)"])
    }

    private func scheduleReconnect() {
        let go = lock.withLock { () -> Bool in
            guard !reconnecting, !stopped else { return false }
            reconnecting = true
            return true
        }
        guard go else { return }
        Task {
            // Once a second until it answers or the server stops: bounded in rate, not in count,
            // because the pair is meant to heal whenever the partner returns.
            while !lock.withLock({ stopped }) {
                try? await Task.sleep(for: .seconds(1))
                do throws(PMUError) {
                    try await connect()
                    break
                } catch {
                    lock.withLock {
                        failure = error
                        if error.code == .fenced { superseded = error }
                    }
                    if Self.isPermanent(error) {
                        logger.error("partner refuses this server's mirror; writes stay refused", metadata: ["error": "\(error)"])
                        break
                    }
                }
            }
            lock.withLock { reconnecting = false }
        }
    }

    private func channelFailed(_ failed: PMUClient, _ error: PMUError) {
        let dropped = lock.withLock { () -> [PMUClient] in
            if error.code == .fenced { superseded = error }
            guard channels.contains(where: { $0.client === failed }) else { return [] }
            defer { channels = [] }
            failure = error
            heartbeat?.cancel()
            heartbeat = nil
            return channels.map(\.client)
        }
        if !dropped.isEmpty {
            logger.warning("mirror channel to partner failed; --partner-down \(configuration.partnerDown.rawValue) applies until it reconnects", metadata: ["error": "\(error)"])
            Task { for client in dropped { await client.disconnect() } }
            scheduleReconnect()
        }
    }

    /// Every third of --partner-timeout: a no-op MIRROR_TRIM (through what is already trimmed)
    /// on the first channel. One still unanswered after the timeout declares the channel dead,
    /// which also covers a partner machine that vanished without closing its connections.
    private func startHeartbeatLocked(on loop: any EventLoop) {
        heartbeat?.cancel()
        let timeout = configuration.partnerTimeout
        let interval = TimeAmount(timeout / 3)
        heartbeat = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            self?.heartbeatTick(timeout: timeout)
        }
    }

    private func heartbeatTick(timeout: Duration) {
        let now = DispatchTimeNanoseconds.now()
        let due = lock.withLock { () -> (PMUClient, UInt64, Bool)? in
            guard let client else { return nil }
            if let sent = heartbeatSentNanoseconds {
                return Duration.nanoseconds(Int64(clamping: now &- sent)) > timeout ? (client, trimmedThrough, true) : nil
            }
            heartbeatSentNanoseconds = now
            return (client, trimmedThrough, false)
        }
        guard let (client, through, overdue) = due else { return }
        if overdue {
            channelFailed(client, PMUError(.timedOut, "partner \(configuration.endpoint) did not answer a heartbeat within \(timeout) (--partner-timeout)"))
            return
        }
        client.mirrorTrimNow(through: through).whenComplete { [weak self] result in
            guard let self else { return }
            switch result {
            case .success:
                self.lock.withLock {
                    self.heartbeatSentNanoseconds = nil
                    self.lastHeartbeatMilliseconds = PairClock.nowMilliseconds()
                }
            case .failure(let error):
                self.channelFailed(client, (error as? PMUError) ?? PMUError(.connectionClosed, "\(error)"))
            }
        }
    }

    /// Applies the write (`apply` copies it into the region) and mirrors it; the future tells how
    /// to acknowledge it (`.mirrored`: the partner has it; `.localOnly`: degraded, persist it here
    /// first). Refused before `apply` runs when this owner was superseded, the partner is down and
    /// the policy is `refuse`, or too much is unpersisted.
    public func write(regionId: UInt64, epoch: UInt64, offset: UInt64, data: ByteBuffer, eventLoop: any EventLoop, apply: () -> Void) -> EventLoopFuture<WriteOutcome> {
        let length = UInt64(data.readableBytes)
        let regionLock = lock.withLock { () -> NIOLock in
            if let existing = regionLocks[regionId] { return existing }
            let created = NIOLock()
            regionLocks[regionId] = created
            return created
        }
        let admitted: Result<(UInt64, PMUClient?), PMUError> = regionLock.withLock {
            let check: PMUError? = lock.withLock {
                if let superseded {
                    return PMUError(.fenced, "write refused: the partner took over this server's portion (\(superseded.message)); this server is a stale owner")
                }
                guard client != nil || configuration.partnerDown == .durable else {
                    return PMUError(.serverUnavailable, "write not applied: this server mirrors its writes to partner \(configuration.endpoint), which is not reachable (\(failure?.message ?? "unknown")), and --partner-down is refuse; retry later")
                }
                guard unpersistedBytes + length <= configuration.maxUnpersistedBytes else {
                    return PMUError(.logFull, "write not applied: \(unpersistedBytes) bytes of mirrored writes are not persisted yet, the limit (--partner-max-unpersisted); PERSIST what you wrote, then retry")
                }
                return nil
            }
            if let check { return .failure(check) }
            apply()
            return lock.withLock {
                let sequence = nextSequence
                nextSequence += 1
                guard let client = channels.first(where: { $0.loop.inEventLoop })?.client ?? client else {
                    // Degraded: made durable here by the caller; nothing for the partner to replay.
                    degradedWrites += 1
                    if degradedSinceMilliseconds == nil { degradedSinceMilliseconds = PairClock.nowMilliseconds() }
                    return .success((sequence, nil))
                }
                unpersisted[regionId, default: []].append((sequence, offset, length))
                unpersistedBytes += length
                inFlight.insert(sequence)
                return .success((sequence, client))
            }
        }
        switch admitted {
        case .failure(let error):
            lock.withLock { refused += 1 }
            return eventLoop.makeFailedFuture(error)
        case .success((_, nil)):
            return eventLoop.makeSucceededFuture(.localOnly)
        case .success(let (sequence, client?)):
            let promise = eventLoop.makePromise(of: WriteOutcome.self)
            let append = MirrorAppend(sequence: sequence, regionId: regionId, epoch: epoch, offset: offset, data: data)
            let policy = configuration.partnerDown
            // Written now on this loop's channel; the reply completes on the same loop.
            client.mirrorAppendNow(append).whenComplete { result in
                if case .success = result { self.lock.withLock { self.acknowledged += 1 } }
                self.settle(result, sequence: sequence, client: client, policy: policy, promise: promise, what: "write applied")
            }
            return promise.futureResult
        }
    }

    /// The partner answered the record at `sequence` (a write or a catalog change) or failed:
    /// how the client's request is acknowledged.
    private func settle(_ result: Result<Void, any Error>, sequence: UInt64, client: PMUClient, policy: PartnerDownPolicy, promise: EventLoopPromise<WriteOutcome>, what: String) {
        answered(sequence)
        switch result {
        case .success:
            promise.succeed(.mirrored)
        case .failure(let failure):
            let error = (failure as? PMUError) ?? PMUError(.connectionClosed, "\(failure)")
            if error.code != .logFull { channelFailed(client, error) }
            if policy == .durable, ![.logFull, .fenced].contains(error.code) {
                // The partner went away with this record in flight: degraded for it too.
                lock.withLock {
                    degradedWrites += 1
                    if degradedSinceMilliseconds == nil { degradedSinceMilliseconds = PairClock.nowMilliseconds() }
                }
                promise.succeed(.localOnly)
            } else {
                promise.fail(PMUError(error.code, "\(what) on this server but not acknowledged: the partner did not take it (\(error.message))"))
            }
        }
    }

    /// A catalog change (CREATE, DELETE, an OPEN for writing) is about to commit here: refused
    /// as a write would be (stale owner; partner down under --partner-down refuse).
    public func admitCatalogChange() throws(PMUError) {
        let refusal = lock.withLock { () -> PMUError? in
            if let superseded {
                return PMUError(.fenced, "catalog change refused: the partner took over this server's portion (\(superseded.message)); this server is a stale owner")
            }
            guard client != nil || configuration.partnerDown == .durable else {
                return PMUError(.serverUnavailable, "catalog change not made: this server mirrors to partner \(configuration.endpoint), which is not reachable (\(failure?.message ?? "unknown")), and --partner-down is refuse; retry later")
            }
            return nil
        }
        if let refusal { throw refusal }
    }

    /// The catalog change `entry` has just committed here (durably): called by the store under
    /// its catalog lock, so that changes take mirror sequences in commit order, and in order
    /// with the writes (a write into a region can only follow the grant its CREATE or OPEN
    /// returned). Sent at once; the future tells how to acknowledge the change (`.mirrored`:
    /// in the partner's log; `.localOnly`: the partner is down, the change is durable here).
    public func mirrorCatalogChange(_ entry: CatalogEntry) -> EventLoopFuture<WriteOutcome> {
        let (sequence, channel) = lock.withLock { () -> (UInt64, (loop: any EventLoop, client: PMUClient)?) in
            let sequence = nextSequence
            nextSequence += 1
            catalogChanges += 1
            guard let channel = channels.first else {
                degradedWrites += 1
                if degradedSinceMilliseconds == nil { degradedSinceMilliseconds = PairClock.nowMilliseconds() }
                return (sequence, nil)
            }
            inFlight.insert(sequence)
            return (sequence, channel)
        }
        guard let (loop, client) = channel else {
            let loop = group?.next() ?? MultiThreadedEventLoopGroup.singleton.next()
            return configuration.partnerDown == .durable
                ? loop.makeSucceededFuture(.localOnly)
                : loop.makeFailedFuture(PMUError(.serverUnavailable, "catalog change made on this server but not acknowledged: the partner \(configuration.endpoint) went away (--partner-down refuse)"))
        }
        let promise = loop.makePromise(of: WriteOutcome.self)
        let policy = configuration.partnerDown
        client.mirrorCatalogNow(sequence: sequence, entry: entry).whenComplete { result in
            self.settle(result, sequence: sequence, client: client, policy: policy, promise: promise, what: "catalog change made")
        }
        return promise.futureResult
    }

    /// The partner answered `sequence` (or its channel failed): a trim may pass it now.
    private func answered(_ sequence: UInt64) {
        let trim = lock.withLock { () -> (UInt64, PMUClient)? in
            inFlight.remove(sequence)
            return trimPointLocked()
        }
        if let (through, client) = trim { sendTrim(through, client) }
    }

    /// Taken when a PERSIST arrives, before its msync: the writes it covers are the ones with a
    /// sequence up to this mark.
    public func persistMark() -> UInt64 {
        lock.withLock { nextSequence - 1 }
    }

    /// A PERSIST of [offset, offset+length) of `regionId` returned: the writes inside it, up to
    /// `mark`, are durable here. If the oldest unpersisted write moved, the partner is told to trim.
    public func persisted(regionId: UInt64, offset: UInt64, length: UInt64, mark: UInt64) {
        let end = offset.addingReportingOverflow(length).overflow ? UInt64.max : offset + length
        let trim = lock.withLock { () -> (UInt64, PMUClient)? in
            if var writes = unpersisted[regionId] {
                writes.removeAll { write in
                    let covered = write.sequence <= mark && write.offset >= offset && write.offset + write.length <= end
                    if covered { unpersistedBytes -= write.length }
                    return covered
                }
                unpersisted[regionId] = writes.isEmpty ? nil : writes
            }
            return trimPointLocked()
        }
        if let (through, client) = trim { sendTrim(through, client) }
    }

    /// The region is gone: its writes need no replay.
    public func forget(regionId: UInt64) {
        let trim = lock.withLock { () -> (UInt64, PMUClient)? in
            for write in unpersisted[regionId] ?? [] { unpersistedBytes -= write.length }
            unpersisted[regionId] = nil
            regionLocks[regionId] = nil
            return trimPointLocked()
        }
        if let (through, client) = trim { sendTrim(through, client) }
    }

    private func trimPointLocked() -> (UInt64, PMUClient)? {
        let oldest = min(unpersisted.values.compactMap { $0.first?.sequence }.min() ?? nextSequence, inFlight.min() ?? nextSequence)
        let through = oldest - 1
        guard through > trimmedThrough, let client else { return nil }
        trimmedThrough = through
        return (through, client)
    }

    private func sendTrim(_ through: UInt64, _ client: PMUClient) {
        Task {
            do throws(PMUError) {
                try await client.mirrorTrim(through: through)
                lock.withLock { lastTrimMilliseconds = PairClock.nowMilliseconds() }
            } catch {
                // A lost trim only keeps records longer; the next PERSIST sends a newer one.
                logger.notice("partner did not take a trim", metadata: ["through": "\(through)", "error": "\(error)"])
            }
        }
    }

    public struct Status: Sendable, Codable, Equatable {
        public var partner: String
        public var connected: Bool
        public var lastError: String?
        public var nextSequence: UInt64
        public var unpersistedWrites: Int
        public var unpersistedBytes: UInt64
        public var trimmedThrough: UInt64
        public var lastTrimMilliseconds: UInt64
        public var acknowledgedWrites: UInt64
        /// Catalog changes (CREATE, DELETE, OPEN for writing) given a mirror sequence.
        public var catalogChanges: UInt64
        public var refusedWrites: UInt64
        public var partnerDownPolicy: String
        /// Writes acknowledged after a local msync because the partner was down.
        public var degradedWrites: UInt64
        public var degradedSinceMilliseconds: UInt64?
        public var superseded: String?
        /// Mirror channels open (one per event loop) and the last answered heartbeat.
        public var channels: Int
        public var lastHeartbeatMilliseconds: UInt64
        public var partnerTimeoutMilliseconds: UInt64
    }

    public var status: Status {
        lock.withLock {
            Status(
                partner: "\(configuration.endpoint)", connected: client != nil, lastError: failure.map { "\($0)" }, nextSequence: nextSequence,
                unpersistedWrites: unpersisted.values.reduce(0) { $0 + $1.count }, unpersistedBytes: unpersistedBytes,
                trimmedThrough: trimmedThrough, lastTrimMilliseconds: lastTrimMilliseconds, acknowledgedWrites: acknowledged, catalogChanges: catalogChanges, refusedWrites: refused,
                partnerDownPolicy: configuration.partnerDown.rawValue, degradedWrites: degradedWrites,
                degradedSinceMilliseconds: degradedSinceMilliseconds, superseded: superseded.map { "\($0)" },
                channels: channels.count, lastHeartbeatMilliseconds: lastHeartbeatMilliseconds,
                partnerTimeoutMilliseconds: UInt64(configuration.partnerTimeout.components.seconds) * 1000 + UInt64(configuration.partnerTimeout.components.attoseconds / 1_000_000_000_000_000))
        }
    }
}

enum PairClock {
    static func nowMilliseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }
}

/// A monotonic clock for timeouts (CLOCK_MONOTONIC, nanoseconds).
enum DispatchTimeNanoseconds {
    static func now() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
