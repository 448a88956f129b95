import Foundation
import NIOCore
import PMUClient
import PMUCore
import PMUStripe
import Testing

@testable import PMUCluster

/// Striped checkpoints formed by a pmu-server for its primary (docs/CLUSTER.md section 7b), on
/// real server processes: the primary sends the whole checkpoint once to one server, which forms
/// the pieces, stores them on every server (itself included) and commits.
@Suite struct ServerFormingTests {
    let scratch = Scratch()

    func bytes(_ seed: UInt64, _ count: Int) -> ByteBuffer { ByteBuffer(bytes: pattern(offset: 0, count: count, seed: seed)) }

    func options(_ redundancy: Redundancy) -> CheckpointSetOptions {
        CheckpointSetOptions(redundancy: redundancy, maxCheckpointBytes: 1 << 20, keepNewest: 3, maxSubsegmentBytes: 16 * 1024)
    }

    /// Servers that form on the map the cluster writes.
    func formingCluster(_ count: Int, extra: @escaping (Int) -> [String] = { _ in [] }) throws -> LocalCluster {
        let path = scratch.path + "/map.json"
        let local = try LocalCluster(count, scratch: scratch) { ["--cluster-map", path] + extra($0) }
        _ = try local.writeMap()
        return local
    }

    func latest(_ local: LocalCluster, set: String = "job") async throws -> ClusterCheckpoint {
        let cluster = try await local.connect()
        defer { Task { await cluster.disconnect() } }
        return try #require(try await ClusterBackup(name: set, cluster: cluster).latest())
    }

    func formedSetSurvives(_ redundancy: Redundancy, servers: Int) async throws {
        let local = try formingCluster(servers)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(redundancy))
        let payloads = [bytes(21, 300_001), bytes(22, 700_000)]
        var sequences: [UInt64] = []
        for payload in payloads {
            let (server, formed) = try await cluster.checkpointFormedOnServer("job", payload: payload)
            #expect(server == "s0", "the first reachable server of the map forms")
            // Every server's piece, parity and headers: A × payload and then some.
            #expect(formed.pieceBytes >= UInt64(payload.readableBytes) * UInt64(redundancy.k + redundancy.m) / UInt64(redundancy.k))
            sequences.append(formed.sequence)
        }
        #expect(sequences == [1, 2])
        // Pieces on every server, by the same layout as the client library's.
        let view = try await SetView.read("job", cluster: cluster)
        #expect(view.missing.isEmpty && view.completeSequences == [2, 1])
        await view.close(cluster: cluster)
        await cluster.disconnect()
        for lost in combinations(servers, redundancy.m) {
            try await local.without(lost) {
                let checkpoint = try await latest(local)
                #expect(checkpoint.sequence == 2 && checkpoint.payload == payloads[1], "lost \(lost)")
                #expect(Set(checkpoint.unavailable.keys) == Set(lost.map(local.name)))
                let older = try await ClusterBackup(name: "job", cluster: try await local.connect()).checkpoint(sequence: 1)
                #expect(older.payload == payloads[0], "lost \(lost)")
            }
        }
    }

    @Test func xorSetFormedOnAServerSurvivesEverySingleLoss() async throws {
        try await formedSetSurvives(Redundancy(k: 4, m: 1), servers: 5)
    }

    @Test func reedSolomonSetFormedOnAServerSurvivesEveryDoubleLoss() async throws {
        try await formedSetSurvives(Redundancy(k: 4, m: 2), servers: 6)
    }

    /// The forming server killed (kill -9 by fault injection, as a crash would) after receiving the
    /// checkpoint and before writing any piece, after one server's piece is durable while the
    /// others are in flight, and after every piece is durable but before any commit marker: each
    /// time the primary gets an error and the previous complete checkpoint stays the newest.
    @Test func theFormingServerKilledBeforeDuringAndAfterItsFanOutLeavesThePreviousCheckpointNewest() async throws {
        let local = try formingCluster(5)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        await cluster.disconnect()
        var newest = (sequence: UInt64(0), payload: ByteBuffer())
        var seed: UInt64 = 30
        func formAndCheck() async throws {
            seed += 1
            let payload = bytes(seed, 400_000)
            let connected = try await local.connect()
            let formed = try await connected.checkpointFormedOnServer("job", payload: payload, options: ServerFormingOptions(server: "s0"))
            await connected.disconnect()
            #expect(formed.formed.sequence > newest.sequence)
            newest = (formed.formed.sequence, payload)
        }
        try await formAndCheck()
        for fault in ["before-fanout", "after-piece:s3", "after-pieces"] {
            try local.restart(0, launcher: ["/usr/bin/env", "PMU_ALLOW_TEST_MODES=1", "PMU_FORMING_FAULT=\(fault)"])
            let connected = try await local.connect()
            do {
                let formed = try await connected.checkpointFormedOnServer("job", payload: bytes(99, 500_000), options: ServerFormingOptions(server: "s0"))
                Issue.record("\(fault): formed \(formed.formed.sequence) though the forming server was killed")
            } catch {
                #expect([.connectionClosed, .timedOut].contains(error.code), "\(fault): \(error)")
                #expect(error.message.contains("s0"), "\(fault): the error names the forming server: \(error.message)")
            }
            await connected.disconnect()
            // Killed by itself: wait for the process to be gone, then start it normally.
            let deadline = Date().addingTimeInterval(10)
            while local.servers[0].process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
            #expect(!local.servers[0].process.isRunning, "\(fault): the forming server did not die")
            try local.restart(0, launcher: [])
            let recovered = try await latest(local)
            #expect(recovered.sequence == newest.sequence && recovered.payload == newest.payload, "\(fault): newest is \(recovered.sequence), expected \(newest.sequence)")
            // And the set takes checkpoints again, formed on the restarted server.
            try await formAndCheck()
            let again = try await latest(local)
            #expect(again.sequence == newest.sequence && again.payload == newest.payload, "\(fault)")
        }
    }

    /// A checkpoint over --max-forming-bytes, a server without --cluster-map, and the pmuctl path.
    @Test func formingLimitsAreClearErrorsAndPmuctlFormsOnAServer() async throws {
        let path = scratch.path + "/map.json"
        let local = try LocalCluster(3, scratch: scratch) { index in
            index == 1 ? [] : ["--cluster-map", path, "--max-forming-bytes", "256KiB"]
        }
        _ = try local.writeMap()
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 2, m: 1)))
        do {
            _ = try await cluster.checkpointFormedOnServer("job", payload: bytes(1, 300_000), options: ServerFormingOptions(server: "s0"))
            Issue.record("a checkpoint over --max-forming-bytes was formed")
        } catch {
            #expect(error.code == .formingLimit && error.message.contains("--max-forming-bytes"), "\(error)")
        }
        do {
            _ = try await cluster.checkpointFormedOnServer("job", payload: bytes(1, 1000), options: ServerFormingOptions(server: "s1"))
            Issue.record("a server without --cluster-map formed a checkpoint")
        } catch {
            #expect(error.code == .formingUnavailable && error.message.contains("--cluster-map"), "\(error)")
        }
        let payload = Data(pattern(offset: 0, count: 200_000, seed: 5))
        let file = scratch.path + "/state.bin"
        try payload.write(to: URL(fileURLWithPath: file))
        let put = try run(binDirectory + "/pmuctl", ["checkpoint", "put", "job", "--file", file, "--cluster", path, "--forming-server", "s2", "--json"])
        #expect(put.status == 0, "\(put.stderr)")
        let reply = try JSONSerialization.jsonObject(with: put.stdout) as? [String: Any]
        #expect(reply?["formedOn"] as? String == "s2" && reply?["sequence"] as? Int == 1, "\(String(decoding: put.stdout, as: UTF8.self))")
        let got = try run(binDirectory + "/pmuctl", ["checkpoint", "get", "job", "--cluster", path])
        #expect(got.status == 0 && got.stdout == payload, "\(got.stderr)")
        await cluster.disconnect()
    }

    /// Forms checkpoints on s0 one after another until `stop` (at most `limit`), recording what
    /// was acknowledged; failures (while a server is empty and not yet rejoined) are counted.
    final class FormingLoop: @unchecked Sendable {
        private let lock = NSLock()
        private var acknowledged: [(sequence: UInt64, payload: ByteBuffer)] = []
        private var failures: [PMUError] = []
        private var stopped = false

        var results: (acknowledged: [(sequence: UInt64, payload: ByteBuffer)], failures: [PMUError]) {
            lock.withLock { (acknowledged, failures) }
        }
        func stop() { lock.withLock { stopped = true } }

        func run(_ local: LocalCluster, limit: Int) async {
            for round in 0..<limit {
                if lock.withLock({ stopped }) { return }
                let payload = ByteBuffer(bytes: pattern(offset: 0, count: 150_000 + round * 1000, seed: 500 + UInt64(round)))
                do {
                    let cluster = try await local.connect()
                    let formed = try await cluster.checkpointFormedOnServer("job", payload: payload, options: ServerFormingOptions(server: "s0"))
                    await cluster.disconnect()
                    lock.withLock { acknowledged.append((formed.formed.sequence, payload)) }
                } catch {
                    lock.withLock { failures.append((error as? PMUError) ?? PMUError(.internalError, "\(error)")) }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
        }
    }

    /// Every acknowledged checkpoint still kept reads back byte for byte with `lost` servers down.
    func expectKept(_ local: LocalCluster, _ acknowledged: [(sequence: UInt64, payload: ByteBuffer)], keep: Int, without lost: [Int]) async throws {
        try await local.without(lost) {
            let cluster = try await local.connect()
            let backup = try ClusterBackup(name: "job", cluster: cluster)
            for (sequence, payload) in acknowledged.suffix(keep) {
                let read = try await backup.checkpoint(sequence: sequence)
                #expect(read.payload == payload, "checkpoint \(sequence) with \(lost) lost")
            }
            await cluster.disconnect()
        }
    }

    /// A server wiped, then `pmuctl cluster rebuild s3 --online` from another process while a
    /// primary keeps forming checkpoints on s0: no acknowledged checkpoint is lost or torn, and
    /// afterwards s3's pieces carry the set through the loss of another server.
    @Test func onlineRebuildFromAnotherProcessWhileAPrimaryKeepsCheckpointing() async throws {
        let local = try formingCluster(5)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        await cluster.disconnect()
        var before: [(sequence: UInt64, payload: ByteBuffer)] = []
        for seed in UInt64(1)...2 {
            let payload = bytes(seed, 600_000)
            let connected = try await local.connect()
            before.append(((try await connected.checkpointFormedOnServer("job", payload: payload)).formed.sequence, payload))
            await connected.disconnect()
        }
        try local.wipe(3)
        _ = try local.writeMap()
        let loop = FormingLoop()
        let writer = Task { await loop.run(local, limit: 60) }
        let rebuilt = try await runOffPool(binDirectory + "/pmuctl", ["cluster", "rebuild", "s3", "--set", "job", "--online", "--forming-server", "s0", "--json", "--cluster", local.mapPath])
        let duringRebuild = loop.results.acknowledged.count
        // A few more checkpoints after the rebuild, then stop.
        let deadline = Date().addingTimeInterval(60)
        while loop.results.acknowledged.count < duringRebuild + 2 && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        loop.stop()
        await writer.value
        #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
        let report = (try JSONSerialization.jsonObject(with: rebuilt.stdout) as? [[String: Any]])?.first
        #expect((report?["rebuilt"] as? [Int])?.isEmpty == false && (report?["unrecoverable"] as? [Int]) == [], "\(String(decoding: rebuilt.stdout, as: UTF8.self))")
        let (acknowledged, failures) = loop.results
        #expect(acknowledged.count >= duringRebuild + 2, "checkpoints go on after the rebuild: \(acknowledged.count)")
        for failure in failures {
            // Only while s3 was empty and not yet rejoined: refused, never half-done.
            #expect([.serverUnavailable, .connectionClosed, .unknownRegion].contains(failure.code), "\(failure)")
        }
        // Sequences only grow, and every acknowledged checkpoint kept reads back exactly, now
        // also with another server lost (s3's pieces are needed).
        let sequences = (before + acknowledged).map(\.sequence)
        #expect(sequences == sequences.sorted() && Set(sequences).count == sequences.count)
        try await expectKept(local, before + acknowledged, keep: 3, without: [])
        try await expectKept(local, before + acknowledged, keep: 3, without: [1])
    }

    /// pmu-server --rebuild-empty: a wiped server rejoins by itself at the next checkpoint formed
    /// there and is backfilled in the background; then the set survives losing another server.
    @Test func anEmptyServerIsRebuiltByItselfByTheFormingServer() async throws {
        let local = try formingCluster(5) { $0 == 0 ? ["--rebuild-empty"] : [] }
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        await cluster.disconnect()
        var acknowledged: [(sequence: UInt64, payload: ByteBuffer)] = []
        func form(_ seed: UInt64) async throws {
            let payload = bytes(seed, 500_000)
            let connected = try await local.connect()
            acknowledged.append(((try await connected.checkpointFormedOnServer("job", payload: payload)).formed.sequence, payload))
            await connected.disconnect()
        }
        try await form(1)
        try await form(2)
        try local.wipe(2)
        _ = try local.writeMap()
        try await form(3)
        // Backfilled in the background: poll (bounded) until s2 holds every kept checkpoint.
        let deadline = Date().addingTimeInterval(60)
        var holders: [UInt64: [String]] = [:]
        while Date() < deadline {
            let connected = try await local.connect()
            let list = try await ClusterBackup(name: "job", cluster: connected).list()
            await connected.disconnect()
            holders = Dictionary(uniqueKeysWithValues: list.map { ($0.sequence, $0.holders) })
            if acknowledged.allSatisfy({ holders[$0.sequence]?.contains("s2") == true }) { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(acknowledged.allSatisfy { holders[$0.sequence]?.contains("s2") == true }, "\(holders)")
        try await expectKept(local, acknowledged, keep: 3, without: [4])
    }
}

/// `run` on a thread of its own: the test's cooperative threads stay free for the servers' clients.
func runOffPool(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, stdout: Data, stderr: String) {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try run(executable, arguments) }) }.start()
    }
}
