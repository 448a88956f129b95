import Foundation
import NIOCore
import PMUClient
import PMUSnapshot
import PMUTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Threads that write random 8-byte words into random pages of an arena through a writer gate,
/// seeded, bounded in count, until stopped.
final class ArenaWriters: @unchecked Sendable {
    let arena: SnapshotArena
    let gate: WriterGate
    let stopFlag = Atomic<Bool>(false)
    let writes = Atomic<Int>(0)
    private var threads: [Thread] = []
    private let finished = DispatchSemaphore(value: 0)
    let count: Int

    /// Writers touch only the first three quarters of the pages: an incremental snapshot that sent
    /// one of the others would be sending a page nobody wrote.
    static func writtenPages(_ arena: SnapshotArena) -> Int { arena.pageCount * 3 / 4 }

    /// `pauseMicroseconds` between writes keeps the dirty set of an incremental snapshot partial.
    init(arena: SnapshotArena, gate: WriterGate, threads count: Int, seed: UInt64, maxWritesEach: Int = 5_000_000, pauseMicroseconds: UInt32 = 100) {
        self.arena = arena
        self.gate = gate
        self.count = count
        for index in 0..<count {
            let thread = Thread { [self] in
                var generator = SeededGenerator(seed: seed &+ UInt64(index) &* 7919)
                let pages = UInt64(Self.writtenPages(arena)), words = UInt64(arena.pageBytes / 8)
                for _ in 0..<maxWritesEach where !stopFlag.load(ordering: .relaxed) {
                    let page = Int(generator.next() % pages), word = Int(generator.next() % words)
                    let value = generator.next()
                    gate.mutate { arena.page(page).storeBytes(of: value, toByteOffset: word * 8, as: UInt64.self) }
                    writes.add(1, ordering: .relaxed)
                    if pauseMicroseconds > 0 { usleep(pauseMicroseconds) }
                }
                finished.signal()
            }
            threads.append(thread)
            thread.start()
        }
    }

    func stop() {
        stopFlag.store(true, ordering: .relaxed)
        for _ in 0..<count { finished.wait() }
    }
}

func sameBytes(_ arena: SnapshotArena, _ reference: [UInt8]) -> Bool {
    reference.withUnsafeBytes { memcmp($0.baseAddress!, arena.base, arena.sizeBytes) == 0 }
}

func arenaError(_ size: Int) -> PMUError? {
    do {
        _ = try SnapshotArena(sizeBytes: size)
        return nil
    } catch {
        return error
    }
}

func copyOf(_ arena: SnapshotArena) -> [UInt8] { Array(UnsafeRawBufferPointer(arena.bytes)) }

@Suite(.serialized, .timeLimit(.minutes(3))) struct SnapshotTests {
    let scratch = Scratch()

    /// Pauses the writers, copies the arena as the reference image and fixes the snapshot in the
    /// same pause: the restored image must equal this copy byte for byte.
    func snapshotWithReference(_ snapshotter: LiveSnapshotter, gate: WriterGate, full: Bool = false) async throws -> (SnapshotTicket, [UInt8]) {
        await snapshotter.waitUntilIdle()
        return try gate.pause { () throws(PMUError) -> (SnapshotTicket, [UInt8]) in
            let reference = copyOf(snapshotter.arena)
            return (try snapshotter.snapshotWhilePaused(full: full), reference)
        }
    }

    /// A restore by an independent instance (its own connection, read-only).
    func restored(_ server: ServerProcess, _ name: String, sequence: UInt64? = nil) async throws -> (SnapshotArena, SnapshotHeader) {
        let client = try await server.client()
        defer { Task { await client.disconnect() } }
        let target = try await client.openSnapshotTarget(name, writable: false)
        let arena = try SnapshotArena(sizeBytes: Int(target.layout.arenaBytes))
        let header = try await target.restore(into: arena, sequence: sequence)
        return (arena, header)
    }

    func rounds(mode: SnapshotMode, seed: UInt64, poolPages: Int = 1024, rate: UInt64? = 100 << 20, arenaBytes: Int = 8 << 20, rounds: Int = 6) async throws -> (LiveSnapshotter, [SnapshotResult]) {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let arena = try SnapshotArena(sizeBytes: arenaBytes)
        let target = try await client.createSnapshotTarget("live", arenaBytes: UInt64(arenaBytes))
        let gate = WriterGate()
        var options = SnapshotOptions(mode: mode, poolPages: poolPages)
        options.transferBytesPerSecond = rate
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: gate, options: options)
        let writers = ArenaWriters(arena: arena, gate: gate, threads: 4, seed: seed)
        var results: [SnapshotResult] = []
        for round in 1...rounds {
            try await Task.sleep(for: .milliseconds(30))
            let (ticket, reference) = try await snapshotWithReference(snapshotter, gate: gate, full: round == 4)
            let result = try await ticket.result()
            #expect(result.sequence == UInt64(round), "seed \(seed)")
            let (image, header) = try await restored(server, "live")
            #expect(header.sequence == UInt64(round))
            let same = sameBytes(image, reference)
            #expect(same, "seed \(seed) round \(round): restored image differs from the arena at its snapshot instant")
            results.append(result)
        }
        writers.stop()
        #expect(writers.writes.load(ordering: .relaxed) > 0)
        let verify = try await client.openSnapshotTarget("live", writable: false).verify()
        #expect(verify.intact && verify.header.sequence == UInt64(rounds))
        await snapshotter.close()
        await client.disconnect()
        return (snapshotter, results)
    }

    @Test func writeProtectRoundsRestoreTheArenaAtEachSnapshotInstant() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        let (snapshotter, results) = try await rounds(mode: .writeProtect, seed: seed)
        #expect(snapshotter.mode == .writeProtect)
        let pages = UInt64(snapshotter.arena.pageCount)
        #expect(results[0].pagesSent == pages && results[3].pagesSent == pages, "first and forced rounds are full")
        for result in [results[1], results[2], results[4], results[5]] {
            #expect(result.pagesSent <= UInt64(ArenaWriters.writtenPages(snapshotter.arena)) && result.pagesSent > 0,
                    "seed \(seed): incremental rounds send only the pages written since the previous one (\(result.pagesSent) of \(pages))")
        }
        let statistics = snapshotter.statistics
        #expect(statistics.faults > 0 && statistics.pagesSavedToPool > 0, "seed \(seed): \(statistics)")
        #expect(statistics.poolHighWaterPages <= statistics.poolCapacityPages)
    }

    @Test func fullPoolMakesWritersWaitAndNeverGrows() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        // 4 pool pages, a slow transfer: writers keep hitting pages not yet sent.
        let (snapshotter, _) = try await rounds(mode: .writeProtect, seed: seed, poolPages: 4, rate: 16 << 20, arenaBytes: 4 << 20, rounds: 3)
        let statistics = snapshotter.statistics
        #expect(statistics.poolFullWaits > 0, "seed \(seed): \(statistics)")
        #expect(statistics.poolHighWaterPages <= 4 && statistics.poolCapacityPages == 4, "seed \(seed): \(statistics)")
    }

    @Test func copyModeIsForcedAndCorrect() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        let (snapshotter, results) = try await rounds(mode: .copy, seed: seed, rate: nil, rounds: 4)
        #expect(snapshotter.mode == .copy && snapshotter.modeReason.contains("copy"))
        #expect(results.allSatisfy { $0.pagesSent == UInt64(snapshotter.arena.pageCount) })
        #expect(snapshotter.statistics.faults == 0)
    }

    @Test func badInputGetsClearErrorsAndDamagesNothing() async throws {
        #expect(await code { _ = try SnapshotArena(sizeBytes: 4097) } == .invalidSize)
        #expect(await code { _ = try SnapshotArena(sizeBytes: 0) } == .invalidSize)
        let message = arenaError(10_000)?.message ?? ""
        #expect(message.contains("multiple of the page size") && message.contains("12288"), "\(message)")
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        // A snapshot-kind region too small for the arena: refused, nothing written.
        let small = try await client.createRegion("small", sizeBytes: 64 << 10, kind: .snapshot)
        #expect(await code { _ = try await client.openSnapshotTarget("small", writable: true, formatFor: 1 << 20) } == .invalidSize)
        #expect(try await client.read(small, at: 0, length: 64 << 10).readableBytesView.allSatisfy { $0 == 0 })
        // Regions of other kinds: refused, their bytes untouched.
        let raw = try await client.createRegion("raw", sizeBytes: 4 << 20)
        let payload = ByteBuffer(bytes: (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try await client.write(raw, at: 0, payload)
        #expect(await code { _ = try await client.openSnapshotTarget("raw", writable: true, formatFor: 1 << 20) } == .notSnapshotRegion)
        #expect(try await client.read(raw, at: 0, length: 8192) == payload)
        try await client.createCheckpointRegion("ckpt", sizeBytes: 4 << 20, options: CheckpointOptions(mode: .overwrite))
        #expect(await code { _ = try await client.openSnapshotTarget("ckpt", writable: false) } == .notSnapshotRegion)
        // A formatted target: another arena size is refused, and its snapshot stays intact.
        let arena = try SnapshotArena(sizeBytes: 1 << 20)
        memset(arena.base, 0x5A, arena.sizeBytes)
        let target = try await client.createSnapshotTarget("good", arenaBytes: 1 << 20)
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: WriterGate())
        _ = try await snapshotter.snapshot().result()
        await snapshotter.close()
        #expect(await code { _ = try await client.openSnapshotTarget("good", writable: true, formatFor: 2 << 20) } == .invalidArgument)
        #expect(try await client.stat("good").writerEpoch == target.epoch, "a refused open must not take the writer role")
        let other = try SnapshotArena(sizeBytes: 2 << 20)
        #expect(await code { _ = try LiveSnapshotter(arena: other, target: target, gate: nil) } == .invalidArgument)
        #expect(await code { _ = try await target.restore(into: other) } == .invalidArgument)
        #expect(await code { _ = try await client.createSnapshotTarget("huge", arenaBytes: 1 << 20 | 1) } == .invalidSize)
        let (image, header) = try await restored(server, "good")
        #expect(header.sequence == 1 && image.bytes.allSatisfy { $0 == 0x5A })
        #expect(await code { _ = try await client.openSnapshotTarget("good", writable: false).verify(sequence: 7) } == .unknownSequence)
        await client.disconnect()
    }

    @Test func serverKilledMidTransferLeavesThePreviousSnapshot() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let arenaBytes = 8 << 20
        let arena = try SnapshotArena(sizeBytes: arenaBytes)
        let target = try await client.createSnapshotTarget("live", arenaBytes: UInt64(arenaBytes))
        let gate = WriterGate()
        var options = SnapshotOptions(mode: .automatic)
        options.transferBytesPerSecond = 8 << 20 // a full round takes about a second
        options.batchPages = 16
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: gate, options: options)
        let writers = ArenaWriters(arena: arena, gate: gate, threads: 2, seed: seed)
        let (first, _) = try await snapshotWithReference(snapshotter, gate: gate)
        _ = try await first.result()
        try await Task.sleep(for: .milliseconds(50))
        let (second, reference) = try await snapshotWithReference(snapshotter, gate: gate)
        _ = try await second.result()
        let (third, _) = try await snapshotWithReference(snapshotter, gate: gate, full: true)
        try await Task.sleep(for: .milliseconds(300))
        server.kill9()
        #expect(await code { _ = try await third.result() } != nil, "the transfer was interrupted")
        writers.stop()
        try server.start()
        let (image, header) = try await restored(server, "live")
        #expect(header.sequence == 2, "seed \(seed)")
        let same = sameBytes(image, reference)
        #expect(same, "seed \(seed): restored image is not snapshot 2's")
        await snapshotter.close()
    }

    @Test func pmuctlSnapshotCommandsAndDamageDetection() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let arena = try SnapshotArena(sizeBytes: 1 << 20)
        let target = try await client.createSnapshotTarget("tgt", arenaBytes: 1 << 20)
        let gate = WriterGate()
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: gate)
        for round in 1...3 {
            gate.mutate { memset(arena.page(round * 7), Int32(round), arena.pageBytes) }
            _ = try await snapshotter.snapshot().result()
        }
        await snapshotter.close()
        func ctl(_ arguments: [String]) throws -> (status: Int32, text: String, stderr: String) {
            let result = try run(binDirectory + "/pmuctl", ["snapshot"] + arguments + ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"])
            return (result.status, String(decoding: result.stdout, as: UTF8.self), result.stderr)
        }
        let list = try ctl(["list", "tgt", "--json"])
        #expect(list.status == 0, "\(list.stderr)")
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(list.text.utf8)) as? [[String: Any]])
        #expect(entries.map { $0["sequence"] as? Int } == [3, 2] && entries.map { $0["status"] as? String } == ["newest", "previous"], "\(list.text)")
        #expect(entries.first?["pagesSent"] as? Int == 1, "round 3 wrote one page: \(list.text)")
        let inspect = try ctl(["inspect", "tgt", "--sequence", "2", "--json"])
        let details = try #require(try JSONSerialization.jsonObject(with: Data(inspect.text.utf8)) as? [String: Any], "\(inspect.stderr)")
        #expect(details["pages"] as? Int == 256 && (details["snapshot"] as? [String: Any])?["sequence"] as? Int == 2)
        #expect(details["requiredRegionBytes"] as? Int == 16384 + 2 * 4096 + 2 * (1 << 20))
        #expect(try ctl(["verify", "tgt"]).status == 0)
        #expect(try ctl(["inspect", "tgt", "--sequence", "9"]).stderr.contains("UNKNOWN_SEQUENCE"))
        let raw = try ctl(["list", "nope"])
        #expect(raw.status != 0 && raw.stderr.contains("UNKNOWN_REGION"))
        // Damage one page of the newest image behind the library's back: verify and restore refuse it.
        let (_, map) = try await target.image(sequence: nil)
        let handle = try await client.openRegion("tgt", rights: .readWrite)
        try await client.write(handle, at: target.layout.slotOffset(map.slots[21]), ByteBuffer(repeating: 0xEE, count: 100))
        let verify = try ctl(["verify", "tgt", "--json"])
        #expect(verify.status != 0 && verify.stderr.contains("DAMAGED") && verify.text.contains("21"), "\(verify.text) \(verify.stderr)")
        // A fresh reader: over verbs the read-write open above revoked the older handles' keys.
        let reader = try await server.client()
        #expect(await code { _ = try await reader.openSnapshotTarget("tgt", writable: false).restore(into: try SnapshotArena(sizeBytes: 1 << 20)) } == .damaged)
        await reader.disconnect()
        await client.disconnect()
    }
}
