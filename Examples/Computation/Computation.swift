import NIOCore
import PMUClient

/// The examples' "stateful computation": a deterministic walk whose state after step n depends on
/// every earlier step, so a resumed run that skipped or repeated a step would be caught.
public struct ComputationState: Equatable, Sendable {
    public var step: UInt64 = 0
    public var accumulator: UInt64 = 0x9E37_79B9_7F4A_7C15
    /// A rolling window of recent values: makes the checkpoint a few KiB, like real state.
    public var window: [UInt64] = Array(repeating: 0, count: 512)

    public init() {}

    public mutating func advance() {
        step += 1
        accumulator = (accumulator ^ step) &* 0xBF58_476D_1CE4_E5B9
        accumulator ^= accumulator >> 31
        window[Int(step % UInt64(window.count))] = accumulator
    }

    /// The state after `steps` steps from the start, recomputed.
    public static func after(steps: UInt64) -> ComputationState {
        var state = ComputationState()
        for _ in 0..<steps { state.advance() }
        return state
    }

    public func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(step, endianness: .little)
        buffer.writeInteger(accumulator, endianness: .little)
        for value in window { buffer.writeInteger(value, endianness: .little) }
        return buffer
    }

    public init?(decoding bytes: ByteBuffer) {
        var buffer = bytes
        guard buffer.readableBytes == 16 + 8 * 512,
            let step = buffer.readInteger(endianness: .little, as: UInt64.self),
            let accumulator = buffer.readInteger(endianness: .little, as: UInt64.self)
        else { return nil }
        self.step = step
        self.accumulator = accumulator
        self.window = (0..<512).map { _ in buffer.readInteger(endianness: .little, as: UInt64.self)! }
    }
}

extension ComputationState {
    /// Advances to `steps`, checkpointing every `every` steps (and at the end) through `primary`,
    /// and prints each committed step. Shared by the primary and by a backup that took over.
    public mutating func run(to steps: UInt64, every: UInt64, primary: CheckpointPrimary, pause: () -> Void = {}) async throws {
        while step < steps {
            advance()
            pause()
            if step % every == 0 || step == steps {
                let sequence = try await primary.checkpoint(encoded())
                say("committed step \(step) sequence \(sequence)")
            }
        }
        say("done at step \(step)")
    }
}
