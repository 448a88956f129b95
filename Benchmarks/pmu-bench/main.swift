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

struct Concurrency: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "N clients, each doing durable 4 KiB writes into its own region.")
    @Option var clients = 16
    @Option var seconds = 3.0
    @Option var size = 4096
    @Option(help: "Bytes of each region the writes cycle through (small: rewrites already-written blocks).") var span = 16 << 20
    @OptionGroup var connection: Connection

    func execute() async throws {
        let connection = self.connection
        let size = self.size
        let span = self.span
        // Set-up (connect, create and preallocate each region) happens before the clock starts:
        // creates fsync, and timing them would measure set-up, not durable writes.
        let sessions = try await withThrowingTaskGroup(of: (PMUClient, RegionHandle, String).self) { group in
            for index in 0..<clients {
                group.addTask {
                    let client = try await connection.connect()
                    let name = "bench-conc-\(getpid())-\(index)"
                    return (client, try await client.createRegion(name, sizeBytes: 16 << 20), name)
                }
            }
            var all: [(PMUClient, RegionHandle, String)] = []
            for try await session in group { all.append(session) }
            return all
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
                            try await client.writeDurably(region, at: offset, payload)
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
    case "regions": try await Regions.parse(Array(arguments.dropFirst())).execute()
    case "cleanup": try await Cleanup.parse(Array(arguments.dropFirst())).execute()
    case "erasure": try await Erasure.parse(Array(arguments.dropFirst())).execute()
    case "striped": try await Striped.parse(Array(arguments.dropFirst())).execute()
    case "checkpoint": try await SingleCheckpoint.parse(Array(arguments.dropFirst())).execute()
    case "snapshot": try await SnapshotBench.parse(Array(arguments.dropFirst())).execute()
    default:
        FileHandle.standardError.write(Data("usage: pmu-bench small|bulk|concurrency|regions|cleanup|erasure|striped|checkpoint|snapshot [options]\n".utf8))
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("pmu-bench: error: \(error)\n".utf8))
    exit(1)
}
