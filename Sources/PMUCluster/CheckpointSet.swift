import NIOConcurrencyHelpers
import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// How a striped (or mirrored) checkpoint set is created.
public struct CheckpointSetOptions: Sendable {
    public var redundancy: Redundancy
    /// The largest checkpoint the set must hold; sizes every server's region.
    public var maxCheckpointBytes: UInt64
    /// Keep the newest N complete checkpoints (at least 1); 0 keeps every one up to `maxCheckpoints`.
    public var keepNewest: UInt32
    /// With keepNewest 0: how many checkpoints the set holds before REGION_FULL.
    public var maxCheckpoints: UInt32
    public var maxSubsegmentBytes: Int
    /// Servers of the stripe, by map name, in placement order (default: every server of the map).
    public var servers: [String]?

    public init(redundancy: Redundancy, maxCheckpointBytes: UInt64, keepNewest: UInt32 = 2, maxCheckpoints: UInt32 = 64, maxSubsegmentBytes: Int = 1 << 20, servers: [String]? = nil) {
        self.redundancy = redundancy
        self.maxCheckpointBytes = maxCheckpointBytes
        self.keepNewest = keepNewest
        self.maxCheckpoints = maxCheckpoints
        self.maxSubsegmentBytes = maxSubsegmentBytes
        self.servers = servers
    }
}

/// Naming and sizing of the per-server regions of a set (docs/CLUSTER.md):
///   NAME         append-mode checkpoint region: this server's piece of each checkpoint
///   NAME.commit  overwrite-mode checkpoint region: the set descriptor and commit marker
enum SetRegions {
    static let commitSuffix = ".commit"
    static let commitRegionBytes: UInt64 = 256 * 1024

    static func commitName(_ name: String) -> String { name + commitSuffix }

    /// NAME.scrub: the newest scrub pass's record (`ScrubRecord`), overwrite mode, made by the
    /// first scrub pass (absent until then). Two slots of a 110-byte record fit easily.
    static let scrubSuffix = ".scrub"
    static let scrubRegionBytes: UInt64 = 32 * 1024

    static func scrubName(_ name: String) -> String { name + scrubSuffix }

    static func validate(_ name: String) throws(PMUError) {
        try NameRules.validateRegionName(name)
        try NameRules.validateRegionName(commitName(name))
        if name.hasSuffix(commitSuffix) {
            throw PMUError(.invalidName, "a checkpoint set's name may not end in \(commitSuffix) (that suffix names its commit region)")
        }
        if name.hasSuffix(scrubSuffix) {
            throw PMUError(.invalidName, "a checkpoint set's name may not end in \(scrubSuffix) (that suffix names its scrub record region)")
        }
    }

    /// Upper bound of one server's piece of a checkpoint of `payload` bytes.
    static func maxPieceBytes(payload: UInt64, redundancy: Redundancy, servers: [String], maxSubsegmentBytes: Int) throws(PMUError) -> UInt64 {
        let geometry = try StripeGeometry.plan(payloadLength: payload, redundancy: redundancy, serverCount: servers.count, maxSubsegmentBytes: maxSubsegmentBytes)
        // A server holds at most one subsegment copy per group (a group's copies are on distinct servers).
        let header = PieceHeader(
            setID: SetID(bytes: [UInt8](repeating: 0, count: 16)), sequence: 0, previousComplete: 0, timestampNanoseconds: 0, payloadCRC: 0,
            geometry: geometry, servers: servers, serverIndex: 0,
            entries: (0..<geometry.groups).map { PieceHeader.Entry(id: SubsegmentID(group: $0, index: 0, copy: 0), crc: 0) })
        return UInt64(header.pieceLength)
    }

    static func pieceGeometry(options: CheckpointSetOptions, servers: [String]) throws(PMUError) -> (regionBytes: UInt64, checkpoint: CheckpointOptions) {
        let piece = (try maxPieceBytes(payload: options.maxCheckpointBytes, redundancy: options.redundancy, servers: servers, maxSubsegmentBytes: options.maxSubsegmentBytes) + 4095) / 4096 * 4096
        // Room for the kept ones, the one being written and one failed attempt, plus wrap-around slack.
        let slots = options.keepNewest == 0 ? UInt64(options.maxCheckpoints) + 1 : UInt64(options.keepNewest) + 3
        // Index entries are cheap (64 B) and a kept piece pins its entry (sequence mod entries):
        // 1024 lets ~1000 failed attempts in a row pass before one would collide with it.
        let entries = UInt32(min(UInt64(1 << 20), max(slots + 2, 1024)))
        let indexBytes = (UInt64(entries) * CheckpointGeometry.entryBytes + 4095) / 4096 * 4096
        let regionBytes = CheckpointGeometry.headerBytes + indexBytes + slots * piece
        return (regionBytes, CheckpointOptions(mode: .append, maxCheckpoints: entries, keepNewest: options.keepNewest))
    }
}

extension Cluster {
    /// Creates a checkpoint set: on every server of the stripe, a region for its pieces and a
    /// commit region holding the set descriptor (commit marker 0). Every server must be reachable.
    @discardableResult
    public func createCheckpointSet(_ name: String, options: CheckpointSetOptions) async throws(PMUError) -> SetDescriptor {
        try SetRegions.validate(name)
        let servers = options.servers ?? map.servers.map(\.name)
        for server in servers where map.server(named: server) == nil {
            throw PMUError(.invalidArgument, "server \(server) is not in the cluster map")
        }
        guard Set(servers).count == servers.count else { throw PMUError(.invalidArgument, "a server is listed twice in the stripe") }
        try options.redundancy.validate(serverCount: servers.count)
        guard options.keepNewest > 0 || options.maxCheckpoints >= 1 else {
            throw PMUError(.invalidArgument, "keep-newest 0 (keep all) needs max-checkpoints of at least 1")
        }
        _ = try StripeGeometry.plan(payloadLength: 0, redundancy: options.redundancy, serverCount: servers.count, maxSubsegmentBytes: options.maxSubsegmentBytes)
        let missing = servers.filter { clients[$0] == nil }
        if !missing.isEmpty {
            throw PMUError(.serverUnavailable, "cannot create set \(name): every server of the stripe must be reachable; missing \(unreachable.filter { missing.contains($0.key) }.summary)")
        }
        let descriptor = SetDescriptor(setID: .random(), redundancy: options.redundancy, maxSubsegmentBytes: options.maxSubsegmentBytes, servers: servers, committed: 0)
        let (regionBytes, checkpointOptions) = try SetRegions.pieceGeometry(options: options, servers: servers)
        // Each server reports which regions this call created, so a rollback never deletes a
        // region that was there before (REGION_EXISTS on one server must not cost its data).
        let created = CreatedRegions()
        let results = await each(servers) { server, client throws(PMUError) in
            try await client.createCheckpointRegion(name, sizeBytes: regionBytes, options: checkpointOptions)
            created.add(server, name)
            try await client.createCheckpointRegion(SetRegions.commitName(name), sizeBytes: SetRegions.commitRegionBytes, options: CheckpointOptions(mode: .overwrite))
            created.add(server, SetRegions.commitName(name))
            let marker = try await client.openPrimary(SetRegions.commitName(name))
            _ = try await marker.checkpoint(descriptor.encode())
            try await marker.close()
        }
        let (_, failures) = partition(results)
        if !failures.isEmpty {
            // All or nothing: remove what this call created, wherever it did.
            let toDelete = created.all
            _ = await each(Array(toDelete.keys)) { server, client throws(PMUError) in
                for region in toDelete[server] ?? [] { try? await client.delete(region) }
            }
            throw PMUError(failures.values.first!.code, "cannot create set \(name) on \(failures.summary); nothing was kept")
        }
        return descriptor
    }

    /// Deletes a set's regions from every reachable server.
    public func deleteCheckpointSet(_ name: String) async throws(PMUError) {
        // The commit region first: without it no reader treats the pieces as a set. Each region
        // is deleted even if the other is already gone.
        let results = await each(reachable) { _, client throws(PMUError) in
            var first: PMUError?
            for region in [SetRegions.commitName(name), name, SetRegions.scrubName(name)] {
                do throws(PMUError) {
                    try await client.delete(region)
                } catch {
                    if error.code != .unknownRegion { first = first ?? error }
                }
            }
            if let first { throw first }
        }
        let failures = partition(results).failures.filter { $0.value.code != .unknownRegion }
        if !failures.isEmpty { throw PMUError(failures.values.first!.code, "deleting set \(name) failed on \(failures.summary)") }
    }
}

/// Regions created so far by one createCheckpointSet, per server (filled from concurrent tasks).
private final class CreatedRegions: @unchecked Sendable {
    private var regions: [String: [String]] = [:]
    private let lock = NIOLock()

    func add(_ server: String, _ region: String) { lock.withLock { regions[server, default: []].append(region) } }
    var all: [String: [String]] { lock.withLock { regions } }
}
