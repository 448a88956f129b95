import ArgumentParser
import PMUClient
import PMUExampleComputation
import PMUSnapshot

/// Options the live program and the standby share.
public struct LiveOptions: ParsableArguments {
    @Option(help: "Snapshot target region.") public var target = "live-grid"
    @Option(name: .customLong("every-ms"), help: "Snapshot every N ms.") public var everyMilliseconds = 200
    @Option(name: .customLong("heartbeat-ms"), help: "Heartbeat every N ms.") public var heartbeatMilliseconds = 50
    @Option(help: "automatic, write-protect or copy.") public var mode = "automatic"
    @Option(name: .customLong("rate-mbps"), help: "Cap the background transfer at N MB/s (0: no cap).") public var rateMegabytesPerSecond = 0
    @Option(name: .customLong("pool-pages"), help: "Copy-on-write pool size in pages.") public var poolPages = 1024
    @Option(name: .customLong("updates-per-second"), help: "Updates per second per thread (0: as fast as possible).") public var updatesPerSecond = 20_000

    public init() {}

    public func snapshotOptions() throws -> SnapshotOptions {
        guard let chosen = SnapshotMode(rawValue: mode) else { throw ValidationError("unknown --mode \(mode); use automatic, write-protect or copy") }
        var options = SnapshotOptions(mode: chosen, poolPages: poolPages)
        if rateMegabytesPerSecond > 0 { options.transferBytesPerSecond = UInt64(rateMegabytesPerSecond) * 1_000_000 }
        return options
    }

    public func runner(runMilliseconds: Int, handOver: Bool) -> GridRunner {
        var runner = GridRunner()
        runner.everyMilliseconds = everyMilliseconds
        runner.heartbeatMilliseconds = heartbeatMilliseconds
        runner.runMilliseconds = runMilliseconds
        runner.updatesPerSecondPerThread = updatesPerSecond
        runner.handOver = handOver
        return runner
    }
}
