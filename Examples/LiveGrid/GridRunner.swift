import Foundation
import PMUClient
import PMUExampleComputation
import PMUSnapshot
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs the grid live: updater threads, a snapshot every `everyMilliseconds`, a heartbeat every
/// `heartbeatMilliseconds`, until `runMilliseconds` (0: until killed) or a SIGTERM/SIGINT.
/// With `handOver`, stopping is a planned move: writers stop, a last snapshot is made durable and
/// the heartbeat records its sequence and the step count, for the standby to take over from.
public struct GridRunner: Sendable {
    public var everyMilliseconds = 200
    public var heartbeatMilliseconds = 50
    public var runMilliseconds = 0
    public var updatesPerSecondPerThread = 20_000
    public var handOver = false

    public init() {}

    public func run(grid: Grid, target: SnapshotTarget, snapshotter: LiveSnapshotter) async throws {
        let gate = snapshotter.gate!
        let stop = Atomic<Bool>(false)
        let stopped = DispatchSemaphore(value: 0)
        let threads = grid.threads
        let pace = updatesPerSecondPerThread > 0 ? UInt32(max(1, 1_000_000 / updatesPerSecondPerThread)) : 0
        for thread in 0..<threads {
            Thread {
                while !stop.load(ordering: .relaxed) {
                    gate.mutate { grid.update(thread: thread) }
                    if pace > 0 { usleep(pace) }
                }
                stopped.signal()
            }.start()
        }
        let signals = SignalFlag()
        let started = LiveSnapshotter.wallMilliseconds()
        var beats: UInt64 = 0
        var nextSnapshot = started + UInt64(everyMilliseconds)
        var lastDurable: UInt64 = 0
        var pending: SnapshotTicket?
        while runMilliseconds == 0 || LiveSnapshotter.wallMilliseconds() - started < UInt64(runMilliseconds), !signals.raised {
            beats += 1
            try await target.beat(Heartbeat(epoch: target.epoch, counter: beats, milliseconds: LiveSnapshotter.wallMilliseconds(), note: grid.totalSteps))
            if let ticket = pending, let result = try await finished(ticket) {
                report(result, steps: nil)
                lastDurable = result.sequence
                pending = nil
            }
            if pending == nil, LiveSnapshotter.wallMilliseconds() >= nextSnapshot {
                let ticket = try await snapshotter.snapshot()
                say("snapshot \(ticket.sequence) started: \(ticket.pagesToSend) pages, pause \(ticket.pauseNanoseconds / 1000) us")
                pending = ticket
                nextSnapshot = LiveSnapshotter.wallMilliseconds() + UInt64(everyMilliseconds)
            }
            try await Task.sleep(for: .milliseconds(heartbeatMilliseconds))
        }
        if let ticket = pending {
            let result = try await ticket.result()
            report(result, steps: nil)
            lastDurable = result.sequence
        }
        stop.store(true, ordering: .relaxed)
        for _ in 0..<threads { stopped.wait() }
        guard handOver else {
            await snapshotter.close()
            say("stopped after snapshot \(lastDurable)")
            return
        }
        // Planned move: the writers are stopped, so this image is the final state.
        let final = try await snapshotter.snapshot().result()
        let steps = grid.totalSteps
        report(final, steps: steps)
        try await target.beat(Heartbeat(epoch: target.epoch, counter: beats + 1, milliseconds: LiveSnapshotter.wallMilliseconds(),
                                        handedOverSequence: final.sequence, note: steps))
        await snapshotter.close()
        say("handed over at snapshot \(final.sequence) with \(steps) steps")
    }

    private func finished(_ ticket: SnapshotTicket) async throws -> SnapshotResult? {
        guard ticket.isFinished else { return nil }
        return try await ticket.result()
    }

    private func report(_ result: SnapshotResult, steps: UInt64?) {
        say("snapshot \(result.sequence) durable: \(result.pagesSent) pages, \(result.pageBytesSent + result.metadataBytesSent) bytes, pause \(result.pauseNanoseconds / 1000) us, transfer \(result.transferNanoseconds / 1_000_000) ms" + (steps.map { ", \($0) steps" } ?? ""))
    }
}

/// SIGTERM and SIGINT end the run loop (for --hand-over on Ctrl-C).
final class SignalFlag: @unchecked Sendable {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    init() {
        signal(SIGTERM) { _ in SignalFlag.flag = 1 }
        signal(SIGINT) { _ in SignalFlag.flag = 1 }
    }
    var raised: Bool { SignalFlag.flag != 0 }
}
