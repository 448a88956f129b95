import Foundation
import PMUCluster
import PMUCore

/// Several real pmu-server processes on 127.0.0.1, each with its own data directory and its
/// embedded default secrets, and the cluster map that names them.
final class LocalCluster: @unchecked Sendable {
    let scratch: Scratch
    private(set) var servers: [ServerProcess]

    /// `arguments(i)`: extra pmu-server options for server i.
    init(_ count: Int, scratch: Scratch, arguments: (Int) -> [String] = { _ in [] }) throws {
        self.scratch = scratch
        servers = try (0..<count).map { try ServerProcess(dataDirectory: scratch.path + "/s\($0)", extraArguments: arguments($0)) }
    }

    /// Where `writeMap` puts the map (servers started with `--cluster-map` this path form on it).
    var mapPath: String { scratch.path + "/map.json" }

    func name(_ index: Int) -> String { "s\(index)" }

    /// The map for the servers' current addresses (a restarted server gets a new port).
    func map() throws -> ClusterMap {
        try ClusterMap(servers: servers.enumerated().map { index, server in
            ClusterMap.Server(name: name(index), address: server.endpoint.description, secretFile: server.dataDirectory + "/admin.secret")
        })
    }

    func writeMap() throws -> String {
        let path = mapPath
        try map().encoded().write(to: URL(fileURLWithPath: path))
        return path
    }

    func connect() async throws -> Cluster { await Cluster.connect(try map()) }

    func kill(_ indices: [Int]) { for index in indices { servers[index].kill9() } }

    func restart(_ indices: [Int]) throws { for index in indices { try servers[index].start() } }

    /// kill -9 server `index`, start it again under `launcher` (e.g. `env VAR=...`), rewrite the map.
    func restart(_ index: Int, launcher: [String]) throws {
        servers[index].kill9()
        servers[index].launcher = launcher
        try servers[index].start()
        _ = try writeMap()
    }

    /// kill -9, delete the data directory, start empty (a new admin secret is generated).
    func wipe(_ index: Int) throws {
        servers[index].kill9()
        try FileManager.default.removeItem(atPath: servers[index].dataDirectory)
        try servers[index].start()
    }

    /// Runs `body` with `indices` killed, then restarts them (even if `body` throws).
    func without<T>(_ indices: [Int], _ body: () async throws -> T) async throws -> T {
        kill(indices)
        do {
            let result = try await body()
            try restart(indices)
            return result
        } catch {
            try restart(indices)
            throw error
        }
    }
}

func combinations(_ n: Int, _ size: Int) -> [[Int]] {
    if size == 0 { return [[]] }
    if n < size { return [] }
    return combinations(n - 1, size) + combinations(n - 1, size - 1).map { $0 + [n - 1] }
}
