import ArgumentParser
import Foundation
import NIOCore
import PMUClient

// The client side of the failover tests and bench (scripts/test-failover-netns.sh,
// scripts/bench-failover.sh): a writer through ReconnectingClient that logs every acknowledged
// write, and a checker that finds each logged write present, byte for byte.

/// The bytes of slot `index` of `region`: derived from both, so a slot from another round or
/// another slot never passes for this one.
func failoverRecord(region: String, index: Int, bytes: Int) -> [UInt8] {
    var state = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
    for byte in region.utf8 { state = (state ^ UInt64(byte)) &* 0x1000_0000_01B3 }
    return (0..<bytes).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 56)
    }
}

extension Connection {
    func configuration() throws -> ClientConfiguration {
        guard let data = FileManager.default.contents(atPath: secretFile) else { throw PMUError(.invalidArgument, "no secret file \(secretFile)") }
        let secret = try SecretsTable.parseClientSecret(String(decoding: data, as: UTF8.self), source: secretFile)
        var configuration = ClientConfiguration(endpoint: try Endpoint(parsing: server), clientId: client, secret: secret)
        configuration.transport = try TransportChoice(parsing: transport)
        configuration.requestTimeout = .seconds(3)
        configuration.connectTimeout = .seconds(2)
        return configuration
    }
}

struct FailoverWriter: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write 4 KiB slots in order through the reconnecting client; log each acknowledged one (region, index, ms since start, wall-clock ms).")
    @Option var region: String
    @Option var count = 2000
    @Option var seconds = 20.0
    @Option(name: .customLong("slot-bytes")) var slotBytes = 4096
    @Option(name: .customLong("ack-log"), help: "Appended with one line per acknowledged write: REGION INDEX MS_SINCE_START WALL_MS.") var ackLog: String
    @Option(name: .customLong("stop-file"), help: "Stop once this file exists (the test's signal).") var stopFile: String?
    @Option(name: .customLong("max-backoff-ms"), help: "Longest pause between reconnection attempts.") var maxBackoffMilliseconds = 50
    @Option(name: .customLong("attempt-ms"), help: "Connect + authenticate limit of one reconnection attempt.") var attemptMilliseconds = 250
    @Option(name: .customLong("request-timeout-ms"), help: "A write unanswered this long is given up and retried on a new connection (after a partition the old connection is silent until TCP retransmits reach the new host, 1.6-3.2 s later).") var requestTimeoutMilliseconds = 1000
    @OptionGroup var connection: Connection

    func execute() async throws {
        var configuration = try connection.configuration()
        configuration.requestTimeout = .milliseconds(requestTimeoutMilliseconds)
        var policy = ReconnectingClient.Policy(endpoints: [configuration.endpoint])
        policy.maxBackoff = .milliseconds(maxBackoffMilliseconds)
        policy.attemptTimeout = .milliseconds(attemptMilliseconds)
        let client = ReconnectingClient(configuration, policy: policy)
        try await client.create(region, sizeBytes: UInt64(count * slotBytes))
        FileManager.default.createFile(atPath: ackLog, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: ackLog))
        try log.seekToEnd()
        let started = ContinuousClock.now
        var last = started
        var maxGap = Duration.zero
        var written = 0
        for index in 0..<count where ContinuousClock.now - started < .seconds(seconds) {
            if let stopFile, FileManager.default.fileExists(atPath: stopFile) { break }
            do {
                try await client.write(region, at: UInt64(index * slotBytes), failoverRecord(region: region, index: index, bytes: slotBytes))
            } catch {
                FileHandle.standardError.write(Data("write \(index) not acknowledged: \(error)\n".utf8))
                break
            }
            let now = ContinuousClock.now
            maxGap = max(maxGap, now - last)
            last = now
            written += 1
            let ms = Double((now - started).components.attoseconds) / 1e15 + Double((now - started).components.seconds) * 1000
            let wall = UInt64(Date().timeIntervalSince1970 * 1000)
            log.write(Data("\(region) \(index) \(String(format: "%.1f", ms)) \(wall)\n".utf8))
        }
        try log.close()
        emit([
            "region": region, "acknowledged": written, "reconnects": await client.reconnects,
            "max_gap_ms": Double(maxGap.components.seconds) * 1000 + Double(maxGap.components.attoseconds) / 1e15,
        ])
        await client.disconnect()
    }
}

struct FailoverCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read back every write an ack log names; exit 1 if any is missing or different.")
    @Option(name: .customLong("ack-log")) var ackLog: String
    @Option(name: .customLong("slot-bytes")) var slotBytes = 4096
    @OptionGroup var connection: Connection

    func execute() async throws {
        let text = try String(contentsOfFile: ackLog, encoding: .utf8)
        let client = ReconnectingClient(try connection.configuration())
        var opened = Set<String>()
        var checked = 0
        var lost: [String] = []
        for line in text.split(separator: "\n").prefix(10_000_000) {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let index = Int(fields[1]) else { continue }
            let region = String(fields[0])
            if !opened.contains(region) {
                try await client.open(region, rights: .read)
                opened.insert(region)
            }
            let bytes = try await client.read(region, at: UInt64(index * slotBytes), length: slotBytes)
            if Array(buffer: bytes) != failoverRecord(region: region, index: index, bytes: slotBytes) { lost.append("\(region)/\(index)") }
            checked += 1
        }
        await client.disconnect()
        emit(["checked": checked, "lost": lost.count, "lost_first": Array(lost.prefix(10))])
        if !lost.isEmpty { throw ExitCode(1) }
    }
}
