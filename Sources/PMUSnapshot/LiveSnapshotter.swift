import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUMetrics

#if canImport(Glibc)
import Glibc
#endif

/// How a snapshot keeps its image while writers go on.
public enum SnapshotMode: String, Sendable, CaseIterable {
    /// Write-protect mode if the kernel allows it, copy mode otherwise (the reason is in `modeReason`).
    case automatic
    /// userfaultfd write protection: the pause write-protects the pages dirtied since the previous
    /// snapshot; a first write to a page not yet sent copies it into the bounded pool.
    case writeProtect = "write-protect"
    /// No userfaultfd: the pause copies the whole arena into a private image (as much memory again
    /// as the arena, a pause proportional to its size) and every snapshot sends every page.
    case copy
}

public struct SnapshotOptions: Sendable {
    public var mode: SnapshotMode = .automatic
    /// Originals a copy-on-write pool holds at most (4 KiB each); when full, writers wait.
    public var poolPages: Int = 1024
    /// Pages the agent copies and sends per write request.
    public var batchPages: Int = 256
    /// Write requests the agent keeps in flight.
    public var writesInFlight: Int = 4
    /// Caps the agent's page bytes per second (nil: as fast as the target takes them). Leaves
    /// bandwidth to the application; tests use it to make a transfer long enough to interrupt.
    public var transferBytesPerSecond: UInt64?

    public init(mode: SnapshotMode = .automatic, poolPages: Int = 1024) {
        self.mode = mode
        self.poolPages = poolPages
    }
}

/// What a completed snapshot cost and sent.
public struct SnapshotResult: Sendable, Equatable {
    public var header: SnapshotHeader
    public var sequence: UInt64 { header.sequence }
    public var pagesSent: UInt64
    /// Arena page bytes written to the target.
    public var pageBytesSent: UInt64
    /// Page map and header bytes written with them.
    public var metadataBytesSent: UInt64
    /// How long the application's writers were paused.
    public var pauseNanoseconds: UInt64
    /// From the end of the pause to the header being durable.
    public var transferNanoseconds: UInt64
    /// The part of it spent committing: map write, PERSIST of maps and data, durable header.
    public var commitNanoseconds: UInt64 = 0
}

/// A snapshot whose image is fixed and on its way to the target.
public struct SnapshotTicket: Sendable {
    public let sequence: UInt64
    public let pagesToSend: Int
    public let pauseNanoseconds: UInt64
    let task: Task<SnapshotResult, any Error>
    let done: NIOLockedValueBox<Bool>

    /// True once the transfer has ended (`result()` then returns without waiting).
    public var isFinished: Bool { done.withLockedValue { $0 } }

    /// Waits until the snapshot is complete and durable on the target. Throws what stopped the
    /// transfer (e.g. FENCED when another instance took the target over, CONNECTION_CLOSED); the
    /// target then still holds the previous snapshot, and the next snapshot resends these pages.
    public func result() async throws(PMUError) -> SnapshotResult {
        do {
            return try await task.value
        } catch let error as PMUError {
            throw error
        } catch {
            throw PMUError(.internalError, "snapshot transfer failed: \(error)")
        }
    }
}

/// Takes copy-on-write snapshots of an arena and streams them to a target in the background.
///
/// What the caller guarantees: **no thread writes the arena while `snapshot` fixes the image**.
/// Pass a `WriterGate` and run every mutation inside `gate.mutate { }`: `snapshot()` then pauses
/// the writers itself, only for as long as fixing takes (write-protecting the pages dirtied since
/// the previous snapshot, or the whole arena the first time; in copy mode, copying the arena).
/// Without a gate, call `snapshotWhilePaused()` with your writers stopped. Between snapshots and
/// during transfers, writers run freely; reads are never affected. Writes into the arena by the
/// kernel (read(2) into it) or by DMA bypass write protection: do not point them at the arena.
///
/// Threads: write faults are served by one plain thread of its own (`pmu-snapshot-faults`); the
/// transfer runs as a detached task on the client's event loop, never on the caller's threads.
public final class LiveSnapshotter: @unchecked Sendable {
    public let arena: SnapshotArena
    public let target: SnapshotTarget
    public let gate: WriterGate?
    public let options: SnapshotOptions
    /// The mode in use and why it was chosen (e.g. why write protection was not available).
    public let mode: SnapshotMode
    public let modeReason: String

    private let tracker: PageTracker
    private let protector: NIOLockedValueBox<WriteProtector?>
    private let handler: FaultHandler?
    private let current = NIOLockedValueBox<(sequence: UInt64, task: Task<SnapshotResult, any Error>)?>(nil)
    private let closed = NIOLockedValueBox(false)

    /// `restored`: the header `target.restore(into: arena)` returned, when the arena holds that
    /// snapshot; the first snapshot then sends only what was written since. Otherwise the first
    /// snapshot sends every page.
    public init(arena: SnapshotArena, target: SnapshotTarget, gate: WriterGate?, options: SnapshotOptions = SnapshotOptions(),
                restored: SnapshotHeader? = nil) throws(PMUError) {
        guard UInt64(arena.sizeBytes) == target.layout.arenaBytes, UInt64(arena.pageBytes) == target.layout.pageBytes else {
            throw PMUError(.invalidArgument, "arena of \(arena.sizeBytes) bytes does not match snapshot target '\(target.name)' (formatted for \(target.layout.arenaBytes) bytes)")
        }
        guard options.poolPages >= 1, options.poolPages <= 1 << 20, options.batchPages >= 1, options.batchPages <= 4096,
              options.writesInFlight >= 1, options.writesInFlight <= 64 else {
            throw PMUError(.invalidArgument, "snapshot options out of range: poolPages 1...1048576, batchPages 1...4096, writesInFlight 1...64")
        }
        self.arena = arena
        self.target = target
        self.gate = gate
        self.options = options
        tracker = PageTracker(arena: arena, poolPages: options.poolPages)
        var chosen = SnapshotMode.copy
        var reason = "copy mode requested"
        var writeProtector: WriteProtector?
        if options.mode != .copy {
            do {
                writeProtector = try WriteProtector(arena: arena)
                chosen = .writeProtect
                reason = "userfaultfd write protection available"
            } catch {
                guard options.mode == .automatic else { throw error }
                reason = "userfaultfd unavailable (\(error.message)); copying the whole arena during each pause instead"
            }
        }
        mode = chosen
        modeReason = reason
        protector = NIOLockedValueBox(writeProtector)
        let pages = tracker
        handler = writeProtector.map { FaultHandler(protector: $0, tracker: pages) }
        fullNext = restored == nil || restored?.sequence != target.newestCommitted?.sequence
    }

    /// The next snapshot must send every page (no committed image matches the arena).
    private var fullNext: Bool

    /// A transfer task holds the snapshotter, so this runs only when none is in flight.
    deinit {
        if !closed.withLockedValue({ $0 }) { handler?.stop() }
    }

    public var statistics: SnapshotStatistics { tracker.snapshotStatistics }

    /// Waits for the previous snapshot's transfer, pauses the writers through the gate, fixes the
    /// image and returns. `full` sends every page rather than those written since the previous one.
    public func snapshot(full: Bool = false) async throws(PMUError) -> SnapshotTicket {
        guard let gate else { throw PMUError(.invalidArgument, "snapshot() needs a WriterGate; without one pause your writers and call snapshotWhilePaused()") }
        await waitUntilIdle()
        let start = Self.nanoseconds()
        let fixed = try gate.pause { () throws(PMUError) -> (Int, UInt64) in
            (try fixImage(full: full), Self.nanoseconds())
        }
        return startTransfer(pages: fixed.0, pauseNanoseconds: Self.nanoseconds() - start)
    }

    /// Fixes the image while the caller keeps every writer stopped; throws INVALID_ARGUMENT when
    /// the previous snapshot is still being sent (`waitUntilIdle` first).
    public func snapshotWhilePaused(full: Bool = false) throws(PMUError) -> SnapshotTicket {
        let start = Self.nanoseconds()
        let pages = try fixImage(full: full)
        return startTransfer(pages: pages, pauseNanoseconds: Self.nanoseconds() - start)
    }

    private func fixImage(full: Bool) throws(PMUError) -> Int {
        guard !closed.withLockedValue({ $0 }) else { throw PMUError(.invalidArgument, "the snapshotter is closed") }
        let writeProtector = protector.withLockedValue { $0 }
        let pages = try tracker.fix(full: full || fullNext, protector: writeProtector)
        fullNext = false
        return pages
    }

    private func startTransfer(pages: Int, pauseNanoseconds: UInt64) -> SnapshotTicket {
        let plan = target.beginPlan()
        let started = Self.nanoseconds()
        let startedMilliseconds = Self.wallMilliseconds()
        let done = NIOLockedValueBox(false)
        let task = Task.detached { [self] () async throws -> SnapshotResult in
            defer { done.withLockedValue { $0 = true } }
            do {
                let result = try await transfer(plan: plan, pauseNanoseconds: pauseNanoseconds, started: started, startedMilliseconds: startedMilliseconds)
                tracker.finish(succeeded: true)
                return result
            } catch {
                tracker.finish(succeeded: false)
                throw error
            }
        }
        current.withLockedValue { $0 = (plan.sequence, task) }
        return SnapshotTicket(sequence: plan.sequence, pagesToSend: pages, pauseNanoseconds: pauseNanoseconds, task: task, done: done)
    }

    /// Returns when no transfer is running (whether the last one succeeded or not).
    public func waitUntilIdle() async {
        guard let running = current.withLockedValue({ $0 }) else { return }
        _ = try? await running.task.value
    }

    /// Waits for the transfer in flight, then stops the fault handler and removes write
    /// protection. The arena stays usable; no further snapshots.
    public func close() async {
        await waitUntilIdle()
        guard !closed.withLockedValue({ let was = $0; $0 = true; return was }) else { return }
        handler?.stop()
        protector.withLockedValue { $0 = nil } // unregisters: every page writable again
    }

    // MARK: The transfer agent

    private func transfer(plan: SnapshotTarget.Plan, pauseNanoseconds: UInt64, started: UInt64, startedMilliseconds: UInt64) async throws(PMUError) -> SnapshotResult {
        var plan = plan
        let pageBytes = arena.pageBytes
        let layout = target.layout
        let io = target.io
        let batchBytes = options.batchPages * pageBytes
        let limit = options.writesInFlight
        var bytesSent: UInt64 = 0
        let paceStart = Self.nanoseconds()
        do {
            // A sliding window: up to `writesInFlight` writes outstanding while the next batch is copied.
            try await withThrowingTaskGroup(of: Void.self) { group in
                var running = 0
                while true {
                    var buffer = ByteBufferAllocator().buffer(capacity: batchBytes)
                    var taken: [Int] = []
                    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: batchBytes) { raw in
                        taken = tracker.take(max: options.batchPages, into: raw.baseAddress!)
                        return taken.count * pageBytes
                    }
                    if taken.isEmpty { break }
                    for (offset, bytes) in Self.runs(of: taken, in: buffer, pageBytes: pageBytes, plan: &plan, layout: layout) {
                        if running == limit {
                            try await group.next()
                            running -= 1
                        }
                        group.addTask { try await io.write(at: offset, bytes) }
                        running += 1
                    }
                    bytesSent += UInt64(taken.count * pageBytes)
                    if let rate = options.transferBytesPerSecond, rate > 0 {
                        let due = paceStart + bytesSent * 1_000_000_000 / rate
                        let now = Self.nanoseconds()
                        if due > now { try await Task.sleep(nanoseconds: due - now) }
                    }
                }
                try await group.waitForAll()
            }
        } catch let error as PMUError {
            throw error
        } catch {
            throw PMUError(.internalError, "snapshot transfer failed: \(error)")
        }
        let header = SnapshotHeader(sequence: plan.sequence, epoch: target.epoch, pagesSent: plan.pagesSent, bytesSent: bytesSent,
                                    pauseNanoseconds: pauseNanoseconds, startedMilliseconds: startedMilliseconds,
                                    committedMilliseconds: Self.wallMilliseconds(), mapChecksum: 0)
        let commitStart = Self.nanoseconds()
        let (committed, metadataBytes) = try await target.commit(plan, header: header)
        let end = Self.nanoseconds()
        // To the application's swift-metrics backend: pause through durable header, the pause, bytes.
        PMUMetrics.snapshot(bytes: bytesSent &+ metadataBytes, nanoseconds: pauseNanoseconds &+ (end &- started), pauseNanoseconds: pauseNanoseconds)
        return SnapshotResult(header: committed, pagesSent: plan.pagesSent, pageBytesSent: bytesSent, metadataBytesSent: metadataBytes,
                              pauseNanoseconds: pauseNanoseconds, transferNanoseconds: end - started, commitNanoseconds: end - commitStart)
    }

    /// Checksums the pages of one batch, gives each a slot and cuts the batch into writes of
    /// consecutive slots (one request per run; slices of the batch buffer, no copy).
    static func runs(of taken: [Int], in buffer: ByteBuffer, pageBytes: Int, plan: inout SnapshotTarget.Plan,
                     layout: SnapshotLayout) -> [(UInt64, ByteBuffer)] {
        var writes: [(UInt64, ByteBuffer)] = []
        var runStart = 0
        var runSlot: UInt32 = 0
        buffer.withUnsafeReadableBytes { raw in
            for (index, page) in taken.enumerated() {
                let checksum = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(index * pageBytes)..<((index + 1) * pageBytes)]))
                let slot = plan.allocate(page: page, checksum: checksum)
                if index == 0 {
                    runSlot = slot
                } else if slot != runSlot + UInt32(index - runStart) {
                    writes.append((layout.slotOffset(runSlot), buffer.getSlice(at: runStart * pageBytes, length: (index - runStart) * pageBytes)!))
                    runStart = index
                    runSlot = slot
                }
            }
        }
        writes.append((layout.slotOffset(runSlot), buffer.getSlice(at: runStart * pageBytes, length: (taken.count - runStart) * pageBytes)!))
        return writes
    }

    static func nanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    public static func wallMilliseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }
}
