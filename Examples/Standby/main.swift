import ArgumentParser
import Foundation
import PMUClient
import PMUExampleComputation
import PMUExampleLiveGrid
import PMUSnapshot

/// Follows a live program's snapshots read-only. When its heartbeat and its snapshots both stop
/// for --failure-after-ms (or its heartbeat records a hand-over), it takes the target over (the old
/// instance is fenced from then on), restores the newest complete snapshot, proves the grid right
/// by recomputation and carries on as the live program.
struct Standby: ExampleCommand {
    static let configuration = CommandConfiguration(commandName: "pmu-example-standby")
    @Option(name: .customLong("failure-after-ms"), help: "Presume the live program dead after N ms without heartbeat or snapshot.") var failureAfterMilliseconds = 1000
    @Option(name: .customLong("poll-ms"), help: "Look at the target every N ms.") var pollMilliseconds = 20
    @Option(name: .customLong("run-ms"), help: "After taking over, run for N ms (0: until killed).") var runMilliseconds = 0
    @Option(name: .customLong("wait-ms"), help: "Give up if the target does not appear within N ms.") var waitMilliseconds = 60_000
    @OptionGroup var live: LiveOptions
    @OptionGroup var connection: ExampleConnection

    func execute() async throws {
        let client = try await connection.connect()
        let start = LiveSnapshotter.wallMilliseconds()
        var follower: SnapshotTarget?
        while follower == nil {
            do {
                follower = try await client.openSnapshotTarget(live.target, writable: false)
            } catch {
                // Only "not there yet" is worth waiting for; anything else (access, auth) is an error.
                guard error.code == .unknownRegion || error.code == .notSnapshotRegion,
                      LiveSnapshotter.wallMilliseconds() - start < UInt64(waitMilliseconds) else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        say("following \(live.target) from snapshot \(follower!.newestCommitted?.sequence ?? 0)")
        var lastBeat: Heartbeat? = try await follower!.heartbeat()
        var lastSequence = follower!.newestCommitted?.sequence ?? 0
        var lastChange = LiveSnapshotter.wallMilliseconds()
        var handedOver: Heartbeat?
        while true {
            try await Task.sleep(for: .milliseconds(pollMilliseconds))
            let beat = try await follower!.heartbeat()
            let sequence = try await follower!.headers().first?.sequence ?? 0
            if let beat, beat.handedOverSequence != 0, beat.handedOverSequence == sequence {
                handedOver = beat
                say("planned hand-over at snapshot \(sequence) with \(beat.note) steps")
                break
            }
            if beat != lastBeat || sequence != lastSequence {
                lastBeat = beat
                lastSequence = sequence
                lastChange = LiveSnapshotter.wallMilliseconds()
            } else if LiveSnapshotter.wallMilliseconds() - lastChange >= UInt64(failureAfterMilliseconds) {
                say("no heartbeat or snapshot for \(failureAfterMilliseconds) ms after snapshot \(sequence): taking over")
                break
            }
        }
        guard lastSequence > 0 || handedOver != nil else {
            throw PMUError(.unknownSequence, "the live program never completed a snapshot; nothing to resume from (not fencing it)")
        }
        let target = try await client.openSnapshotTarget(live.target, writable: true) // fences the old instance
        let arena = try SnapshotArena(sizeBytes: Int(target.layout.arenaBytes))
        let started = LiveSnapshotter.wallMilliseconds()
        let header = try await target.restore(into: arena)
        let grid = Grid(arena: arena)
        let problem = grid.verify()
        say("resumed from snapshot \(header.sequence) (epoch \(target.epoch)) in \(LiveSnapshotter.wallMilliseconds() - started) ms: \(grid.totalSteps) steps, grid \(problem == nil ? "verified by recomputation" : "WRONG: \(problem!)")")
        guard problem == nil else { throw PMUError(.damaged, "restored grid does not match a recomputation: \(problem!)") }
        if let handedOver {
            guard handedOver.note == grid.totalSteps else {
                throw PMUError(.damaged, "hand-over recorded \(handedOver.note) steps, the restored grid has \(grid.totalSteps)")
            }
            say("hand-over: no step lost")
        }
        let snapshotter = try LiveSnapshotter(arena: arena, target: target, gate: WriterGate(), options: try live.snapshotOptions(), restored: header)
        say("live on \(live.target): mode \(snapshotter.mode.rawValue)")
        try await live.runner(runMilliseconds: runMilliseconds, handOver: false).run(grid: grid, target: target, snapshotter: snapshotter)
        await client.disconnect()
    }
}

await Standby.start(named: "pmu-example-standby")
