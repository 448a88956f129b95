import NIOCore

/// Runs Swift tasks on a NIO event loop. A client task that prefers its connection's event loop
/// (`withTaskExecutorPreference(client.taskExecutor) { ... }`) resumes on the thread that received
/// the reply, instead of hopping to the cooperative pool and back for every request: on a small
/// machine that hop is a large part of a round trip.
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    public let eventLoop: any EventLoop

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        eventLoop.execute {
            unowned.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
