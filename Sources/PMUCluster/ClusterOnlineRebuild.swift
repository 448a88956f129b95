import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// Online rebuild: a primary that keeps checkpointing while empty (wiped or replaced) servers are
/// brought back. docs/CLUSTER.md section 6b.
extension ClusterPrimary {
    /// Opens set `name` for writing although the `rejoining` servers are empty (`Cluster.emptyServers`):
    /// each gets the set's regions (a peer's shape) and a descriptor carrying the current commit
    /// marker, then the primary opens as usual and writes every new checkpoint to them too. Their
    /// pieces of older complete checkpoints are missing until `backfill(server:)` writes them; until
    /// then readers treat those checkpoints as degraded there, exactly as with a lost server.
    public static func open(_ name: String, cluster: Cluster, rejoining: [String]) async throws(PMUError) -> ClusterPrimary {
        guard !rejoining.isEmpty else { return try await open(name, cluster: cluster) }
        let empty = Set(try await cluster.emptyServers(set: name))
        for server in rejoining where !empty.contains(server) {
            throw PMUError(.invalidArgument, "server \(server) is not an empty server of set \(name) (it holds some of its regions, is unreachable, or is not in its stripe); only an empty server can rejoin")
        }
        let view = try await SetView.read(name, cluster: cluster)
        await view.close(cluster: cluster)
        guard let peer = view.servers.values.sorted(by: { $0.server < $1.server }).first else {
            throw PMUError(.unrecoverable, "no server holds set \(name); nothing to rejoin")
        }
        var descriptor = view.descriptor
        descriptor.committed = view.servers.values.map(\.descriptor.committed).max() ?? 0
        for server in rejoining {
            let target = try cluster.client(server)
            try await cluster.recreateRegions(name, on: target, shapedLike: peer)
            let marker = try await target.openPrimary(SetRegions.commitName(name))
            do throws(PMUError) {
                _ = try await marker.checkpoint(descriptor.encode())
                try await marker.close()
            } catch {
                try? await marker.close()
                throw error
            }
        }
        return try await open(name, cluster: cluster)
    }

    /// `open(_:cluster:rejoining:)` with every empty server of the set (none: a plain open);
    /// returns the primary and the servers that rejoined, for the caller to `backfill`.
    public static func openRejoiningEmptyServers(_ name: String, cluster: Cluster) async throws(PMUError) -> (primary: ClusterPrimary, rejoined: [String]) {
        let empty = try await cluster.emptyServers(set: name)
        return (try await open(name, cluster: cluster, rejoining: empty), empty)
    }

    /// Writes `server`'s missing pieces of the kept complete checkpoints, oldest first, while this
    /// primary goes on checkpointing. Each piece is regenerated from the other servers (read-only,
    /// alongside checkpoints: the reassembly of degraded reads and rebuild), then appended in a turn
    /// of the primary's queue through its own writer: a new record in the ring, so it never
    /// overwrites anything kept (newer pieces are kept, and placement skips kept space), and it is
    /// used by readers only once its record is durable. Checkpoints that left the kept window in
    /// the meantime are skipped.
    public nonisolated func backfill(server: String) async throws(PMUError) -> RebuildReport {
        let full = try await SetView.read(name, cluster: cluster)
        do throws(PMUError) {
            let report = try await backfill(server: server, from: full)
            await full.close(cluster: cluster)
            return report
        } catch {
            await full.close(cluster: cluster)
            throw error
        }
    }

    private nonisolated func backfill(server: String, from full: SetView) async throws(PMUError) -> RebuildReport {
        guard let position = full.descriptor.servers.firstIndex(of: server) else {
            throw PMUError(.invalidArgument, "server \(server) is not one of set \(name)'s servers (\(full.descriptor.servers.joined(separator: ", ")))")
        }
        let held = Set(full.servers[server]?.pieces.keys.map { $0 } ?? [])
        var view = full
        view.servers[server] = nil
        view.missing[server] = PMUError(.serverUnavailable, "being rebuilt")
        let backup = try ClusterBackup(name: name, cluster: cluster)
        var report = RebuildReport(set: name, server: server, rebuilt: [], unrecoverable: [], bytesWritten: 0)
        for sequence in full.completeSequences.reversed() where !held.contains(sequence) {
            let piece: ByteBuffer
            do throws(PMUError) {
                piece = try await backup.regeneratedPieces(sequence, view: view)[position]
            } catch {
                guard error.code == .unrecoverable || error.code == .damaged else { throw error }
                report.unrecoverable.append(sequence)
                continue
            }
            if try await appendInTurn(piece, of: sequence, on: server) {
                report.rebuilt.append(sequence)
                report.bytesWritten += UInt64(piece.readableBytes)
            }
        }
        return report
    }
}
