import ArgumentParser
import Foundation
import PMUClient
import PMUCore

/// `pmuctl stats`: the server's INFO (SERVER_INFO), like Redis's INFO: one `# Section` per
/// group, `name: value` lines under it; `--json` prints the server's JSON object as it came.
struct StatsCommand: PMUCtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Server version, uptime, counts, limits, configuration, data-directory free space and transport (admins only).")
    @OptionGroup var connection: ConnectionOptions

    func execute() async throws {
        let json = try await withClient(connection) { try await $0.serverInfo() }
        if connection.json { print(json) } else { print(Self.text(json), terminator: "") }
    }

    /// The INFO object as sections: scalars at the top under `# server`, then one section per
    /// nested object, keys sorted.
    static func text(_ json: String) -> String {
        guard case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)) else { return json + "\n" }
        var out = "# server\n"
        let keys = object.keys.sorted()
        for key in keys {
            if case .object = object[key] { continue }
            out += "\(key): \(object[key]?.text ?? "-")\n"
        }
        for key in keys {
            guard case .object(let section)? = object[key] else { continue }
            out += "\n# \(key)\n"
            for name in section.keys.sorted() { out += "\(name): \(section[name]?.text ?? "-")\n" }
        }
        return out
    }
}

/// Any JSON value, decoded without Foundation's bridged types (whose Bool and number are one
/// type on Linux).
enum JSONValue: Decodable {
    case null, bool(Bool), integer(Int64), unsigned(UInt64), double(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        if let container = try? decoder.singleValueContainer() {
            if container.decodeNil() { self = .null; return }
            if let value = try? container.decode(Bool.self) { self = .bool(value); return }
            if let value = try? container.decode(Int64.self) { self = .integer(value); return }
            if let value = try? container.decode(UInt64.self) { self = .unsigned(value); return }
            if let value = try? container.decode(Double.self) { self = .double(value); return }
            if let value = try? container.decode(String.self) { self = .string(value); return }
            if let value = try? container.decode([JSONValue].self) { self = .array(value); return }
        }
        self = .object(try decoder.singleValueContainer().decode([String: JSONValue].self))
    }

    var text: String {
        switch self {
        case .null: "-"
        case .bool(let value): "\(value)"
        case .integer(let value): "\(value)"
        case .unsigned(let value): "\(value)"
        case .double(let value): "\(value)"
        case .string(let value): value
        case .array(let items): items.map(\.text).joined(separator: ",")
        case .object(let items): items.keys.sorted().map { "\($0)=\(items[$0]!.text)" }.joined(separator: ",")
        }
    }
}
