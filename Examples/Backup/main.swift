import ArgumentParser
import Foundation
import PMUClient
import PMUExampleComputation

/// A backup: follows the primary's checkpoints read-only; when none arrives for --takeover-after-ms
/// (the primary is presumed dead), it takes over the region (fencing the old primary), restores
/// the newest checkpoint and continues the computation with no committed step lost.
struct Backup: ExampleCommand {
    static let configuration = CommandConfiguration(commandName: "pmu-example-backup")
    @Option(help: "Checkpoint region to follow.") var region = "example-state"
    @Option(name: .customLong("takeover-after-ms"), help: "Take over when no checkpoint arrives for this long.") var takeoverAfterMilliseconds: Int = 2000
    @Option(help: "Checkpoint every N steps after taking over.") var every: UInt64 = 100
    @Option(help: "Stop after this step.") var steps: UInt64 = 1_000_000
    @OptionGroup var connection: ExampleConnection

    func execute() async throws {
        let client = try await connection.connect()
        var follower: CheckpointBackup?
        while follower == nil {
            do {
                follower = try await client.openBackup(region)
            } catch {
                // Only "not there yet" is worth waiting for; anything else (access, auth) is an error.
                guard error.code == .unknownRegion || error.code == .notCheckpointRegion else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        var seen: UInt64 = try await follower!.latest()?.sequence ?? 0
        say("following \(region) from checkpoint \(seen)")
        while let newer = try await follower!.waitForNewer(than: seen, timeout: .milliseconds(takeoverAfterMilliseconds)) {
            seen = newer.sequence
        }
        guard seen > 0 else {
            throw PMUError(.unknownSequence, "the primary never committed a checkpoint; nothing to take over from (not fencing it)")
        }
        say("no checkpoint for \(takeoverAfterMilliseconds) ms after \(seen): taking over")
        let primary = try await client.openPrimary(region) // from here the old primary is fenced
        guard let latest = try await follower!.latest(), var state = ComputationState(decoding: latest.payload) else {
            throw PMUError(.unknownSequence, "no checkpoint to take over from")
        }
        // The computation is deterministic: check the restored state is exactly what step n gives.
        let verified = state == ComputationState.after(steps: state.step)
        say("took over at step \(state.step) from checkpoint \(latest.sequence) (epoch \(primary.epoch)); state \(verified ? "verified" : "DOES NOT MATCH")")
        guard verified else { throw PMUError(.damaged, "restored state does not match a recomputation") }
        try await state.run(to: steps, every: every, primary: primary)
        await client.disconnect()
    }
}

await Backup.start(named: "pmu-example-backup")
