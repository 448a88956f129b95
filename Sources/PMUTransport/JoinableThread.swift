#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import PMUCore

/// A thread that can be joined. Foundation's `Thread` cannot be: a transport's `stop` could only
/// watch a flag its threads set near their end and return while they still ran (with their
/// stacks and whatever their last statements released). The verbs transports start their
/// connection-manager and completion threads with this instead, and `stop` joins them.
///
/// Joining waits by sleeping until the body has returned (a flag the thread sets as its last
/// statement), and only then calls `pthread_join`, which at that point waits for the thread's
/// exit alone: no pool thread is held while a body still runs. A thread neither joined nor
/// detached by its owner is detached when the owner drops it, so its stack is never leaked.
final class JoinableThread: @unchecked Sendable {
    let name: String
    private let handle: pthread_t
    private let ended: NIOLockedValueBox<Bool>
    private enum Disposal { case pending, joined, detached }
    private let disposal = NIOLockedValueBox(Disposal.pending)

    private final class Start {
        let name: String
        let body: () -> Void
        let ended: NIOLockedValueBox<Bool>
        init(name: String, body: @escaping () -> Void, ended: NIOLockedValueBox<Bool>) {
            self.name = name
            self.body = body
            self.ended = ended
        }
    }

    /// Starts `body` on a new thread named `name` (the kernel keeps the first 15 bytes).
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(PMUError) {
        self.name = name
        let ended = NIOLockedValueBox(false)
        self.ended = ended
        let start = Unmanaged.passRetained(Start(name: name, body: body, ended: ended)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { argument in
            // Released here, on the thread, before its end is announced: what `body` captured
            // is gone once a join returns.
            let ended: NIOLockedValueBox<Bool> = {
                let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
                JoinableThread.nameCurrentThread(start.name)
                start.body()
                return start.ended
            }()
            ended.withLockedValue { $0 = true }
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw PMUError(.internalError, "cannot start thread \(name): pthread_create failed with errno \(result) (\(String(cString: strerror(result)))); the process is out of threads or memory")
        }
        self.handle = handle
    }

    deinit { detach() }

    /// Names the calling thread for ps, top and gdb. Glibc's module exports neither
    /// pthread_setname_np nor prctl, and Foundation's `Thread.name` does not reach the kernel for
    /// a thread it did not start (the name stayed the creator's, a Dispatch worker's); the
    /// thread's own comm file in /proc does. At most 15 bytes are kept.
    static func nameCurrentThread(_ name: String) {
        let descriptor = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    }

    /// True once the body has returned (the thread is exiting or gone).
    var hasEnded: Bool { ended.withLockedValue { $0 } }

    /// Waits until the body has returned or `deadline` passes, sleeping 5 ms at a time; joins the
    /// thread when it ended. False: still running at the deadline (not joined; call `detach` or
    /// wait again).
    func join(until deadline: ContinuousClock.Instant) async -> Bool {
        while !hasEnded {
            if ContinuousClock.now >= deadline { return false }
            do {
                try await Task.sleep(for: .milliseconds(5))
            } catch {
                // Cancelled: keep the bound, without spinning hot.
                usleep(5000)
            }
        }
        disposal.withLockedValue { disposal in
            guard disposal == .pending else { return }
            // The body has returned: this waits only for the thread's exit.
            _ = pthread_join(handle, nil)
            disposal = .joined
        }
        return true
    }

    /// Lets the thread go: the system reclaims it when it ends (it keeps what it captured alive
    /// until then, so nothing is freed under it). Idempotent; nothing after a join.
    func detach() {
        disposal.withLockedValue { disposal in
            guard disposal == .pending else { return }
            _ = pthread_detach(handle)
            disposal = .detached
        }
    }

    /// Joins every thread by `deadline`. Those still running then are logged as a warning by
    /// name (with `what` they belong to) and detached, so none is leaked; returns their names.
    @discardableResult
    static func joinAll(_ threads: [JoinableThread], until deadline: ContinuousClock.Instant, logger: Logger, what: String) async -> [String] {
        var late: [String] = []
        for thread in threads where await !thread.join(until: deadline) {
            thread.detach()
            late.append(thread.name)
        }
        if !late.isEmpty {
            logger.warning("\(what): threads still running at the stop deadline; detached (each releases its resources when it ends)",
                           metadata: ["threads": "\(late.joined(separator: ","))"])
        }
        return late
    }
}
