import Foundation
import PMUClient
import PMUCore
import PMUStripe
import PMUTransport

/// The servers of a cluster, read by primaries, backups and pmuctl alike. A small JSON file:
///
///     {
///       "servers": [
///         { "name": "a", "address": "127.0.0.1:7701", "transport": "tcp",
///           "client": "admin", "secretFile": "a/admin.secret" },
///         ...
///       ],
///       "defaults": { "k": 4, "m": 1, "copies": 1, "subsegmentBytes": 1048576 },
///       "formingServer": "a"
///     }
///
/// `secretFile` (relative paths are relative to the map's folder) is the credentials reference:
/// the map never holds a secret itself. Names identify servers in every piece header, so a server
/// may move to a new address by editing the map; it must keep its name.
public struct ClusterMap: Sendable, Equatable {
    public struct Server: Sendable, Equatable, Codable {
        public var name: String
        public var address: String
        public var transport: String?
        public var client: String?
        public var secretFile: String

        public init(name: String, address: String, transport: String? = "tcp", client: String? = "admin", secretFile: String) {
            self.name = name
            self.address = address
            self.transport = transport
            self.client = client
            self.secretFile = secretFile
        }
    }

    public struct Defaults: Sendable, Equatable, Codable {
        public var k: Int?
        public var m: Int?
        public var copies: Int?
        public var subsegmentBytes: Int?

        public init(k: Int? = nil, m: Int? = nil, copies: Int? = nil, subsegmentBytes: Int? = nil) {
            self.k = k
            self.m = m
            self.copies = copies
            self.subsegmentBytes = subsegmentBytes
        }
    }

    public var servers: [Server]
    public var defaults: Defaults
    /// The server primaries send whole checkpoints to when they form on a server (section 7b);
    /// nil: the first reachable server of the map.
    public var formingServer: String?
    /// Folder relative secret-file paths are resolved against.
    public var baseDirectory: String

    public init(servers: [Server], defaults: Defaults = Defaults(), formingServer: String? = nil, baseDirectory: String = ".") throws(PMUError) {
        self.servers = servers
        self.defaults = defaults
        self.formingServer = formingServer
        self.baseDirectory = baseDirectory
        try validate()
    }

    public static func load(path: String) throws(PMUError) -> ClusterMap {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PMUError(.invalidArgument, "cannot read cluster map \(path)")
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw PMUError(.invalidArgument, "cluster map \(path) is not valid: \(Self.describe(error)); see docs/CLUSTER.md for the format")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try ClusterMap(servers: file.servers, defaults: file.defaults ?? Defaults(), formingServer: file.formingServer, baseDirectory: base)
    }

    public func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(File(servers: servers, defaults: defaults, formingServer: formingServer))) ?? Data()
    }

    public func server(named name: String) -> Server? { servers.first { $0.name == name } }

    /// The redundancy the map suggests when a set is created without one.
    public var defaultRedundancy: Redundancy {
        Redundancy(k: defaults.k ?? max(1, min(4, servers.count - 1)), m: defaults.m ?? (servers.count > 1 ? 1 : 0), copies: defaults.copies ?? 1)
    }

    func validate() throws(PMUError) {
        guard !servers.isEmpty else { throw PMUError(.invalidArgument, "cluster map lists no servers") }
        guard servers.count <= Redundancy.maxServers else {
            throw PMUError(.invalidArgument, "cluster map lists \(servers.count) servers; at most \(Redundancy.maxServers)")
        }
        var seen: Set<String> = []
        for server in servers {
            guard !server.name.isEmpty, server.name.utf8.count <= 64, server.name.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }) else {
                throw PMUError(.invalidArgument, "cluster map: server name \(NameRules.quoted(server.name)) must be 1 to 64 letters, digits, '-', '_' or '.'")
            }
            guard seen.insert(server.name).inserted else {
                throw PMUError(.invalidArgument, "cluster map: server name \(NameRules.quoted(server.name)) appears twice")
            }
            do {
                _ = try Endpoint(parsing: server.address)
            } catch {
                throw PMUError(.invalidArgument, "cluster map: server \(server.name): address \(NameRules.quoted(server.address)) is not HOST:PORT")
            }
            if let transport = server.transport, TransportChoice(rawValue: transport) == nil {
                throw PMUError(.invalidArgument, "cluster map: server \(server.name): transport \(NameRules.quoted(transport)) is not tcp, rdma or auto")
            }
        }
        if let formingServer, !seen.contains(formingServer) {
            throw PMUError(.invalidArgument, "cluster map: formingServer \(NameRules.quoted(formingServer)) is not one of its servers")
        }
    }

    /// How to connect to `server`, with its secret read from its credentials reference.
    public func configuration(for server: Server) throws(PMUError) -> ClientConfiguration {
        let path = server.secretFile.hasPrefix("/") ? server.secretFile : baseDirectory + "/" + server.secretFile
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PMUError(.invalidArgument, "server \(server.name): cannot read secret file \(path) named by the cluster map")
        }
        let secret = try SecretsTable.parseClientSecret(String(decoding: data, as: UTF8.self), source: path)
        let endpoint: Endpoint
        do {
            endpoint = try Endpoint(parsing: server.address)
        } catch {
            throw PMUError(.invalidArgument, "server \(server.name): bad address \(server.address)")
        }
        var configuration = ClientConfiguration(endpoint: endpoint, clientId: server.client ?? "admin", secret: secret)
        configuration.transport = server.transport.flatMap(TransportChoice.init(rawValue:)) ?? .tcp
        return configuration
    }

    struct File: Codable {
        var servers: [Server]
        var defaults: Defaults?
        var formingServer: String?
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "missing field \"\(key.stringValue)\" at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)"
        case DecodingError.dataCorrupted(let context):
            return context.debugDescription
        default:
            return "\(error)"
        }
    }
}
