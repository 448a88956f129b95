import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// What `rebuild` did for one set.
public struct RebuildReport: Sendable {
    public var set: String
    public var server: String
    /// Complete checkpoints whose piece was regenerated on the server, oldest first.
    public var rebuilt: [UInt64]
    /// Complete checkpoints that could not be reassembled from the other servers (left out).
    public var unrecoverable: [UInt64]
    public var bytesWritten: UInt64
}

extension Cluster {
    /// Regenerates `server`'s pieces of every complete checkpoint of set `name` from the other
    /// servers, after it was wiped or replaced (same name in the map, possibly a new address).
    ///
    /// Everything is reassembled and checked against each checkpoint's CRC32C before the server's
    /// old regions of the set are replaced. Run it while no primary writes the set (a primary
    /// cannot complete checkpoints with a server missing anyway); reopen the primary afterwards.
    public func rebuild(server: String, set name: String) async throws(PMUError) -> RebuildReport {
        let target = try client(server)
        let full = try await SetView.read(name, cluster: self)
        do throws(PMUError) {
            let report = try await rebuild(server: server, target: target, from: full)
            await full.close(cluster: self)
            return report
        } catch {
            await full.close(cluster: self)
            throw error
        }
    }

    private func rebuild(server: String, target: PMUClient, from full: SetView) async throws(PMUError) -> RebuildReport {
        let name = full.name
        var view = full
        let peers = view.servers.filter { $0.key != server }
        // The target's own (possibly stale or damaged) state plays no part.
        view.servers = peers
        view.missing[server] = PMUError(.serverUnavailable, "being rebuilt")
        guard let position = view.descriptor.servers.firstIndex(of: server) else {
            throw PMUError(.invalidArgument, "server \(server) is not one of set \(name)'s servers (\(view.descriptor.servers.joined(separator: ", ")))")
        }
        guard let peer = peers.values.first else {
            throw PMUError(.unrecoverable, "no other server holds set \(name); nothing to rebuild \(server) from")
        }
        let backup = try ClusterBackup(name: name, cluster: self)
        var pieces: [(UInt64, ByteBuffer)] = []
        var unrecoverable: [UInt64] = []
        for sequence in view.completeSequences.reversed() {
            do throws(PMUError) {
                pieces.append((sequence, try await backup.regeneratedPieces(sequence, view: view)[position]))
            } catch {
                guard error.code == .unrecoverable || error.code == .damaged else { throw error }
                unrecoverable.append(sequence)
            }
        }
        try await recreateRegions(name, on: target, shapedLike: peer)
        let writer = try await target.openPrimary(name)
        var written: UInt64 = 0
        do throws(PMUError) {
            for (_, piece) in pieces {
                _ = try await writer.checkpoint(piece)
                written += UInt64(piece.readableBytes)
            }
            try await writer.close()
        } catch {
            try? await writer.close()
            throw error
        }
        // The marker last: until it is there, the server's pieces are not trusted as complete on
        // their own (the chain comes from the highest marker of any server).
        var descriptor = view.descriptor
        descriptor.committed = view.completeSequences.first ?? 0
        let marker = try await target.openPrimary(SetRegions.commitName(name))
        _ = try await marker.checkpoint(descriptor.encode())
        try await marker.close()
        return RebuildReport(set: name, server: server, rebuilt: pieces.map(\.0), unrecoverable: unrecoverable, bytesWritten: written)
    }

    /// Deletes the target's regions of set `name` (if present) and creates them again with a peer's
    /// shape (same capacity and retention); the commit region is left empty.
    func recreateRegions(_ name: String, on target: PMUClient, shapedLike peer: ServerPieces) async throws(PMUError) {
        let peerInfo = try await self.client(peer.server).stat(name)
        let options = CheckpointOptions(mode: .append, maxCheckpoints: peer.geometry.indexEntries, keepNewest: peer.geometry.keepNewest)
        for region in [SetRegions.commitName(name), name] {
            do throws(PMUError) {
                try await target.delete(region)
            } catch {
                guard error.code == .unknownRegion else { throw error }
            }
        }
        try await target.createCheckpointRegion(name, sizeBytes: peerInfo.sizeBytes, options: options)
        try await target.createCheckpointRegion(SetRegions.commitName(name), sizeBytes: SetRegions.commitRegionBytes, options: CheckpointOptions(mode: .overwrite))
    }

    /// Stripe servers of set `name` that answer but hold neither of its regions: wiped or replaced
    /// (a server with only one of them, or an unreadable descriptor, is damaged, not empty, and is
    /// left to an operator). Unreachable servers are not empty: they may come back with their data.
    public func emptyServers(set name: String) async throws(PMUError) -> [String] {
        let view = try await SetView.read(name, cluster: self)
        await view.close(cluster: self)
        var empty: [String] = []
        for (server, error) in view.missing where clients[server] != nil && error.code == .unknownRegion {
            guard let regions = try? await client(server).list().map(\.name) else { continue }
            if !regions.contains(name) && !regions.contains(SetRegions.commitName(name)) { empty.append(server) }
        }
        return empty.sorted()
    }

    /// Rebuilds every empty stripe server of set `name` (`emptyServers`), one after the other.
    /// Safe with primaries about: while a stripe server lacks the set no primary can open it or
    /// complete a checkpoint (section 4 of docs/CLUSTER.md), and the target counts as holding the
    /// set only once its marker, written last, is durable.
    public func rebuildEmptyServers(set name: String) async throws(PMUError) -> [RebuildReport] {
        var reports: [RebuildReport] = []
        for server in try await emptyServers(set: name) { reports.append(try await rebuild(server: server, set: name)) }
        return reports
    }

    /// Every set of which some reachable server holds regions (NAME plus NAME.commit).
    public func setNames() async -> [String] {
        let lists = partition(await each(reachable) { _, client throws(PMUError) in try await client.list().map(\.name) }).values
        var names: Set<String> = []
        for list in lists.values {
            let all = Set(list)
            for region in list where region.hasSuffix(SetRegions.commitSuffix) {
                let base = String(region.dropLast(SetRegions.commitSuffix.count))
                if all.contains(base) { names.insert(base) }
            }
        }
        return names.sorted()
    }
}

extension ClusterBackup {
    /// Every server's piece of complete checkpoint `sequence`, in stripe order, regenerated from
    /// what `view` can reassemble (CRC-checked, the same code as degraded reads). Encoding is
    /// deterministic: the same payload and stamp give byte for byte the pieces the primary wrote,
    /// so rebuild and scrub repair restore exactly what the peers' headers describe.
    func regeneratedPieces(_ sequence: UInt64, view: SetView) async throws(PMUError) -> [ByteBuffer] {
        let checkpoint = try await reassemble(sequence, view: view)
        let header = view.pieces(of: sequence)[0].header
        let stamp = PieceBuilder.Stamp(
            setID: header.setID, sequence: sequence, previousComplete: header.previousComplete,
            timestampNanoseconds: header.timestampNanoseconds, servers: header.servers)
        return PieceBuilder.pieces(of: checkpoint.payload, geometry: header.geometry, stamp: stamp)
    }
}
