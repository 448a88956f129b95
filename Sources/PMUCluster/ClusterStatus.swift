import PMUClient
import PMUCore
import PMUStripe

/// A set as `pmuctl cluster status` shows it.
public struct SetStatus: Sendable {
    public var name: String
    public var descriptor: SetDescriptor
    /// Each stripe server: nil if it holds the set, else why not.
    public var servers: [(name: String, problem: String?)]
    /// Complete checkpoints, oldest first.
    public var checkpoints: [ClusterCheckpointInfo]
    /// The newest scrub pass's record on any reachable server (nil: never scrubbed).
    public var scrub: ScrubRecord?
}

extension Cluster {
    public func status(set name: String) async throws(PMUError) -> SetStatus {
        let backup = try ClusterBackup(name: name, cluster: self)
        var status = try await backup.withView { (view: SetView) async throws(PMUError) in
            let servers = view.descriptor.servers.map { server in
                (name: server, problem: view.missing[server].map { error in
                    // Reachable and without the set: wiped or replaced; say what brings it back.
                    error.code == .unknownRegion && clients[server] != nil
                        ? "holds no regions of the set (empty: wiped or replaced?); rebuild it with pmuctl cluster rebuild \(server), or let pmuctl cluster scrub --rebuild-empty do it"
                        : "\(error.code): \(error.message)"
                })
            }
            let checkpoints = view.completeSequences.reversed().map { backup.info(of: $0, in: view) }
            return SetStatus(name: name, descriptor: view.descriptor, servers: servers, checkpoints: checkpoints, scrub: nil)
        }
        status.scrub = await scrubRecord(set: name, setID: status.descriptor.setID)
        return status
    }

    /// The newest scrub pass of set `name` as figures for a metrics exporter (`ScrubRecord.figures`;
    /// empty when the set was never scrubbed or no server holding it answers).
    public func scrubFigures(set name: String) async throws(PMUError) -> [ScrubFigure] {
        let status = try await status(set: name)
        return status.scrub?.figures ?? []
    }
}
