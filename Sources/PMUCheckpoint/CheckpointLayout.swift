import NIOCore
import PMUCore

/// How checkpoints are kept in a region (docs/DATA_FILES.md, "Checkpoint regions"):
///
///     [0, 4096)                 region header: geometry, written once at format
///     [indexOffset, +K*64)      index: K record headers; sequence n lives in entry n % K
///     [dataOffset, +dataBytes)  payloads, each starting on a 4 KiB boundary
///
/// A checkpoint is committed when its record header is durable, and the header is written only
/// after its payload is durable; a reader validates the header's checksum and the payload's
/// CRC32C, so it never returns a torn or half-written checkpoint.
///
/// - overwrite: K = 2 and two fixed payload slots; checkpoint n replaces n - 2, so n - 1 stays
///   readable while n is written.
/// - append: payloads are placed one after the other in the data area, wrapping around to its start
///   when a retention policy allows reusing space; K bounds how many checkpoints exist at once.
public enum CheckpointMode: UInt8, Sendable, CustomStringConvertible {
    case overwrite = 1
    case append = 2

    public var description: String { self == .overwrite ? "overwrite" : "append" }

    public var regionKind: RegionKind { self == .overwrite ? .checkpointOverwrite : .checkpointAppend }

    public init?(kind: RegionKind) {
        switch kind {
        case .checkpointOverwrite: self = .overwrite
        case .checkpointAppend: self = .append
        case .raw, .snapshot: return nil
        }
    }
}

public struct CheckpointGeometry: Sendable, Equatable {
    public static let blockBytes: UInt64 = 4096
    public static let headerBytes: UInt64 = 4096
    public static let entryBytes: UInt64 = 64
    static let magic: UInt64 = 0x3154_504B_4355_4D50 // "PMUCKPT1" little-endian
    /// Largest K a region may have, planned or read from a header: bounds the index a reader
    /// allocates and scans to 64 MiB.
    public static let maxIndexEntries: UInt32 = 1 << 20
    /// Largest region size a reader computes with (far above any server's; see decode).
    public static let maxRegionBytes: UInt64 = 1 << 62

    public var mode: CheckpointMode
    /// Index entries K: the most checkpoints that can exist at once.
    public var indexEntries: UInt32
    /// Append mode: keep (at least) the newest N checkpoints, reusing older ones' space as a ring.
    /// 0 means keep every checkpoint and refuse new ones when the region is full.
    public var keepNewest: UInt32
    public var indexOffset: UInt64
    public var dataOffset: UInt64
    public var dataBytes: UInt64

    /// Bytes of one overwrite-mode slot (the largest checkpoint an overwrite region holds).
    public var slotBytes: UInt64 { dataBytes / 2 / Self.blockBytes * Self.blockBytes }

    /// The largest payload a single checkpoint may have in this region.
    public var maxPayloadBytes: UInt64 { mode == .overwrite ? slotBytes : dataBytes }

    /// Plans the layout of a region of `regionBytes`.
    public static func plan(mode: CheckpointMode, regionBytes: UInt64, maxCheckpoints: UInt32 = 1024, keepNewest: UInt32 = 0) throws(PMUError) -> CheckpointGeometry {
        let entries: UInt32 = mode == .overwrite ? 2 : maxCheckpoints
        guard entries >= 2, entries <= maxIndexEntries else {
            throw PMUError(.invalidArgument, "max checkpoints must be 2...1048576, got \(entries)")
        }
        if mode == .append, keepNewest > 0, keepNewest >= entries {
            // Writing checkpoint n must not touch the newest N, so N + 1 must fit in the index.
            // (Compared without computing N + 1: N may be UInt32.max.)
            throw PMUError(.invalidArgument, "keep-newest \(keepNewest) needs at least \(UInt64(keepNewest) + 1) index entries (max checkpoints); got \(entries)")
        }
        let indexBytes = roundUp(UInt64(entries) * entryBytes, blockBytes)
        let dataOffset = headerBytes + indexBytes
        guard regionBytes > dataOffset + 2 * blockBytes else {
            throw PMUError(.invalidSize, "a \(mode) checkpoint region with \(entries) entries needs more than \(dataOffset + 2 * blockBytes) bytes; got \(regionBytes)")
        }
        let dataBytes = (regionBytes - dataOffset) / blockBytes * blockBytes
        return CheckpointGeometry(
            mode: mode, indexEntries: entries, keepNewest: mode == .overwrite ? 1 : keepNewest,
            indexOffset: headerBytes, dataOffset: dataOffset, dataBytes: dataBytes)
    }

    public func entryOffset(sequence: UInt64) -> UInt64 {
        indexOffset + (sequence % UInt64(indexEntries)) * Self.entryBytes
    }

    public var indexBytes: UInt64 { UInt64(indexEntries) * Self.entryBytes }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic, endianness: .little)
        buffer.writeInteger(UInt16(1), endianness: .little) // format version
        buffer.writeInteger(mode.rawValue)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(indexEntries, endianness: .little)
        buffer.writeInteger(keepNewest, endianness: .little)
        buffer.writeInteger(UInt32(0), endianness: .little)
        buffer.writeInteger(indexOffset, endianness: .little)
        buffer.writeInteger(dataOffset, endianness: .little)
        buffer.writeInteger(dataBytes, endianness: .little)
        let crc = CRC32C.checksum(buffer.readableBytesView)
        buffer.writeInteger(crc, endianness: .little)
        return buffer
    }

    /// nil when the bytes are not a header at all (never formatted, or torn while formatting: the
    /// CRC32C or the magic does not match). A header whose checksum matches but whose fields do not
    /// describe a layout that fits the region is damage (or crafted): DAMAGED naming the field, so no
    /// reader ever computes with it. `region` names the region in that message.
    public static func decode(_ bytes: ByteBuffer, regionBytes: UInt64, region: String = "the region") throws(PMUError) -> CheckpointGeometry? {
        var buffer = bytes
        guard buffer.readableBytes >= 52,
            CRC32C.checksum(buffer.readableBytesView.prefix(48)) == buffer.getInteger(at: buffer.readerIndex + 48, endianness: .little, as: UInt32.self),
            buffer.readInteger(endianness: .little, as: UInt64.self) == magic
        else { return nil }
        // The size comes from the server: bounding it keeps every offset and length below 2^62, so
        // no sum of two of them overflows and converting a payload length to Int cannot trap.
        guard regionBytes <= maxRegionBytes else {
            throw PMUError(.protocolViolation, "\(region) is reported as \(regionBytes) bytes, more than the \(maxRegionBytes) bytes (2^62) a checkpoint region may have")
        }
        let version = buffer.readInteger(endianness: .little, as: UInt16.self)!
        let modeByte = buffer.readInteger(as: UInt8.self)!
        _ = buffer.readInteger(as: UInt8.self)
        let entries = buffer.readInteger(endianness: .little, as: UInt32.self)!
        let keep = buffer.readInteger(endianness: .little, as: UInt32.self)!
        _ = buffer.readInteger(endianness: .little, as: UInt32.self)
        let indexOffset = buffer.readInteger(endianness: .little, as: UInt64.self)!
        let dataOffset = buffer.readInteger(endianness: .little, as: UInt64.self)!
        let dataBytes = buffer.readInteger(endianness: .little, as: UInt64.self)!
        func damaged(_ what: String) -> PMUError {
            PMUError(.damaged, "checkpoint header of \(region): \(what); its checksum matches, so it was written like this (damage outside the checkpoint protocol, or crafted bytes). Read what is left with pmuctl read, then recreate the region")
        }
        guard version == 1 else { throw damaged("format version \(version) is not 1") }
        guard let mode = CheckpointMode(rawValue: modeByte) else { throw damaged("mode \(modeByte) is neither 1 (overwrite) nor 2 (append)") }
        // Every check is phrased so that nothing can overflow: each sum is formed only once its
        // parts are known to fit below regionBytes.
        guard entries >= 2, entries <= maxIndexEntries else {
            throw damaged("\(entries) index entries is outside 2...\(maxIndexEntries)")
        }
        switch mode {
        case .overwrite:
            guard entries == 2, keep == 1 else { throw damaged("an overwrite region has 2 index entries and keeps the newest 1, not \(entries) and \(keep)") }
        case .append:
            guard keep < entries else { throw damaged("keep-newest \(keep) needs more than the \(entries) index entries it has") }
        }
        let indexBytes = UInt64(entries) * entryBytes
        guard indexOffset >= headerBytes, indexOffset <= regionBytes, indexBytes <= regionBytes - indexOffset else {
            throw damaged("index offset \(indexOffset) is outside the region of \(regionBytes) bytes (its \(entries) entries of \(entryBytes) bytes must lie after the \(headerBytes)-byte header)")
        }
        guard dataOffset >= indexOffset + indexBytes, dataOffset % blockBytes == 0, dataOffset <= regionBytes else {
            throw damaged("data offset \(dataOffset) is not a multiple of \(blockBytes) between the index's end (\(indexOffset + indexBytes)) and the region's end (\(regionBytes))")
        }
        guard dataBytes >= 2 * blockBytes, dataBytes % blockBytes == 0, dataBytes <= regionBytes - dataOffset else {
            throw damaged("data area of \(dataBytes) bytes at offset \(dataOffset) is not a multiple of \(blockBytes) of at least \(2 * blockBytes) bytes inside the region of \(regionBytes) bytes")
        }
        return CheckpointGeometry(mode: mode, indexEntries: entries, keepNewest: keep, indexOffset: indexOffset, dataOffset: dataOffset, dataBytes: dataBytes)
    }
}

/// A checkpoint's record header, kept in the index.
///
///     u32 magic "PMCR" | u16 version | u16 flags | u64 sequence | u64 epoch | u64 data_offset
///     u64 payload_length | u64 timestamp_ns | u32 payload_crc32c | u32 header_crc32c  (56 bytes)
public struct CheckpointRecord: Sendable, Equatable {
    static let magic: UInt32 = 0x5243_4D50 // "PMCR"
    public static let encodedBytes = 56
    /// The largest sequence a writer hands out: it must be able to name the one after it. A record
    /// read with a higher one is still readable; writing after it fails with REGION_FULL.
    public static let maxSequence: UInt64 = UInt64.max - 1

    public var sequence: UInt64
    public var epoch: UInt64
    /// Relative to the data area.
    public var dataOffset: UInt64
    public var payloadLength: UInt64
    public var timestampNanoseconds: UInt64
    public var payloadCRC: UInt32

    public init(sequence: UInt64, epoch: UInt64, dataOffset: UInt64, payloadLength: UInt64, timestampNanoseconds: UInt64, payloadCRC: UInt32) {
        self.sequence = sequence
        self.epoch = epoch
        self.dataOffset = dataOffset
        self.payloadLength = payloadLength
        self.timestampNanoseconds = timestampNanoseconds
        self.payloadCRC = payloadCRC
    }

    /// Bytes of the data area the record occupies (payloads start on block boundaries).
    public var span: Range<UInt64> { dataOffset..<(dataOffset + roundUp(payloadLength, CheckpointGeometry.blockBytes)) }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic, endianness: .little)
        buffer.writeInteger(UInt16(1), endianness: .little)
        buffer.writeInteger(UInt16(0), endianness: .little)
        buffer.writeInteger(sequence, endianness: .little)
        buffer.writeInteger(epoch, endianness: .little)
        buffer.writeInteger(dataOffset, endianness: .little)
        buffer.writeInteger(payloadLength, endianness: .little)
        buffer.writeInteger(timestampNanoseconds, endianness: .little)
        buffer.writeInteger(payloadCRC, endianness: .little)
        buffer.writeInteger(CRC32C.checksum(buffer.readableBytesView), endianness: .little)
        return buffer
    }

    /// nil for an empty, torn or foreign entry. Bounds are checked against the geometry, and the
    /// entry must sit in the index slot its sequence maps to.
    public static func decode(_ bytes: ByteBuffer, slot: UInt64, geometry: CheckpointGeometry) -> CheckpointRecord? {
        var buffer = bytes
        guard buffer.readableBytes >= encodedBytes,
            CRC32C.checksum(buffer.readableBytesView.prefix(52)) == buffer.getInteger(at: buffer.readerIndex + 52, endianness: .little, as: UInt32.self),
            buffer.readInteger(endianness: .little, as: UInt32.self) == magic,
            buffer.readInteger(endianness: .little, as: UInt16.self) == 1
        else { return nil }
        _ = buffer.readInteger(endianness: .little, as: UInt16.self)
        let record = CheckpointRecord(
            sequence: buffer.readInteger(endianness: .little, as: UInt64.self)!,
            epoch: buffer.readInteger(endianness: .little, as: UInt64.self)!,
            dataOffset: buffer.readInteger(endianness: .little, as: UInt64.self)!,
            payloadLength: buffer.readInteger(endianness: .little, as: UInt64.self)!,
            timestampNanoseconds: buffer.readInteger(endianness: .little, as: UInt64.self)!,
            payloadCRC: buffer.readInteger(endianness: .little, as: UInt32.self)!)
        // Bounds are checked without forming a sum that could overflow; with a valid geometry
        // (data area a multiple of 4 KiB) an aligned payload's span then ends inside the data area.
        guard record.sequence > 0, record.sequence % UInt64(geometry.indexEntries) == slot,
            record.payloadLength <= geometry.maxPayloadBytes,
            record.dataOffset % CheckpointGeometry.blockBytes == 0,
            record.dataOffset <= geometry.dataBytes, record.payloadLength <= geometry.dataBytes - record.dataOffset
        else { return nil }
        return record
    }
}

/// Callers pass values bounded by a region's size (at most Limits.maxRegionBytes), far from overflow.
@inlinable
func roundUp(_ value: UInt64, _ multiple: UInt64) -> UInt64 {
    (value + multiple - 1) / multiple * multiple
}
