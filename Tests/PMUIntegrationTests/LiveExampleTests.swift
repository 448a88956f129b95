import Foundation
import PMUClient
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A child process whose stdout is read line by line as it is written.
final class LineProcess: @unchecked Sendable {
    let process = Process()
    private let reader: Thread

    init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        let handle = out.fileHandleForReading
        let box = LineSink()
        reader = Thread {
            while true {
                let data = handle.availableData
                if data.isEmpty { return }
                box.append(data)
            }
        }
        sink = box
        try process.run()
        reader.start()
    }

    private let sink: LineSink

    var output: [String] { sink.lines }

    /// Waits until a line satisfies `predicate` (bounded by `timeoutSeconds`); returns it.
    func waitForLine(timeoutSeconds: Double = 120, _ predicate: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if let line = sink.lines.first(where: predicate) { return line }
            if !process.isRunning, let line = sink.lines.first(where: predicate) { return line }
            if !process.isRunning { return nil }
            usleep(2000)
        }
        return nil
    }

    func kill9() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func wait(timeoutSeconds: Double = 120) -> Int32? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { kill9(); return nil }
        return process.terminationStatus
    }

    deinit { kill9() }
}

final class LineSink: @unchecked Sendable {
    private let lock = NSLock()
    private var done: [String] = []
    private var partial = Data()

    func append(_ data: Data) {
        lock.lock()
        defer { lock.unlock() }
        partial.append(data)
        while let newline = partial.firstIndex(of: 0x0A) {
            done.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
            partial.removeSubrange(partial.startIndex...newline)
        }
    }

    var lines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return done
    }
}

/// The number after `prefix` in `line` ("snapshot 3 durable" -> 3 for prefix "snapshot ").
func number(after prefix: String, in line: String) -> UInt64? {
    guard let range = line.range(of: prefix) else { return nil }
    return UInt64(line[range.upperBound...].prefix { $0.isNumber })
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct LiveExampleTests {
    let scratch = Scratch()

    func connectionArguments(_ server: ServerProcess) -> [String] {
        ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret", "--transport", testTransport.rawValue]
    }

    @Test func liveKilledMidTransferStandbyResumesFromThePreviousSnapshot() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        // A slow transfer (4 MB/s) so that snapshot 3 is surely in flight when the kill lands.
        let live = try LineProcess(binDirectory + "/pmu-example-live", ["--arena-mib", "16", "--every-ms", "100", "--rate-mbps", "4",
                                                                       "--updates-per-second", "2000", "--target", "grid"] + connectionArguments(server))
        let started = live.waitForLine { $0.hasPrefix("snapshot 3 started") }
        live.kill9()
        #expect(started != nil, "live output: \(live.output)")
        let durable = live.output.compactMap { $0.contains("durable") ? number(after: "snapshot ", in: $0) : nil }
        #expect(durable == [1, 2], "live output: \(live.output)")
        let standby = try run(binDirectory + "/pmu-example-standby", ["--failure-after-ms", "500", "--run-ms", "300", "--target", "grid"] + connectionArguments(server))
        let text = String(decoding: standby.stdout, as: UTF8.self)
        #expect(standby.status == 0, "\(text)\(standby.stderr)")
        #expect(text.contains("taking over") && text.contains("resumed from snapshot 2 ") && text.contains("verified by recomputation"), "\(text)")
    }

    @Test func plannedHandOverLosesNoStep() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let live = try LineProcess(binDirectory + "/pmu-example-live", ["--arena-mib", "8", "--every-ms", "100", "--run-ms", "1500", "--hand-over", "--updates-per-second", "2000",
                                                                       "--target", "grid"] + connectionArguments(server))
        // The failure detector's limit is far away: only the hand-over record can trigger the takeover.
        let standby = try LineProcess(binDirectory + "/pmu-example-standby", ["--failure-after-ms", "60000", "--run-ms", "300", "--target", "grid"] + connectionArguments(server))
        #expect(live.wait() == 0, "\(live.output)")
        #expect(standby.wait() == 0, "\(standby.output)")
        let handed = try #require(live.output.first { $0.hasPrefix("handed over at snapshot") }, "\(live.output)")
        let sequence = try #require(number(after: "snapshot ", in: handed))
        let steps = try #require(number(after: "with ", in: handed))
        #expect(standby.output.contains { $0.contains("planned hand-over at snapshot \(sequence) with \(steps) steps") }, "\(standby.output)")
        #expect(standby.output.contains { $0.hasPrefix("resumed from snapshot \(sequence) ") && $0.contains("\(steps) steps") && $0.contains("verified") }, "\(standby.output)")
        #expect(standby.output.contains("hand-over: no step lost"), "\(standby.output)")
    }
}
