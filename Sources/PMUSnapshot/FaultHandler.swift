import CUserfault
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The thread that serves write faults: a plain Thread blocked in poll() on the userfaultfd (which
/// is non-blocking: poll on a blocking one always reports POLLERR, userfaultfd(2)), not a
/// Swift concurrency task (a writer's fault can wait for the transfer agent, and a blocked task
/// would hold a thread of the cooperative pool that the agent itself may need).
final class FaultHandler: @unchecked Sendable {
    private let protector: WriteProtector
    private let tracker: PageTracker
    private var stopPipe: [Int32] = [-1, -1]
    private let done = DispatchSemaphore(value: 0)

    init(protector: WriteProtector, tracker: PageTracker) {
        self.protector = protector
        self.tracker = tracker
        _ = pipe(&stopPipe)
        let thread = Thread { [self] in run() }
        thread.name = "pmu-snapshot-faults"
        thread.start()
    }

    /// Stops the thread and waits for it.
    func stop() {
        var byte: UInt8 = 1
        _ = write(stopPipe[1], &byte, 1)
        done.wait()
        close(stopPipe[0])
        close(stopPipe[1])
    }

    private func run() {
        defer { done.signal() }
        let pageBytes = tracker.arena.pageBytes
        let base = UInt64(UInt(bitPattern: tracker.arena.base))
        let length = UInt64(tracker.arena.sizeBytes)
        var addresses = [UInt64](repeating: 0, count: 64)
        var descriptors = [pollfd(fd: protector.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: stopPipe[0], events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&descriptors, 2, -1)
            if ready < 0 { if errno == EINTR { continue } else { return } }
            if descriptors[1].revents != 0 { return }
            guard descriptors[0].revents & Int16(POLLIN) != 0 else { continue }
            let count = cuf_read_write_faults(protector.fd, &addresses, Int32(addresses.count))
            guard count > 0 else { continue }
            var pages: [Int] = []
            pages.reserveCapacity(Int(count))
            for index in 0..<Int(count) where addresses[index] >= base && addresses[index] - base < length {
                pages.append(Int((addresses[index] - base) / UInt64(pageBytes)))
            }
            tracker.handleWriteFaults(pages)
            for page in pages { protector.unprotect(page * pageBytes, pageBytes) }
        }
    }
}
