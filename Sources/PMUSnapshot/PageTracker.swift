import Foundation
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// The copy-on-write bookkeeping shared by the fault handler and the transfer agent.
///
/// Per page: `pending` (in the snapshot being sent, not yet taken by the agent), `saved` (its
/// original is in the pool because a writer got there first), `dirty` (written since the last
/// snapshot was fixed). Invariants, with writers paused only inside `fix`:
/// - write-protect mode: a page is write-protected unless it is dirty; a pending page without a
///   saved copy still holds its image bytes (only the handler un-protects, after saving);
/// - copy mode: the image is a private copy (`staging`) made in `fix`; nothing is protected.
/// The pool holds at most `poolPages` originals; when it is full the faulting page is put first in
/// the agent's queue and the handler (with the writer behind it) waits until the agent took it.
/// The lock is held for bookkeeping and 4 KiB copies only, never across I/O.
final class PageTracker: @unchecked Sendable {
    let arena: SnapshotArena
    let poolPages: Int
    private let condition = NSCondition()

    // Guarded by `condition`.
    private var pending: [Bool]
    private var saved: [Int32]
    private var dirty: [Bool]
    private var sendList: [Int32] = []
    private var cursor = 0
    private var urgent: [Int] = []
    private var urgentHead = 0
    private var poolFree: [Int32]
    private var aborted = false
    private var everProtected = false
    private var inFlight = false
    private(set) var statistics = SnapshotStatistics()

    private let pool: UnsafeMutableRawPointer
    /// Copy mode's image (allocated on first use; as large as the arena).
    private var staging: UnsafeMutableRawPointer?

    init(arena: SnapshotArena, poolPages: Int) {
        self.arena = arena
        self.poolPages = poolPages
        pending = [Bool](repeating: false, count: arena.pageCount)
        saved = [Int32](repeating: -1, count: arena.pageCount)
        dirty = [Bool](repeating: false, count: arena.pageCount)
        poolFree = (0..<Int32(poolPages)).reversed()
        pool = .allocate(byteCount: max(1, poolPages) * arena.pageBytes, alignment: arena.pageBytes)
        statistics.poolCapacityPages = poolPages
    }

    deinit {
        pool.deallocate()
        staging?.deallocate()
    }

    var snapshotStatistics: SnapshotStatistics {
        condition.lock()
        defer { condition.unlock() }
        return statistics
    }

    // MARK: Fixing an image (writers paused)

    /// Fixes the image of the next snapshot; returns how many pages it will send. `full` sends
    /// every page; otherwise the pages dirtied since the previous snapshot. The caller guarantees
    /// that no thread writes the arena during the call.
    func fix(full: Bool, protector: WriteProtector?) throws(PMUError) -> Int {
        condition.lock()
        defer { condition.unlock() }
        guard !inFlight else { throw PMUError(.invalidArgument, "a snapshot is still being sent; wait for it before fixing the next") }
        var list: [Int32] = []
        if let protector {
            if full || !everProtected {
                // One ioctl for the whole arena: the first snapshot, or after a forced full one.
                try protector.protect(0, arena.sizeBytes)
                everProtected = true
            } else {
                try forEachDirtyRun { (first: Int, count: Int) throws(PMUError) in try protector.protect(first * arena.pageBytes, count * arena.pageBytes) }
            }
            if full {
                list = (0..<Int32(arena.pageCount)).map { $0 }
            } else {
                list.reserveCapacity(64)
                for page in 0..<arena.pageCount where dirty[page] { list.append(Int32(page)) }
            }
        } else {
            if staging == nil { staging = .allocate(byteCount: arena.sizeBytes, alignment: arena.pageBytes) }
            staging!.copyMemory(from: arena.base, byteCount: arena.sizeBytes)
            list = (0..<Int32(arena.pageCount)).map { $0 }
        }
        for page in 0..<arena.pageCount { dirty[page] = false }
        for page in list { pending[Int(page)] = true }
        sendList = list
        cursor = 0
        urgent.removeAll(keepingCapacity: true)
        urgentHead = 0
        aborted = false
        inFlight = true
        return list.count
    }

    private func forEachDirtyRun(_ body: (Int, Int) throws(PMUError) -> Void) throws(PMUError) {
        var page = 0
        while page < arena.pageCount {
            guard dirty[page] else { page += 1; continue }
            var end = page + 1
            while end < arena.pageCount, dirty[end] { end += 1 }
            try body(page, end - page)
            page = end
        }
    }

    // MARK: Transfer agent side

    /// Copies up to `max` pages of the image into `destination` (consecutive page-sized blocks),
    /// pages a waiting writer needs first. Returns the pages taken, in order; empty when done.
    func take(max: Int, into destination: UnsafeMutableRawPointer) -> [Int] {
        condition.lock()
        defer { condition.unlock() }
        var taken: [Int] = []
        var servedUrgent = false
        let pageBytes = arena.pageBytes
        while taken.count < max {
            var next: Int?
            while urgentHead < urgent.count {
                let page = urgent[urgentHead]
                urgentHead += 1
                if pending[page] { next = page; servedUrgent = true; break }
            }
            while next == nil, cursor < sendList.count {
                let page = Int(sendList[cursor])
                cursor += 1
                if pending[page] { next = page }
            }
            guard let page = next else { break }
            let target = destination + taken.count * pageBytes
            if saved[page] >= 0 {
                target.copyMemory(from: pool + Int(saved[page]) * pageBytes, byteCount: pageBytes)
                poolFree.append(saved[page])
                saved[page] = -1
            } else {
                target.copyMemory(from: (staging ?? arena.base) + page * pageBytes, byteCount: pageBytes)
            }
            pending[page] = false
            taken.append(page)
        }
        if servedUrgent { condition.broadcast() }
        return taken
    }

    /// The transfer ended. On failure every page of the snapshot counts as dirty again so the next
    /// snapshot sends it; writers waiting for the agent are released.
    func finish(succeeded: Bool) {
        condition.lock()
        defer { condition.unlock() }
        if !succeeded {
            for page in sendList { dirty[Int(page)] = true }
        }
        for page in 0..<arena.pageCount where pending[page] || saved[page] >= 0 {
            pending[page] = false
            if saved[page] >= 0 { poolFree.append(saved[page]); saved[page] = -1 }
        }
        aborted = true
        inFlight = false
        sendList = []
        condition.broadcast()
    }

    // MARK: Fault handler side

    /// Handles write faults on `pages` (protect mode): saves originals still to be sent, marks the
    /// pages dirty. Returns when every one of them may be un-protected.
    func handleWriteFaults(_ pages: [Int]) {
        condition.lock()
        defer { condition.unlock() }
        for page in pages {
            statistics.faults += 1
            if pending[page], saved[page] < 0 {
                if let slot = poolFree.popLast() {
                    (pool + Int(slot) * arena.pageBytes).copyMemory(from: arena.page(page), byteCount: arena.pageBytes)
                    saved[page] = slot
                    statistics.pagesSavedToPool += 1
                    statistics.poolHighWaterPages = Swift.max(statistics.poolHighWaterPages, poolPages - poolFree.count)
                } else {
                    // Pool full: this page goes out first; the writer waits until it is taken.
                    statistics.poolFullWaits += 1
                    urgent.append(page)
                    while pending[page], !aborted { condition.wait() }
                }
            }
            dirty[page] = true
        }
    }
}

/// Counters since the snapshotter was created.
public struct SnapshotStatistics: Sendable, Equatable {
    /// Write faults handled (write-protect mode).
    public var faults: UInt64 = 0
    /// Originals copied into the pool before a write.
    public var pagesSavedToPool: UInt64 = 0
    /// Times a writer found the pool full and waited for its page to be sent first.
    public var poolFullWaits: UInt64 = 0
    /// The most pool pages ever in use at once (never above `poolCapacityPages`).
    public var poolHighWaterPages: Int = 0
    public var poolCapacityPages: Int = 0
}
