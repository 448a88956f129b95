#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMULog
import PMUCore

/// The partner's half of write mirroring: one `AppendLog` per mirrored portion, under
/// `DATA_DIR/mirror/<portion id>/`, fed by MIRROR_APPEND and trimmed by MIRROR_TRIM.
///
/// Where the records live decides what they survive (`--mirror-sync`):
/// - `page-cache`: pwrite into the log's preallocated segments; the records survive a crash of
///   this partner's process (the kernel keeps the pages), not the loss of its machine.
/// - `fdatasync` (default): each MIRROR_APPEND is synced before it is answered; survives the
///   loss of this machine too (with the owner up, one machine may be lost either way).
///
/// One owner mirrors a portion at a time, over one connection per event loop of the owner (all
/// from the same server instance); a portion that was taken over refuses
/// every later MIRROR_OPEN (the stale owner is fenced), and this server's own portion is never
/// accepted as a mirror.
public final class MirrorReceiver: @unchecked Sendable {
    public let directory: String
    public let ownPortion: String
    public let logConfiguration: AppendLogConfiguration
    private let instance: [UInt8]
    private let logger: Logger
    private let lock = NIOLock()
    private var logs: [String: AppendLog] = [:]
    /// portion -> the owner instance mirroring it now and its connections.
    private var attached: [String: (instance: [UInt8], connections: Set<UInt64>)] = [:]
    private var byConnection: [UInt64: String] = [:]
    /// portion -> when its owner was last heard from (any MIRROR_* request; the owner sends a
    /// heartbeat every third of its --partner-timeout), and when its last channel closed.
    private var lastHeard: [String: UInt64] = [:]
    private var detachedSince: [String: UInt64] = [:]
    /// How long an attached owner may be silent before pair status calls it silent (this
    /// server's --partner-timeout; owners send a heartbeat every third of theirs).
    public let silentAfterMilliseconds: UInt64
    /// The shared-nothing replica (ARCHITECTURE "Failover"): portion -> how many times an owner
    /// attached with no channel open before (a new attachment), and the log's highest origin
    /// then. Records up to that origin predate the attachment: the replica's full copy, made
    /// after it, holds their effect or newer, so they are never applied to the replica.
    private var attachments: [String: (generation: UInt64, base: UInt64)] = [:]
    /// Serialises applying records to the replica with trims and the copy's holds.
    private let replicaLock = NIOLock()
    /// Set by the replica: applies records (sorted by origin) of a portion to its copy.
    private var replicaApply: (@Sendable (String, [LogRecord]) throws(PMUError) -> Void)?
    /// portion -> the highest trim asked for while the replica copies (trims wait: a record
    /// trimmed during the copy might be older than bytes the copy read, and newer than others).
    private var heldTrims: [String: UInt64] = [:]

    public init(dataDirectory: String, ownPortion: String, instance: [UInt8], logConfiguration: AppendLogConfiguration, logger: Logger, silentAfterMilliseconds: UInt64 = 3000) throws(PMUError) {
        self.silentAfterMilliseconds = silentAfterMilliseconds
        self.directory = dataDirectory + "/mirror"
        self.ownPortion = ownPortion
        self.instance = instance
        self.logConfiguration = logConfiguration
        self.logger = logger
        try logConfiguration.validate()
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw PMUError(.ioError, "cannot create mirror log directory \(directory)")
        }
    }

    func logPath(_ portion: String) -> String { directory + "/" + portion }
    func takenOverMarker(_ portion: String) -> String { logPath(portion) + ".taken-over" }

    /// The log of a portion, opened (and recovered) on first use.
    public func log(portion: String) throws(PMUError) -> AppendLog {
        try lock.withTypedLock { () throws(PMUError) -> AppendLog in try logLocked(portion) }
    }

    private func logLocked(_ portion: String) throws(PMUError) -> AppendLog {
        if let log = logs[portion] { return log }
        let log = try AppendLog(path: logPath(portion), configuration: logConfiguration)
        if log.repairedTornBytes > 0 {
            logger.warning("mirror log ended in a torn record (a crash mid-append); cut it", metadata: ["portion": "\(portion)", "bytes": "\(log.repairedTornBytes)"])
        }
        logs[portion] = log
        return log
    }

    /// MIRROR_OPEN. Returns the highest sequence the log holds for the portion.
    public func open(portion: String, instance: [UInt8], connection: UInt64) throws(PMUError) -> UInt64 {
        guard PortionIdentity.isValid(portion) else {
            throw PMUError(.invalidArgument, "MIRROR_OPEN portion \(NameRules.quoted(portion)) is not a portion id (32 lowercase hex digits)")
        }
        guard instance != self.instance else {
            throw PMUError(.invalidArgument, "this pmu-server was given itself as --partner; a partner must be another server (another --listen address)")
        }
        guard portion != ownPortion else {
            throw PMUError(.invalidArgument, "the server mirroring to this one serves this server's own portion \(portion) (same data directory?); two servers cannot claim one portion")
        }
        return try lock.withTypedLock { () throws(PMUError) -> UInt64 in
            if access(takenOverMarker(portion), F_OK) == 0 {
                throw PMUError(.fenced, "portion \(portion) was taken over by this server; the old owner must not serve it again until it rejoins (stop it; its data directory is served by its partner now)")
            }
            if let other = attached[portion], other.instance != instance {
                throw PMUError(.regionExists, "portion \(portion) is already mirrored here by another server (connections \(other.connections.sorted())): two servers claim the same portion")
            }
            if let previous = byConnection[connection], previous != portion {
                throw PMUError(.protocolViolation, "this connection already mirrors portion \(previous)")
            }
            let log = try logLocked(portion)
            if attached[portion] == nil {
                attachments[portion] = ((attachments[portion]?.generation ?? 0) + 1, log.status.maxOrigin)
            }
            attached[portion, default: (instance, [])].connections.insert(connection)
            byConnection[connection] = portion
            lastHeard[portion] = PairClock.nowMilliseconds()
            detachedSince[portion] = nil
            return log.status.maxOrigin
        }
    }

    private func attachedLog(_ connection: UInt64, _ what: String) throws(PMUError) -> (String, AppendLog) {
        try lock.withTypedLock { () throws(PMUError) -> (String, AppendLog) in
            guard let portion = byConnection[connection], attached[portion]?.connections.contains(connection) == true, let log = logs[portion] else {
                throw PMUError(.fenced, "\(what) on a connection that does not mirror a portion (send MIRROR_OPEN first; a portion that was taken over refuses its old owner)")
            }
            lastHeard[portion] = PairClock.nowMilliseconds()
            return (portion, log)
        }
    }

    /// Whether MIRROR_APPEND blocks (fdatasync) and must run off the event loop.
    public var appendBlocks: Bool { logConfiguration.sync == .dataSync }

    /// MIRROR_APPEND: the record is in the log (and synced, per policy) when this returns.
    public func append(_ append: MirrorAppend, connection: UInt64) throws(PMUError) {
        try appendForGroupCommit(append, connection: connection)?()
    }

    /// MIRROR_APPEND with group commit: the record is written now (no sync); the returned
    /// closure, run off the event loop, returns once it is synced (one fdatasync for every
    /// record pending then). nil when nothing is to be synced (page-cache policy, or the record
    /// was already trimmed).
    public func appendForGroupCommit(_ append: MirrorAppend, connection: UInt64) throws(PMUError) -> (@Sendable () throws(PMUError) -> Void)? {
        let (_, log) = try attachedLog(connection, "MIRROR_APPEND")
        guard append.data.readableBytes <= logConfiguration.maxPayloadBytes else {
            throw PMUError(.requestTooLarge, "MIRROR_APPEND of \(append.data.readableBytes) bytes exceeds the mirror log's record limit of \(logConfiguration.maxPayloadBytes)")
        }
        guard append.sequence > log.trimmedThroughOrigin else { return nil }
        let sequence = try log.appendUnsynced([LogEntry(origin: append.sequence, regionId: append.regionId, epoch: append.epoch, offset: append.offset, payload: Array(append.data.readableBytesView))])
        guard logConfiguration.sync == .dataSync else { return nil }
        return { () throws(PMUError) in try log.sync(through: sequence) }
    }

    /// MIRROR_CATALOG, with group commit as `appendForGroupCommit`: the owner's catalog change
    /// goes into the log as a catalog record (LogRecordFormat kind 2) at its mirror sequence, in
    /// order with the writes, with the same durability as a write's record.
    public func appendCatalogForGroupCommit(sequence: UInt64, entry: CatalogEntry, connection: UInt64) throws(PMUError) -> (@Sendable () throws(PMUError) -> Void)? {
        let (_, log) = try attachedLog(connection, "MIRROR_CATALOG")
        guard sequence > log.trimmedThroughOrigin else { return nil }
        let logSequence = try log.appendUnsynced([CatalogReplay.logEntry(entry, origin: sequence)])
        guard logConfiguration.sync == .dataSync else { return nil }
        return { () throws(PMUError) in try log.sync(through: logSequence) }
    }

    /// Whether MIRROR_TRIM blocks and must run off the event loop: it syncs, or it applies
    /// records to the replica (a catalog record there preallocates a region file).
    public var trimBlocks: Bool { appendBlocks || lock.withLock { replicaApply != nil } }

    public func trim(through: UInt64, connection: UInt64) throws(PMUError) {
        let (portion, log) = try attachedLog(connection, "MIRROR_TRIM")
        try replicaLock.withTypedLock { () throws(PMUError) in
            guard let apply = lock.withLock({ replicaApply }), through > log.trimmedThroughOrigin else { return try log.trim(through: through) }
            if let held = lock.withLock({ heldTrims[portion] }) {
                lock.withLock { heldTrims[portion] = max(held, through) }
                return
            }
            // Records up to `through` are durable on the owner and about to leave the log: into
            // the replica first, in the owner's order (every one of them was acknowledged, so
            // every one has arrived; later ones stay in the log for the next trim or a takeover).
            let after = max(log.trimmedThroughOrigin, base(portion))
            try apply(portion, try Self.records(log, after: after, through: through))
            try log.trim(through: through)
        }
    }

    private func base(_ portion: String) -> UInt64 { lock.withLock { attachments[portion]?.base ?? 0 } }

    /// Untrimmed records with origin in (after, through], sorted by origin.
    static func records(_ log: AppendLog, after: UInt64, through: UInt64 = .max) throws(PMUError) -> [LogRecord] {
        var records: [LogRecord] = []
        try log.replay { record in if record.origin > after && record.origin <= through { records.append(record) } }
        records.sort { $0.origin < $1.origin }
        return records
    }

    /// The replica's applier (nil: none; takeover replays the log alone).
    public func setReplicaApply(_ apply: (@Sendable (String, [LogRecord]) throws(PMUError) -> Void)?) {
        replicaLock.withLock { lock.withLock { replicaApply = apply } }
    }

    /// The portion's current attachment: its generation, the origin below which records predate
    /// it, and whether a channel is open now. nil: never attached since this server started.
    public func attachment(portion: String) -> (generation: UInt64, base: UInt64, open: Bool)? {
        lock.withLock { attachments[portion].map { ($0.generation, $0.base, attached[portion] != nil) } }
    }

    /// The portions an owner mirrors into this server now.
    public var attachedPortions: [String] { lock.withLock { attached.keys.sorted() } }

    /// The replica starts copying: trims of the portion wait (recorded, not applied) until
    /// `releaseTrims`. Returns once no trim is applying.
    public func holdTrims(portion: String) {
        replicaLock.withLock { lock.withLock { heldTrims[portion] = heldTrims[portion] ?? 0 } }
    }

    /// The copy is done: every untrimmed record newer than the attachment is applied to the
    /// replica over the copied bytes, in order (the copy may predate any of them), then the
    /// trims that waited are done.
    public func releaseTrims(portion: String) throws(PMUError) {
        try replicaLock.withTypedLock { () throws(PMUError) in
            let held = lock.withLock { heldTrims.removeValue(forKey: portion) }
            guard let apply = lock.withLock({ replicaApply }) else { return }
            let log = try self.log(portion: portion)
            try apply(portion, try Self.records(log, after: max(log.trimmedThroughOrigin, base(portion))))
            if let held, held > 0 { try log.trim(through: held) }
        }
    }

    /// The copy failed: trims go on without it (the next pass copies again).
    public func dropHold(portion: String) {
        replicaLock.withLock { _ = lock.withLock { heldTrims.removeValue(forKey: portion) } }
    }

    public func connectionClosed(_ connection: UInt64) {
        lock.withLock {
            if let portion = byConnection.removeValue(forKey: connection), attached[portion]?.connections.remove(connection) != nil,
                attached[portion]?.connections.isEmpty == true
            {
                attached[portion] = nil
                detachedSince[portion] = PairClock.nowMilliseconds()
                logger.warning("the owner of a mirrored portion closed its last mirror channel (owner down or restarting)", metadata: ["portion": "\(portion)"])
            }
        }
    }

    /// Starts a takeover of `portion`: marks it taken over durably (so the stale owner's MIRROR_OPEN
    /// is refused from now on, also after this server restarts), detaches its mirror connection
    /// (its next MIRROR_APPEND is refused FENCED), and returns its log.
    public func beginTakeover(portion: String) throws(PMUError) -> AppendLog {
        try lock.withTypedLock { () throws(PMUError) -> AppendLog in
            let log = try logLocked(portion)
            let fd = Glibc.open(takenOverMarker(portion), O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0, fsync(fd) == 0 else {
                if fd >= 0 { close(fd) }
                throw PMUError(.ioError, "cannot write takeover marker \(takenOverMarker(portion))")
            }
            close(fd)
            let dir = Glibc.open(directory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
            if dir >= 0 {
                _ = fsync(dir)
                close(dir)
            }
            for connection in attached.removeValue(forKey: portion)?.connections ?? [] { byConnection[connection] = nil }
            // An append past its connection check may be writing now: sealing waits for it, and
            // refuses the rest, so the replay that follows sees every record ever acknowledged.
            log.seal(PMUError(.fenced, "portion \(portion) is being taken over by this server; its old owner's writes are refused"))
            return log
        }
    }

    /// Whether this server took the portion over (its durable mark exists).
    public func isTakenOver(_ portion: String) -> Bool { access(takenOverMarker(portion), F_OK) == 0 }

    /// Giveback, last step: the portion is its owner's again. Its takeover mark goes first (a
    /// crash after it leaves a stale log that the owner's next MIRROR_OPEN trims without replay,
    /// which is safe: every record was replayed and persisted at takeover, and the writes served
    /// since were durable before they were acknowledged), then its sealed log.
    public func endTakeover(portion: String) throws(PMUError) {
        try lock.withTypedLock { () throws(PMUError) in
            guard access(takenOverMarker(portion), F_OK) == 0 else {
                throw PMUError(.invalidArgument, "portion \(portion) was not taken over by this server; nothing to give back")
            }
            guard unlink(takenOverMarker(portion)) == 0 else {
                throw PMUError(.ioError, "cannot remove takeover marker \(takenOverMarker(portion)) (errno \(errno))")
            }
            let dir = Glibc.open(directory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
            if dir >= 0 {
                _ = fsync(dir)
                close(dir)
            }
            logs[portion] = nil
            try? FileManager.default.removeItem(atPath: logPath(portion))
            lastHeard[portion] = nil
            detachedSince[portion] = nil
        }
    }

    public struct PortionStatus: Sendable, Codable, Equatable {
        public var portion: String
        public var mirroring: Bool
        public var takenOver: Bool
        public var segments: Int
        public var allocatedBytes: UInt64
        public var usedBytes: UInt64
        public var records: Int
        public var liveRecords: Int
        public var trimmedThrough: UInt64
        public var highestSequence: UInt64
        /// "mirroring" (heard from within the owner's timeout), "silent" (attached, but nothing
        /// heard for longer: its machine or network may be gone), "gone" (no channel open).
        public var owner: String
        public var ownerLastHeardMilliseconds: UInt64?
        public var ownerGoneSinceMilliseconds: UInt64?
        /// Records appended since the log was created, and fdatasyncs since this server opened
        /// it: with group commit, one sync answers many appends.
        public var appendedRecords: UInt64
        public var dataSyncs: UInt64
    }

    public var status: [PortionStatus] {
        lock.withLock {
            let now = PairClock.nowMilliseconds()
            return logs.keys.sorted().map { portion in
                let log = logs[portion]!.status
                let heard = lastHeard[portion]
                let owner = attached[portion] == nil ? "gone" : now &- (heard ?? 0) > silentAfterMilliseconds ? "silent" : "mirroring"
                return PortionStatus(
                    portion: portion, mirroring: attached[portion] != nil, takenOver: access(takenOverMarker(portion), F_OK) == 0,
                    segments: log.segments, allocatedBytes: log.allocatedBytes, usedBytes: log.usedBytes, records: log.records,
                    liveRecords: log.liveRecords, trimmedThrough: log.trimmedThrough, highestSequence: log.maxOrigin,
                    owner: owner, ownerLastHeardMilliseconds: heard, ownerGoneSinceMilliseconds: detachedSince[portion],
                    appendedRecords: log.nextSequence - 1, dataSyncs: log.dataSyncs)
            }
        }
    }
}

extension NIOLock {
    func withTypedLock<T>(_ body: () throws(PMUError) -> T) throws(PMUError) -> T {
        let result: Result<T, PMUError> = withLock {
            do throws(PMUError) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
