import ArgumentParser
import Foundation
import PMUClient
import PMUSnapshot
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Live snapshots of an arena (issue 11): the writers' pause per snapshot (first full, then
/// incremental with --dirty percentages of pages written), bytes sent against dirty bytes, the
/// transfer's GB/s, and one writer thread's rate during a background transfer against its rate
/// without one. Bounded: --rounds per percentage, one-second rate windows.
struct SnapshotBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot", abstract: "Live snapshot pause, bytes and transfer rate.")
    @Option(name: .customLong("arena-mib")) var arenaMebibytes = 64
    @Option(help: "Incremental rounds per dirty percentage (the median is reported).") var rounds = 3
    @Option(help: "automatic, write-protect or copy.") var mode = "automatic"
    @OptionGroup var connection: Connection

    func execute() async throws {
        let client = try await connection.connect()
        let arenaBytes = arenaMebibytes << 20
        let name = "bench-snapshot-\(arenaMebibytes)-\(getpid())"
        let arena = try SnapshotArena(sizeBytes: arenaBytes)
        for page in 0..<arena.pageCount { arena.page(page).storeBytes(of: UInt64(page) &* 0x9E37_79B9_7F4A_7C15, as: UInt64.self) }
        let target = try await client.createSnapshotTarget(name, arenaBytes: UInt64(arenaBytes))
        let gate = WriterGate()
        guard let chosen = SnapshotMode(rawValue: mode) else { throw ValidationError("unknown --mode \(mode)") }
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: gate, options: SnapshotOptions(mode: chosen))
        var result: [String: Any] = ["arena_bytes": arenaBytes, "mode": snapshotter.mode.rawValue]

        let full = try await snapshotter.snapshot().result()
        result["full_pause_us"] = Double(full.pauseNanoseconds) / 1000
        result["full_transfer_ms"] = Double(full.transferNanoseconds) / 1e6
        result["full_commit_ms"] = Double(full.commitNanoseconds) / 1e6
        result["full_gbps"] = Double(full.pageBytesSent + full.metadataBytesSent) / Double(full.transferNanoseconds)
        var generator = SystemRandomNumberGenerator()
        for percent in [1, 10] {
            var pauses: [Double] = [], sent: [Double] = [], dirty: [Double] = [], transfers: [Double] = []
            for _ in 0..<rounds {
                // Exactly percent% distinct pages written, then the snapshot.
                let count = max(1, arena.pageCount * percent / 100)
                var pages = Array(0..<arena.pageCount)
                pages.shuffle(using: &generator)
                gate.mutate { for page in pages.prefix(count) { arena.page(page).storeBytes(of: generator.next(), toByteOffset: 8, as: UInt64.self) } }
                let round = try await snapshotter.snapshot().result()
                pauses.append(Double(round.pauseNanoseconds) / 1000)
                sent.append(Double(round.pageBytesSent + round.metadataBytesSent))
                dirty.append(Double(count * arena.pageBytes))
                transfers.append(Double(round.transferNanoseconds) / 1e6)
            }
            result["incr\(percent)_pause_us"] = median(pauses)
            result["incr\(percent)_bytes_sent"] = median(sent)
            result["incr\(percent)_dirty_bytes"] = median(dirty)
            result["incr\(percent)_transfer_ms"] = median(transfers)
        }

        // One writer thread as fast as it can go; its rate in a window without a transfer, then
        // during a full background transfer (every page pending: first writes copy into the pool).
        // Uniform over the whole arena (every write likely a page not yet written: the worst case,
        // one fault per write) and over a hot set of 1% of the pages.
        for (label, hotPages) in [("uniform", arena.pageCount), ("hot1", max(1, arena.pageCount / 100))] {
            let (idle, busy, window) = try await writerRates(snapshotter, hotPages: hotPages)
            result["writer_rate_idle_\(label)"] = idle
            result["writer_rate_during_transfer_\(label)"] = busy
            result["rate_window_ms_\(label)"] = window
        }
        let statistics = snapshotter.statistics
        result["pool_high_water_pages"] = statistics.poolHighWaterPages
        result["pool_full_waits"] = statistics.poolFullWaits
        await snapshotter.close()
        try await client.delete(name)
        await client.disconnect()
        emit(result)
    }

    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// Writes per second of one writer over `hotPages` pages: for a second without a transfer,
    /// then during a full snapshot's transfer. Returns (idle, during, transfer window ms).
    func writerRates(_ snapshotter: LiveSnapshotter, hotPages: Int) async throws -> (Double, Double, Double) {
        let arena = snapshotter.arena, gate = snapshotter.gate!
        let writes = Atomic<Int>(0), stop = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        Thread {
            var state: UInt64 = 0x1234_5678
            let pages = UInt64(hotPages), stride = max(1, arena.pageCount / hotPages)
            while !stop.load(ordering: .relaxed) {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                let page = Int((state >> 20) % pages) * stride
                gate.mutate { arena.page(page).storeBytes(of: state, toByteOffset: 16, as: UInt64.self) }
                writes.add(1, ordering: .relaxed)
            }
            done.signal()
        }.start()
        try await Task.sleep(for: .milliseconds(200))
        var before = writes.load(ordering: .relaxed)
        var start = ContinuousClock.now
        try await Task.sleep(for: .seconds(1))
        let idle = Double(writes.load(ordering: .relaxed) - before) / (microseconds(since: start) / 1e6)
        let ticket = try await snapshotter.snapshot(full: true)
        before = writes.load(ordering: .relaxed)
        start = ContinuousClock.now
        let during = try await ticket.result()
        let busy = Double(writes.load(ordering: .relaxed) - before) / (microseconds(since: start) / 1e6)
        stop.store(true, ordering: .relaxed)
        done.wait()
        return (idle, busy, Double(during.transferNanoseconds) / 1e6)
    }
}
