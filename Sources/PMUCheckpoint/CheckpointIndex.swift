import NIOCore
import PMUCore

/// Reading a checkpoint region's header and index, shared by the writer, the reader and verify.
public enum CheckpointIndex {
    /// The region's geometry, or NOT_CHECKPOINT_REGION if it was never formatted.
    public static func geometry(of io: some RegionIO) async throws(PMUError) -> CheckpointGeometry? {
        guard io.sizeBytes >= CheckpointGeometry.headerBytes else { return nil }
        let header = try await io.read(at: 0, length: 64)
        return CheckpointGeometry.decode(header, regionBytes: io.sizeBytes)
    }

    public enum Entry: Sendable, Equatable {
        case empty
        case record(CheckpointRecord)
        /// Non-zero bytes that are not a valid record: a header torn by power loss mid-write.
        case unreadable
    }

    public static func entries(of io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> [Entry] {
        let bytes = try await io.read(at: geometry.indexOffset, length: Int(geometry.indexBytes))
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

    /// The payload if its CRC32C matches the record, nil if it does not (torn, overwritten, damaged).
    public static func payload(of record: CheckpointRecord, io: some RegionIO, geometry: CheckpointGeometry) async throws(PMUError) -> ByteBuffer? {
        let payload = try await io.read(at: geometry.dataOffset + record.dataOffset, length: Int(record.payloadLength))
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        return crc == record.payloadCRC ? payload : nil
    }
}
