import Foundation
import NIOCore
import PMUClient
import PMUCore

/// Forming on a server (docs/CLUSTER.md section 7b): the primary sends the whole checkpoint once,
/// to one pmu-server of the set, which forms the pieces with the same `ClusterPrimary` code,
/// stores them on every server and commits before it answers.
public struct ServerFormingOptions: Sendable {
    /// The server to send the checkpoint to; nil: the map's `formingServer`, or else the first
    /// server of the map (in map order) this cluster reached.
    public var server: String?
    /// How long the forming server may take to answer FORM_COMMIT (it answers only once the
    /// checkpoint is complete on every server): the forming connection's request timeout.
    public var timeout: Duration = .seconds(600)

    public init(server: String? = nil, timeout: Duration = .seconds(600)) {
        self.server = server
        self.timeout = timeout
    }
}

extension Cluster {
    /// The server a checkpoint of this cluster is formed on, by `options.server`, the map's
    /// `formingServer`, or the first reachable server of the map.
    /// A server being rebuilt (`excluding`) cannot be the one that rebuilds it.
    public func formingServer(_ options: ServerFormingOptions = ServerFormingOptions(), excluding: String? = nil) throws(PMUError) -> String {
        if let named = options.server ?? map.formingServer.flatMap({ $0 == excluding ? nil : $0 }) {
            guard named != excluding else {
                throw PMUError(.invalidArgument, "server \(named) cannot rebuild itself; name another forming server")
            }
            guard map.server(named: named) != nil else {
                throw PMUError(.invalidArgument, "forming server \(named) is not in the cluster map")
            }
            _ = try client(named)
            return named
        }
        guard let first = reachable.first(where: { $0 != excluding }) else {
            throw PMUError(.serverUnavailable, "no server of the cluster map is reachable to form the checkpoint on: \(unreachable.summary)")
        }
        return first
    }

    /// Saves `payload` as the next checkpoint of striped set `set`, formed on a server. Returns
    /// once it is complete on every server of the set; any error means it is not, and the
    /// previous complete checkpoint stays the newest. Uses a connection of its own (with
    /// `options.timeout` for the forming server's answer).
    /// Online rebuild through the server that forms `set` (docs/CLUSTER.md 6b): empty `server`
    /// rejoins the set through that server's primary of it and is backfilled, while primaries go
    /// on forming checkpoints there. Returns once the backfill is done.
    public func rebuildThroughFormingServer(_ server: String, set: String, options: ServerFormingOptions = ServerFormingOptions()) async throws(PMUError) -> RebuildReport {
        let (name, client) = try await formingConnection(options, excluding: server)
        do throws(PMUError) {
            let json = try await client.formRebuild(set: set, server: server)
            await client.disconnect()
            guard let object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any],
                let rebuilt = object["rebuilt"] as? [NSNumber], let unrecoverable = object["unrecoverable"] as? [NSNumber],
                let bytes = object["bytesWritten"] as? NSNumber
            else {
                throw PMUError(.protocolViolation, "FORM_REBUILD reply is not a rebuild report: \(json.prefix(200))")
            }
            return RebuildReport(set: set, server: server, rebuilt: rebuilt.map(\.uint64Value), unrecoverable: unrecoverable.map(\.uint64Value), bytesWritten: bytes.uint64Value)
        } catch {
            await client.disconnect()
            throw PMUError(error.code, "online rebuild of \(server) in set \(set) through server \(name): \(error.message)")
        }
    }

    /// A connection of its own to the forming server, with `options.timeout` for its answers.
    private func formingConnection(_ options: ServerFormingOptions, excluding: String? = nil) async throws(PMUError) -> (String, PMUClient) {
        let name = try formingServer(options, excluding: excluding)
        var configuration = try map.configuration(for: map.server(named: name)!)
        configuration.requestTimeout = options.timeout
        return (name, try await PMUClient.connect(configuration))
    }

    public func checkpointFormedOnServer(_ set: String, payload: ByteBuffer, options: ServerFormingOptions = ServerFormingOptions()) async throws(PMUError) -> (server: String, formed: FormedCheckpoint) {
        let (name, client) = try await formingConnection(options)
        do throws(PMUError) {
            let formed = try await client.formCheckpoint(set: set, payload: payload)
            await client.disconnect()
            return (name, formed)
        } catch {
            await client.disconnect()
            throw PMUError(error.code, "checkpoint of set \(set) formed on server \(name): \(error.message)")
        }
    }
}
