import Foundation
import NIOCore
import PMUClient
import PMUExampleComputation
import PMUTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Checkpoints through the real server: modes, fencing, bad input, and kill -9 of the primary and
/// of the server.
@Suite struct CheckpointTests {
    let scratch = Scratch()

    func bytes(_ seed: UInt64, _ count: Int) -> ByteBuffer { ByteBuffer(bytes: pattern(offset: 0, count: count, seed: seed)) }

    /// A resuming writer (ARCHITECTURE.md 12a) outlives a kill -9 and restart of its server at the
    /// same address, over either transport (OPEN_RESUME answers GRANT_RDMA on verbs): it takes its
    /// writer role back with the next epoch and goes on with the next sequence.
    @Test func resumingWriterOutlivesItsServersRestart() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", extraArguments: ["--listen", "\(testListenHost):\(freePort())"])
        let (connection, primary) = try await ResumeTests.writer(creatingOn: server)
        let epoch = await primary.epoch
        for index in 1...3 { #expect(try await primary.checkpoint(ResumeTests.payload(index)) == UInt64(index)) }
        server.kill9()
        try server.start()
        #expect(try await primary.checkpoint(ResumeTests.payload(4)) == 4)
        #expect(await primary.resumes == 1)
        #expect(await primary.epoch == epoch + 1)
        await connection.disconnect()
        try await ResumeTests.expectEveryCheckpointInOrder(at: server.configuration(), acknowledged: (1...4).map { ($0, UInt64($0)) })
    }

    @Test func overwriteModeKeepsTheNewestAndReplacesAtomically() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let geometry = try await client.createCheckpointRegion("ow", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .overwrite))
        let primary = try await client.openPrimary("ow")
        let backup = try await (try await server.client()).openBackup("ow")
        #expect(try await backup.latest() == nil)
        for index in 1...5 as ClosedRange<UInt64> {
            #expect(try await primary.checkpoint(bytes(index, 100_000 + Int(index))) == index)
            let latest = try #require(try await backup.latest())
            #expect(latest.sequence == index && latest.payload == bytes(index, 100_000 + Int(index)) && latest.epoch == primary.epoch)
        }
        // Two slots: the previous one is still readable, older ones are gone.
        #expect(try await backup.all().map(\.sequence) == [4, 5])
        let tooBig = await code { _ = try await primary.checkpoint(ByteBuffer(repeating: 1, count: Int(geometry.slotBytes) + 1)) }
        #expect(tooBig == .checkpointTooLarge)
        #expect(try await backup.latest()?.sequence == 5)
        await client.disconnect()
    }

    @Test func appendModeReadsAllAndRangesAndRefusesWhenFull() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        try await client.createCheckpointRegion("log", sizeBytes: 8192 + 8 * 4096, options: CheckpointOptions(mode: .append, maxCheckpoints: 16))
        let primary = try await client.openPrimary("log")
        // Several in flight at once; they complete in order.
        let sequences = try await withThrowingTaskGroup(of: UInt64.self) { group in
            for index in 0..<8 { group.addTask { try await primary.checkpoint(self.bytes(UInt64(index), 4096)) } }
            var all: [UInt64] = []
            for try await sequence in group { all.append(sequence) }
            return all.sorted()
        }
        #expect(sequences == Array(1...8))
        let backup = try await client.openBackup("log")
        let all = try await backup.all()
        #expect(all.map(\.sequence) == Array(1...8))
        #expect(try await backup.checkpoints(in: 3...5).map(\.sequence) == [3, 4, 5])
        let full = await code { _ = try await primary.checkpoint(bytes(99, 4096)) }
        #expect(full == .regionFull)
        #expect(try await backup.all().count == 8) // nothing lost to the refused checkpoint
        #expect(await code { _ = try await backup.checkpoint(sequence: 42) } == .unknownSequence)
        await client.disconnect()
    }

    @Test func appendRingKeepsTheNewestN() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        try await client.createCheckpointRegion("ring", sizeBytes: 8192 + 6 * 4096, options: CheckpointOptions(mode: .append, maxCheckpoints: 8, keepNewest: 3))
        let primary = try await client.openPrimary("ring")
        let backup = try await client.openBackup("ring")
        for index in 1...30 as ClosedRange<UInt64> {
            _ = try await primary.checkpoint(bytes(index, 4000))
            let kept = try await backup.all().map(\.sequence)
            for required in max(1, Int(index) - 2)...Int(index) { #expect(kept.contains(UInt64(required)), "after \(index): \(kept)") }
        }
        await client.disconnect()
    }

    @Test func badCheckpointInputGetsClearErrors() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        _ = try await client.createRegion("raw", sizeBytes: 1 << 20)
        #expect(await code { _ = try await client.openPrimary("raw") } == .notCheckpointRegion)
        #expect(await code { _ = try await client.openBackup("raw") } == .notCheckpointRegion)
        #expect(await code { _ = try await client.openBackup("missing") } == .unknownRegion)
        #expect(await code { try await client.createCheckpointRegion("tiny", sizeBytes: 8192, options: CheckpointOptions(mode: .overwrite)) } == .invalidSize)
        #expect(await code { try await client.createCheckpointRegion("x", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append, maxCheckpoints: 4, keepNewest: 4)) } == .invalidArgument)
        // A record whose header is valid but whose payload is corrupt: verify names it, readers skip it.
        try await client.createCheckpointRegion("hurt", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append))
        let primary = try await client.openPrimary("hurt")
        for index in 1...3 as ClosedRange<UInt64> { _ = try await primary.checkpoint(bytes(index, 10_000)) }
        let raw = try await client.openRegion("hurt", rights: .readWrite) // fences the primary; fine for this test
        let record = try #require(try await (try await client.openBackup("hurt")).reader.records().first { $0.sequence == 3 })
        try await client.write(raw, at: primary.geometry.dataOffset + record.dataOffset + 17, [0xFF, 0xFF])
        let backup = try await client.openBackup("hurt")
        #expect(try await backup.latest()?.sequence == 2)
        #expect(try await backup.all().map(\.sequence) == [1, 2])
        #expect(await code { _ = try await backup.checkpoint(sequence: 3) } == .damaged)
        let verify = try run(binDirectory + "/pmuctl", ["checkpoint", "verify", "hurt", "--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"])
        #expect(verify.status != 0)
        #expect(verify.stderr.contains("checkpoint(s) 3 damaged"))
        // A damaged region header is reported, never formatted over.
        try await client.write(raw, at: 9, [0x42])
        #expect(await code { _ = try await client.openPrimary("hurt") } == .damaged)
        #expect(await code { _ = try await client.openBackup("hurt") } == .notCheckpointRegion)
        let repair = try await client.openRegion("hurt", rights: .readWrite) // the failed open fenced `raw`
        try await client.write(repair, at: 9, [0x00]) // restored: the checkpoints are all still there
        #expect(try await client.openBackup("hurt").all().map(\.sequence) == [1, 2])
        await client.disconnect()
    }

    /// A stale primary (older epoch) writing after a takeover is refused with FENCED and changes nothing.
    @Test func stalePrimaryIsFenced() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        var setup = try await server.client()
        try await setup.createCheckpointRegion("fenced", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append))
        let old = try await (try await server.client()).openPrimary("fenced")
        _ = try await old.checkpoint(bytes(1, 5000))
        let new = try await (try await server.client()).openPrimary("fenced")
        #expect(new.epoch > old.epoch)
        let before = try await setup.openBackup("fenced").all()
        #expect(await code { _ = try await old.checkpoint(self.bytes(2, 5000)) } == .fenced)
        let raw = old.handle
        // Another connection's key: INVALID_KEY over TCP. Over verbs the device refuses the foreign
        // (and revoked) rkey, which ends `setup`'s connection, so reconnect; the library reports a
        // refused write through a checkpoint writer's handle as FENCED.
        #expect(await code { try await setup.write(raw, at: 0, [1]) } == (testTransport == .rdma ? .fenced : .invalidKey))
        if testTransport == .rdma { setup = try await server.client() }
        #expect(try await setup.openBackup("fenced").all() == before)
        #expect(try await new.checkpoint(bytes(3, 5000)) == 2)
        let latest = try #require(try await setup.openBackup("fenced").latest())
        #expect(latest.epoch == new.epoch && latest.payload == bytes(3, 5000))
        await setup.disconnect()
    }

    /// kill -9 of a primary at random moments, many times: the backup always recovers a checkpoint
    /// byte-identical to one the primary reported committed, never torn, never older than the
    /// newest reported.
    @Test func primaryKilledAtRandomMomentsLosesNoCommittedStep() async throws {
        let seed = ProcessInfo.processInfo.environment["PMU_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
        print("primary kill test seed: \(seed)")
        var generator = SeededGenerator(seed: seed)
        let iterations = ProcessInfo.processInfo.environment["PMU_KILL_ITERATIONS"].flatMap(Int.init) ?? 200
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let backup = try await server.client()
        var newestReported: UInt64 = 0
        var killedMidCheckpoint = 0
        var startedCommitting = 0
        for iteration in 0..<iterations {
            let output = scratch.path + "/primary-\(iteration).out"
            FileManager.default.createFile(atPath: output, contents: nil)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binDirectory + "/pmu-example-primary")
            process.arguments = ["--every", "1", "--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"]
            process.standardOutput = FileHandle(forWritingAtPath: output)
            process.standardError = FileHandle(forWritingAtPath: output)
            try process.run()
            // Let it start, then kill it at a random moment among its checkpoint writes. The wait
            // ends at the first commit; its bound only matters on a starved machine (the VM under
            // emulation on a loaded host took over 20 s for a start and a first commit).
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("committed") {
                usleep(1000)
            }
            if ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("committed") { startedCommitting += 1 }
            usleep(UInt32.random(in: 0...30_000, using: &generator))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let lines = ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n")
            if let last = lines.last(where: { $0.hasPrefix("committed step") }), let step = UInt64(last.split(separator: " ")[2]) {
                newestReported = max(newestReported, step)
            }
            if lines.last?.hasPrefix("committed") == true { killedMidCheckpoint += 1 }
            // Killed before it created its region: nothing was promised yet.
            if newestReported == 0, await code({ _ = try await backup.stat("example-state") }) == .unknownRegion { continue }
            let region = try await backup.openBackup("example-state")
            guard let found = try await region.latest() else {
                // Nothing committed yet is only right if no primary ever reported a commit.
                #expect(newestReported == 0, "seed \(seed) iteration \(iteration): nothing recovered after step \(newestReported) was reported")
                try await backup.close(region.handle)
                continue
            }
            let latest = found
            let state = try #require(ComputationState(decoding: latest.payload), "seed \(seed) iteration \(iteration): undecodable")
            #expect(state.step >= newestReported, "seed \(seed) iteration \(iteration): recovered step \(state.step) < reported \(newestReported)")
            #expect(state == ComputationState.after(steps: state.step), "seed \(seed) iteration \(iteration): state of step \(state.step) is not byte-identical to the computation")
            try await backup.close(region.handle)
            newestReported = max(newestReported, state.step)
        }
        print("primary kill test: \(iterations) kills, \(startedCommitting) after a reported commit, newest step \(newestReported)")
        // The primaries made progress: each one that reported a commit before its kill (all of
        // them, unless a loaded machine kept one from committing within 20 s; under emulation,
        // in the RDMA VM, often exactly one commit before the kill lands) added at least a step.
        #expect(startedCommitting > iterations / 2)
        #expect(newestReported >= UInt64(startedCommitting))
        await backup.disconnect()
    }

    /// kill -9 of the server during checkpoint writes: after restart verify passes and the newest
    /// committed checkpoint is intact.
    @Test func serverKilledDuringCheckpointWrites() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let setup = try await server.client()
        try await setup.createCheckpointRegion("srv", sizeBytes: 4 << 20, options: CheckpointOptions(mode: .append, maxCheckpoints: 64, keepNewest: 8))
        await setup.disconnect()
        var committed: [UInt64: ByteBuffer] = [:]
        for round in 0..<5 {
            let primary = try await (try await server.client()).openPrimary("srv")
            let writer = Task { () -> [UInt64: ByteBuffer] in
                var done: [UInt64: ByteBuffer] = [:]
                for index in 0..<100_000 {
                    let data = ByteBuffer(bytes: pattern(offset: UInt64(index), count: 20_000 + index % 5000, seed: UInt64(round)))
                    guard let sequence = try? await primary.checkpoint(data) else { break }
                    done[sequence] = data
                }
                return done
            }
            try await Task.sleep(for: .milliseconds(300 + round * 100))
            server.kill9()
            committed.merge(await writer.value) { $1 }
            try server.start()
            let verify = try run(binDirectory + "/pmuctl", ["checkpoint", "verify", "srv", "--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"])
            #expect(verify.status == 0, "round \(round): \(verify.stderr)")
            let backup = try await (try await server.client()).openBackup("srv")
            if let newest = committed.keys.max() {
                let latest = try #require(try await backup.latest(), "round \(round): nothing recovered, \(committed.count) committed")
                #expect(latest.sequence >= newest, "round \(round)")
                if let expected = committed[latest.sequence] { #expect(latest.payload == expected) }
            }
            for checkpoint in try await backup.all() {
                if let expected = committed[checkpoint.sequence] { #expect(checkpoint.payload == expected, "sequence \(checkpoint.sequence)") }
            }
        }
        #expect(committed.count > 5)
    }

    @Test func pmuctlCheckpointCommands() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let base = ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"]
        func ctl(_ arguments: [String], stdin: Data? = nil) throws -> (status: Int32, stdout: Data, stderr: String) {
            try run(binDirectory + "/pmuctl", arguments + base, stdin: stdin)
        }
        #expect(try ctl(["region", "create", "c", "--size", "1MiB", "--kind", "checkpoint-append", "--keep-newest", "2", "--max-checkpoints", "4"]).status == 0)
        for index in 1...3 {
            let put = try ctl(["checkpoint", "put", "c"], stdin: Data("state \(index)".utf8))
            #expect(put.status == 0, "\(put.stderr)")
            #expect(String(decoding: put.stdout, as: UTF8.self) == "\(index)\n")
        }
        let listed = try JSONSerialization.jsonObject(with: try ctl(["checkpoint", "list", "c", "--json"]).stdout) as? [[String: Any]]
        #expect(listed?.map { $0["sequence"] as? Int } == [1, 2, 3])
        #expect(listed?.allSatisfy { $0["status"] as? String == "ok" } == true)
        #expect(try ctl(["checkpoint", "get", "c"]).stdout == Data("state 3".utf8))
        #expect(try ctl(["checkpoint", "get", "c", "--sequence", "2"]).stdout == Data("state 2".utf8))
        let out = scratch.path + "/got"
        #expect(try ctl(["checkpoint", "get", "c", "--sequence", "1", "--out", out]).status == 0)
        #expect(FileManager.default.contents(atPath: out) == Data("state 1".utf8))
        #expect(try ctl(["checkpoint", "get", "c", "--sequence", "9"]).stderr.contains("UNKNOWN_SEQUENCE"))
        #expect(try ctl(["checkpoint", "verify", "c"]).status == 0)
        let inspect = try JSONSerialization.jsonObject(with: try ctl(["region", "inspect", "c", "--json"]).stdout) as? [String: Any]
        #expect(inspect?["mode"] as? String == "append" && inspect?["keepNewest"] as? Int == 2 && inspect?["checkpoints"] as? Int == 3)
        #expect(try ctl(["region", "create", "r", "--size", "1MiB"]).status == 0)
        #expect(try ctl(["checkpoint", "list", "r"]).stderr.contains("NOT_CHECKPOINT_REGION"))
    }

    /// The README's example pair: the backup takes over after the primary is killed and continues
    /// from the newest checkpoint with no committed step lost.
    @Test func examplePairSurvivesKillingThePrimary() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let base = ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"]
        let output = scratch.path + "/primary.out"
        FileManager.default.createFile(atPath: output, contents: nil)
        let primary = Process()
        primary.executableURL = URL(fileURLWithPath: binDirectory + "/pmu-example-primary")
        primary.arguments = ["--every", "50", "--step-delay-us", "50"] + base
        primary.standardOutput = FileHandle(forWritingAtPath: output)
        try primary.run()
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, (((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").components(separatedBy: "committed").count < 5) { usleep(10_000) }
        kill(primary.processIdentifier, SIGKILL)
        primary.waitUntilExit()
        let reported = ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("committed step") }
        let lastStep = try #require(reported.last.flatMap { UInt64($0.split(separator: " ")[2]) })
        let backup = try run(binDirectory + "/pmu-example-backup", ["--takeover-after-ms", "300", "--steps", "\(lastStep + 500)", "--every", "50"] + base, timeoutSeconds: 60)
        let text = String(decoding: backup.stdout, as: UTF8.self)
        #expect(backup.status == 0, "\(backup.stderr)")
        let tookOver = try #require(text.split(separator: "\n").first { $0.hasPrefix("took over at step") })
        let resumedAt = try #require(UInt64(tookOver.split(separator: " ")[4]))
        #expect(resumedAt >= lastStep)
        #expect(tookOver.contains("verified"))
        #expect(text.contains("done at step \(lastStep + 500)"))
    }
}
