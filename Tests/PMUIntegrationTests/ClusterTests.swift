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
        let damaged = try await damageOnDisk(local, cluster: cluster, server: 2, sequence: 1, entry: 0, restarting: true)
        await cluster.disconnect()

        let checkpoint = try await recover(local, set: "job")
        #expect(checkpoint.payload == payload)
        #expect(checkpoint.damaged == ["s2:\(damaged)"] && checkpoint.rebuilt >= 1)
        let reconnected = try await local.connect()
        let report = try await ClusterBackup(name: "job", cluster: reconnected).verify()
        #expect(report.count == 1 && report[0].damaged.count == 1 && report[0].failure == nil)
        await reconnected.disconnect()
        // Damage plus a lost server in the same group is beyond XOR parity: refused, not guessed.
        try await local.without([3]) { try await expectUnrecoverable(local, set: "job", naming: [3]) }
    }

    /// Flips a byte of entry `entry` of server `server`'s piece of checkpoint `sequence` in its region
    /// file. With `restarting` the server is killed first and restarted after (the damage is then
    /// read from disk); without, the running server's shared mapping sees the write at once.
    func damageOnDisk(_ local: LocalCluster, cluster: Cluster, server: Int, sequence: UInt64, entry: Int, restarting: Bool) async throws -> SubsegmentID {
        let view = try await SetView.read("job", cluster: cluster)
        let piece = try #require(view.servers[local.name(server)]?.pieces[sequence])
        let regionId = try await cluster.client(local.name(server)).stat("job").id
        await view.close(cluster: cluster)
        if restarting { local.kill([server]) }
        let file = local.servers[server].dataDirectory + "/regions/" + String(format: "%016llx", regionId) + ".region"
        let handle = try #require(FileHandle(forUpdatingAtPath: file))
        let at = piece.offset + UInt64(piece.header.offset(ofEntry: entry)) + 100
        try handle.seek(toOffset: at)
        let original = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: at)
        try handle.write(contentsOf: Data([original ^ 0x5A]))
        try handle.close()
        if restarting { try local.restart([server]) }
        return piece.header.entries[entry].id
    }

    @Test func theScrubberFindsAndRepairsDamageOnDiskWithoutAnyRead() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        let payloads = [bytes(51, 400_000), bytes(52, 300_000)]
        _ = try await write(payloads, set: "job", cluster: cluster)
        // Two subsegments on two servers, in groups 0 and 1, where s3 holds data of the same group:
        // without repair, losing s3 would make both checkpoints unrecoverable.
        let first = try await damageOnDisk(local, cluster: cluster, server: 2, sequence: 2, entry: 0, restarting: true)
        await cluster.disconnect()
        let again = try await local.connect()
        let second = try await damageOnDisk(local, cluster: again, server: 4, sequence: 1, entry: 1, restarting: true)
        await again.disconnect()
        let mapPath = try local.writeMap()

        // Report only: found, not repaired, exit 1 (DAMAGED); the status shows the pass.
        #expect(await PMUCtl.runMain(["cluster", "scrub", "job", "--no-repair", "--cluster", mapPath]) == 1)
        let looked = try await local.connect()
        let reported = try #require(try await looked.status(set: "job").scrub)
        #expect(reported.passes == 1 && reported.damaged == 2 && reported.unrepaired == 2 && reported.repaired == 0 && reported.piecesChecked == 10)
        await looked.disconnect()

        // The scrubber finds and repairs both; no read of the set happened in between.
        #expect(await PMUCtl.runMain(["cluster", "scrub", "job", "--rate", "64MiB", "--json", "--cluster", mapPath]) == 0)
        let scrubbed = try await local.connect()
        let status = try await scrubbed.status(set: "job")
        let record = try #require(status.scrub)
        #expect(record.passes == 2 && record.damaged == 2 && record.repaired == 2 && record.unrepaired == 0, "\(record)")
        #expect(record.piecesChecked == 10 && record.newestSequence == 2 && record.bytesRead > 700_000)
        // The same pass as figures for the metrics exporter (issue 16).
        let figures = Dictionary(uniqueKeysWithValues: try await scrubbed.scrubFigures(set: "job").map { ($0.name, $0.value) })
        #expect(figures["pmu_cluster_scrub_last_repaired_subsegments"] == 2 && figures["pmu_cluster_scrub_passes_total"] == 2, "\(figures)")
        // Repaired in place byte for byte: verify reads every subsegment and finds none damaged.
        let verified = try await ClusterBackup(name: "job", cluster: scrubbed).verify()
        #expect(verified.count == 2 && verified.allSatisfy { $0.damaged.isEmpty && $0.failure == nil }, "\(verified) \(first) \(second)")
        // pmuctl as a user runs it: the status shows the pass in its JSON.
        let shown = try run(binDirectory + "/pmuctl", ["cluster", "status", "job", "--json", "--cluster", mapPath])
        #expect(shown.status == 0, "\(shown.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: shown.stdout) as? [String: Any], "\(String(decoding: shown.stdout, as: UTF8.self))")
        let shownScrub = try #require(((json["sets"] as? [[String: Any]])?.first?["scrub"]) as? [String: Any])
        #expect(shownScrub["repaired"] as? Int == 2 && shownScrub["piecesChecked"] as? Int == 10 && shownScrub["passes"] as? Int == 2, "\(shownScrub)")
        // A later pass finds nothing; the pmuctl loop runs its bounded passes.
        #expect(await PMUCtl.runMain(["cluster", "scrub", "job", "--every", "0", "--passes", "2", "--cluster", mapPath]) == 0)
        let later = try #require(try await scrubbed.status(set: "job").scrub)
        #expect(later.passes == 4 && later.damaged == 0)
        await scrubbed.disconnect()
        // Another server lost: both checkpoints still read back byte for byte.
        try await local.without([3]) {
            let backup = try ClusterBackup(name: "job", cluster: try await local.connect())
            for (i, payload) in payloads.enumerated() {
                #expect(try await backup.checkpoint(sequence: UInt64(i + 1)).payload == payload)
            }
        }
    }

    @Test func aPrimaryScrubsWhileItCheckpointsWithoutBeingFenced() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1)))
        let primary = try await ClusterPrimary.open("job", cluster: cluster)
        let payload = bytes(61, 500_000)
        #expect(try await primary.checkpoint(payload) == 1)
        // Damaged under the running server (its shared mapping sees the file write).
        _ = try await damageOnDisk(local, cluster: cluster, server: 1, sequence: 1, entry: 2, restarting: false)
        let reports = ReportLog()
        async let scrubbing = primary.scrubEvery(.milliseconds(50), passes: 3, options: ScrubOptions(bytesPerSecond: 8 << 20)) { await reports.add($0) }
        // Checkpoints go on during the passes (repairs take turns with them).
        var written: [UInt64] = []
        for round in 0..<3 { written.append(try await primary.checkpoint(bytes(62 + UInt64(round), 200_000))) }
        #expect(await scrubbing == 3)
        let results = await reports.all
        let passes = results.compactMap { try? $0.get() }
        #expect(passes.count == 3, "\(results)")
        #expect(passes.reduce(0) { $0 + $1.record.repaired } == 1 && passes.allSatisfy { $0.unrepaired.isEmpty }, "\(passes.map(\.record))")
        // Not fenced: the primary still writes.
        #expect(try await primary.checkpoint(bytes(70, 1000)) == written.last! + 1)
        await primary.close()
        await cluster.disconnect()
        // The damaged subsegment was group 2's parity, and s2 holds data of group 2: with s2 lost,
        // checkpoint 1 (still in its slot: the ring has room for 6 pieces) reads back only if the
        // parity was repaired.
        try await local.without([2]) {
            let backup = try ClusterBackup(name: "job", cluster: try await local.connect())
            #expect(try await backup.checkpoint(sequence: 1).payload == payload)
            #expect(try await backup.latest()?.payload == bytes(70, 1000))
        }
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
        let rebuilt = try run(binDirectory + "/pmuctl", ["cluster", "rebuild", "s2", "--json", "--cluster", mapPath])
        #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
        let reports = try JSONSerialization.jsonObject(with: rebuilt.stdout) as? [[String: Any]]
        #expect(reports?.first?["rebuilt"] as? [Int] == [1, 2], "\(String(decoding: rebuilt.stdout, as: UTF8.self))")
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

    @Test func anEmptyServerIsRebuiltByItselfWhileAPrimaryKeepsTrying() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1), keep: 8))
        let early = [bytes(81, 300_000), bytes(82, 200_000)]
        #expect(try await write(early, set: "job", cluster: cluster) == [1, 2])
        await cluster.disconnect()
        try local.wipe(2) // replaced: back empty, new secret and port
        let mapPath = try local.writeMap()
        let seen = try await local.connect()
        #expect(try await seen.emptyServers(set: "job") == ["s2"])
        let problem = try await seen.status(set: "job").servers.first { $0.name == "s2" }?.problem
        #expect(problem?.contains("empty") == true, "\(String(describing: problem))")
        await seen.disconnect()

        // A primary keeps trying to write: refused while s2 lacks the set, then three complete.
        let writing = Task { () async -> [(sequence: UInt64, payload: ByteBuffer)] in
            var done: [(sequence: UInt64, payload: ByteBuffer)] = []
            var refusals: [PMUErrorCode] = []
            for attempt in 0..<500 where done.count < 3 {
                guard let connections = try? await local.connect() else { break }
                let payload = self.bytes(90 + UInt64(attempt), 150_000)
                do {
                    let primary = try await ClusterPrimary.open("job", cluster: connections)
                    done.append((try await primary.checkpoint(payload), payload))
                    await primary.close()
                } catch {
                    refusals.append((error as? PMUError)?.code ?? .internalError)
                    try? await Task.sleep(for: .milliseconds(20))
                }
                await connections.disconnect()
            }
            #expect(refusals.allSatisfy { $0 == .serverUnavailable }, "\(refusals)")
            return done
        }
        // Rebuilt by itself: the scrub loop finds s2 empty and rebuilds it before its pass.
        #expect(await PMUCtl.runMain(["cluster", "scrub", "job", "--rebuild-empty", "--every", "0", "--passes", "1", "--cluster", mapPath]) == 0)
        let written = await writing.value
        #expect(written.count == 3)
        let after = try await local.connect()
        #expect(try await after.emptyServers(set: "job").isEmpty)
        await after.disconnect()
        // Another server lost: every complete checkpoint reads back byte for byte.
        try await local.without([3]) {
            let all = try await ClusterBackup(name: "job", cluster: try await local.connect()).all()
            #expect(all.map(\.sequence) == [1, 2] + written.map(\.sequence))
            #expect(all.map(\.payload) == early + written.map(\.payload))
        }
    }

    @Test func onlineRebuildWhileThePrimaryCheckpoints() async throws {
        let local = try LocalCluster(5, scratch: scratch)
        let cluster = try await local.connect()
        try await cluster.createCheckpointSet("job", options: options(Redundancy(k: 4, m: 1), keep: 8))
        let early = [bytes(101, 400_000), bytes(102, 250_000), bytes(103, 600_000)]
        #expect(try await write(early, set: "job", cluster: cluster) == [1, 2, 3])
        await cluster.disconnect()
        try local.wipe(1)
        let connections = try await local.connect()
        // Only an empty server may rejoin.
        #expect(await code { _ = try await ClusterPrimary.open("job", cluster: connections, rejoining: ["s0"]) } == .invalidArgument)
        let primary = try await ClusterPrimary.open("job", cluster: connections, rejoining: ["s1"])
        // The backfill of s1 runs while the primary keeps checkpointing.
        async let backfilled = primary.backfill(server: "s1")
        var later: [(sequence: UInt64, payload: ByteBuffer)] = []
        for round in 0..<4 {
            let payload = bytes(110 + UInt64(round), 300_000)
            later.append((try await primary.checkpoint(payload), payload))
        }
        let report = try await backfilled
        #expect(report.rebuilt == [1, 2, 3] && report.unrecoverable.isEmpty, "\(report)")
        #expect(later.map(\.sequence) == [4, 5, 6, 7])
        // A second backfill finds nothing missing.
        #expect(try await primary.backfill(server: "s1").rebuilt.isEmpty)
        await primary.close()
        await connections.disconnect()
        let checked = try await local.connect()
        let verified = try await ClusterBackup(name: "job", cluster: checked).verify()
        #expect(verified.count == 7 && verified.allSatisfy { $0.lacking.isEmpty && $0.damaged.isEmpty && $0.failure == nil }, "\(verified)")
        await checked.disconnect()
        // Then m = 1 other server lost: every complete checkpoint reads back byte for byte.
        for other in [0, 3] {
            try await local.without([other]) {
                let all = try await ClusterBackup(name: "job", cluster: try await local.connect()).all()
                #expect(all.map(\.sequence) == Array(1...7), "lost s\(other)")
                #expect(all.map(\.payload) == early + later.map(\.payload), "lost s\(other)")
            }
        }
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

/// Scrub pass outcomes collected from the loop's callback.
actor ReportLog {
    private(set) var all: [Result<ScrubReport, PMUError>] = []
    func add(_ result: Result<ScrubReport, PMUError>) { all.append(result) }
}
