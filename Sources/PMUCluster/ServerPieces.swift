import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// One server's piece of one checkpoint, located in that server's region.
struct PieceRef: Sendable {
    var server: String
    var record: CheckpointRecord
    var header: PieceHeader
    /// Region offset where the piece (its header) starts.
    var offset: UInt64
    var io: RemoteRegion
}

/// What a server holds of a set: its copy of the descriptor (with its commit marker) and the
/// headers of the pieces in its region.
struct ServerPieces: Sendable {
    var server: String
    var descriptor: SetDescriptor
    /// By checkpoint (cluster) sequence.
    var pieces: [UInt64: PieceRef]
    var pieceHandle: RegionHandle
    var commitHandle: RegionHandle
    var geometry: CheckpointGeometry
}

enum PieceScan {
    /// Reads the piece headers of `records`; pieces of another set, and headers that fail their
    /// checksum (torn, damaged), are left out.
    static func pieces(server: String, io: RemoteRegion, geometry: CheckpointGeometry, records: [CheckpointRecord], setID: SetID) async throws(PMUError) -> [UInt64: PieceRef] {
        var found: [UInt64: PieceRef] = [:]
        for record in records {
            let offset = geometry.dataOffset + record.dataOffset
            let probe = Int(min(UInt64(PieceHeader.probeBytes), record.payloadLength))
            var bytes = try await io.read(at: offset, length: probe)
            guard let claimed = PieceHeader.claimedLength(bytes), UInt64(claimed) <= record.payloadLength else { continue }
            if claimed > probe { bytes = try await io.read(at: offset, length: claimed) }
            guard let header = PieceHeader.decode(bytes), header.setID == setID, header.serverName == server,
                UInt64(header.pieceLength) <= record.payloadLength
            else { continue }
            // Two records claiming one sequence: a retried write; the later record is the one written last.
            if let existing = found[header.sequence], existing.record.sequence > record.sequence { continue }
            found[header.sequence] = PieceRef(server: server, record: record, header: header, offset: offset, io: io)
        }
        return found
    }

    /// Opens a server's two regions read-only and reads its descriptor and piece headers.
    static func read(set name: String, server: String, client: PMUClient) async throws(PMUError) -> ServerPieces {
        let commit = try await client.openBackup(SetRegions.commitName(name))
        do throws(PMUError) {
            guard let latest = try await commit.latest(), let descriptor = SetDescriptor.decode(latest.payload) else {
                throw PMUError(.damaged, "server \(server): the commit region of set \(name) holds no readable set descriptor")
            }
            let backup = try await client.openBackup(name)
            do throws(PMUError) {
                let records = try await backup.reader.records()
                let pieces = try await pieces(server: server, io: RemoteRegion(client: client, handle: backup.handle), geometry: backup.geometry, records: records, setID: descriptor.setID)
                return ServerPieces(server: server, descriptor: descriptor, pieces: pieces, pieceHandle: backup.handle, commitHandle: commit.handle, geometry: backup.geometry)
            } catch {
                try? await backup.close()
                throw error
            }
        } catch {
            try? await commit.close()
            throw error
        }
    }
}

/// Every reachable server's view of a set, merged.
struct SetView: Sendable {
    var name: String
    var descriptor: SetDescriptor
    var servers: [String: ServerPieces]
    /// Servers of the stripe that are unreachable or do not hold the set, with why.
    var missing: [String: PMUError]

    /// Complete checkpoints, newest first: the chain from the newest commit marker through each
    /// piece's `previousComplete`. Attempts that failed are not on it; the chain ends where
    /// retention has removed the pieces.
    var completeSequences: [UInt64] {
        var chain: [UInt64] = []
        var next = servers.values.map(\.descriptor.committed).max() ?? 0
        while next > 0, let piece = pieces(of: next).first {
            chain.append(next)
            guard piece.header.previousComplete < next else { break }
            next = piece.header.previousComplete
        }
        return chain
    }

    func pieces(of sequence: UInt64) -> [PieceRef] {
        descriptor.servers.compactMap { servers[$0]?.pieces[sequence] }
    }

    /// Highest sequence any server has a piece of (complete or not).
    var highestSequence: UInt64 {
        servers.values.flatMap(\.pieces.keys).max() ?? 0
    }

    static func read(_ name: String, cluster: Cluster) async throws(PMUError) -> SetView {
        try SetRegions.validate(name)
        let results = await cluster.each(cluster.map.servers.map(\.name)) { server, client throws(PMUError) in
            try await PieceScan.read(set: name, server: server, client: client)
        }
        var (views, failures) = partition(results)
        for (server, error) in cluster.unreachable { failures[server] = error }
        // The set is the one most servers hold (ties: the highest commit marker); a server holding
        // a different set under the same name (reused from another cluster) is left out, with why.
        var holders: [SetID: Int] = [:]
        for view in views.values { holders[view.descriptor.setID, default: 0] += 1 }
        guard let descriptor = views.values.map(\.descriptor).max(by: { a, b in
            (holders[a.setID]!, a.committed) < (holders[b.setID]!, b.committed)
        }) else {
            let allUnknown = !failures.isEmpty && failures.values.allSatisfy { $0.code == .unknownRegion }
            throw PMUError(allUnknown ? .unknownRegion : .serverUnavailable, "no reachable server holds checkpoint set \(name): \(failures.summary)")
        }
        for (server, view) in views where view.descriptor.setID != descriptor.setID {
            views[server] = nil
            failures[server] = PMUError(.damaged, "holds a different set named \(name) (set id \(view.descriptor.setID), expected \(descriptor.setID))")
        }
        let stripe = Set(descriptor.servers)
        return SetView(
            name: name, descriptor: descriptor, servers: views.filter { stripe.contains($0.key) },
            missing: failures.filter { stripe.contains($0.key) })
    }

    func close(cluster: Cluster) async {
        for view in servers.values {
            guard let client = try? cluster.client(view.server) else { continue }
            try? await client.close(view.pieceHandle)
            try? await client.close(view.commitHandle)
        }
    }
}
