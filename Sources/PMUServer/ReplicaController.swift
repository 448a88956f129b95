import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUClient
import PMUCore
import PMULog
import PMUPair
import PMUStore
import PMUTransport

/// The monitor's shared-nothing replica of the primary's portion (issue 13 item 2,
/// docs/ARCHITECTURE.md "Failover"): once the primary has answered the configured number of
/// heartbeats and mirrors into this server, a copy pass lists the primary's regions
/// (REPLICA_CATALOG) and copies them (REPLICA_READ) into `--partner-portion`, this server's own
/// directory; the mirrored writes then keep it current (records are applied as the primary trims
/// them, the rest at takeover). Passes repeat every interval to pick up created, deleted and
/// re-opened regions (the mirror log's catalog records carry those changes as they happen; passes
/// re-check). A takeover serves this copy; until a full copy has completed since the
/// primary's current attachment, the replica is not ready and the monitor does not take over.
///
/// Why the copy plus the log is every acknowledged write: the log holds every write from the
/// attachment on, trims wait while a pass copies, and after the pass every untrimmed record is
/// applied over the copied bytes in the primary's order; a byte's last write is then either in
/// the copy (no later record) or the last record applied.
final class ReplicaController: Sendable {
    struct Settings: Sendable {
        var source: Endpoint
        var clientId: String
        var secret: [UInt8]
        var directory: String
        /// Between tries while the replica is not ready (no full copy under the current attachment).
        var intervalMilliseconds: Int64
        /// Between passes once it is (`--replica-interval`).
        var passIntervalMilliseconds: Int64
    }

    struct CopyReport: Sendable, Codable, Equatable {
        var full: Bool
        var regions: Int
        var regionsCopied: Int
        var regionsRemoved: Int
        var bytesCopied: UInt64
        var milliseconds: UInt64
        /// bytesCopied over the pass's wall time, MiB/s (the copy includes msync of what it wrote).
        var mebibytesPerSecond: Double
        var atMilliseconds: UInt64
    }

    struct Status: Sendable, Codable, Equatable {
        var directory: String
        var source: String
        var portion: String?
        var ready: Bool
        var notReadyReason: String?
        var passes: UInt64
        var lastCopy: CopyReport?
        var lastFullCopy: CopyReport?
        var lastError: String?
        /// Write records for a region the replica does not hold at their point in the log (deleted
        /// before them, or created while the primary's channel was not attached: the next pass
        /// copies such regions whole), and writes outside their region (a full copy follows).
        var recordsForUnknownRegions: UInt64
    }

    private struct State: @unchecked Sendable {
        var directory: DataDirectory?
        var store: RegionStore?
        var portion: String?
        /// The attachment generation the last completed full copy was made under.
        var copiedGeneration: UInt64?
        var handedOver = false
        var passes: UInt64 = 0
        var lastCopy: CopyReport?
        var lastFullCopy: CopyReport?
        var lastError: String?
        var unknownRecords: UInt64 = 0
        var client: PMUClient?
    }

    /// A pass copies regions in reads of this size, this many outstanding at a time (at most
    /// 16 MiB of replies buffered).
    static let chunkBytes = 4 << 20
    static let readsInFlight = 4

    let settings: Settings
    private let receiver: MirrorReceiver
    private let storeConfiguration: StoreConfiguration
    private let pool: NIOThreadPool
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    private let loop = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let peerReady = NIOLockedValueBox<(@Sendable () -> Bool)?>(nil)

    init(settings: Settings, receiver: MirrorReceiver, storeConfiguration: StoreConfiguration, pool: NIOThreadPool, logger: Logger) {
        self.settings = settings
        self.receiver = receiver
        self.storeConfiguration = storeConfiguration
        self.pool = pool
        self.logger = logger
        receiver.setReplicaApply { [state] (portion: String, records: [LogRecord]) throws(PMUError) in
            let (store, handedOver) = state.withLockedValue { ($0.portion == portion ? $0.store : nil, $0.handedOver) }
            // Taken over: nothing may leave the log unapplied (the trim is refused, the log kept).
            if handedOver { throw PMUError(.fenced, "portion \(portion) is being taken over by this server; its log is kept whole") }
            // No replica open yet: the first pass copies after this trim, so it reads these bytes.
            guard let store else { return }
            // Catalog records first shape the copy's catalog (a region created since the last
            // pass, a delete, a raised epoch), then the writes that follow them land in it.
            let replay = try CatalogReplay.make(records: records, catalog: store.list(after: "", limit: Int.max).records)
            if !replay.outOfBounds.isEmpty {
                // The replica's region does not match the primary's: copy everything again.
                state.withLockedValue { $0.copiedGeneration = nil }
            }
            _ = try replay.apply(to: store)
            let unknown = UInt64(replay.unknownRegionWrites + replay.outOfBounds.count)
            if unknown > 0 { state.withLockedValue { $0.unknownRecords += unknown } }
        }
    }

    /// Starts the passes; `peerReady` says the primary has answered the configured number of
    /// heartbeats in a row (the copy waits for it, as the issue asks).
    func start(peerReady: @escaping @Sendable () -> Bool) {
        self.peerReady.withLockedValue { $0 = peerReady }
        let task = Task { [self] in
            // Woken every interval; a ready replica passes only every --replica-interval, one
            // that is not (a new attachment needs its full copy) at once.
            var sinceLastPass: Int64 = 0
            while !Task.isCancelled {
                let interval = max(settings.intervalMilliseconds, 10)
                try? await Task.sleep(for: .milliseconds(interval))
                if Task.isCancelled { return }
                sinceLastPass += interval
                guard notReadyReason() != nil || sinceLastPass >= settings.passIntervalMilliseconds else { continue }
                guard peerReady(), let portion = receiver.attachedPortions.first, let attachment = receiver.attachment(portion: portion), attachment.open else { continue }
                sinceLastPass = 0
                await pass(portion: portion, generation: attachment.generation)
            }
        }
        loop.withLockedValue { $0 = task }
    }

    func stop() async {
        let task = loop.withLockedValue { $0 }
        task?.cancel()
        await task?.value
        if let client = state.withLockedValue({ $0.client }) { await client.disconnect() }
    }

    /// nil when a takeover would serve every acknowledged write; else what it would lose.
    func notReadyReason() -> String? {
        let (portion, copied) = state.withLockedValue { ($0.portion, $0.copiedGeneration) }
        guard let portion, let copied else {
            return "the monitor's replica has no complete copy of the primary's portion yet (the first full copy starts after the primary answered the configured number of heartbeats and attached its mirror channel); taking over would serve none of the primary's regions"
        }
        guard let attachment = receiver.attachment(portion: portion), attachment.generation == copied else {
            return "the primary re-attached its mirror channel after the replica's last full copy and the copy since has not finished; taking over could serve bytes older than writes the primary acknowledged while it was not mirroring"
        }
        return nil
    }

    /// The takeover takes the replica: passes stop, and it gets the open store and the origin
    /// through which the log's records predate the copy. Refused REPLICA_NOT_READY if the copy
    /// is not complete.
    func handOver() async throws(PMUError) -> (DataDirectory, RegionStore, UInt64) {
        let task = loop.withLockedValue { $0 }
        task?.cancel()
        // A pass may be waiting on the old primary (behind a partition, for the request timeout):
        // closing its connection fails that request now, so the takeover does not wait for it.
        let client = state.withLockedValue { state in
            defer { state.client = nil }
            return state.client
        }
        await client?.disconnect()
        await task?.value
        if let reason = notReadyReason() {
            resume()
            throw PMUError(.replicaNotReady, reason)
        }
        let taken: (DataDirectory, RegionStore, String)? = state.withLockedValue { state in
            state.handedOver = true
            guard let directory = state.directory, let store = state.store, let portion = state.portion else { return nil }
            return (directory, store, portion)
        }
        guard let (directory, store, portion) = taken else { throw PMUError(.replicaNotReady, "the replica is not open") }
        return (directory, store, receiver.attachment(portion: portion)?.base ?? 0)
    }

    /// A takeover that failed after `handOver` gives the replica back: passes and applied trims
    /// resume (the primary may be alive after all).
    func resume() {
        state.withLockedValue { $0.handedOver = false }
        if let peerReady = peerReady.withLockedValue({ $0 }) { start(peerReady: peerReady) }
    }

    var status: Status {
        let reason = notReadyReason()
        return state.withLockedValue { state in
            Status(
                directory: settings.directory, source: "\(settings.source)", portion: state.portion, ready: reason == nil, notReadyReason: reason,
                passes: state.passes, lastCopy: state.lastCopy, lastFullCopy: state.lastFullCopy, lastError: state.lastError,
                recordsForUnknownRegions: state.unknownRecords)
        }
    }

    // MARK: a pass

    private func pass(portion: String, generation: UInt64) async {
        let started = DispatchTime.now().uptimeNanoseconds
        let full = state.withLockedValue { $0.copiedGeneration != generation || $0.portion != portion }
        receiver.holdTrims(portion: portion)
        var held = true
        do throws(PMUError) {
            let store = try await open(portion: portion)
            let client = try await connected()
            var catalog: [RegionRecord] = []
            var after = ""
            while true {
                let page = try await client.replicaCatalog(after: after)
                catalog += page.entries.map(RegionRecord.init)
                guard page.more, let last = page.entries.last?.name, catalog.count <= storeConfiguration.maxRegions else { break }
                after = last
            }
            let plan = ReplicaPlan.make(primary: catalog, replica: store.list(after: "", limit: Int.max).records, fullCopy: full)
            if plan.isEmpty && !full {
                // Nothing changed: the trims that waited go on as usual (the next one applies them).
                // (A full copy of an empty portion still completes below: it makes the replica ready.)
                receiver.dropHold(portion: portion)
                held = false
                state.withLockedValue { $0.passes += 1 }
                return
            }
            try await blocking { () throws(PMUError) in
                for id in plan.remove {
                    guard let record = store.record(id: id) else { continue }
                    _ = try store.delete(named: record.name) { (_: RegionRecord) throws(PMUError) in }
                }
                for record in plan.create { try store.adopt(record) }
                for record in plan.update { try store.replaceMetadata(record) }
            }
            var bytes: UInt64 = 0
            for id in plan.copy {
                bytes += try await copy(regionId: id, from: client, into: store)
            }
            // The primary must still be the attachment the copy started under.
            guard let now = receiver.attachment(portion: portion), now.generation == generation else {
                throw PMUError(.serverUnavailable, "the primary re-attached its mirror channel during the copy; copying again")
            }
            try await blocking { () throws(PMUError) in try self.receiver.releaseTrims(portion: portion) }
            held = false
            let milliseconds = (DispatchTime.now().uptimeNanoseconds - started) / 1_000_000
            let report = CopyReport(
                full: full, regions: catalog.count, regionsCopied: plan.copy.count, regionsRemoved: plan.remove.count, bytesCopied: bytes,
                milliseconds: milliseconds, mebibytesPerSecond: Double(bytes) / 1_048_576 / max(Double(milliseconds) / 1000, 0.001),
                atMilliseconds: UInt64(Date().timeIntervalSince1970 * 1000))
            state.withLockedValue {
                $0.passes += 1
                $0.lastCopy = report
                $0.lastError = nil
                if full {
                    $0.lastFullCopy = report
                    $0.copiedGeneration = generation
                }
            }
            if full || !plan.create.isEmpty || !plan.remove.isEmpty {
                logger.notice("replica copy of the primary's portion", metadata: [
                    "full": "\(full)", "regions": "\(catalog.count)", "copied": "\(plan.copy.count)", "removed": "\(plan.remove.count)",
                    "bytes": "\(bytes)", "ms": "\(milliseconds)",
                ])
            }
        } catch {
            if held { receiver.dropHold(portion: portion) }
            let client = state.withLockedValue { state in
                state.lastError = error.message
                defer { state.client = nil }
                return state.client
            }
            await client?.disconnect()
            logger.warning("replica copy failed; retrying", metadata: ["error": "\(error)"])
        }
    }

    /// Copies a region's bytes in chunks, `readsInFlight` REPLICA_READs outstanding at a time on
    /// the one connection (a read's round trip and the primary's copy into its reply overlap the
    /// others' transfer and this server's copy into the mapping), then makes them durable here.
    /// Chunks are disjoint, so they land in any order.
    private func copy(regionId: UInt64, from client: PMUClient, into store: RegionStore) async throws(PMUError) -> UInt64 {
        let mapping = try store.mapping(id: regionId)
        let size = mapping.sizeBytes
        let landing = Landing(file: RegionFileWriter(mapping), mapping: mapping)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next: UInt64 = 0
                var running = 0
                while next < size || running > 0 {
                    while running < Self.readsInFlight && next < size {
                        let offset = next
                        let length = Int(min(UInt64(Self.chunkBytes), size - offset))
                        next += UInt64(length)
                        running += 1
                        group.addTask {
                            let data = try await client.replicaRead(regionId: regionId, offset: offset, length: length)
                            data.withUnsafeReadableBytes { landing.write($0, at: offset) }
                        }
                    }
                    try await group.next()
                    running -= 1
                }
            }
        } catch {
            throw (error as? PMUError) ?? PMUError(.internalError, "replica copy of region id \(regionId): \(error)")
        }
        try await blocking { () throws(PMUError) in try mapping.persist(offset: 0, length: size) }
        return size
    }

    /// Where copied bytes land: through the region's file (pwrite: no page fault and zero-fill
    /// per page of a fresh region, as for streamed WRITEs) where the region is a file mapping,
    /// else into the mapping. Unchecked Sendable: the copy's tasks write disjoint chunks, and
    /// pwrite on one descriptor from several threads at distinct offsets is safe.
    private struct Landing: @unchecked Sendable {
        let file: RegionFileWriter?
        let mapping: MappedRegion

        func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) {
            if let file { file.write(bytes, at: offset) } else { mapping.write(bytes, at: offset) }
        }
    }

    /// The replica's directory, holding the primary's portion id. A directory that held another
    /// portion is emptied first (its regions are not the primary's).
    private func open(portion: String) async throws(PMUError) -> RegionStore {
        if let store = state.withLockedValue({ $0.portion == portion ? $0.store : nil }) { return store }
        let path = settings.directory
        let configuration = storeConfiguration
        let logger = self.logger
        let state = self.state
        let opened: (DataDirectory, RegionStore) = try await blocking { () throws(PMUError) -> (DataDirectory, RegionStore) in
            let directory: DataDirectory
            if let open = state.withLockedValue({ $0.directory }) { directory = open } else { directory = try DataDirectory(path: path) }
            let store: RegionStore
            if let open = state.withLockedValue({ $0.store }) { store = open } else { store = try RegionStore(directory: directory, configuration: configuration, logger: logger) }
            let held = try? PortionIdentity.load(dataDirectory: path, create: false)
            if held != portion {
                for record in store.list(after: "", limit: Int.max).records {
                    _ = try store.delete(named: record.name) { (_: RegionRecord) throws(PMUError) in }
                }
                try PortionIdentity.store(portion, dataDirectory: path)
                logger.notice("replica directory takes the primary's portion; what it held is discarded", metadata: ["portion": "\(portion)", "held": "\(held ?? "none")"])
            }
            return (directory, store)
        }
        self.state.withLockedValue {
            $0.directory = opened.0
            $0.store = opened.1
            $0.portion = portion
        }
        return opened.1
    }

    private func connected() async throws(PMUError) -> PMUClient {
        // Handed over: no new connection to the old primary.
        if Task.isCancelled { throw PMUError(.cancelled, "the replica was handed over to a takeover") }
        if let client = state.withLockedValue({ $0.client }) { return client }
        var configuration = ClientConfiguration(endpoint: settings.source, clientId: settings.clientId, secret: settings.secret)
        configuration.connectTimeout = .seconds(2)
        configuration.requestTimeout = .seconds(5)
        let client = try await PMUClient.connect(configuration)
        state.withLockedValue { $0.client = client }
        return client
    }

    private func blocking<T: Sendable>(_ work: @escaping @Sendable () throws(PMUError) -> T) async throws(PMUError) -> T {
        do {
            return try await pool.runIfActive { () throws -> T in try work() }
        } catch {
            throw (error as? PMUError) ?? PMUError(.internalError, "replica copy: \(error)")
        }
    }
}
