import ArgumentParser
import Foundation
import PMUClient
import PMUCore

/// `pmuctl pair`: the state of a server's pair, and takeover of its partner's portion.
struct PairCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pair", abstract: "Write mirroring between two servers: status, takeover and giveback.",
        subcommands: [Status.self, Takeover.self, Giveback.self])

    struct Status: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Roles, mirror channel (lag, unpersisted bytes, last trim) and mirror logs of a server.")
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            try await PairCommand.run(connection, { try await $0.pairStatus() }, summary: PairCommand.printSummary)
        }
    }

    struct Takeover: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare the partner failed: fence it, replay its mirror log into its portion, persist, and serve the portion.",
            discussion: "Run against the surviving server (--server). Returns once the portion is served at the server's --takeover-listen address.")
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            try await PairCommand.run(connection, { try await $0.pairTakeover() }) { json in
                let report = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] ?? [:]
                print("took over portion \(report["portion"] ?? "?"): replayed \(report["replayedRecords"] ?? 0) writes (\(report["replayedBytes"] ?? 0) bytes) in \(report["milliseconds"] ?? 0) ms; serving at \(report["serving"] ?? "?")")
            }
        }
    }

    struct Giveback: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hand a taken-over portion back to its recovered owner: stop serving it, persist it, release it.",
            discussion: "Run against the server that took the portion over (--server). When it returns, start the owner on its data directory: it mirrors to this server again.")
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            try await PairCommand.run(connection, { try await $0.pairGiveback() }) { json in
                let report = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] ?? [:]
                print("gave portion \(report["portion"] ?? "?") (\(report["portionDirectory"] ?? "?")) back: \(report["regionsPersisted"] ?? 0) regions persisted in \(report["milliseconds"] ?? 0) ms; start its owner now")
            }
        }
    }

    /// The server answers JSON: printed as is with --json, else summarised.
    static func run(_ connection: ConnectionOptions, _ call: (PMUClient) async throws -> String, summary: (String) -> Void) async throws {
        let json = try await withClient(connection, call)
        if connection.json { print(json) } else { summary(json) }
    }

    static func printSummary(_ json: String) {
        guard let status = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else {
            print(json)
            return
        }
        print("portion \(status["portion"] ?? "?") (\(status["dataDirectory"] ?? "?")): \((status["role"] as? [String] ?? []).joined(separator: ", "))")
        if let mirror = status["mirroringTo"] as? [String: Any] {
            print("  mirroring to \(mirror["partner"] ?? "?"): \((mirror["connected"] as? Bool) == true ? "connected (\(mirror["channels"] ?? 0) channels)" : "NOT connected (\(mirror["lastError"] ?? ""))"), unpersisted \(mirror["unpersistedWrites"] ?? 0) writes / \(mirror["unpersistedBytes"] ?? 0) bytes, trimmed through \(mirror["trimmedThrough"] ?? 0)")
        }
        for log in status["mirrorLogs"] as? [[String: Any]] ?? [] {
            print("  mirror log of \(log["portion"] ?? "?"): \(log["liveRecords"] ?? 0) live records, \(log["usedBytes"] ?? 0) bytes in \(log["segments"] ?? 0) segments\((log["takenOver"] as? Bool) == true ? ", TAKEN OVER" : ""), owner \(log["owner"] ?? "?")")
        }
        if let taken = status["takenOver"] as? [String: Any] {
            print("  serving taken-over portion \(taken["portion"] ?? "?") at \(taken["serving"] ?? "?")")
        }
        if let failover = status["failover"] as? [String: Any] {
            printFailover(failover)
        }
    }

    /// The failover controller's part (issue 13): role, addresses, heartbeats, epoch, last failover.
    static func printFailover(_ f: [String: Any]) {
        let rtt = (f["heartbeatRoundTripMicroseconds"] as? Int).map { "\($0) us" } ?? "-"
        print("  failover: \(f["memberId"] ?? "?") is \(f["role"] ?? "?")\((f["serving"] as? Bool) == true ? " (serving)" : "") (started as \(f["configuredRole"] ?? "?")), epoch \(f["epoch"] ?? 0)\(f["fenced"].map { ", FENCED: \($0)" } ?? "")")
        print("    heartbeat \(f["heartbeatAddress"] ?? "?") -> \(f["peerHeartbeatAddress"] ?? "?") every \(f["heartbeatIntervalMilliseconds"] ?? "?") ms: peer \(f["peerState"] ?? "?"), misses \(f["misses"] ?? 0)/\(f["missLimit"] ?? "?"), round trip \(rtt)")
        print("    service address \(f["serviceAddress"] ?? "-"), authority \(f["authority"] ?? "none"), lease \(f["leaseRemainingMilliseconds"].map { "\($0) ms left" } ?? "-"), acknowledging writes: \((f["acknowledgingWrites"] as? Bool) == true ? "yes" : "no")")
        if let last = f["lastFailover"] as? [String: Any] {
            print("    last failover: after \(last["misses"] ?? "?") misses, \(last["takeoverMilliseconds"] ?? "?") ms, epoch \(last["epoch"] ?? 0)\(last["error"].map { ", FAILED: \($0)" } ?? "")")
        }
    }
}
