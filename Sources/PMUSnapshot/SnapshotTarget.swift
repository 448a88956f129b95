import NIOConcurrencyHelpers
import NIOCore
import PMUCheckpoint
import PMUCore

/// A formatted snapshot target: the region a live program's snapshots go to and a restore reads
/// from (layout in `SnapshotLayout`). It reaches the region only through `RegionIO`, so the same
/// code runs over a remote region and over PMUTesting's in-memory simulated region.
///
/// `open` loads the newest committed snapshot's header and page map: a writer must know which
/// slots hold it so that it never writes there.
public final class SnapshotTarget: Sendable {
    public let io: any RegionIO
    public let layout: SnapshotLayout
    /// The writer epoch of the handle (0 for an in-memory region); recorded in each header.
    public let epoch: UInt64
    public let name: String

    struct Committed {
        var header: SnapshotHeader
        var map: PageMap
    }

    private let state: NIOLockedValueBox<Committed?>

    init(io: any RegionIO, layout: SnapshotLayout, epoch: UInt64, name: String, committed: Committed?) {
        self.io = io
        self.layout = layout
        self.epoch = epoch
        self.name = name
        state = NIOLockedValueBox(committed)
    }

    /// The newest complete snapshot this target holds (as of open or the last commit through it).
    public var newestCommitted: SnapshotHeader? { state.withLockedValue { $0?.header } }

    var committed: Committed? { state.withLockedValue { $0 } }

    /// Opens a region as a snapshot target. An unformatted region (all-zero superblock) is
    /// formatted for `formatFor` when given (it must be large enough); a formatted one must match
    /// `formatFor` when given. Nothing is written unless formatting.
    public static func open(
        io: any RegionIO, name: String = "", epoch: UInt64 = 0, formatFor arenaBytes: UInt64? = nil,
        pageBytes: UInt64 = UInt64(SnapshotArena.systemPageBytes), nowMilliseconds: UInt64 = 0
    ) async throws(PMUError) -> SnapshotTarget {
        if let layout = try await checkGeometry(io: io, name: name, formatFor: arenaBytes, pageBytes: pageBytes) {
            let committed = try await loadNewest(io: io, layout: layout)
            return SnapshotTarget(io: io, layout: layout, epoch: epoch, name: name, committed: committed)
        }
        let layout = try SnapshotLayout(pageBytes: pageBytes, arenaBytes: arenaBytes!)
        try await io.writeDurably(at: SnapshotLayout.superblockOffset, layout.encodeSuperblock(createdMilliseconds: nowMilliseconds))
        return SnapshotTarget(io: io, layout: layout, epoch: epoch, name: name, committed: nil)
    }

    /// Reads and checks the superblock without writing anything: the target's geometry, or nil
    /// when it is unformatted and large enough to be formatted for `formatFor`. Throws when it holds
    /// something else, another arena size, or is too small.
    public static func checkGeometry(
        io: any RegionIO, name: String, formatFor arenaBytes: UInt64?, pageBytes: UInt64 = UInt64(SnapshotArena.systemPageBytes)
    ) async throws(PMUError) -> SnapshotLayout? {
        guard io.sizeBytes >= SnapshotLayout.metadataBytes else {
            throw PMUError(.invalidSize, "region '\(name)' has \(io.sizeBytes) bytes, less than the \(SnapshotLayout.metadataBytes) bytes of a snapshot target's metadata")
        }
        let superblock = try await io.read(at: SnapshotLayout.superblockOffset, length: Int(SnapshotLayout.blockBytes))
        if let layout = try SnapshotLayout.decodeSuperblock(superblock, regionBytes: io.sizeBytes) {
            if let arenaBytes, arenaBytes != layout.arenaBytes || pageBytes != layout.pageBytes {
                throw PMUError(.invalidArgument, "snapshot target '\(name)' is formatted for an arena of \(layout.arenaBytes) bytes in \(layout.pageBytes)-byte pages, not \(arenaBytes) in \(pageBytes)-byte pages")
            }
            return layout
        }
        guard let arenaBytes else {
            throw PMUError(.notSnapshotRegion, "region '\(name)' has never been formatted as a snapshot target (no superblock)")
        }
        let layout = try SnapshotLayout(pageBytes: pageBytes, arenaBytes: arenaBytes)
        guard layout.requiredRegionBytes <= io.sizeBytes else {
            throw PMUError(.invalidSize, "region '\(name)' has \(io.sizeBytes) bytes; a snapshot target for an arena of \(arenaBytes) bytes needs \(layout.requiredRegionBytes) (2 x arena + 8 bytes a page x 2 + 16 KiB)")
        }
        return nil
    }

    // MARK: Reading headers and maps

    /// The valid commit headers, newest first (at most two).
    public func headers() async throws(PMUError) -> [SnapshotHeader] {
        try await Self.readHeaders(io: io, layout: layout)
    }

    static func readHeaders(io: any RegionIO, layout: SnapshotLayout) async throws(PMUError) -> [SnapshotHeader] {
        let both = try await io.read(at: SnapshotLayout.headerOffsets[0], length: Int(2 * SnapshotLayout.blockBytes))
        var found: [SnapshotHeader] = []
        for index in 0..<2 {
            let slot = both.getSlice(at: both.readerIndex + index * Int(SnapshotLayout.blockBytes), length: Int(SnapshotLayout.blockBytes))!
            // A header found in the slot its sequence does not belong to is not ours to trust.
            if let header = layout.decodeHeader(slot), SnapshotLayout.slotIndex(forSequence: header.sequence) == index {
                found.append(header)
            }
        }
        return found.sorted { $0.sequence > $1.sequence }
    }

    func readMap(for header: SnapshotHeader) async throws(PMUError) -> PageMap {
        try await Self.readMap(io: io, layout: layout, header: header)
    }

    static func readMap(io: any RegionIO, layout: SnapshotLayout, header: SnapshotHeader) async throws(PMUError) -> PageMap {
        let offset = layout.mapOffset(SnapshotLayout.slotIndex(forSequence: header.sequence))
        let bytes = try await io.read(at: offset, length: Int(layout.pageCount * SnapshotLayout.mapEntryBytes))
        return try layout.decodeMap(bytes, expectedChecksum: header.mapChecksum)
    }

    /// The newest header whose map checks out (an older one only if the newest's map is damaged).
    static func loadNewest(io: any RegionIO, layout: SnapshotLayout) async throws(PMUError) -> Committed? {
        for header in try await readHeaders(io: io, layout: layout) {
            if let map = try? await readMap(io: io, layout: layout, header: header) {
                return Committed(header: header, map: map)
            }
        }
        return nil
    }

    // MARK: Heartbeat

    public func heartbeat() async throws(PMUError) -> Heartbeat? {
        layout.decodeHeartbeat(try await io.read(at: SnapshotLayout.heartbeatOffset, length: SnapshotLayout.heartbeatEncodedBytes))
    }

    /// Writes the heartbeat record (not persisted: liveness needs the server's memory, not its disk;
    /// a hand-over record is persisted because the successor relies on it).
    public func beat(_ heartbeat: Heartbeat) async throws(PMUError) {
        let bytes = layout.encodeHeartbeat(heartbeat)
        if heartbeat.handedOverSequence != 0 {
            try await io.writeDurably(at: SnapshotLayout.heartbeatOffset, bytes)
        } else {
            try await io.write(at: SnapshotLayout.heartbeatOffset, bytes)
        }
    }

    /// Re-reads the headers and maps: a follower calls it to see snapshots committed since open.
    public func refresh() async throws(PMUError) -> SnapshotHeader? {
        let newest = try await Self.loadNewest(io: io, layout: layout)
        state.withLockedValue { $0 = newest }
        return newest?.header
    }

    // MARK: Writing a snapshot (the transfer agent)

    /// Where one snapshot's pages go: slots the committed map does not use, lowest first, so that
    /// a snapshot's pages land in few contiguous runs.
    struct Plan {
        var sequence: UInt64
        var map: PageMap
        var used: [Bool]
        var cursor = 0
        var replaced: [UInt32] = []
        var pagesSent: UInt64 = 0

        mutating func allocate(page: Int, checksum: UInt32) -> UInt32 {
            while used[cursor] { cursor += 1 } // a free slot exists: at most pageCount are in use
            used[cursor] = true
            replaced.append(map.slots[page])
            map.slots[page] = UInt32(cursor)
            map.checksums[page] = checksum
            pagesSent += 1
            cursor += 1
            return UInt32(cursor - 1)
        }
    }

    func beginPlan() -> Plan {
        let committed = self.committed
        var used = [Bool](repeating: false, count: Int(layout.slotCount))
        let map = committed?.map ?? PageMap(pageCount: Int(layout.pageCount))
        if committed != nil { for slot in map.slots { used[Int(slot)] = true } }
        return Plan(sequence: (committed?.header.sequence ?? 0) + 1, map: map, used: used)
    }

    /// Crash order: the pages are already written; write the map, persist maps and data, and only
    /// then write the header durably. A crash before the header leaves the previous snapshot the
    /// newest valid one, its map and slots untouched.
    func commit(_ plan: Plan, header: SnapshotHeader) async throws(PMUError) -> (SnapshotHeader, UInt64) {
        let encoded = layout.encodeMap(plan.map)
        var header = header
        header.mapChecksum = SnapshotLayout.mapChecksum(encoded)
        let mapBytes = UInt64(encoded.readableBytes)
        try await io.write(at: layout.mapOffset(SnapshotLayout.slotIndex(forSequence: plan.sequence)), encoded)
        try await io.persist(at: layout.mapOffset(0), length: layout.requiredRegionBytes - layout.mapOffset(0))
        let headerBytes = layout.encodeHeader(header)
        try await io.writeDurably(at: SnapshotLayout.headerOffsets[SnapshotLayout.slotIndex(forSequence: plan.sequence)], headerBytes)
        state.withLockedValue { $0 = Committed(header: header, map: plan.map) }
        return (header, mapBytes + UInt64(headerBytes.readableBytes))
    }

    // MARK: Restore and verify

    /// Fills `arena` with the newest complete snapshot (or the one of `sequence`, while its header
    /// and pages are still intact) and returns its header. Every page is checked against its
    /// checksum: a damaged image is refused with DAMAGED, never returned.
    public func restore(into arena: SnapshotArena, sequence: UInt64? = nil) async throws(PMUError) -> SnapshotHeader {
        guard UInt64(arena.sizeBytes) == layout.arenaBytes, UInt64(arena.pageBytes) == layout.pageBytes else {
            throw PMUError(.invalidArgument, "arena of \(arena.sizeBytes) bytes does not match target '\(name)' (formatted for \(layout.arenaBytes))")
        }
        let (header, map) = try await image(sequence: sequence)
        let pageBytes = Int(layout.pageBytes)
        let damaged = try await forEachRun(of: map) { pages, bytes in
            var bad: [Int] = []
            bytes.withUnsafeReadableBytes { raw in
                for (index, page) in pages.enumerated() {
                    let source = UnsafeRawBufferPointer(rebasing: raw[(index * pageBytes)..<((index + 1) * pageBytes)])
                    if CRC32C.checksum(source) != map.checksums[page] { bad.append(page) }
                    arena.page(page).copyMemory(from: source.baseAddress!, byteCount: pageBytes)
                }
            }
            return bad
        }
        guard damaged.isEmpty else {
            throw PMUError(.damaged, "snapshot \(header.sequence) of '\(name)': \(damaged.count) page(s) fail their checksum (first: page \(damaged.min()!)); it is damaged or was overwritten")
        }
        return header
    }

    /// Checks a snapshot without restoring it: header, map and every page's checksum.
    public func verify(sequence: UInt64? = nil) async throws(PMUError) -> SnapshotVerification {
        let (header, map) = try await image(sequence: sequence)
        let pageBytes = Int(layout.pageBytes)
        let damaged = try await forEachRun(of: map) { pages, bytes in
            bytes.withUnsafeReadableBytes { raw in
                pages.enumerated().compactMap { index, page in
                    CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(index * pageBytes)..<((index + 1) * pageBytes)])) == map.checksums[page] ? nil : page
                }
            }
        }
        return SnapshotVerification(header: header, pagesChecked: layout.pageCount, damagedPages: damaged.sorted())
    }

    /// Checks that the map of `sequence` is intact (cheap: no pages read).
    public func verifyMap(sequence: UInt64) async throws(PMUError) {
        _ = try await image(sequence: sequence)
    }

    /// The header and page map of a snapshot (the newest when nil).
    public func image(sequence: UInt64?) async throws(PMUError) -> (SnapshotHeader, PageMap) {
        let all = try await headers()
        guard !all.isEmpty else { throw PMUError(.unknownSequence, "snapshot target '\(name)' holds no complete snapshot yet") }
        guard let sequence else {
            guard let newest = try await Self.loadNewest(io: io, layout: layout) else {
                throw PMUError(.damaged, "snapshot target '\(name)': no header has an intact page map")
            }
            return (newest.header, newest.map)
        }
        guard let header = all.first(where: { $0.sequence == sequence }) else {
            throw PMUError(.unknownSequence, "snapshot target '\(name)' has no snapshot \(sequence); it holds \(all.map { String($0.sequence) }.joined(separator: ", "))")
        }
        return (header, try await readMap(for: header))
    }

    /// Reads the image's pages in runs of consecutive slots (up to 4 MiB, 4 in flight) and hands
    /// each run with its arena page numbers to `body`; collects what `body` returns.
    private func forEachRun(of map: PageMap, _ body: @escaping @Sendable ([Int], ByteBuffer) -> [Int]) async throws(PMUError) -> [Int] {
        let maxRunPages = max(1, Int((4 << 20) / layout.pageBytes))
        let order = (0..<Int(layout.pageCount)).sorted { map.slots[$0] < map.slots[$1] }
        var runs: [(firstSlot: UInt32, pages: [Int])] = []
        for page in order {
            let slot = map.slots[page]
            if let last = runs.last, last.pages.count < maxRunPages, last.firstSlot + UInt32(last.pages.count) == slot {
                runs[runs.count - 1].pages.append(page)
            } else {
                runs.append((slot, [page]))
            }
        }
        let io = self.io, layout = self.layout
        let results = try await boundedConcurrently(runs, limit: 4) { (run: (firstSlot: UInt32, pages: [Int])) async throws(PMUError) -> [Int] in
            let length = run.pages.count * Int(layout.pageBytes)
            let bytes = try await io.read(at: layout.slotOffset(run.firstSlot), length: length)
            guard bytes.readableBytes == length else { throw PMUError(.damaged, "short read of snapshot pages") }
            return body(run.pages, bytes)
        }
        return results.flatMap { $0 }
    }
}

/// What `verify` found.
public struct SnapshotVerification: Sendable, Equatable {
    public var header: SnapshotHeader
    public var pagesChecked: UInt64
    public var damagedPages: [Int]
    public var intact: Bool { damagedPages.isEmpty }
}
