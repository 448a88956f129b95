import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// The backup's side of a checkpoint set on a cluster: reads complete checkpoints, reassembling
/// them from whatever servers are left. Read-only; never disturbs the primary.
public struct ClusterBackup: Sendable {
    public let name: String
    let cluster: Cluster

    public init(name: String, cluster: Cluster) throws(PMUError) {
        try SetRegions.validate(name)
        self.name = name
        self.cluster = cluster
    }

    /// Reads every server's view of the set, runs `body`, and releases the read handles.
    func withView<T>(_ body: (SetView) async throws(PMUError) -> T) async throws(PMUError) -> T {
        let view = try await SetView.read(name, cluster: cluster)
        do throws(PMUError) {
            let result = try await body(view)
            await view.close(cluster: cluster)
            return result
        } catch {
            await view.close(cluster: cluster)
            throw error
        }
    }

    /// Complete checkpoints, oldest first, without reading their data.
    public func list() async throws(PMUError) -> [ClusterCheckpointInfo] {
        try await withView { (view: SetView) async throws(PMUError) in
            return view.completeSequences.reversed().map { info(of: $0, in: view) }
        }
    }

    func info(of sequence: UInt64, in view: SetView) -> ClusterCheckpointInfo {
        let pieces = view.pieces(of: sequence)
        let header = pieces[0].header
        let holders = Set(pieces.map(\.server))
        var lacking: [String: String] = [:]
        for server in view.descriptor.servers where !holders.contains(server) {
            lacking[server] = view.missing[server].map { "\($0.code)" } ?? "no piece of \(sequence)"
        }
        let geometry = header.geometry
        let survives = Survivability.additionalLossesSurvivable(geometry) { holders.contains(header.servers[geometry.server(of: $0)]) }
        return ClusterCheckpointInfo(
            sequence: sequence, timestampNanoseconds: header.timestampNanoseconds, sizeBytes: geometry.payloadLength,
            redundancy: geometry.redundancy, holders: header.servers.filter(holders.contains), lacking: lacking, survivesMoreLosses: survives)
    }

    /// The newest complete checkpoint that can be reassembled, or nil if the set has none yet.
    /// Throws UNRECOVERABLE (naming what is missing) when complete checkpoints exist but none can
    /// be reassembled from the servers left.
    public func latest() async throws(PMUError) -> ClusterCheckpoint? {
        try await withView { (view: SetView) async throws(PMUError) in
            var skipped: [UInt64] = []
            var firstFailure: PMUError?
            for sequence in view.completeSequences {
                do throws(PMUError) {
                    var checkpoint = try await reassemble(sequence, view: view)
                    checkpoint.skipped = skipped
                    return checkpoint
                } catch {
                    guard error.code == .unrecoverable || error.code == .damaged else { throw error }
                    firstFailure = firstFailure ?? error
                    skipped.append(sequence)
                }
            }
            if let firstFailure { throw firstFailure }
            return nil
        }
    }

    public func checkpoint(sequence: UInt64) async throws(PMUError) -> ClusterCheckpoint {
        try await withView { (view: SetView) async throws(PMUError) in
            guard view.completeSequences.contains(sequence) else {
                let known = view.completeSequences.reversed().map(String.init).joined(separator: ", ")
                throw PMUError(.unknownSequence, "set \(name) has no complete checkpoint \(sequence) (complete: \(known.isEmpty ? "none" : known))")
            }
            return try await reassemble(sequence, view: view)
        }
    }

    /// Every complete checkpoint that can be reassembled, oldest first (append-mode readers).
    public func all() async throws(PMUError) -> [ClusterCheckpoint] {
        try await withView { (view: SetView) async throws(PMUError) in
            var result: [ClusterCheckpoint] = []
            for sequence in view.completeSequences.reversed() {
                do throws(PMUError) {
                    result.append(try await reassemble(sequence, view: view))
                } catch {
                    guard error.code == .unrecoverable || error.code == .damaged else { throw error }
                }
            }
            return result
        }
    }

    /// Reads every subsegment of every complete checkpoint on every server, checks each against
    /// its CRC32C, and reassembles each checkpoint.
    public func verify() async throws(PMUError) -> [ClusterVerification] {
        try await withView { (view: SetView) async throws(PMUError) in
            var report: [ClusterVerification] = []
            for sequence in view.completeSequences.reversed() {
                let pieces = view.pieces(of: sequence)
                var damaged: [String] = []
                var intact: [StripeAssembler.Key: ByteBuffer] = [:]
                var lacking = info(of: sequence, in: view).lacking
                for piece in pieces {
                    do throws(PMUError) {
                        let read = try await Self.readEntries(piece, indices: Array(piece.header.entries.indices))
                        damaged += read.damaged
                        intact.merge(read.intact) { a, _ in a }
                    } catch {
                        // A server failing mid-read counts as lost here too, as in every other read.
                        lacking[piece.server] = "read failed: \(error.code): \(error.message)"
                    }
                }
                var failure: PMUError?
                do throws(PMUError) {
                    _ = try StripeAssembler.assemble(pieces[0].header.geometry, payloadCRC: pieces[0].header.payloadCRC, subsegments: intact)
                } catch {
                    failure = error
                }
                report.append(ClusterVerification(sequence: sequence, damaged: damaged, lacking: lacking, failure: failure))
            }
            return report
        }
    }

    /// Reassembles one checkpoint: data subsegments first (one read per run of adjacent ones on
    /// each server, servers in parallel); parity and other copies only for groups that need them.
    func reassemble(_ sequence: UInt64, view: SetView) async throws(PMUError) -> ClusterCheckpoint {
        let pieces = view.pieces(of: sequence)
        guard let first = pieces.first else {
            throw PMUError(.unrecoverable, "no reachable server holds a piece of checkpoint \(sequence) of set \(name); missing: \(view.missing.summary)")
        }
        // Every piece must describe the same checkpoint; a disagreeing one is not used.
        let agreeing = pieces.filter { $0.header.geometry == first.header.geometry && $0.header.payloadCRC == first.header.payloadCRC }
        let geometry = first.header.geometry
        var unavailable: [String: String] = [:]
        let holders = Set(agreeing.map(\.server))
        for server in first.header.servers where !holders.contains(server) {
            unavailable[server] = view.missing[server].map { "\($0.code): \($0.message)" } ?? "no intact piece of checkpoint \(sequence)"
        }
        // Pass 1: the lowest-numbered copy held by a reachable server of each data subsegment.
        var best: [StripeAssembler.Key: (piece: PieceRef, entry: Int, copy: Int)] = [:]
        for piece in agreeing {
            for (i, entry) in piece.header.entries.enumerated() where entry.id.index < geometry.k {
                let key = StripeAssembler.Key(group: entry.id.group, index: entry.id.index)
                if let current = best[key], current.copy <= entry.id.copy { continue }
                best[key] = (piece, i, entry.id.copy)
            }
        }
        var wanted: [PieceRef: [Int]] = [:]
        for choice in best.values { wanted[choice.piece, default: []].append(choice.entry) }
        var (intact, damaged) = try await readAll(wanted)
        // Pass 2: for groups short of data, everything else the group has, from any server.
        let short = (0..<geometry.groups).filter { group in (0..<geometry.k).contains { intact[StripeAssembler.Key(group: group, index: $0)] == nil } }
        if !short.isEmpty {
            var more: [PieceRef: [Int]] = [:]
            let shortSet = Set(short)
            for piece in agreeing {
                for (i, entry) in piece.header.entries.enumerated() where shortSet.contains(entry.id.group) {
                    let key = StripeAssembler.Key(group: entry.id.group, index: entry.id.index)
                    if intact[key] == nil && !(wanted[piece]?.contains(i) ?? false) { more[piece, default: []].append(i) }
                }
            }
            let second = try await readAll(more)
            intact.merge(second.intact) { a, _ in a }
            damaged += second.damaged
        }
        let lost = StripeAssembler.unrecoverableGroups(geometry, available: Set(intact.keys))
        if !lost.isEmpty {
            let without = unavailable.keys.sorted().joined(separator: ", ")
            throw PMUError(
                .unrecoverable,
                "checkpoint \(sequence) of set \(name) cannot be reassembled: \(lost.count) of \(geometry.groups) groups have fewer than k=\(geometry.k) intact subsegments (\(geometry.redundancy)); servers without it: \(without.isEmpty ? "none" : without)\(damaged.isEmpty ? "" : "; damaged subsegments: \(damaged.joined(separator: ", "))")")
        }
        let (payload, rebuilt) = try StripeAssembler.assemble(geometry, payloadCRC: first.header.payloadCRC, subsegments: intact)
        return ClusterCheckpoint(
            sequence: sequence, timestampNanoseconds: first.header.timestampNanoseconds, payload: payload, redundancy: geometry.redundancy,
            unavailable: unavailable, damaged: damaged, rebuilt: rebuilt, skipped: [])
    }

    func readAll(_ wanted: [PieceRef: [Int]]) async throws(PMUError) -> (intact: [StripeAssembler.Key: ByteBuffer], damaged: [String]) {
        var intact: [StripeAssembler.Key: ByteBuffer] = [:]
        var damaged: [String] = []
        let results = await withTaskGroup(of: Result<(intact: [StripeAssembler.Key: ByteBuffer], damaged: [String]), PMUError>.self) { group in
            for (piece, indices) in wanted {
                group.addTask {
                    do throws(PMUError) {
                        return .success(try await Self.readEntries(piece, indices: indices))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            var all: [Result<(intact: [StripeAssembler.Key: ByteBuffer], damaged: [String]), PMUError>] = []
            for await result in group { all.append(result) }
            return all
        }
        for result in results {
            switch result {
            case .success(let read):
                intact.merge(read.intact) { a, _ in a }
                damaged += read.damaged
            case .failure:
                // A server that fails mid-read is treated like a lost one: its subsegments are missing.
                continue
            }
        }
        return (intact, damaged)
    }

    /// Reads entries of one piece, coalescing adjacent ones into single reads, and keeps those
    /// whose CRC32C matches the piece header.
    static func readEntries(_ piece: PieceRef, indices: [Int]) async throws(PMUError) -> (intact: [StripeAssembler.Key: ByteBuffer], damaged: [String]) {
        let sub = piece.header.geometry.subsegmentBytes
        let maxRun = max(1, (8 << 20) / sub)
        var intact: [StripeAssembler.Key: ByteBuffer] = [:]
        var damaged: [String] = []
        var runs: [[Int]] = []
        for i in indices.sorted() {
            if let last = runs.last?.last, last + 1 == i, runs[runs.count - 1].count < maxRun { runs[runs.count - 1].append(i) } else { runs.append([i]) }
        }
        for run in runs {
            let bytes = try await piece.io.read(at: piece.offset + UInt64(piece.header.offset(ofEntry: run[0])), length: run.count * sub)
            for (n, i) in run.enumerated() {
                let entry = piece.header.entries[i]
                let slice = bytes.getSlice(at: bytes.readerIndex + n * sub, length: sub)!
                if slice.withUnsafeReadableBytes({ CRC32C.checksum($0) }) == entry.crc {
                    intact[StripeAssembler.Key(group: entry.id.group, index: entry.id.index)] = slice
                } else {
                    damaged.append("\(piece.server):\(entry.id)")
                }
            }
        }
        return (intact, damaged)
    }
}

extension PieceRef: Hashable {
    static func == (a: PieceRef, b: PieceRef) -> Bool { a.server == b.server && a.record.sequence == b.record.sequence }
    func hash(into hasher: inout Hasher) {
        hasher.combine(server)
        hasher.combine(record.sequence)
    }
}
