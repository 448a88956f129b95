import Foundation
import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCtl
import PMUStripe
import Testing

@testable import PMUCluster

/// Striped and mirrored checkpoints across real pmu-server processes: servers killed (every
/// combination the layout promises to survive, and one more than that), subsegments damaged on
/// disk, a server killed mid-checkpoint, a wiped server rebuilt.
@Suite struct ClusterTests {
    let scratch = Scratch()

    func bytes(_ seed: UInt64, _ count: Int) -> ByteBuffer { ByteBuffer(bytes: pattern(offset: 0, count: count, seed: seed)) }

    /// Small subsegments so a few hundred KB spans many groups and every server holds parity.
    func options(_ redundancy: Redundancy, keep: UInt32 = 3) -> CheckpointSetOptions {
        CheckpointSetOptions(redundancy: redundancy, maxCheckpointBytes: 1 << 20, keepNewest: keep, maxSubsegmentBytes: 16 * 1024)
    }

    /// Writes `payloads` as checkpoints 1... through a primary and closes it.
    func write(_ payloads: [ByteBuffer], set: String, cluster: Cluster) async throws -> [UInt64] {
        let primary = try await ClusterPrimary.open(set, cluster: cluster)
        var sequences: [UInt64] = []
        for payload in payloads { sequences.append(try await primary.checkpoint(payload)) }
        await primary.close()
        return sequences
    }

    /// Connects afresh (the way a backup on another machine would) and reads the newest checkpoint.
    func recover(_ local: LocalCluster, set: String) async throws -> ClusterCheckpoint {
        let cluster = try await local.connect()
        defer { Task { await cluster.disconnect() } }
        return try #require(try await ClusterBackup(name: set, cluster: cluster).latest())
    }

    func expectUnrecoverable(_ local: LocalCluster, set: String, naming lost: [Int]) async throws {
        let cluster = try await local.connect()
        do {
            let result = try await ClusterBackup(name: set, cluster: cluster).latest()
            Issue.record("recovered \(String(describing: result?.sequence)) with servers \(lost) lost")
        } catch {
            #expect(error.code == .unrecoverable, "\(error)")
            for index in lost { #expect(error.message.contains("s\(index)"), "error does not name s\(index): \(error.message)") }
        }
        await cluster.disconnect()
    }

    func survivesLosses(_ redundancy: Redundancy, servers: Int, losses: Int, sampleOneMore: Int) async throws {
        let local = try LocalCluster(servers, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(redundancy))
        let payloads = [bytes(1, 300_001), bytes(2, 5), bytes(3, 700_000)]
        #expect(try await write(payloads, set: "job", cluster: cluster) == [1, 2, 3])
        await cluster.disconnect()
        for lost in combinations(servers, losses) {
            try await local.without(lost) {
                let checkpoint = try await recover(local, set: "job")
                #expect(checkpoint.sequence == 3 && checkpoint.payload == payloads[2], "lost \(lost)")
                #expect(Set(checkpoint.unavailable.keys) == Set(lost.map(local.name)))
                let older = try await ClusterBackup(name: "job", cluster: try await local.connect()).checkpoint(sequence: 1)
                #expect(older.payload == payloads[0], "lost \(lost)")
            }
        }
        // One loss more than the layout promises: a clear error naming them, never wrong data.
        for lost in combinations(servers, losses + 1).prefix(sampleOneMore) {
            try await local.without(lost) { try await expectUnrecoverable(local, set: "job", naming: lost) }
        }
    }

    @Test func xorParityOnFiveServersSurvivesEverySingleLoss() async throws {
        try await survivesLosses(Redundancy(k: 4, m: 1), servers: 5, losses: 1, sampleOneMore: 10)
    }

    @Test func reedSolomonOnSixServersSurvivesEveryDoubleLoss() async throws {
        try await survivesLosses(Redundancy(k: 4, m: 2), servers: 6, losses: 2, sampleOneMore: 4)
    }

    @Test func threeMirrorsSurviveAnyTwoLosses() async throws {
        try await survivesLosses(.mirror(3), servers: 3, losses: 2, sampleOneMore: 0)
    }

    @Test func mirroredStripesSurviveAnyThreeLosses() async throws {
        // k=2 m=1, each subsegment on 2 servers: a group loses a subsegment only when both copies go.
        let local = try LocalCluster(6, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 2, m: 1, copies: 2)))
        let payload = bytes(7, 200_000)
        _ = try await write([payload], set: "job", cluster: cluster)
        await cluster.disconnect()
        for lost in combinations(6, 3).enumerated().filter({ $0.offset % 4 == 0 }).map(\.element) {
            try await local.without(lost) {
                let recovered = try await recover(local, set: "job")
                #expect(recovered.payload == payload, "lost \(lost)")
            }
        }
    }

    @Test func aSubsegmentDamagedOnDiskIsDetectedAndRebuilt() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        let payload = bytes(11, 400_000)
        _ = try await write([payload], set: "job", cluster: cluster)
        // Where server 2's first subsegment of checkpoint 1 lives in its region file.
        let view = try await SetView.read("job", cluster: cluster)
        let piece = try #require(view.servers["s2"]?.pieces[1])
        let regionId = try await cluster.client("s2").stat("job").id
        await view.close(cluster: cluster)
        await cluster.disconnect()
        local.kill([2])
        let file = local.servers[2].dataDirectory + "/regions/" + String(format: "%016llx", regionId) + ".region"
        let handle = try #require(FileHandle(forUpdatingAtPath: file))
        let at = piece.offset + UInt64(piece.header.offset(ofEntry: 0)) + 100
        try handle.seek(toOffset: at)
        let original = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: at)
        try handle.write(contentsOf: Data([original ^ 0x5A]))
        try handle.close()
        try local.restart([2])

        let checkpoint = try await recover(local, set: "job")
        #expect(checkpoint.payload == payload)
        #expect(checkpoint.damaged == ["s2:\(piece.header.entries[0].id)"] && checkpoint.rebuilt >= 1)
        let reconnected = try await local.connect()
        let report = try await ClusterBackup(name: "job", cluster: reconnected).verify()
        #expect(report.count == 1 && report[0].damaged.count == 1 && report[0].failure == nil)
        await reconnected.disconnect()
        // Damage plus a lost server in the same group is beyond XOR parity: refused, not guessed.
        try await local.without([3]) { try await expectUnrecoverable(local, set: "job", naming: [3]) }
    }

    @Test func aServerKilledMidCheckpointLeavesThePreviousCompleteOne() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1), keep: 2))
        let primary = try await ClusterPrimary.open("job", cluster: cluster)
        let first = bytes(21, 500_000)
        #expect(try await primary.checkpoint(first) == 1)
        // Server 3 dies: checkpoint 2 reaches the other four (enough to reassemble!) but is not
        // complete, so no backup may ever recover it.
        local.kill([3])
        let failed = await code { _ = try await primary.checkpoint(self.bytes(22, 500_000)) }
        #expect(failed != nil)
        #expect(await code { _ = try await primary.checkpoint(self.bytes(23, 10)) } != nil) // the writer stopped
        await primary.close()
        await cluster.disconnect()
        try local.restart([3])
        let after = try await local.connect()
        let view = try await SetView.read("job", cluster: after)
        #expect(view.pieces(of: 2).count == 4 && view.completeSequences == [1])
        await view.close(cluster: after)
        #expect(try await recover(local, set: "job").payload == first)

        // A new primary goes on after the failed attempt; the chain skips it. Failed attempts
        // (several, each with a piece on 4 servers) never push the last complete one out.
        await after.disconnect()
        // Eight failed attempts of the largest size the set takes: with its room for keep + 3
        // pieces per server, they would fill it if failed attempts were kept.
        for round in 0..<8 {
            let connections = try await local.connect()
            let again = try await ClusterPrimary.open("job", cluster: connections)
            local.kill([round % 5])
            #expect(await code { _ = try await again.checkpoint(self.bytes(30 + UInt64(round), 1 << 20)) } != nil)
            await again.close()
            await connections.disconnect()
            try local.restart([round % 5])
        }
        let fresh = try await local.connect()
        let last = try await ClusterPrimary.open("job", cluster: fresh)
        let third = bytes(24, 300_000)
        let sequence = try await last.checkpoint(bytes(26, 1 << 20))
        // Concurrent calls run one after the other and both complete.
        async let a = last.checkpoint(bytes(27, 1000))
        async let b = last.checkpoint(bytes(28, 1000))
        let pair = try await [a, b].sorted()
        #expect(pair == [sequence + 1, sequence + 2])
        #expect(try await last.checkpoint(third) == sequence + 3)
        await last.close()
        let backup = try ClusterBackup(name: "job", cluster: fresh)
        // Only complete checkpoints are listed (older ones until their space is reused); none of
        // the failed attempts, and the newest two (keep 2) certainly.
        let listed = try await backup.list().map(\.sequence)
        #expect(Set(listed).isSubset(of: [1, sequence, sequence + 1, sequence + 2, sequence + 3]) && listed.suffix(2) == [sequence + 2, sequence + 3], "\(listed)")
        #expect(try await recover(local, set: "job").payload == third)
        await fresh.disconnect()

        // Killed while the pieces are in flight: whatever the primary was told is what a backup gets.
        let racing = try await local.connect()
        let writer = try await ClusterPrimary.open("job", cluster: racing)
        let big = bytes(25, 1 << 20)
        let outcome = Task { await code { _ = try await writer.checkpoint(big) } }
        usleep(3_000)
        local.kill([1])
        let result = await outcome.value
        await writer.close()
        await racing.disconnect()
        try local.restart([1])
        // Told it succeeded: the backup gets it. Told it failed: killed during the pieces round the
        // backup gets the previous one; killed during the commit-marker round it may get either.
        // Never anything else.
        let recovered = try await recover(local, set: "job")
        if result == nil {
            #expect(recovered.payload == big)
        } else {
            #expect(recovered.payload == third || recovered.payload == big, "primary saw \(String(describing: result))")
        }
    }

    @Test func rebuildingAWipedServerRestoresRedundancy() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        let payloads = [bytes(41, 250_000), bytes(42, 600_000)]
        _ = try await write(payloads, set: "job", cluster: cluster)
        await cluster.disconnect()
        try local.wipe(2)
        let mapPath = try local.writeMap()
        let degraded = try await local.connect()
        let status = try await degraded.status(set: "job")
        #expect(status.checkpoints.map(\.survivesMoreLosses) == [0, 0] && status.checkpoints.allSatisfy { $0.lacking.keys.contains("s2") })
        await degraded.disconnect()

        // Through pmuctl, as an operator would.
        #expect(await PMUCtl.runMain(["cluster", "rebuild", "s2", "--cluster", mapPath]) == 0)
        #expect(await PMUCtl.runMain(["checkpoint", "verify", "job", "--cluster", mapPath]) == 0)
        let healed = try await local.connect()
        #expect(try await healed.status(set: "job").checkpoints.map(\.survivesMoreLosses) == [1, 1])
        await healed.disconnect()
        // Any one other server can be lost again.
        for other in [0, 1, 3, 4] {
            try await local.without([other]) {
                let checkpoint = try await recover(local, set: "job")
                #expect(checkpoint.payload == payloads[1] && checkpoint.unavailable.keys.sorted() == ["s\(other)"])
            }
        }
        // A primary writes across all five again.
        let writer = try await local.connect()
        #expect(try await write([bytes(43, 1000)], set: "job", cluster: writer) == [3])
        await writer.disconnect()
    }

    @Test func aNewPrimaryFencesTheOldOneOnEveryServer() async throws {
        let local = try LocalCluster(3, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 2, m: 1)))
        let old = try await ClusterPrimary.open("job", cluster: cluster)
        #expect(try await old.checkpoint(bytes(1, 1000)) == 1)
        let other = try await local.connect()
        let new = try await ClusterPrimary.open("job", cluster: other)
        #expect(await code { _ = try await old.checkpoint(self.bytes(2, 1000)) } == .fenced)
        #expect(try await new.checkpoint(bytes(3, 1000)) == 2)
        #expect(try await recover(local, set: "job").payload == bytes(3, 1000))
        await old.close()
        await new.close()
        await cluster.disconnect()
        await other.disconnect()
    }

    @Test func pmuctlDrivesASetAndBadInputIsRefusedClearly() async throws {
        let local = try LocalCluster(3, scratch: scratch)
        let mapPath = try local.writeMap()
        let input = scratch.path + "/input"
        try Data(pattern(offset: 0, count: 123_457, seed: 5)).write(to: URL(fileURLWithPath: input))
        #expect(await PMUCtl.runMain(["cluster", "create", "job", "--cluster", mapPath, "--k", "2", "--m", "1", "--max-checkpoint", "1MiB"]) == 0)
        #expect(await PMUCtl.runMain(["checkpoint", "put", "job", "--file", input, "--cluster", mapPath]) == 0)
        #expect(await PMUCtl.runMain(["checkpoint", "list", "job", "--cluster", mapPath]) == 0)
        try await local.without([0]) {
            let out = scratch.path + "/out"
            #expect(await PMUCtl.runMain(["checkpoint", "get", "job", "--out", out, "--cluster", mapPath]) == 0)
            #expect(FileManager.default.contents(atPath: out) == FileManager.default.contents(atPath: input))
            // Degraded: verify says so (exit 1) while the data still reassembles.
            #expect(await PMUCtl.runMain(["checkpoint", "verify", "job", "--cluster", mapPath]) == 1)
        }
        // Bad input: more servers than the map has, a map that is not JSON, duplicate names, unknown set.
        #expect(await PMUCtl.runMain(["cluster", "create", "wide", "--cluster", mapPath, "--k", "4", "--m", "1", "--max-checkpoint", "1MiB"]) == 1)
        let cluster = try await local.connect()
        let wide = await code { try await cluster.createCheckpointSet("wide", options: self.options(Redundancy(k: 4, m: 1))) }
        #expect(wide == .invalidArgument)
        #expect(await code { _ = try await ClusterBackup(name: "nope", cluster: cluster).latest() } == .unknownRegion)
        #expect(await code { _ = try await ClusterBackup(name: "x.commit", cluster: cluster).latest() } == .invalidName)
        await cluster.disconnect()
        let garbage = scratch.path + "/bad.json"
        try Data("{\"servers\": [{\"name\": \"a\"}]}".utf8).write(to: URL(fileURLWithPath: garbage))
        #expect(throws: PMUError.self) { _ = try ClusterMap.load(path: garbage) }
        let server = ClusterMap.Server(name: "a", address: "127.0.0.1:1", secretFile: "x")
        #expect(throws: PMUError.self) { _ = try ClusterMap(servers: [server, server]) }
        #expect(throws: PMUError.self) { _ = try ClusterMap(servers: [ClusterMap.Server(name: "a", address: "nowhere", secretFile: "x")]) }
    }
}
