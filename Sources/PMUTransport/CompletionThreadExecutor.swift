#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore

/// Runs Swift tasks on a verbs client's completion thread, between its polls of the completion
/// queue. A task that prefers it (`withTaskExecutorPreference(client.taskExecutor) { ... }`)
/// posts its work request and, when the completion thread resumes it, goes on right there: no
/// wake-up of a pool thread and no hop back per operation, which is most of a small one-sided
/// write's latency. What such a task does between its awaits delays every completion of the
/// connection (as on a NIO event loop): keep heavy work off it.
///
/// The pump sleeps on `wakeDescriptor` (a pipe's read end) with its completion channel, so a job
/// enqueued from another thread wakes it when it sleeps; while it polls it just looks at the
/// queue. Once the completion thread has ended (`stop`), jobs run on a NIO event loop instead,
/// so no task that prefers this executor is ever stranded.
public final class CompletionThreadExecutor: TaskExecutor, @unchecked Sendable {
    private struct Queue {
        var jobs: [UnownedJob] = []
        /// The pump is (about to be) asleep: the next enqueue must signal the wake-up pipe.
        var sleeping = false
        var stopped = false
    }

    private let queue = NIOLockedValueBox(Queue())
    /// Swapped with the queue's array each round, so running jobs allocates nothing once both
    /// have grown to the round's size. Completion thread only.
    private var running: [UnownedJob] = []
    /// A pipe (Glibc's module has no eventfd): the pump polls the read end, `signal` writes a
    /// byte to the other. Both non-blocking: a full pipe already wakes the pump.
    let wakeDescriptor: Int32
    private let signalDescriptor: Int32
    private let fallback: any EventLoop

    init(fallback: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) throws(PMUError) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            throw PMUError(.rdmaError, "cannot create the verbs completion thread's wake-up pipe (errno \(errno)): the process is out of file descriptors")
        }
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        wakeDescriptor = ends[0]
        signalDescriptor = ends[1]
        self.fallback = fallback
        running.reserveCapacity(16)
        queue.withLockedValue { $0.jobs.reserveCapacity(16) }
    }

    deinit {
        close(wakeDescriptor)
        close(signalDescriptor)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let (accepted, wake) = queue.withLockedValue { queue -> (Bool, Bool) in
            guard !queue.stopped else { return (false, false) }
            queue.jobs.append(job)
            defer { queue.sleeping = false }
            return (true, queue.sleeping)
        }
        if !accepted { return runElsewhere(job) }
        if wake { signal() }
    }

    private func runElsewhere(_ job: UnownedJob) {
        fallback.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }

    /// Wakes the pump from its sleep (also used to make it notice `closing` at once).
    func signal() {
        var one: UInt8 = 1
        _ = write(signalDescriptor, &one, 1)
    }

    // MARK: the completion thread's side

    /// Runs the jobs queued so far (those they enqueue wait for the next round). Returns how many ran.
    @discardableResult
    func runPending() -> Int {
        queue.withLockedValue { swap(&$0.jobs, &running) }
        let count = running.count
        for job in running { job.runSynchronously(on: asUnownedTaskExecutor()) }
        running.removeAll(keepingCapacity: true)
        return count
    }

    var hasPending: Bool { queue.withLockedValue { !$0.jobs.isEmpty } }

    /// Before the pump sleeps: false if a job is already queued (do not sleep); else the next
    /// enqueue signals the wake-up pipe.
    func prepareToSleep() -> Bool {
        queue.withLockedValue { queue in
            guard queue.jobs.isEmpty else { return false }
            queue.sleeping = true
            return true
        }
    }

    /// After the sleep: empties the pipe and stops asking for signals.
    func awake(signalled: Bool) {
        queue.withLockedValue { $0.sleeping = false }
        guard signalled else { return }
        var bytes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        while withUnsafeMutableBytes(of: &bytes, { read(wakeDescriptor, $0.baseAddress, $0.count) }) == 32 {}
    }

    /// The completion thread is ending: jobs queued and to come run on the fallback event loop.
    func stop() {
        let left = queue.withLockedValue { queue -> [UnownedJob] in
            queue.stopped = true
            defer { queue.jobs.removeAll() }
            return queue.jobs
        }
        for job in left { runElsewhere(job) }
    }
}
