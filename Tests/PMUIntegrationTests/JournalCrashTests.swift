import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// kill -9 of a real pmu-server while clients stream small durable writes (WRITE + PERSIST, which
/// go through the write journal's group commit): after restart every acknowledged write is there
/// byte for byte. With `--test-volatile-until-persist` the kill also loses every region byte not
/// made durable, as a machine loss would, so what survives came back from the journal's replay.
@Suite(.serialized) struct JournalCrashTests {
    let scratch = Scratch()
    static let clients = 6
    static let slots = 48
    static let blockBytes = 4096

    /// What each client's slots hold: the last acknowledged value, and the one in flight when the
    /// server died (journaled but unacknowledged: it may or may not be there).
    final class Ledger: @unchecked Sendable {
        private let lock = NSLock()
        private var acknowledged: [[UInt64?]] = Array(repeating: Array(repeating: nil, count: JournalCrashTests.slots), count: JournalCrashTests.clients)
        private var inFlight: [[UInt64?]] = Array(repeating: Array(repeating: nil, count: JournalCrashTests.slots), count: JournalCrashTests.clients)
        private(set) var count = 0
        func sending(_ client: Int, _ slot: Int, _ generation: UInt64) { lock.withLock { inFlight[client][slot] = generation } }
        func acknowledged(_ client: Int, _ slot: Int, _ generation: UInt64) {
            lock.withLock {
                acknowledged[client][slot] = generation
                inFlight[client][slot] = nil
                count += 1
            }
        }
        var total: Int { lock.withLock { count } }
        func expected(_ client: Int, _ slot: Int) -> (UInt64?, UInt64?) { lock.withLock { (acknowledged[client][slot], inFlight[client][slot]) } }
    }

    static func block(_ client: Int, _ slot: Int, _ generation: UInt64) -> [UInt8] {
        pattern(offset: UInt64(slot * blockBytes), count: blockBytes, seed: UInt64(client) << 32 | generation)
    }

    func streamAndKill(_ server: ServerProcess, durable: Bool, killAfter: Int) async throws -> Ledger {
        let ledger = Ledger()
        var handles: [(PMUClient, RegionHandle)] = []
        for index in 0..<Self.clients {
            let client = try await server.client()
            handles.append((client, try await client.createRegion("journal-\(index)", sizeBytes: UInt64(Self.slots * Self.blockBytes))))
        }
        let sessions = handles
        let streams = Task {
            await withTaskGroup(of: Void.self) { group in
                for (index, (client, handle)) in sessions.enumerated() {
                    group.addTask {
                        var generation: UInt64 = 0
                        // Bounded: at most 20,000 writes a client, and it stops at the first error (the kill).
                        while generation < 20_000 {
                            generation += 1
                            let slot = Int(generation * 7 % UInt64(Self.slots))
                            ledger.sending(index, slot, generation)
                            do {
                                let data = ByteBuffer(bytes: Self.block(index, slot, generation))
                                if durable {
                                    try await client.writeDurably(handle, at: UInt64(slot * Self.blockBytes), data)
                                } else {
                                    try await client.write(handle, at: UInt64(slot * Self.blockBytes), data)
                                }
                            } catch {
                                return
                            }
                            ledger.acknowledged(index, slot, generation)
                        }
                    }
                }
            }
        }
        // Kill while the streams run, once enough writes are acknowledged (bounded: 60 s).
        let deadline = Date().addingTimeInterval(60)
        while ledger.total < killAfter, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        server.kill9()
        await streams.value
        for (client, _) in handles { await client.disconnect() }
        #expect(ledger.total >= killAfter, "only \(ledger.total) writes acknowledged before the kill")
        return ledger
    }

    func verify(_ server: ServerProcess, _ ledger: Ledger) async throws {
        let client = try await server.client()
        var checked = 0
        var problems: [String] = []
        for index in 0..<Self.clients {
            let handle = try await client.openRegion("journal-\(index)")
            for slot in 0..<Self.slots {
                let (acknowledged, inFlight) = ledger.expected(index, slot)
                guard let acknowledged else { continue }
                let found = Array(try await client.read(handle, at: UInt64(slot * Self.blockBytes), length: Self.blockBytes).readableBytesView)
                checked += 1
                if found == Self.block(index, slot, acknowledged) { continue }
                if let inFlight, found == Self.block(index, slot, inFlight) { continue }
                problems.append("client \(index) slot \(slot): acknowledged generation \(acknowledged) is not there")
            }
        }
        await client.disconnect()
        #expect(checked > Self.clients * Self.slots / 2)
        #expect(problems.isEmpty, "\(problems.prefix(5).joined(separator: "\n"))")
    }

    /// The machine-loss case: region bytes die with the process, the journal brings back every
    /// acknowledged PERSIST.
    @Test func everyAcknowledgedDurableWriteSurvivesKill9WithRegionBytesLost() async throws {
        setenv("PMU_ALLOW_TEST_MODES", "1", 1)
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", extraArguments: ["--test-volatile-until-persist"])
        let ledger = try await streamAndKill(server, durable: true, killAfter: 1500)
        try server.start()
        #expect(server.log.contains("recovered write journal"))
        #expect(server.log.contains("replayed: true") || server.log.contains("replayed=true"))
        try await verify(server, ledger)
        server.kill9()
    }

    /// The process-crash case on a normal server: the page cache keeps every write, and recovery
    /// must not replay older journaled bytes over newer acknowledged ones.
    @Test func kill9DuringJournaledWritesKeepsEveryAcknowledgedWrite() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let ledger = try await streamAndKill(server, durable: true, killAfter: 1500)
        try server.start()
        try await verify(server, ledger)
        // And acknowledged-only writes over journaled ones, then another kill.
        let second = try await streamAndKillExisting(server)
        try server.start()
        try await verify(server, second)
        server.kill9()
    }

    /// Each slot: a journaled PERSIST, then an acknowledged-only write over it, then kill -9.
    func streamAndKillExisting(_ server: ServerProcess) async throws -> Ledger {
        let ledger = Ledger()
        let client = try await server.client()
        for index in 0..<Self.clients {
            let handle = try await client.openRegion("journal-\(index)", rights: .readWrite)
            for slot in 0..<Self.slots {
                let offset = UInt64(slot * Self.blockBytes)
                try await client.writeDurably(handle, at: offset, ByteBuffer(bytes: Self.block(index, slot, 100_000)))
                let generation = UInt64(200_000 + slot)
                try await client.write(handle, at: offset, ByteBuffer(bytes: Self.block(index, slot, generation)))
                ledger.acknowledged(index, slot, generation)
            }
        }
        await client.disconnect()
        server.kill9()
        return ledger
    }
}
