import NIOCore
import PMUCore

/// Reading a checkpoint region's header and index, shared by the writer, the reader and verify.
public enum CheckpointIndex {
    /// The region's geometry, or NOT_CHECKPOINT_REGION if it was never formatted.
    public static func geometry(of io: some RegionIO) async throws(PMUError) -> CheckpointGeometry? {
        guard io.sizeBytes >= CheckpointGeometry.headerBytes else { return nil }
        let header = try await io.read(at: 0, length: 64)
        return try CheckpointGeometry.decode(header, regionBytes: io.sizeBytes, region: io.regionDescription)
    }

    public enum Entry: Sendable, Equatable {
        case empty
        case record(CheckpointRecord)
        /// Non-zero bytes that are not a valid record: a header torn by power loss mid-write.
        case unreadable
    }

    public static func entries(of io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> [Entry] {
        // indexBytes is at most maxIndexEntries x 64 = 64 MiB (checked when the header was decoded).
        let bytes = try await io.read(at: geometry.indexOffset, length: Int(geometry.indexBytes))
        guard bytes.readableBytes == Int(geometry.indexBytes) else {
            throw PMUError(.protocolViolation, "reading the index of \(io.regionDescription) returned \(bytes.readableBytes) bytes for \(geometry.indexBytes)")
        }
        var entries: [Entry] = []
        entries.reserveCapacity(Int(geometry.indexEntries))
        for slot in 0..<UInt64(geometry.indexEntries) {
            let entry = bytes.getSlice(at: bytes.readerIndex + Int(slot * CheckpointGeometry.entryBytes), length: Int(CheckpointGeometry.entryBytes))!
            // Most slots are empty: test that first, eight bytes at a time.
            let isZero = (0..<8).allSatisfy { entry.getInteger(at: entry.readerIndex + $0 * 8, as: UInt64.self) == 0 }
            if isZero {
                entries.append(.empty)
            } else if let record = CheckpointRecord.decode(entry, slot: slot, geometry: geometry) {
                entries.append(.record(record))
            } else {
                entries.append(.unreadable)
            }
        }
        return entries
    }

    /// Records with valid headers, oldest first.
    public static func records(of io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> [CheckpointRecord] {
        try await entries(of: io, geometry: geometry).compactMap { entry in
            if case .record(let record) = entry { return record }
            return nil
        }.sorted { $0.sequence < $1.sequence }
    }

    /// Data-area bytes the records' spans cover, summed (overlapping spans, which only a crafted
    /// index has, count twice; the sum saturates rather than overflows).
    public static func usedBytes(_ records: [CheckpointRecord]) -> UInt64 {
        records.reduce(UInt64(0)) { total, record in
            let (sum, overflow) = total.addingReportingOverflow(record.span.upperBound - record.span.lowerBound)
            return overflow ? .max : sum
        }
    }

    /// The payload if its CRC32C matches the record, nil if it does not (torn, overwritten, damaged).
    public static func payload(of record: CheckpointRecord, io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> ByteBuffer? {
        let read = try await readPayload(of: record, io: io, geometry: geometry)
        return read.crc == record.payloadCRC ? read.bytes : nil
    }

    /// The payload's bytes and the CRC32C they actually have, whether or not it matches the record.
    /// The record was decoded against `geometry`, so the range lies inside the data area.
    public static func readPayload(of record: CheckpointRecord, io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> (bytes: ByteBuffer, crc: UInt32) {
        let payload = try await io.read(at: geometry.dataOffset + record.dataOffset, length: Int(record.payloadLength))
        return (payload, payload.withUnsafeReadableBytes { CRC32C.checksum($0) })
    }

    /// What a reader says about a record whose payload does not match its CRC32C.
    public static func mismatch(_ record: CheckpointRecord, actualCRC: UInt32) -> String {
        "checkpoint \(record.sequence) (epoch \(record.epoch), \(record.payloadLength) bytes at data offset \(record.dataOffset)): its payload's CRC32C is \(hex(actualCRC)), its record says \(hex(record.payloadCRC))"
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
    }
}
