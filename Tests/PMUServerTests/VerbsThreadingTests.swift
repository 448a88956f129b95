import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import PMUCore
@testable import PMUTransport

/// The threads of the verbs transports without a device: JoinableThread (what
/// `RDMAServerTransport.stop` and `RDMAClientTransport.close` join) and CompletionThreadExecutor
/// driven by a real CompletionPump whose completion queue is always empty.
@Suite struct VerbsThreadingTests {
    /// Set when the object a thread's body captured is released.
    final class Witness: @unchecked Sendable {
        let released: NIOLockedValueBox<Bool>
        init(_ released: NIOLockedValueBox<Bool>) { self.released = released }
        deinit { released.withLockedValue { $0 = true } }
    }

    /// A thread whose body holds a Witness until `gate` is signalled.
    static func blockedThread(_ name: String, gate: DispatchSemaphore, released: NIOLockedValueBox<Bool>) throws -> JoinableThread {
        let witness = Witness(released)
        return try JoinableThread(name: name) {
            gate.wait()
            withExtendedLifetime(witness) {}
        }
    }

    @Test func theKernelKnowsTheThreadByItsName() async throws {
        let seen = NIOLockedValueBox("")
        let thread = try JoinableThread(name: "pmu-rdma-cq-12345") {
            let comm = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
            seen.withLockedValue { $0 = comm.trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        #expect(await thread.join(until: .now.advanced(by: .seconds(30))))
        // Cut to the kernel's 15 bytes.
        #expect(seen.withLockedValue { $0 } == "pmu-rdma-cq-123")
    }

    @Test func joinWaitsForTheBodyAndReturnsAfterWhatItHeldIsReleased() async throws {
        let gate = DispatchSemaphore(value: 0)
        let released = NIOLockedValueBox(false)
        let thread = try Self.blockedThread("pmu-test-join", gate: gate, released: released)
        // The body cannot have returned: it waits for the gate.
        #expect(await thread.join(until: .now.advanced(by: .milliseconds(50))) == false)
        #expect(!thread.hasEnded && !released.withLockedValue { $0 })
        gate.signal()
        #expect(await thread.join(until: .now.advanced(by: .seconds(30))))
        // Joined means ended: the captured object is gone, not "eventually".
        #expect(released.withLockedValue { $0 })
        // Joining again (stop and close may both try) is harmless.
        #expect(await thread.join(until: .now))
        thread.detach()
    }

    @Test func aThreadStillRunningAtTheDeadlineIsLoggedByNameDetachedAndStillReleasesItsResources() async throws {
        let gate = DispatchSemaphore(value: 0)
        let released = NIOLockedValueBox(false)
        let records = NIOLockedValueBox<[String]>([])
        let logger = Logger(label: "test") { _ in RecordingLogHandler(records: records) }
        let stuck = try Self.blockedThread("pmu-test-stuck", gate: gate, released: released)
        let quick = try JoinableThread(name: "pmu-test-quick") {}
        let late = await JoinableThread.joinAll([quick, stuck], until: .now.advanced(by: .milliseconds(300)), logger: logger, what: "test stop")
        #expect(late == ["pmu-test-stuck"])
        #expect(quick.hasEnded)
        let lines = records.withLockedValue { $0 }
        #expect(lines.count == 1 && lines[0].contains("warning") && lines[0].contains("pmu-test-stuck") && !lines[0].contains("pmu-test-quick"), "\(lines)")
        // Detached, it ends on its own once unblocked and releases what it held.
        gate.signal()
        var rounds = 0
        while !released.withLockedValue({ $0 }), rounds < 100 {
            try await Task.sleep(for: .milliseconds(100))
            rounds += 1
        }
        #expect(released.withLockedValue { $0 })
        #expect(stuck.hasEnded)
    }

    /// A pump over a queue that never completes anything: the executor's jobs are all it does.
    final class IdlePump: @unchecked Sendable {
        let executor: CompletionThreadExecutor
        let stop = ManagedAtomicFlag()
        let sleeps = NIOLockedValueBox(0)
        /// Sleeps that ended because the wake-up pipe was signalled.
        let signalledWakes = NIOLockedValueBox(0)
        var thread: JoinableThread!
        private(set) var pumpThread = NIOLockedValueBox<pthread_t?>(nil)

        init(polling: RDMAPolling) throws {
            executor = try CompletionThreadExecutor()
            thread = try JoinableThread(name: "pmu-test-pump") { [self] in
                pumpThread.withLockedValue { $0 = pthread_self() }
                CompletionPump(polling: polling).run(.init(
                    stopped: { [stop] in stop.isSet },
                    jobs: executor,
                    poll: { _, _ in 0 },
                    arm: {},
                    sleep: { [executor, sleeps, signalledWakes] milliseconds in
                        sleeps.withLockedValue { $0 += 1 }
                        var descriptor = pollfd(fd: executor.wakeDescriptor, events: Int16(POLLIN), revents: 0)
                        let ready = poll(&descriptor, 1, milliseconds) > 0 && descriptor.revents != 0
                        if ready { signalledWakes.withLockedValue { $0 += 1 } }
                        executor.awake(signalled: ready)
                    },
                    handle: { _ in },
                    failed: { _ in }))
                executor.stop()
            }
        }

        func onPumpThread() -> Bool {
            guard let pump = pumpThread.withLockedValue({ $0 }) else { return false }
            return pthread_equal(pump, pthread_self()) != 0
        }
    }

    @Test(arguments: [RDMAPolling.event, .adaptive(microseconds: 50), .busy])
    func tasksPreferringTheExecutorRunAndResumeOnTheCompletionThreadThenOnTheFallbackOnceItEnds(polling: RDMAPolling) async throws {
        let pump = try IdlePump(polling: polling)
        let results = try await withTaskExecutorPreference(pump.executor) { () async throws -> [Bool] in
            var seen: [Bool] = []
            for _ in 0..<20 {
                seen.append(pump.onPumpThread())
                // Resumed from another thread (as the completion thread resumes a waiter), once
                // the pump has gone to sleep: the resume must wake it through the wake-up pipe.
                let sleepsBefore = pump.sleeps.withLockedValue { $0 }
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    DispatchQueue.global().async {
                        var rounds = 0
                        while pump.sleeps.withLockedValue({ $0 }) == sleepsBefore, rounds < 10_000 {
                            usleep(1000)
                            rounds += 1
                        }
                        continuation.resume()
                    }
                }
                seen.append(pump.onPumpThread())
            }
            return seen
        }
        #expect(results.count == 40 && results.allSatisfy { $0 }, "\(results)")
        if polling != .busy {
            // Each resume came while the pump slept (up to 200 ms): it woke for the pipe,
            // not for the timeout. (Busy polling only glances, with a zero timeout.)
            #expect(pump.signalledWakes.withLockedValue { $0 } >= 20)
        }
        pump.stop.setOnce()
        pump.executor.signal()
        #expect(await pump.thread.join(until: .now.advanced(by: .seconds(30))))
        // Ended: a task preferring the executor still runs (on the fallback event loop).
        let after = await withTaskExecutorPreference(pump.executor) { pump.onPumpThread() }
        #expect(after == false)
    }
}

/// Keeps each log line as "level message metadata".
struct RecordingLogHandler: LogHandler {
    let records: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        records.withLockedValue { $0.append("\(level) \(message) \(metadata ?? [:])") }
    }
}
