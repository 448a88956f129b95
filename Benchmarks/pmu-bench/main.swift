import ArgumentParser
import Foundation
import NIOCore
import PMUClient

// pmu-bench: PMU's side of each benchmark workload, against a running pmu-server. Prints one JSON
// object per run; scripts/bench.sh runs it next to the baselines (raw TCP, local msync, Redis) and
// computes the ratios. Every loop is bounded by --count / --seconds.

struct Connection: ParsableArguments {
    @Option var server = "127.0.0.1:7690"
    @Option var client = "admin"
    @Option(name: .customLong("secret-file")) var secretFile = "pmu-data/admin.secret"
    @Option(help: "tcp, rdma or auto.") var transport = "tcp"

    func connect() async throws -> PMUClient {
        guard let data = FileManager.default.contents(atPath: secretFile) else { throw PMUError(.invalidArgument, "no secret file \(secretFile)") }
        let secret = try SecretsTable.parseClientSecret(String(decoding: data, as: UTF8.self), source: secretFile)
        var configuration = ClientConfiguration(endpoint: try Endpoint(parsing: server), clientId: client, secret: secret)
        configuration.transport = try TransportChoice(parsing: transport)
        return try await PMUClient.connect(configuration)
    }
}

func percentiles(_ samples: [Double]) -> [String: Double] {
    let sorted = samples.sorted()
    func at(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))] }
    return ["p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "count": Double(sorted.count)]
}

func emit(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

func microseconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
}

struct Small: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Acknowledged (or durable) small writes, one client: latency percentiles.")
    @Option var size = 64
    @Option var count = 20_000
    @Flag var persist = false
    @Flag(name: .customLong("pool-executor"), help: "Run on the default executor instead of the connection's event loop.") var poolExecutor = false
    @OptionGroup var connection: Connection

    func execute() async throws {
        let client = try await connection.connect()
        if poolExecutor || client.taskExecutor == nil {
            try await measure(client)
        } else {
            try await withTaskExecutorPreference(client.taskExecutor) { try await measure(client) }
        }
    }

    func measure(_ client: PMUClient) async throws {
        let name = "bench-small-\(size)-\(persist)-\(getpid())"
        let region = try await client.createRegion(name, sizeBytes: 64 << 20)
        let payload = ByteBuffer(repeating: 0x5A, count: size)
        let stride = (size + 4095) / 4096 * 4096
        for i in 0..<min(1000, count) { try await client.write(region, at: UInt64(i * stride % (32 << 20)), payload) } // warm-up
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for i in 0..<count {
            let offset = UInt64(i * stride % (32 << 20))
            let start = ContinuousClock.now
            if persist {
                try await client.writeDurably(region, at: offset, payload)
            } else {
                try await client.write(region, at: offset, payload)
            }
            samples.append(microseconds(since: start))
        }
        try await client.delete(name)
        await client.disconnect()
        emit(percentiles(samples).merging(["size": Double(size), "durable": persist ? 1 : 0]) { a, _ in a })
    }
}

struct Bulk: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A large checkpoint written in chunks, persisted, read back: GB/s.")
    @Option var total = 1 << 30
    @Option var chunk = 1 << 20
    @OptionGroup var connection: Connection

    func execute() async throws {
        let client = try await connection.connect()
        let name = "bench-bulk-\(chunk)-\(getpid())"
        let region = try await client.createRegion(name, sizeBytes: UInt64(total))
        let data = ByteBuffer(repeating: 0xA5, count: chunk)
        let window = 8
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for offset in Swift.stride(from: 0, to: total, by: chunk) {
                if inFlight == window { try await group.next(); inFlight -= 1 }
                group.addTask { try await client.write(region, at: UInt64(offset), data) }
                inFlight += 1
            }
            try await group.waitForAll()
        }
        let acknowledged = microseconds(since: start)
        try await client.persist(region)
        let durable = microseconds(since: start)
        let readStart = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for offset in Swift.stride(from: 0, to: total, by: chunk) {
                if inFlight == window { try await group.next(); inFlight -= 1 }
                group.addTask { _ = try await client.read(region, at: UInt64(offset), length: chunk) }
                inFlight += 1
            }
            try await group.waitForAll()
        }
        let read = microseconds(since: readStart)
        try await client.delete(name)
        await client.disconnect()
        emit([
            "chunk": chunk, "bytes": total, "ack_gbps": Double(total) / acknowledged / 1e3,
            "durable_gbps": Double(total) / durable / 1e3, "read_gbps": Double(total) / read / 1e3,
        ])
    }
}

/// `count` clients connected at once, each with the region `make` creates for it.
func openSessions(
    _ count: Int, _ connection: Connection, _ make: @escaping @Sendable (PMUClient, Int) async throws -> (RegionHandle, String)
) async throws -> [(PMUClient, RegionHandle, String)] {
    try await withThrowingTaskGroup(of: (PMUClient, RegionHandle, String).self) { group in
        for index in 0..<count {
            group.addTask {
                let client = try await connection.connect()
                let (region, name) = try await make(client, index)
                return (client, region, name)
            }
        }
        var all: [(PMUClient, RegionHandle, String)] = []
        for try await session in group { all.append(session) }
        return all
    }
}

struct Concurrency: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "N clients, each doing durable 4 KiB writes into its own region.")
    @Option var clients = 16
    @Option var seconds = 3.0
    @Option var size = 4096
    @Flag(help: "WRITE without PERSIST (on a mirrored server: acknowledged once in the partner's log too).") var acknowledged = false
    @Option(help: "Bytes of each region the writes cycle through (small: rewrites already-written blocks).") var span = 16 << 20
    @OptionGroup var connection: Connection

    func execute() async throws {
        let connection = self.connection
        let size = self.size
        let span = self.span
        let acknowledged = self.acknowledged
        // Set-up (connect, create and preallocate each region) happens before the clock starts:
        // creates fsync, and timing them would measure set-up, not durable writes.
        let sessions = try await openSessions(clients, connection) { client, index in
            let name = "bench-conc-\(getpid())-\(index)"
            return (try await client.createRegion(name, sizeBytes: 16 << 20), name)
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let results = try await withThrowingTaskGroup(of: [Double].self) { group in
            for (client, region, _) in sessions {
                group.addTask {
                    try await withTaskExecutorPreference(client.taskExecutor) {
                        let payload = ByteBuffer(repeating: 7, count: size)
                        var samples: [Double] = []
                        var i = 0
                        while ContinuousClock.now < deadline, i < 1_000_000 {
                            let offset = UInt64((i % max(1, (span - size) / 4096 + 1)) * 4096)
                            let start = ContinuousClock.now
                            if acknowledged {
                                try await client.write(region, at: offset, payload)
                            } else {
                                try await client.writeDurably(region, at: offset, payload)
                            }
                            samples.append(microseconds(since: start))
                            i += 1
                        }
                        return samples
                    }
                }
            }
            var all: [Double] = []
            for try await samples in group { all += samples }
            return all
        }
        for (client, _, name) in sessions {
            try await client.delete(name)
            await client.disconnect()
        }
        emit(percentiles(results).merging(["clients": Double(clients), "ops_per_sec": Double(results.count) / seconds]) { a, _ in a })
    }
}

struct FencedWrites: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N clients, each writing (acknowledged, not persisted) into its own checkpoint region: the fenced WRITE path.")
    @Option var clients = 16
    @Option var seconds = 3.0
    @Option(help: "Bytes per WRITE (the client sends up to 4 MiB per frame).") var size = 1 << 20
    @Option(help: "Bytes of each region the writes cycle through.") var span = 16 << 20
    @OptionGroup var connection: Connection

    func execute() async throws {
        let connection = self.connection
        let size = self.size
        let span = max(self.span, size)
        // Checkpoint regions take the fenced path on the server (epoch check before every copy);
        // the bytes need not be a valid checkpoint layout for that. Set-up is not timed.
        let sessions = try await openSessions(clients, connection) { client, index in
            let name = "bench-fenced-\(getpid())-\(index)"
            let region = try await client.createRegion(name, sizeBytes: UInt64(span), kind: .checkpointOverwrite)
            try await client.write(region, at: 0, ByteBuffer(repeating: 1, count: span)) // fault the pages in first
            return (region, name)
        }
        // A probe: one more client reading 4 KiB from its own raw region meanwhile. Its latency shows
        // what the writers' copies cost other connections (a lock held across a copy would add to it).
        let probe = try await connection.connect()
        let probeName = "bench-fenced-probe-\(getpid())"
        let probeRegion = try await probe.createRegion(probeName, sizeBytes: 1 << 20)
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let (results, probed) = try await withThrowingTaskGroup(of: (probe: Bool, samples: [Double]).self) { group in
            group.addTask {
                var samples: [Double] = []
                while ContinuousClock.now < deadline, samples.count < 1_000_000 {
                    let began = ContinuousClock.now
                    _ = try await probe.read(probeRegion, at: UInt64(samples.count % 256) * 4096, length: 4096)
                    samples.append(microseconds(since: began))
                }
                return (true, samples)
            }
            for (client, region, _) in sessions {
                group.addTask {
                    try await withTaskExecutorPreference(client.taskExecutor) {
                        let payload = ByteBuffer(repeating: 7, count: size)
                        let slots = span / size
                        var samples: [Double] = []
                        var i = 0
                        while ContinuousClock.now < deadline, i < 1_000_000 {
                            let began = ContinuousClock.now
                            try await client.write(region, at: UInt64((i % slots) * size), payload)
                            samples.append(microseconds(since: began))
                            i += 1
                        }
                        return (false, samples)
                    }
                }
            }
            var writes: [Double] = []
            var reads: [Double] = []
            for try await result in group {
                if result.probe { reads += result.samples } else { writes += result.samples }
            }
            return (writes, reads)
        }
        let elapsed = microseconds(since: start) / 1e6
        for (client, _, name) in sessions {
            try await client.delete(name)
            await client.disconnect()
        }
        try await probe.delete(probeName)
        await probe.disconnect()
        let probeFigures = percentiles(probed)
        emit(percentiles(results).merging([
            "clients": Double(clients), "size": Double(size), "ops_per_sec": Double(results.count) / elapsed,
            "gbps": Double(results.count) * Double(size) / elapsed / 1e9,
            "probe_read_p50_us": probeFigures["p50_us"]!, "probe_read_p99_us": probeFigures["p99_us"]!,
        ]) { a, _ in a })
    }
}

struct ListUnderLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "With --count regions the viewer cannot see: how long the viewer's LIST takes, and other clients' STAT latency while two viewers loop LIST.")
    @Option var count = 50_000
    @Option(help: "STATs timed while the viewers loop LIST.") var stats = 300
    @Option(name: .customLong("viewer"), help: "A client id that may see none of the regions.") var viewer = "viewer"
    @Option(name: .customLong("viewer-secret-file")) var viewerSecretFile = "pmu-data/viewer.secret"
    @Flag(help: "Keep the regions (a later run reuses them).") var keep = false
    @OptionGroup var connection: Connection

    func execute() async throws {
        let admin = try await connection.connect()
        let prefix = "bench-list-"
        // Creates run sequentially on the metadata pool; put the server's data directory on tmpfs
        // to make 50,000 of them take seconds. Existing ones are reused.
        var existing = Set(try await admin.list().map(\.name).filter { $0.hasPrefix(prefix) })
        let createStart = ContinuousClock.now
        for i in 0..<count where !existing.contains(prefix + String(i)) {
            try await admin.close(try await admin.createRegion(prefix + String(i), sizeBytes: 4096))
            existing.insert(prefix + String(i))
        }
        let createSeconds = microseconds(since: createStart) / 1e6
        var viewerConnection = connection
        viewerConnection.client = viewer
        viewerConnection.secretFile = viewerSecretFile
        let viewers = [try await viewerConnection.connect(), try await viewerConnection.connect()]
        var single: [Double] = []
        for _ in 0..<5 {
            let start = ContinuousClock.now
            _ = try await viewers[0].list()
            single.append(microseconds(since: start))
        }
        let names = Array(existing)
        let stop = ListStop()
        let statSamples = try await withThrowingTaskGroup(of: [Double].self) { group in
            for viewer in viewers {
                group.addTask {
                    var rounds = 0
                    while !stop.done, rounds < 10_000 { _ = try await viewer.list(); rounds += 1 }
                    return []
                }
            }
            group.addTask {
                var samples: [Double] = []
                let deadline = ContinuousClock.now + .seconds(60)
                for i in 0..<stats where ContinuousClock.now < deadline {
                    let start = ContinuousClock.now
                    _ = try await admin.stat(names[(i * 7919) % names.count])
                    samples.append(microseconds(since: start))
                }
                stop.finish()
                return samples
            }
            var all: [Double] = []
            for try await samples in group { all += samples }
            return all
        }
        if !keep { for name in names { try await admin.delete(name) } }
        for client in viewers + [admin] { await client.disconnect() }
        emit(percentiles(statSamples).merging([
            "regions": Double(count), "create_s": createSeconds, "viewer_list_ms_min": single.min()! / 1e3,
            "viewer_list_ms_max": single.max()! / 1e3, "stat_max_us": statSamples.max() ?? 0,
        ]) { a, _ in a })
    }
}

final class ListStop: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    var done: Bool { lock.withLock { stopped } }
    func finish() { lock.withLock { stopped = true } }
}

struct Regions: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create N regions, then open and stat each: microseconds per operation.")
    @Option var count = 10_000
    @Option var size = 4096
    @OptionGroup var connection: Connection

    func execute() async throws {
        let client = try await connection.connect()
        let prefix = "bench-many-\(getpid())-"
        var start = ContinuousClock.now
        for i in 0..<count { try await client.close(try await client.createRegion(prefix + String(i), sizeBytes: UInt64(size))) }
        let create = microseconds(since: start) / Double(count)
        start = ContinuousClock.now
        for i in 0..<count { try await client.close(try await client.openRegion(prefix + String(i))) }
        let open = microseconds(since: start) / Double(count)
        start = ContinuousClock.now
        for i in 0..<count { _ = try await client.stat(prefix + String(i)) }
        let stat = microseconds(since: start) / Double(count)
        await client.disconnect()
        emit(["count": count, "create_us": create, "open_close_us": open, "stat_us": stat])
    }
}

struct Cleanup: ParsableCommand {
    @Option var prefix = "bench-"
    @OptionGroup var connection: Connection
    func execute() async throws {
        let client = try await connection.connect()
        for region in try await client.list() where region.name.hasPrefix(prefix) { try await client.delete(region.name) }
        await client.disconnect()
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
do {
    switch arguments.first {
    case "small": try await Small.parse(Array(arguments.dropFirst())).execute()
    case "bulk": try await Bulk.parse(Array(arguments.dropFirst())).execute()
    case "concurrency": try await Concurrency.parse(Array(arguments.dropFirst())).execute()
    case "fenced-writes": try await FencedWrites.parse(Array(arguments.dropFirst())).execute()
    case "list": try await ListUnderLoad.parse(Array(arguments.dropFirst())).execute()
    case "regions": try await Regions.parse(Array(arguments.dropFirst())).execute()
    case "cleanup": try await Cleanup.parse(Array(arguments.dropFirst())).execute()
    case "erasure": try await Erasure.parse(Array(arguments.dropFirst())).execute()
    case "striped": try await Striped.parse(Array(arguments.dropFirst())).execute()
    case "forming": try await Forming.parse(Array(arguments.dropFirst())).execute()
    case "checkpoint": try await SingleCheckpoint.parse(Array(arguments.dropFirst())).execute()
    case "snapshot": try await SnapshotBench.parse(Array(arguments.dropFirst())).execute()
    case "failover-writer": try await FailoverWriter.parse(Array(arguments.dropFirst())).execute()
    case "failover-check": try await FailoverCheck.parse(Array(arguments.dropFirst())).execute()
    default:
        FileHandle.standardError.write(Data("usage: pmu-bench small|bulk|concurrency|fenced-writes|list|regions|cleanup|erasure|striped|forming|checkpoint|snapshot|failover-writer|failover-check [options]\n".utf8))
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("pmu-bench: error: \(error)\n".utf8))
    exit(1)
}
