import NIOCore
import PMUCore

/// Where everything lives in a snapshot target region (docs/DATA_FILES.md, "Live snapshots").
///
/// ```
/// [0, 4 KiB)            superblock: geometry, written once when the target is formatted
/// [4 KiB, 12 KiB)       two commit headers, 4 KiB apart (newest valid wins)
/// [12 KiB, 16 KiB)      heartbeat record (the live program's liveness, not durable)
/// map 0, map 1          page maps: per arena page (slot u32, crc32c u32); header n uses map n % 2
/// data                  2 x pageCount page slots
/// ```
///
/// A snapshot writes its pages only into slots the committed map does not use (there are always
/// at least pageCount of them), then its whole map into the other map slot, persists both, and
/// only then writes its header durably. A restore reads one map and pageCount pages: no chain.
/// Pure: no I/O, every value read back is checked.
public struct SnapshotLayout: Sendable, Equatable {
    public static let blockBytes: UInt64 = 4096
    public static let superblockOffset: UInt64 = 0
    public static let headerOffsets: [UInt64] = [4096, 8192]
    public static let heartbeatOffset: UInt64 = 12288
    public static let metadataBytes: UInt64 = 16384
    public static let mapEntryBytes: UInt64 = 8
    /// The largest arena a target holds: keeps one page map (8 bytes a page) at most 512 MiB in
    /// the client's memory and every slot number inside a u32.
    public static let maxArenaBytes: UInt64 = 256 << 30
    public static let supportedPageSizes: ClosedRange<UInt64> = 4096...(2 << 20)

    public let pageBytes: UInt64
    public let arenaBytes: UInt64

    public var pageCount: UInt64 { arenaBytes / pageBytes }
    public var slotCount: UInt64 { 2 * pageCount }
    public var mapBytes: UInt64 { Self.roundUp(pageCount * Self.mapEntryBytes, Self.blockBytes) }
    public func mapOffset(_ index: Int) -> UInt64 { Self.metadataBytes + UInt64(index) * mapBytes }
    public var dataOffset: UInt64 { Self.metadataBytes + 2 * mapBytes }
    public func slotOffset(_ slot: UInt32) -> UInt64 { dataOffset + UInt64(slot) * pageBytes }
    /// The region size a target for this arena needs: 2 x arena + 2 maps (8 bytes a page each) + 16 KiB.
    public var requiredRegionBytes: UInt64 { dataOffset + slotCount * pageBytes }

    /// Checks an arena geometry; every refusal says what would be accepted.
    public init(pageBytes: UInt64, arenaBytes: UInt64) throws(PMUError) {
        guard Self.supportedPageSizes.contains(pageBytes), pageBytes & (pageBytes - 1) == 0 else {
            throw PMUError(.invalidSize, "page size \(pageBytes) is not a power of two between 4096 and 2 MiB")
        }
        guard arenaBytes > 0, arenaBytes % pageBytes == 0 else {
            throw PMUError(.invalidSize, "arena size \(arenaBytes) is not a positive multiple of the page size \(pageBytes); use \(Self.roundUp(max(arenaBytes, 1), pageBytes))")
        }
        guard arenaBytes <= Self.maxArenaBytes else {
            throw PMUError(.invalidSize, "arena size \(arenaBytes) is over the limit of \(Self.maxArenaBytes) bytes (256 GiB)")
        }
        self.pageBytes = pageBytes
        self.arenaBytes = arenaBytes
    }

    static func roundUp(_ value: UInt64, _ unit: UInt64) -> UInt64 { (value + unit - 1) / unit * unit }

    // MARK: Superblock

    static let superblockMagic: [UInt8] = Array("PMUSNAP1".utf8)
    static let formatVersion: UInt32 = 1
    static let superblockEncodedBytes = 8 + 4 + 4 + 8 * 6 + 4

    /// magic, version, pageBytes u32, arenaBytes, pageCount, slotCount, mapBytes, dataOffset,
    /// createdMilliseconds, crc32c of the preceding bytes. All little-endian.
    public func encodeSuperblock(createdMilliseconds: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeBytes(Self.superblockMagic)
        buffer.writeInteger(Self.formatVersion, endianness: .little)
        buffer.writeInteger(UInt32(pageBytes), endianness: .little)
        for value in [arenaBytes, pageCount, slotCount, mapBytes, dataOffset, createdMilliseconds] {
            buffer.writeInteger(value, endianness: .little)
        }
        let crc = CRC32C.checksum(buffer.readableBytesView)
        buffer.writeInteger(crc, endianness: .little)
        return buffer
    }

    /// nil when the block is all zeros (a region never formatted); otherwise the geometry or an error.
    public static func decodeSuperblock(_ bytes: ByteBuffer, regionBytes: UInt64) throws(PMUError) -> SnapshotLayout? {
        let view = Array(bytes.readableBytesView.prefix(superblockEncodedBytes))
        guard view.count == superblockEncodedBytes else { throw PMUError(.damaged, "snapshot superblock is truncated") }
        if view.allSatisfy({ $0 == 0 }) { return nil }
        guard Array(view[0..<8]) == superblockMagic else {
            throw PMUError(.notSnapshotRegion, "the region does not start with a snapshot superblock (magic PMUSNAP1); it holds something else")
        }
        let stored = le32(view, superblockEncodedBytes - 4)
        guard CRC32C.checksum(view[0..<(superblockEncodedBytes - 4)]) == stored else {
            throw PMUError(.damaged, "snapshot superblock checksum mismatch")
        }
        let version = le32(view, 8)
        guard version == formatVersion else {
            throw PMUError(.damaged, "snapshot format version \(version) is not supported (this build reads \(formatVersion))")
        }
        let layout = try SnapshotLayout(pageBytes: UInt64(le32(view, 12)), arenaBytes: le64(view, 16))
        guard le64(view, 24) == layout.pageCount, le64(view, 32) == layout.slotCount,
              le64(view, 40) == layout.mapBytes, le64(view, 48) == layout.dataOffset else {
            throw PMUError(.damaged, "snapshot superblock geometry is inconsistent")
        }
        guard layout.requiredRegionBytes <= regionBytes else {
            throw PMUError(.damaged, "snapshot superblock says \(layout.requiredRegionBytes) bytes but the region has \(regionBytes)")
        }
        return layout
    }

    // MARK: Commit headers

    static let headerMagic: [UInt8] = Array("PMUSNAPH".utf8)
    static let headerEncodedBytes = 8 + 8 * 8 + 4 + 4

    public func encodeHeader(_ header: SnapshotHeader) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeBytes(Self.headerMagic)
        for value in [header.sequence, header.epoch, arenaBytes, header.pagesSent, header.bytesSent,
                      header.pauseNanoseconds, header.startedMilliseconds, header.committedMilliseconds] {
            buffer.writeInteger(value, endianness: .little)
        }
        buffer.writeInteger(header.mapChecksum, endianness: .little)
        let crc = CRC32C.checksum(buffer.readableBytesView)
        buffer.writeInteger(crc, endianness: .little)
        return buffer
    }

    /// nil for a slot never written or not a valid header (torn, damaged): the caller uses the other.
    public func decodeHeader(_ bytes: ByteBuffer) -> SnapshotHeader? {
        guard let view = Self.checkedRecord(bytes, magic: Self.headerMagic, length: Self.headerEncodedBytes) else { return nil }
        let fields = (0..<8).map { Self.le64(view, 8 + 8 * $0) }
        guard fields[0] > 0, fields[2] == arenaBytes, fields[3] <= pageCount else { return nil }
        return SnapshotHeader(sequence: fields[0], epoch: fields[1], pagesSent: fields[3], bytesSent: fields[4],
                              pauseNanoseconds: fields[5], startedMilliseconds: fields[6], committedMilliseconds: fields[7],
                              mapChecksum: Self.le32(view, 8 + 64))
    }

    /// Header n lives in slot n % 2 and names map n % 2.
    public static func slotIndex(forSequence sequence: UInt64) -> Int { Int(sequence % 2) }

    // MARK: Heartbeat

    static let heartbeatMagic: [UInt8] = Array("PMUSNAPB".utf8)
    static let heartbeatEncodedBytes = 8 + 8 * 5 + 4

    public func encodeHeartbeat(_ beat: Heartbeat) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeBytes(Self.heartbeatMagic)
        for value in [beat.epoch, beat.counter, beat.milliseconds, beat.handedOverSequence, beat.note] {
            buffer.writeInteger(value, endianness: .little)
        }
        let crc = CRC32C.checksum(buffer.readableBytesView)
        buffer.writeInteger(crc, endianness: .little)
        return buffer
    }

    public func decodeHeartbeat(_ bytes: ByteBuffer) -> Heartbeat? {
        guard let view = Self.checkedRecord(bytes, magic: Self.heartbeatMagic, length: Self.heartbeatEncodedBytes) else { return nil }
        let fields = (0..<5).map { Self.le64(view, 8 + 8 * $0) }
        return Heartbeat(epoch: fields[0], counter: fields[1], milliseconds: fields[2], handedOverSequence: fields[3], note: fields[4])
    }

    // MARK: Page map

    /// Entry i is (slot, crc32c of the page's bytes). A valid map names pageCount distinct slots
    /// inside the data area; it is checked as a whole against the header's map checksum.
    public func encodeMap(_ map: PageMap) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(Int(pageCount * Self.mapEntryBytes))
        for index in 0..<Int(pageCount) {
            buffer.writeInteger(map.slots[index], endianness: .little)
            buffer.writeInteger(map.checksums[index], endianness: .little)
        }
        return buffer
    }

    public static func mapChecksum(_ encoded: ByteBuffer) -> UInt32 {
        encoded.withUnsafeReadableBytes { CRC32C.checksum($0) }
    }

    /// Decodes and checks a map read back: checksum, slots in range, no slot used twice.
    public func decodeMap(_ bytes: ByteBuffer, expectedChecksum: UInt32) throws(PMUError) -> PageMap {
        let entriesBytes = Int(pageCount * Self.mapEntryBytes)
        guard bytes.readableBytes >= entriesBytes else { throw PMUError(.damaged, "page map is truncated") }
        let entries = bytes.getSlice(at: bytes.readerIndex, length: entriesBytes)!
        guard Self.mapChecksum(entries) == expectedChecksum else {
            throw PMUError(.damaged, "page map checksum mismatch (the map was overwritten or damaged)")
        }
        var map = PageMap(pageCount: Int(pageCount))
        var used = [Bool](repeating: false, count: Int(slotCount))
        let damaged = entries.withUnsafeReadableBytes { raw -> Bool in
            for index in 0..<Int(pageCount) {
                let slot = raw.loadUnaligned(fromByteOffset: index * 8, as: UInt32.self).littleEndian
                let crc = raw.loadUnaligned(fromByteOffset: index * 8 + 4, as: UInt32.self).littleEndian
                guard UInt64(slot) < slotCount, !used[Int(slot)] else { return true }
                used[Int(slot)] = true
                map.slots[index] = slot
                map.checksums[index] = crc
            }
            return false
        }
        guard !damaged else { throw PMUError(.damaged, "page map names a slot outside the data area or twice") }
        return map
    }

    // MARK: Little-endian helpers for checked byte arrays

    /// The record's bytes if it has `length` bytes, starts with `magic` and ends with the CRC of the rest.
    static func checkedRecord(_ bytes: ByteBuffer, magic: [UInt8], length: Int) -> [UInt8]? {
        let view = Array(bytes.readableBytesView.prefix(length))
        guard view.count == length, Array(view[0..<magic.count]) == magic,
              CRC32C.checksum(view[0..<(length - 4)]) == le32(view, length - 4) else { return nil }
        return view
    }

    static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
    }

    static func le64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * $1) }
    }
}

/// One committed snapshot as its header records it.
public struct SnapshotHeader: Sendable, Equatable {
    public var sequence: UInt64
    public var epoch: UInt64
    public var pagesSent: UInt64
    public var bytesSent: UInt64
    public var pauseNanoseconds: UInt64
    public var startedMilliseconds: UInt64
    public var committedMilliseconds: UInt64
    public var mapChecksum: UInt32

    public init(sequence: UInt64, epoch: UInt64, pagesSent: UInt64, bytesSent: UInt64, pauseNanoseconds: UInt64,
                startedMilliseconds: UInt64, committedMilliseconds: UInt64, mapChecksum: UInt32) {
        self.sequence = sequence
        self.epoch = epoch
        self.pagesSent = pagesSent
        self.bytesSent = bytesSent
        self.pauseNanoseconds = pauseNanoseconds
        self.startedMilliseconds = startedMilliseconds
        self.committedMilliseconds = committedMilliseconds
        self.mapChecksum = mapChecksum
    }
}

/// The live program's liveness record. `handedOverSequence` non-zero: the program stopped on
/// purpose after its snapshot of that sequence became durable (a planned move).
public struct Heartbeat: Sendable, Equatable {
    public var epoch: UInt64
    public var counter: UInt64
    public var milliseconds: UInt64
    public var handedOverSequence: UInt64
    /// The application's own value (the examples put their step count here).
    public var note: UInt64

    public init(epoch: UInt64, counter: UInt64, milliseconds: UInt64, handedOverSequence: UInt64 = 0, note: UInt64 = 0) {
        self.epoch = epoch
        self.counter = counter
        self.milliseconds = milliseconds
        self.handedOverSequence = handedOverSequence
        self.note = note
    }
}

/// Where each arena page's image lives and its checksum.
public struct PageMap: Sendable, Equatable {
    public var slots: [UInt32]
    public var checksums: [UInt32]

    public init(pageCount: Int) {
        slots = [UInt32](repeating: 0, count: pageCount)
        checksums = [UInt32](repeating: 0, count: pageCount)
    }
}
