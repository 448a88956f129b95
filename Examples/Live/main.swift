import ArgumentParser
import Foundation
import PMUClient
import PMUExampleComputation
import PMUExampleLiveGrid
import PMUSnapshot

/// A program with a large mutable state (a grid of 4 KiB tiles in a snapshot arena) updated by
/// several threads, snapshotted every --every-ms into a PMU region while it runs. If the target
/// already holds a snapshot, it resumes from it (taking the writer role: any older instance is
/// fenced). --hand-over: when it stops (--run-ms elapsed, SIGTERM or Ctrl-C) it makes a final
/// snapshot durable and records it in the heartbeat, so the standby takes over with no step lost.
struct Live: ExampleCommand {
    static let configuration = CommandConfiguration(commandName: "pmu-example-live")
    @Option(name: .customLong("arena-mib"), help: "Grid size in MiB.") var arenaMebibytes = 256
    @Option(help: "Updater threads.") var threads = 4
    @Option(help: "Grid seed (a fresh grid only).") var seed: UInt64 = 42
    @Option(name: .customLong("run-ms"), help: "Stop after N ms (0: run until killed or signalled).") var runMilliseconds = 0
    @Flag(name: .customLong("hand-over"), help: "On stopping, hand over to the standby (final snapshot + heartbeat record).") var handOver = false
    @OptionGroup var live: LiveOptions
    @OptionGroup var connection: ExampleConnection

    func execute() async throws {
        guard threads >= 1, threads <= Grid.maxThreads else { throw ValidationError("--threads must be 1...\(Grid.maxThreads)") }
        let client = try await connection.connect()
        let arenaBytes = UInt64(arenaMebibytes) << 20
        let arena = try SnapshotArena(sizeBytes: Int(arenaBytes))
        let grid = Grid(arena: arena)
        var restored: SnapshotHeader?
        let exists = try await client.list().contains { $0.name == live.target }
        let target = exists ? try await client.openSnapshotTarget(live.target, writable: true, formatFor: arenaBytes)
            : try await client.createSnapshotTarget(live.target, arenaBytes: arenaBytes)
        if target.newestCommitted != nil {
            restored = try await target.restore(into: arena)
            if let problem = grid.verify() { throw PMUError(.damaged, "restored grid is wrong: \(problem)") }
            say("resumed from snapshot \(restored!.sequence): \(grid.totalSteps) steps, verified")
        }
        if !grid.isFormatted { grid.format(seed: seed, threads: threads) }
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: WriterGate(), options: try live.snapshotOptions(), restored: restored)
        say("live on \(live.target) (epoch \(target.epoch)): \(arenaMebibytes) MiB grid, \(grid.threads) threads, mode \(snapshotter.mode.rawValue): \(snapshotter.modeReason)")
        try await live.runner(runMilliseconds: runMilliseconds, handOver: handOver).run(grid: grid, target: target, snapshotter: snapshotter)
        await client.disconnect()
    }
}

await Live.start(named: "pmu-example-live")
