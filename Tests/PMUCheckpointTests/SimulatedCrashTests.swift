import Foundation
import NIOCore
import PMUCore
import PMUTesting
import Testing

@testable import PMUCheckpoint

/// Seeded crash simulation: a primary writes checkpoints into a simulated region that dies at a
/// random operation; the machine's crash then keeps, drops or tears every unsynced page. Recovery
/// must never return damaged data, never lose a committed checkpoint the mode promises to keep,
/// and never return one older than the newest committed.
@Suite struct SimulatedCrashTests {
    /// PMU_SIM_SEED=N runs only that case; PMU_SIM_CASES=N sets the number of cases.
    static let cases: [UInt64] = {
        let environment = ProcessInfo.processInfo.environment
        if let seed = environment["PMU_SIM_SEED"].flatMap(UInt64.init) { return [seed] }
        let count = environment["PMU_SIM_CASES"].flatMap(Int.init) ?? 3000
        return (0..<UInt64(count)).map { $0 &* 0x9E37_79B9 &+ 17 }
    }()

    static func payload(sequence: UInt64, length: Int, seed: UInt64) -> ByteBuffer {
        var generator = SeededGenerator(seed: seed ^ (sequence &* 0x1000_0000_01B3))
        var bytes = [UInt8](repeating: 0, count: (length + 7) / 8 * 8)
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
        }
        return ByteBuffer(bytes: bytes[0..<length])
    }

    @Test func crashesNeverYieldDamagedOrLostCheckpoints() async throws {
        var failures: [String] = []
        var stats = (cases: 0, acknowledged: 0, kept: 0, dropped: 0, torn: 0, fullRefusals: 0)
        for seed in Self.cases {
            var generator = SeededGenerator(seed: seed)
            do {
                let problems = try await Self.runCase(seed: seed, generator: &generator, stats: &stats)
                failures += problems.map { "seed \(seed): \($0)" }
            } catch {
                failures.append("seed \(seed): unexpected error \(error)")
            }
            if failures.count > 5 { break }
        }
        print("simulated crash cases: \(stats.cases), checkpoints acknowledged: \(stats.acknowledged), unsynced pages kept/dropped/torn: \(stats.kept)/\(stats.dropped)/\(stats.torn), full refusals: \(stats.fullRefusals)")
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))\nrerun one with PMU_SIM_SEED=<seed>")
        #expect(stats.acknowledged > Self.cases.count) // the cases did real work
    }

    static func runCase(
        seed: UInt64, generator: inout SeededGenerator, stats: inout (cases: Int, acknowledged: Int, kept: Int, dropped: Int, torn: Int, fullRefusals: Int)
    ) async throws -> [String] {
        stats.cases += 1
        let mode: CheckpointMode = Bool.random(using: &generator) ? .overwrite : .append
        let regionBytes = Int.random(in: 6...40, using: &generator) * 4096 + Int.random(in: 0...4095, using: &generator)
        // Small indexes fit one 4 KiB page; large ones (64 entries a page) span several, so
        // persisting one header does not incidentally persist its neighbours.
        let entries = UInt8.random(in: 0..<8, using: &generator) > 0 ? UInt32.random(in: 2...12, using: &generator) : UInt32.random(in: 65...140, using: &generator)
        let keep: UInt32 = mode == .append && Bool.random(using: &generator) ? UInt32.random(in: 1...(entries - 1), using: &generator) : 0
        guard let geometry = try? CheckpointGeometry.plan(mode: mode, regionBytes: UInt64(regionBytes), maxCheckpoints: entries, keepNewest: keep) else {
            return []
        }
        let region = SimulatedRegion(sizeBytes: regionBytes, failAfterOperations: Int.random(in: 0...80, using: &generator))
        // Concurrent calls take sequence numbers in whatever order they reach the writer, so what was
        // written under a sequence is known only once acknowledged; unacknowledged payloads are a pool.
        var written: [UInt64: ByteBuffer] = [:]
        var unacknowledged: [ByteBuffer] = []
        var acknowledged: [UInt64] = []
        var token: UInt64 = 0
        let maxPayload = Int(min(geometry.maxPayloadBytes, UInt64(regionBytes / 3)))

        if let writer = try? await CheckpointWriter.open(io: region, epoch: 1, format: geometry) {
            loop: for _ in 0..<40 {
                // Sometimes two checkpoints in flight at once.
                let batch = Int.random(in: 1...2, using: &generator)
                var payloads: [ByteBuffer] = []
                for _ in 0..<batch {
                    token += 1
                    payloads.append(payload(sequence: token, length: Int.random(in: 0...maxPayload, using: &generator), seed: seed))
                }
                let results = await withTaskGroup(of: (Int, Result<UInt64, PMUError>).self) { group in
                    for index in payloads.indices {
                        let data = payloads[index]
                        group.addTask {
                            do throws(PMUError) { return (index, .success(try await writer.checkpoint(data))) } catch { return (index, .failure(error)) }
                        }
                    }
                    var all: [(Int, Result<UInt64, PMUError>)] = []
                    for await result in group { all.append(result) }
                    return all.sorted { $0.0 < $1.0 }
                }
                var stop = false
                for (index, result) in results {
                    switch result {
                    case .success(let sequence):
                        acknowledged.append(sequence)
                        written[sequence] = payloads[index]
                    case .failure(let error):
                        unacknowledged.append(payloads[index])
                        let code = error.code
                        if code == .regionFull { stats.fullRefusals += 1 }
                        if code == .regionFull || code == .connectionClosed || error.message.contains("simulated crash") || error.message.contains("earlier failure") {
                            stop = true // after recording every result of the batch
                        } else {
                            return ["writer failed: \(error)"]
                        }
                    }
                }
                if stop { break loop }
                if region.crashed { break }
            }
        }
        stats.acknowledged += acknowledged.count
        let (bytes, crash) = region.crash(using: &generator)
        stats.kept += crash.kept
        stats.dropped += crash.dropped
        stats.torn += crash.torn

        var problems: [String] = []
        let recovered = SimulatedRegion(recoveredFrom: bytes)
        let newestAcknowledged = acknowledged.max() ?? 0
        let reader: CheckpointReader
        do {
            reader = try await CheckpointReader.open(io: recovered)
        } catch {
            // Only acceptable if formatting never became durable, so nothing was ever committed.
            return newestAcknowledged == 0 ? [] : ["header lost after \(acknowledged.count) acknowledged checkpoints: \(error)"]
        }
        let latest = try await reader.latest()
        if newestAcknowledged > 0 {
            guard let latest else { return ["no checkpoint recovered; newest acknowledged \(newestAcknowledged); records \(try await reader.records()); verify \(try await CheckpointVerifier.verify(io: recovered).items.map { ($0.record.sequence, $0.status) })"] }
            if latest.sequence < newestAcknowledged {
                problems.append("recovered \(latest.sequence), older than acknowledged \(newestAcknowledged)")
            }
        }
        func wasWritten(_ checkpoint: Checkpoint) -> Bool {
            if let known = written[checkpoint.sequence] { return known == checkpoint.payload }
            return unacknowledged.contains(checkpoint.payload)
        }
        if let latest, !wasWritten(latest) {
            problems.append("latest \(latest.sequence) differs from what was written: \(latest.payload.readableBytes) bytes; written \(written.mapValues(\.readableBytes)); unacknowledged \(unacknowledged.map(\.readableBytes)); records \(try await reader.records())")
        }
        let all = try await reader.all()
        for checkpoint in all where !wasWritten(checkpoint) {
            problems.append("checkpoint \(checkpoint.sequence) differs from what was written")
        }
        let present = Set(all.map(\.sequence))
        let mustKeep: [UInt64]
        switch (mode, keep) {
        case (.overwrite, _): mustKeep = newestAcknowledged > 0 ? [newestAcknowledged] : []
        case (.append, 0): mustKeep = acknowledged
        case (.append, let n): mustKeep = acknowledged.filter { $0 + UInt64(n) > newestAcknowledged }
        }
        for sequence in mustKeep where !present.contains(sequence) {
            problems.append("acknowledged checkpoint \(sequence) lost (mode \(mode), keep \(keep))")
        }
        // Sequences are contiguous from the oldest kept to the newest: commits happen in order.
        if let low = present.min(), let high = present.max(), mode == .append, keep == 0, present.count != Int(high - low + 1) {
            problems.append("gap in recovered sequences \(present.sorted())")
        }
        // A new primary continues after the crash, and a backup sees its checkpoint.
        let next = try await CheckpointWriter.open(io: recovered, epoch: 2)
        let data = payload(sequence: 999_999, length: Int.random(in: 0...min(maxPayload, 4096), using: &generator), seed: seed)
        let continued: Result<UInt64, PMUError>
        do { continued = .success(try await next.checkpoint(data)) } catch { continued = .failure(error) }
        switch continued {
        case .success(let sequence):
            if sequence <= (latest?.sequence ?? 0) { problems.append("new primary reused sequence \(sequence)") }
            if try await reader.latest()?.payload != data { problems.append("backup does not see the new primary's checkpoint") }
        case .failure(let error):
            if error.code == .regionFull { stats.fullRefusals += 1 } else { problems.append("new primary failed: \(error)") }
        }
        let report = try await CheckpointVerifier.verify(io: recovered)
        // Damaged records can only come from torn payloads of records that were being replaced.
        for item in report.damaged where acknowledged.contains(item.record.sequence) && mustKeep.contains(item.record.sequence) {
            problems.append("verify reports kept checkpoint \(item.record.sequence) damaged")
        }
        return problems
    }

    /// Process crash (kill -9 of the primary): every write reached the page cache, none is torn.
    @Test func processCrashesLoseNothingCommitted() async throws {
        for seed in Self.cases.prefix(500) {
            var generator = SeededGenerator(seed: seed)
            let geometry = try CheckpointGeometry.plan(mode: .overwrite, regionBytes: 64 * 1024)
            let region = SimulatedRegion(sizeBytes: 64 * 1024, failAfterOperations: Int.random(in: 0...60, using: &generator))
            var acknowledged: UInt64 = 0
            var attempted: [UInt64: ByteBuffer] = [:]
            if let writer = try? await CheckpointWriter.open(io: region, epoch: 1, format: geometry) {
                while true {
                    let sequence = await writer.upcomingSequence
                    let data = Self.payload(sequence: sequence, length: Int.random(in: 0...20_000, using: &generator), seed: seed)
                    attempted[sequence] = data
                    guard let done = try? await writer.checkpoint(data) else { break }
                    acknowledged = done
                }
            }
            let recovered = SimulatedRegion(recoveredFrom: region.processCrash())
            guard acknowledged > 0 else { continue }
            let latest = try #require(try await CheckpointReader.open(io: recovered).latest(), "seed \(seed)")
            #expect(latest.sequence >= acknowledged, "seed \(seed)")
            #expect(latest.payload == attempted[latest.sequence], "seed \(seed)")
            #expect(try await CheckpointVerifier.verify(io: recovered).isClean, "seed \(seed)")
        }
    }
}

