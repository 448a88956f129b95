import ArgumentParser
import Foundation
import PMUClient
import PMUExampleComputation

/// A primary: runs the computation and checkpoints it every N steps into an overwrite-mode region.
/// Started again after a crash, it resumes from the newest checkpoint.
struct Primary: ExampleCommand {
    static let configuration = CommandConfiguration(commandName: "pmu-example-primary")
    @Option(help: "Checkpoint region (created if missing).") var region = "example-state"
    @Option(help: "Checkpoint every N steps.") var every: UInt64 = 100
    @Option(help: "Stop after this step.") var steps: UInt64 = 1_000_000
    @Option(name: .customLong("step-delay-us"), help: "Pause per step, to make the run watchable.") var stepDelayMicroseconds: UInt32 = 0
    @OptionGroup var connection: ExampleConnection

    func execute() async throws {
        let client = try await connection.connect()
        if (try? await client.stat(region)) == nil {
            // (A plain catch: `catch ... where` on a typed-throws call crashes the Swift 6.3 compiler.)
            do {
                try await client.createCheckpointRegion(region, sizeBytes: 1 << 20, options: CheckpointOptions(mode: .overwrite))
            } catch {
                guard error.code == .regionExists else { throw error } // another process created it first: fine
            }
        }
        let primary = try await client.openPrimary(region)
        var state = ComputationState()
        let backup = try await client.openBackup(region)
        if let latest = try await backup.latest(), let restored = ComputationState(decoding: latest.payload) {
            state = restored
            say("resumed at step \(state.step) from checkpoint \(latest.sequence) (epoch \(primary.epoch))")
        } else {
            say("starting at step 0 (epoch \(primary.epoch))")
        }
        let delay = stepDelayMicroseconds
        try await state.run(to: steps, every: every, primary: primary) { if delay > 0 { usleep(delay) } }
        await client.disconnect()
    }
}

await Primary.start(named: "pmu-example-primary")
