import NIOConcurrencyHelpers
import NIOCore
import PMUCheckpoint
import PMUCore

/// An in-memory region that simulates what a crash of the server machine does to unsynced data,
/// in the spirit of TigerBeetle's simulated storage (src/testing/storage.zig).
///
/// Writes land in a volatile image; `persist` copies the covering 4 KiB pages (as msync does) to
/// the durable image. `crash` decides, for every page written since its last persist, with a
/// seeded generator: keep it, drop it (lost write), or tear it (each 512-byte sector old or new).
/// After `failAfterOperations` operations every call fails, as if the machine had died there.
public final class SimulatedRegion: RegionIO, @unchecked Sendable {
    public static let pageBytes = 4096
    public static let sectorBytes = 512

    public let sizeBytes: UInt64
    private let lock = NIOLock()
    private var volatile: [UInt8]
    private var durable: [UInt8]
    private var dirtyPages = Set<Int>()
    private var operations = 0
    private let failAfterOperations: Int?
    public private(set) var crashed = false

    public init(sizeBytes: Int, failAfterOperations: Int? = nil) {
        self.sizeBytes = UInt64(sizeBytes)
        volatile = [UInt8](repeating: 0, count: sizeBytes)
        durable = volatile
        self.failAfterOperations = failAfterOperations
    }

    /// A region starting from what survived a crash of `other`.
    public init(recoveredFrom durableBytes: [UInt8]) {
        sizeBytes = UInt64(durableBytes.count)
        volatile = durableBytes
        durable = durableBytes
        failAfterOperations = nil
    }

    private func tick() throws(PMUError) {
        let failure: PMUError? = lock.withLock {
            if crashed { return PMUError(.connectionClosed, "simulated crash") }
            operations += 1
            if let limit = failAfterOperations, operations > limit {
                crashed = true
                return PMUError(.connectionClosed, "simulated crash at operation \(limit)")
            }
            return nil
        }
        if let failure { throw failure }
    }

    private func check(_ offset: UInt64, _ length: UInt64) throws(PMUError) {
        guard offset <= sizeBytes, length <= sizeBytes - offset else {
            throw PMUError(.outOfBounds, "range [\(offset), \(offset) + \(length)) is outside the simulated region of \(sizeBytes) bytes")
        }
    }

    public func read(at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        try tick()
        try check(offset, UInt64(length))
        return lock.withLock { ByteBuffer(bytes: volatile[Int(offset)..<(Int(offset) + length)]) }
    }

    public func write(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        try tick()
        try check(offset, UInt64(bytes.readableBytes))
        guard bytes.readableBytes > 0 else { return }
        lock.withLock {
            let start = Int(offset)
            volatile.replaceSubrange(start..<(start + bytes.readableBytes), with: bytes.readableBytesView)
            for page in (start / Self.pageBytes)...((start + bytes.readableBytes - 1) / Self.pageBytes) { dirtyPages.insert(page) }
        }
    }

    public func persist(at offset: UInt64, length: UInt64) async throws(PMUError) {
        try tick()
        try check(offset, length)
        guard length > 0 else { return }
        lock.withLock {
            let first = Int(offset) / Self.pageBytes
            let last = (Int(offset + length) - 1) / Self.pageBytes
            for page in first...last where dirtyPages.contains(page) {
                let range = (page * Self.pageBytes)..<min((page + 1) * Self.pageBytes, volatile.count)
                durable.replaceSubrange(range, with: volatile[range])
                dirtyPages.remove(page)
            }
        }
    }

    public struct CrashReport: Sendable {
        public var kept = 0
        public var dropped = 0
        public var torn = 0
    }

    /// Simulates power loss now: returns the bytes that survive, and what happened to unsynced pages.
    public func crash<G: RandomNumberGenerator>(using generator: inout G) -> (bytes: [UInt8], report: CrashReport) {
        lock.withLock {
            crashed = true
            var survived = durable
            var report = CrashReport()
            for page in dirtyPages.sorted() {
                let range = (page * Self.pageBytes)..<min((page + 1) * Self.pageBytes, volatile.count)
                switch UInt8.random(in: 0..<3, using: &generator) {
                case 0:
                    survived.replaceSubrange(range, with: volatile[range])
                    report.kept += 1
                case 1:
                    report.dropped += 1
                default:
                    for sector in stride(from: range.lowerBound, to: range.upperBound, by: Self.sectorBytes) where Bool.random(using: &generator) {
                        let sectorRange = sector..<min(sector + Self.sectorBytes, range.upperBound)
                        survived.replaceSubrange(sectorRange, with: volatile[sectorRange])
                    }
                    report.torn += 1
                }
            }
            return (survived, report)
        }
    }

    /// The process (not the machine) died: the page cache keeps every write, synced or not.
    public func processCrash() -> [UInt8] {
        lock.withLock {
            crashed = true
            return volatile
        }
    }
}
