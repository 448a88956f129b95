import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// Connections to the servers of a cluster map. Servers that cannot be reached are recorded with
/// the reason, not thrown: readers and status work with whatever is left.
public final class Cluster: Sendable {
    public let map: ClusterMap
    let clients: [String: PMUClient]
    /// Servers of the map that could not be connected to, with why.
    public let unreachable: [String: PMUError]

    private init(map: ClusterMap, clients: [String: PMUClient], unreachable: [String: PMUError]) {
        self.map = map
        self.clients = clients
        self.unreachable = unreachable
    }

    /// Connects to every server of the map in parallel.
    public static func connect(_ map: ClusterMap) async -> Cluster {
        var clients: [String: PMUClient] = [:]
        var unreachable: [String: PMUError] = [:]
        await withTaskGroup(of: (String, Result<PMUClient, PMUError>).self) { group in
            for server in map.servers {
                group.addTask {
                    do throws(PMUError) {
                        return (server.name, .success(try await PMUClient.connect(try map.configuration(for: server))))
                    } catch {
                        return (server.name, .failure(error))
                    }
                }
            }
            for await (name, result) in group {
                switch result {
                case .success(let client): clients[name] = client
                case .failure(let error): unreachable[name] = error
                }
            }
        }
        return Cluster(map: map, clients: clients, unreachable: unreachable)
    }

    public var reachable: [String] { map.servers.map(\.name).filter { clients[$0] != nil } }

    public func client(_ name: String) throws(PMUError) -> PMUClient {
        guard let client = clients[name] else {
            let why = unreachable[name].map { "\($0.code): \($0.message)" } ?? "not in the cluster map"
            throw PMUError(.serverUnavailable, "server \(name) is unavailable (\(why))")
        }
        return client
    }

    public func disconnect() async {
        for client in clients.values { await client.disconnect() }
    }

    /// Runs `body` for each named server concurrently; returns each server's result.
    func each<T: Sendable>(_ names: [String], _ body: @escaping @Sendable (String, PMUClient) async throws(PMUError) -> T) async -> [String: Result<T, PMUError>] {
        var results: [String: Result<T, PMUError>] = [:]
        await withTaskGroup(of: (String, Result<T, PMUError>).self) { group in
            for name in names {
                group.addTask {
                    do throws(PMUError) {
                        return (name, .success(try await body(name, try self.client(name))))
                    } catch {
                        return (name, .failure(error))
                    }
                }
            }
            for await (name, result) in group { results[name] = result }
        }
        return results
    }
}

extension Dictionary where Key == String, Value == PMUError {
    /// "a (CONNECTION_CLOSED: ...), b (...)" for error messages that name what is missing.
    var summary: String {
        sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value.code): \($0.value.message))" }.joined(separator: ", ")
    }
}

/// Splits per-server results into values and failures.
func partition<T>(_ results: [String: Result<T, PMUError>]) -> (values: [String: T], failures: [String: PMUError]) {
    var values: [String: T] = [:]
    var failures: [String: PMUError] = [:]
    for (name, result) in results {
        switch result {
        case .success(let value): values[name] = value
        case .failure(let error): failures[name] = error
        }
    }
    return (values, failures)
}
