import NIOConcurrencyHelpers
import PMUCore

/// A bounded set of numbered slots (send slots, credits, bounce buffers) that async callers wait
/// for. `fail` wakes every waiter with the error and refuses later acquires: a dead connection
/// never leaves a task waiting.
final class AsyncSlots: @unchecked Sendable {
    private struct State {
        var free: [Int]
        var waiters: [CheckedContinuation<Result<Int, PMUError>, Never>] = []
        var failure: PMUError?
    }

    private let state: NIOLockedValueBox<State>

    init(count: Int) {
        state = NIOLockedValueBox(State(free: Array((0..<count).reversed())))
    }

    func acquire() async throws(PMUError) -> Int {
        let result: Result<Int, PMUError> = await withCheckedContinuation { continuation in
            let immediate: Result<Int, PMUError>? = state.withLockedValue { state in
                if let failure = state.failure { return .failure(failure) }
                if let slot = state.free.popLast() { return .success(slot) }
                state.waiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        return try result.get()
    }

    func release(_ slot: Int) {
        let waiter = state.withLockedValue { state -> CheckedContinuation<Result<Int, PMUError>, Never>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.free.append(slot)
            return nil
        }
        waiter?.resume(returning: .success(slot))
    }

    func fail(_ error: PMUError) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Result<Int, PMUError>, Never>] in
            if state.failure == nil { state.failure = error }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: .failure(error)) }
    }
}
