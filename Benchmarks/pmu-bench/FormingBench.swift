import ArgumentParser
import Foundation
import NIOCore
import PMUClient
import PMUCluster
import PMUStripe

#if canImport(Glibc)
import Glibc
#endif

// Issue 14: the same large striped checkpoint formed in the primary (client library) against
// formed on a pmu-server of the set (started with --cluster-map): the primary's bytes sent, its
// CPU time and the time to complete.

struct Forming: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A large striped checkpoint formed in the primary vs on a server: primary bytes written to sockets, CPU seconds, seconds to complete.")
    @Option var map: String
    @Option var k = 4
    @Option var m = 1
    @Option var total = 1 << 30
    @Option(help: "Checkpoints per variant (the figures are of the median by time).") var rounds = 3
    @Option(name: .customLong("forming-server"), help: "Server to form on (default: the map's formingServer or first server).") var formingServer: String?

    struct Sample { var seconds: Double; var cpu: Double; var bytesWritten: UInt64 }

    func execute() async throws {
        let clusterMap = try ClusterMap.load(path: map)
        let cluster = await Cluster.connect(clusterMap)
        let name = "bench-forming-\(getpid())"
        let redundancy = Redundancy(k: k, m: m)
        try await cluster.createCheckpointSet(name, options: CheckpointSetOptions(redundancy: redundancy, maxCheckpointBytes: UInt64(total), keepNewest: 1))
        let payload = ByteBuffer(bytes: (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) })

        var inPrimary: [Sample] = []
        let primary = try await ClusterPrimary.open(name, cluster: cluster)
        for _ in 0..<rounds {
            inPrimary.append(try await Self.measure { _ = try await primary.checkpoint(payload) })
        }
        let piecesSent = await primary.lastPieceBytes
        await primary.close()

        var onServer: [Sample] = []
        var server = ""
        for _ in 0..<rounds {
            onServer.append(try await Self.measure {
                server = try await cluster.checkpointFormedOnServer(name, payload: payload, options: ServerFormingOptions(server: formingServer)).server
            })
        }
        guard try await ClusterBackup(name: name, cluster: cluster).latest()?.payload == payload else { throw PMUError(.damaged, "read back differs") }
        try await cluster.deleteCheckpointSet(name)
        await cluster.disconnect()
        func figures(_ samples: [Sample]) -> [String: Any] {
            let median = samples.sorted { $0.seconds < $1.seconds }[samples.count / 2]
            return ["seconds": median.seconds, "cpu_seconds": median.cpu, "bytes_written": median.bytesWritten, "gbps": Double(total) / median.seconds / 1e9]
        }
        emit([
            "bytes": total, "k": k, "m": m, "servers": clusterMap.servers.count, "rounds": rounds, "formed_on": server,
            "piece_bytes": piecesSent, "in_primary": figures(inPrimary), "on_server": figures(onServer),
        ])
    }

    /// Wall time, this process's CPU time (user + system, getrusage) and bytes it wrote through
    /// write/send system calls (/proc/self/io wchar: here only its sockets) while `body` runs.
    static func measure(_ body: () async throws -> Void) async throws -> Sample {
        let (cpu0, written0) = (cpuSeconds(), wchar())
        let start = ContinuousClock.now
        try await body()
        let seconds = microseconds(since: start) / 1e6
        return Sample(seconds: seconds, cpu: cpuSeconds() - cpu0, bytesWritten: wchar() - written0)
    }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return s(usage.ru_utime) + s(usage.ru_stime)
    }

    static func wchar() -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/io", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("wchar:") {
            return UInt64(line.dropFirst(6).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return 0
    }
}
