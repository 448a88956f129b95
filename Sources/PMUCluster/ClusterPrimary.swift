import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

#if canImport(Glibc)
import Glibc
#endif

/// The primary's side of a checkpoint set on a cluster. Forms the pieces in this process (the
/// client library): cuts the payload, computes parity with ISA-L and sends each server its piece.
///
/// A checkpoint is complete when (1) every server's piece is durable (each server's checkpoint
/// writer persists payload before header), then (2) the commit marker naming it is durable on
/// every server. Only then does `checkpoint` return. A backup trusts only checkpoints on the
/// chain from the newest commit marker, so one whose pieces reached only some servers is never
/// recovered, and the previous complete one is never displaced until a newer one is complete.
///
/// Every server of the stripe must be reachable to write. After any failure the writer refuses
/// further calls; reopen (after rebuilding or restarting the failed server).
public actor ClusterPrimary {
    public nonisolated let name: String
    public nonisolated let descriptor: SetDescriptor
    let cluster: Cluster
    private let writers: [String: CheckpointPrimary]
    private let markers: [String: CheckpointPrimary]
    /// Complete checkpoints, newest first, with each server's record of its piece.
    private var chain: [(sequence: UInt64, local: [String: UInt64])]
    /// Complete checkpoints to keep (0: all); older ones and failed attempts may be displaced.
    private let keep: Int
    private var nextSequence: UInt64
    private var failure: PMUError?
    /// Checkpoints run one at a time: the actor would otherwise interleave two at their awaits.
    private var tail: Task<Void, Never>?
    /// Bytes of every server's piece of the newest checkpoint this primary wrote (headers and
    /// parity included): what left this process for the servers.
    public private(set) var lastPieceBytes: UInt64 = 0
    /// Fault injection for tests only (pmu-server's PMU_FORMING_FAULT, docs/CLUSTER.md 7b): called
    /// with a server's name once its piece is durable, and with nil once every piece is, before
    /// any commit marker is written.
    private var piecesHook: (@Sendable (String?) async -> Void)?

    public func injectFaults(_ hook: @escaping @Sendable (String?) async -> Void) { piecesHook = hook }

    /// Takes the writer role on every server of the stripe (a previous primary is fenced on each),
    /// then reads where the set stands.
    public static func open(_ name: String, cluster: Cluster) async throws(PMUError) -> ClusterPrimary {
        let first = try await SetView.read(name, cluster: cluster)
        await first.close(cluster: cluster)
        let descriptor = first.descriptor
        if !first.missing.isEmpty {
            throw PMUError(.serverUnavailable, "cannot write set \(name): a striped checkpoint is complete only when every server has its piece, and these servers are unavailable or lack the set: \(first.missing.summary). Restart them, or replace and rebuild them (pmuctl cluster rebuild SERVER)")
        }
        // Fence first, then look: a checkpoint the old primary completes before it is fenced is
        // then part of what we read, not lost off the chain.
        let opened = await cluster.each(descriptor.servers) { _, client throws(PMUError) -> (CheckpointPrimary, CheckpointPrimary) in
            let pieces = try await client.openPrimary(name)
            do throws(PMUError) {
                return (pieces, try await client.openPrimary(SetRegions.commitName(name)))
            } catch {
                try? await pieces.close()
                throw error
            }
        }
        let (handles, failures) = partition(opened)
        func release() async {
            for (pieces, marker) in handles.values {
                try? await pieces.close()
                try? await marker.close()
            }
        }
        guard failures.isEmpty else {
            await release()
            throw PMUError(failures.values.first!.code, "cannot open set \(name) for writing on \(failures.summary)")
        }
        do throws(PMUError) {
            let view = try await SetView.read(name, cluster: cluster)
            await view.close(cluster: cluster)
            guard view.descriptor.setID == descriptor.setID, view.missing.isEmpty else {
                throw PMUError(.serverUnavailable, "set \(name) changed while opening it for writing (\(view.missing.summary)); try again")
            }
            let chain = view.completeSequences.map { sequence in
                (sequence: sequence, local: view.servers.mapValues { $0.pieces[sequence]?.record.sequence ?? 0 })
            }
            let keep = Int(handles.values.first!.0.geometry.keepNewest)
            let primary = ClusterPrimary(
                name: name, descriptor: descriptor, cluster: cluster, writers: handles.mapValues(\.0), markers: handles.mapValues(\.1),
                chain: chain, keep: keep, next: view.highestSequence + 1)
            await primary.protectKeptCheckpoints()
            return primary
        } catch {
            await release()
            throw error
        }
    }

    private init(name: String, descriptor: SetDescriptor, cluster: Cluster, writers: [String: CheckpointPrimary], markers: [String: CheckpointPrimary], chain: [(sequence: UInt64, local: [String: UInt64])], keep: Int, next: UInt64) {
        self.name = name
        self.descriptor = descriptor
        self.cluster = cluster
        self.writers = writers
        self.markers = markers
        self.chain = chain
        self.keep = keep
        self.nextSequence = next
    }

    /// The newest complete checkpoint's sequence (0: none).
    public var newestComplete: UInt64 { chain.first?.sequence ?? 0 }

    /// Each server keeps exactly its pieces of the newest `keep` complete checkpoints: failed
    /// attempts never push a complete checkpoint out, and never pile up (they are displaceable).
    private func protectKeptCheckpoints() async {
        let kept = keep == 0 ? chain : Array(chain.prefix(keep))
        for (server, primary) in writers {
            await primary.writer.retainOnly(Set(kept.compactMap { $0.local[server] }.filter { $0 > 0 }))
        }
    }

    /// Saves a checkpoint across the cluster; returns its sequence once it is complete (every
    /// piece and every commit marker durable). Concurrent calls run one after the other.
    public func checkpoint(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        try await inTurn { () async throws(PMUError) in try await self.checkpointNow(payload) }
    }

    /// Runs `body` after every earlier checkpoint (or repair) of this primary has finished.
    private func inTurn<T: Sendable>(_ body: @escaping @Sendable () async throws(PMUError) -> T) async throws(PMUError) -> T {
        let (turn, next) = Turns.after(tail, body)
        tail = next
        return try await turn.value.get()
    }

    /// Backfill (online rebuild): appends `server`'s regenerated piece of complete checkpoint
    /// `sequence` through this primary's writer there, in a turn of its queue, and keeps it from
    /// then on. false (nothing written) when the checkpoint is no longer kept or the server
    /// already has its piece.
    func appendInTurn(_ piece: ByteBuffer, of sequence: UInt64, on server: String) async throws(PMUError) -> Bool {
        try await inTurn { () async throws(PMUError) -> Bool in try await self.append(piece, of: sequence, on: server) }
    }

    private func append(_ piece: ByteBuffer, of sequence: UInt64, on server: String) async throws(PMUError) -> Bool {
        if let failure { throw PMUError(failure.code, "cluster writer for set \(name) stopped after an earlier failure: \(failure.message)") }
        let kept = keep == 0 ? chain.count : min(keep, chain.count)
        guard let index = chain.prefix(kept).firstIndex(where: { $0.sequence == sequence }), (chain[index].local[server] ?? 0) == 0 else { return false }
        guard let writer = writers[server] else {
            throw PMUError(.invalidArgument, "server \(server) is not one of set \(name)'s servers")
        }
        do throws(PMUError) {
            let local = try await writer.checkpoint(piece)
            // Found again after the await (only turns insert into the chain, but say so in code).
            if let again = chain.firstIndex(where: { $0.sequence == sequence }) { chain[again].local[server] = local }
        } catch {
            failure = error
            throw error
        }
        await protectKeptCheckpoints()
        return true
    }

    /// A scrub repair of this primary's set, in a turn of its queue: no checkpoint is between its
    /// pieces and its marker, and the writer's index says whether the piece is still live.
    func repairInTurn(_ piece: PieceRef, entry: Int, bytes: ByteBuffer) async throws(PMUError) -> Bool {
        try await inTurn { () async throws(PMUError) -> Bool in
            guard let writer = self.writers[piece.server] else {
                throw PMUError(.invalidArgument, "server \(piece.server) is not one of set \(self.name)'s servers")
            }
            return try await ScrubRepair.writeIfLive(piece, entry: entry, bytes: bytes, writer: writer, client: try self.cluster.client(piece.server))
        }
    }

    private func checkpointNow(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        if let failure { throw PMUError(failure.code, "cluster writer for set \(name) stopped after an earlier failure: \(failure.message)") }
        do throws(PMUError) {
            let sequence = nextSequence
            // Piece headers never carry UInt64.max (PieceHeader.decode), so this is reached only
            // after 2^64 - 1 checkpoints or crafted pieces: a clear refusal, not a trap.
            guard sequence < UInt64.max else {
                throw PMUError(.regionFull, "set \(name) has used up its sequence numbers (next would be \(sequence)); create a new set")
            }
            nextSequence += 1
            let geometry = try StripeGeometry.plan(
                payloadLength: UInt64(payload.readableBytes), redundancy: descriptor.redundancy,
                serverCount: descriptor.servers.count, maxSubsegmentBytes: descriptor.maxSubsegmentBytes)
            let stamp = PieceBuilder.Stamp(
                setID: descriptor.setID, sequence: sequence, previousComplete: newestComplete,
                timestampNanoseconds: Self.now(), servers: descriptor.servers)
            let pieces = PieceBuilder.pieces(of: payload, geometry: geometry, stamp: stamp)
            var byServer: [String: ByteBuffer] = [:]
            for (index, server) in descriptor.servers.enumerated() { byServer[server] = pieces[index] }
            let frozen = byServer
            let hook = piecesHook
            lastPieceBytes = pieces.reduce(0) { $0 + UInt64($1.readableBytes) }
            let written = await cluster.each(descriptor.servers) { server, _ throws(PMUError) -> UInt64 in
                let local = try await self.writers[server]!.checkpoint(frozen[server]!)
                await hook?(server)
                return local
            }
            let (localSequences, failures) = partition(written)
            guard failures.isEmpty else {
                throw PMUError(failures.values.first!.code, "checkpoint \(sequence) of set \(name) is not complete: its pieces could not be made durable on \(failures.summary); the previous complete checkpoint (\(newestComplete)) stays the newest")
            }
            await hook?(nil)
            var marker = descriptor
            marker.committed = sequence
            let encoded = marker.encode()
            let marked = await cluster.each(descriptor.servers) { server, _ throws(PMUError) -> UInt64 in
                try await self.markers[server]!.checkpoint(encoded)
            }
            let markFailures = partition(marked).failures
            guard markFailures.isEmpty else {
                throw PMUError(markFailures.values.first!.code, "checkpoint \(sequence) of set \(name): every piece is durable but its commit marker could not be written on \(markFailures.summary); a backup may or may not treat it as complete")
            }
            chain.insert((sequence: sequence, local: localSequences), at: 0)
            await protectKeptCheckpoints()
            return sequence
        } catch {
            failure = error
            throw error
        }
    }

    public func checkpoint(_ payload: [UInt8]) async throws(PMUError) -> UInt64 {
        try await checkpoint(ByteBuffer(bytes: payload))
    }

    /// Releases the writer handles (the role stays taken until another primary opens).
    public func close() async {
        for primary in writers.values { try? await primary.close() }
        for primary in markers.values { try? await primary.close() }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
