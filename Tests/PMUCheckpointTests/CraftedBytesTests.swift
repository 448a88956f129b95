import NIOCore
import PMUCore
import PMUTesting
import Testing

@testable import PMUCheckpoint

/// Checksummed but hostile bytes in a checkpoint region (issue 10, defect 6): every reader and the
/// writer must answer with a clear error, never trap, and never allocate from an unchecked field.
@Suite struct CraftedBytesTests {
    static let regionBytes = 1 << 20

    /// A region holding exactly these bytes at these offsets (the rest zero).
    func region(_ parts: [(UInt64, ByteBuffer)], size: Int = regionBytes) async throws -> SimulatedRegion {
        let region = SimulatedRegion(sizeBytes: size)
        for (offset, bytes) in parts { try await region.write(at: offset, bytes) }
        return region
    }

    func header(mode: CheckpointMode = .append, entries: UInt32 = 16, keep: UInt32 = 0, indexOffset: UInt64 = 4096, dataOffset: UInt64 = 8192, dataBytes: UInt64 = 1 << 19) -> ByteBuffer {
        CheckpointGeometry(mode: mode, indexEntries: entries, keepNewest: keep, indexOffset: indexOffset, dataOffset: dataOffset, dataBytes: dataBytes).encode()
    }

    func code(_ body: () async throws -> Void) async -> (PMUErrorCode?, String) {
        do {
            try await body()
            return (nil, "")
        } catch let error as PMUError {
            return (error.code, error.message)
        } catch {
            return (.internalError, "\(error)")
        }
    }

    /// Every entry point that reads the header: reader, verifier, writer (with a format fallback).
    func everyEntryPoint(_ io: SimulatedRegion) async -> [(PMUErrorCode?, String)] {
        let fallback = try! CheckpointGeometry.plan(mode: .append, regionBytes: io.sizeBytes)
        return [
            await code { _ = try await CheckpointReader.open(io: io) },
            await code { _ = try await CheckpointVerifier.verify(io: io) },
            await code { _ = try await CheckpointWriter.open(io: io, epoch: 1, format: fallback) },
            await code { _ = try await CheckpointWriter.open(io: io, epoch: 1) },
        ]
    }

    @Test func indexOffsetNear2To64IsDamageNamingTheField() async throws {
        let io = try await region([(0, header(indexOffset: .max))])
        for (code, message) in await everyEntryPoint(io) {
            #expect(code == .damaged, "\(message)")
            #expect(message.contains("index offset 18446744073709551615 is outside the region of 1048576 bytes"), "\(message)")
        }
    }

    @Test(arguments: [
        ("index entries 0", CheckpointGeometry(mode: .append, indexEntries: 0, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "index entries"),
        ("index entries 2^32-1", CheckpointGeometry(mode: .append, indexEntries: .max, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "index entries"),
        ("keep 2^32-1", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: .max, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "keep-newest"),
        ("overwrite with 3 entries", CheckpointGeometry(mode: .overwrite, indexEntries: 3, keepNewest: 1, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "overwrite"),
        ("index offset inside the header", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 0, dataOffset: 8192, dataBytes: 8192), "index offset 0"),
        ("index past the end", CheckpointGeometry(mode: .append, indexEntries: 1 << 20, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "index offset 4096"),
        ("data offset 2^64-1", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 4096, dataOffset: .max, dataBytes: 8192), "data offset 18446744073709551615"),
        ("data offset overlapping the index", CheckpointGeometry(mode: .append, indexEntries: 128, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 8192), "data offset 8192"),
        ("data offset unaligned", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 4096, dataOffset: 8193, dataBytes: 8192), "data offset 8193"),
        ("data bytes 2^64-1", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: .max), "data area of 18446744073709551615 bytes"),
        ("data bytes past the end", CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 1 << 20), "data area of 1048576 bytes"),
        ("data bytes 0", CheckpointGeometry(mode: .overwrite, indexEntries: 2, keepNewest: 1, indexOffset: 4096, dataOffset: 8192, dataBytes: 0), "data area of 0 bytes"),
    ])
    func craftedHeadersAreRefusedByEveryEntryPoint(_ name: String, _ geometry: CheckpointGeometry, _ expected: String) async throws {
        let io = try await region([(0, geometry.encode())])
        for (code, message) in await everyEntryPoint(io) {
            #expect(code == .damaged, "\(name): \(message)")
            #expect(message.contains(expected) && message.contains("checkpoint header of the region"), "\(name): \(message)")
        }
    }

    @Test func versionAndModeWithAValidChecksumAreNamed() async throws {
        var bytes = header()
        bytes.setInteger(UInt16(2), at: 8, endianness: .little)
        bytes.setInteger(CRC32C.checksum(bytes.readableBytesView.prefix(48)), at: 48, endianness: .little)
        var (code, message) = await code { _ = try await CheckpointReader.open(io: try await region([(0, bytes)])) }
        #expect(code == .damaged && message.contains("format version 2"), "\(message)")
        bytes = header()
        bytes.setInteger(UInt8(7), at: 10)
        bytes.setInteger(CRC32C.checksum(bytes.readableBytesView.prefix(48)), at: 48, endianness: .little)
        (code, message) = await self.code { _ = try await CheckpointReader.open(io: try await region([(0, bytes)])) }
        #expect(code == .damaged && message.contains("mode 7"), "\(message)")
    }

    /// A region whose newest record has this sequence, with an intact payload.
    func regionWithNewest(_ sequence: UInt64, keep: UInt32 = 0) async throws -> (SimulatedRegion, CheckpointGeometry) {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: UInt64(Self.regionBytes), maxCheckpoints: 16, keepNewest: keep)
        let payload = ByteBuffer(bytes: Array("state".utf8))
        let record = CheckpointRecord(sequence: sequence, epoch: 1, dataOffset: 0, payloadLength: 5, timestampNanoseconds: 1, payloadCRC: CRC32C.checksum(payload.readableBytesView))
        let io = try await region([(0, geometry.encode()), (geometry.entryOffset(sequence: sequence), record.encode()), (geometry.dataOffset, payload)])
        return (io, geometry)
    }

    @Test(arguments: [UInt64.max, UInt64.max - 1])
    func sequenceExhaustionIsAClearErrorNotATrap(_ newest: UInt64) async throws {
        let (io, _) = try await regionWithNewest(newest)
        // Readable as it is...
        let latest = try await CheckpointReader.open(io: io).latest()
        #expect(latest?.sequence == newest)
        // ...but nothing can follow it.
        let writer = try await CheckpointWriter.open(io: io, epoch: 2)
        let (code, message) = await code { _ = try await writer.checkpoint(ByteBuffer(bytes: [1, 2, 3])) }
        #expect(code == .regionFull, "\(message)")
        #expect(message.contains("used up its sequence numbers") && message.contains("\(CheckpointRecord.maxSequence)"), "\(message)")
        // The refusal wrote nothing: the old checkpoint is still there.
        #expect(try await CheckpointReader.open(io: io).latest()?.sequence == newest)
    }

    @Test func theLastSequenceCanBeWrittenOnce() async throws {
        let (io, _) = try await regionWithNewest(CheckpointRecord.maxSequence - 1)
        let writer = try await CheckpointWriter.open(io: io, epoch: 2)
        #expect(try await writer.checkpoint(ByteBuffer(bytes: [7])) == CheckpointRecord.maxSequence)
        let (code, _) = await code { _ = try await writer.checkpoint(ByteBuffer(bytes: [8])) }
        #expect(code == .regionFull)
    }

    @Test func aRingNear2To64PlacesWithoutOverflow() async throws {
        // keep-newest 4: the record near 2^64 is among the newest 4, so displacing it is refused
        // (sequence + keep would overflow: it counts as kept), with REGION_FULL, not a trap.
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 20, maxCheckpoints: 8, keepNewest: 4)
        let old = CheckpointRecord(sequence: .max - 2, epoch: 1, dataOffset: 0, payloadLength: geometry.dataBytes, timestampNanoseconds: 0, payloadCRC: 0)
        let error = #expect(throws: PMUError.self) {
            _ = try PlacementRules.place(sequence: .max - 1, payloadLength: 4096, geometry: geometry, live: [old], head: old.span.upperBound, newestCommitted: .max - 2)
        }
        #expect(error?.code == .regionFull)
        // And through the writer, over a region holding such a ring.
        let (io, _) = try await regionWithNewest(.max - 3, keep: 4)
        let writer = try await CheckpointWriter.open(io: io, epoch: 2)
        #expect(try await writer.checkpoint(ByteBuffer(bytes: [1])) == .max - 2)
        #expect(try await writer.checkpoint(ByteBuffer(bytes: [2])) == .max - 1)
        let (code, _) = await code { _ = try await writer.checkpoint(ByteBuffer(bytes: [3])) }
        #expect(code == .regionFull)
    }

    @Test func keepNewestUInt32MaxIsAnInvalidArgument() throws {
        let error = #expect(throws: PMUError.self) {
            _ = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 24, maxCheckpoints: 1024, keepNewest: .max)
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("keep-newest 4294967295 needs at least 4294967296 index entries") == true, "\(error?.message ?? "")")
    }

    @Test func craftedRecordsAreUnreadableNotTrusted() async throws {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: UInt64(Self.regionBytes), maxCheckpoints: 16)
        let crafted: [CheckpointRecord] = [
            CheckpointRecord(sequence: 1, epoch: 1, dataOffset: .max, payloadLength: 1, timestampNanoseconds: 0, payloadCRC: 0),
            CheckpointRecord(sequence: 2, epoch: 1, dataOffset: 4096, payloadLength: .max, timestampNanoseconds: 0, payloadCRC: 0),
            CheckpointRecord(sequence: 3, epoch: 1, dataOffset: geometry.dataBytes - 4096, payloadLength: 8192, timestampNanoseconds: 0, payloadCRC: 0),
            CheckpointRecord(sequence: 4, epoch: 1, dataOffset: 4095, payloadLength: 1, timestampNanoseconds: 0, payloadCRC: 0),
        ]
        let io = try await region([(0, geometry.encode())] + crafted.map { (geometry.entryOffset(sequence: $0.sequence), $0.encode()) })
        let report = try await CheckpointVerifier.verify(io: io)
        #expect(report.items.isEmpty && report.unreadableSlots == [1, 2, 3, 4])
        #expect(try await CheckpointReader.open(io: io).latest() == nil)
    }

    @Test func usedBytesSaturates() {
        let huge = CheckpointRecord(sequence: 1, epoch: 0, dataOffset: 0, payloadLength: 1 << 62, timestampNanoseconds: 0, payloadCRC: 0)
        #expect(CheckpointIndex.usedBytes([huge, huge, huge]) == 3 << 62)
        #expect(CheckpointIndex.usedBytes([huge, huge, huge, huge, huge]) == .max)
    }
}

/// A region whose (server-reported) size is absurd; reads return a valid-looking header at 0.
struct AbsurdlyLargeRegion: RegionIO {
    let header: ByteBuffer
    var sizeBytes: UInt64 { .max }
    func read(at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        var bytes = ByteBuffer(repeating: 0, count: length)
        if offset == 0 { bytes.setBuffer(header, at: 0) }
        return bytes
    }
    func write(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {}
    func persist(at offset: UInt64, length: UInt64) async throws(PMUError) {}
}

extension CraftedBytesTests {
    @Test func aRegionSizeBeyondTheProtocolIsRefusedBeforeAnyArithmetic() async {
        let io = AbsurdlyLargeRegion(header: CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: 4096, dataOffset: 8192, dataBytes: 1 << 63).encode())
        let (code, message) = await code { _ = try await CheckpointReader.open(io: io) }
        #expect(code == .protocolViolation && message.contains("more than the 4611686018427387904 bytes (2^62)"), "\(message)")
    }
}

/// Counts index reads, to show how many rounds a reader made without timing it.
final class CountingRegion: RegionIO, @unchecked Sendable {
    let inner: SimulatedRegion
    let indexOffset: UInt64
    private(set) var indexReads = 0
    init(_ inner: SimulatedRegion, indexOffset: UInt64) {
        self.inner = inner
        self.indexOffset = indexOffset
    }
    var sizeBytes: UInt64 { inner.sizeBytes }
    var regionDescription: String { "region \"counted\"" }
    func read(at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        if offset == indexOffset { indexReads += 1 }
        return try await inner.read(at: offset, length: length)
    }
    func write(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) { try await inner.write(at: offset, bytes) }
    func persist(at offset: UInt64, length: UInt64) async throws(PMUError) { try await inner.persist(at: offset, length: length) }
}

/// Issue 10, defect 10: a damaged only record, no writer: say what is damaged, at once.
@Suite struct DamagedRecordTests {
    func damagedRegion(records sequences: [UInt64], damage: Set<UInt64>) async throws -> (CountingRegion, CheckpointGeometry) {
        let geometry = try CheckpointGeometry.plan(mode: .append, regionBytes: 1 << 20, maxCheckpoints: 16)
        let inner = SimulatedRegion(sizeBytes: 1 << 20)
        try await inner.write(at: 0, geometry.encode())
        for (i, sequence) in sequences.enumerated() {
            let payload = ByteBuffer(bytes: Array("payload \(sequence)".utf8))
            let record = CheckpointRecord(sequence: sequence, epoch: 1, dataOffset: UInt64(i) * 4096, payloadLength: UInt64(payload.readableBytes), timestampNanoseconds: 1, payloadCRC: CRC32C.checksum(payload.readableBytesView))
            try await inner.write(at: geometry.entryOffset(sequence: sequence), record.encode())
            try await inner.write(at: geometry.dataOffset + record.dataOffset, damage.contains(sequence) ? ByteBuffer(bytes: Array("PAYLOAD \(sequence)".utf8)) : payload)
        }
        return (CountingRegion(inner, indexOffset: geometry.indexOffset), geometry)
    }

    @Test func theOnlyRecordDamagedIsNamedWithoutRetrying() async throws {
        let (io, _) = try await damagedRegion(records: [1], damage: [1])
        let reader = try await CheckpointReader.open(io: io)
        let error = await #expect(throws: PMUError.self) { _ = try await reader.latest() }
        #expect(error?.code == .damaged)
        let message = error?.message ?? ""
        #expect(message.contains("region \"counted\"") && message.contains("checkpoint 1 (epoch 1, 9 bytes at data offset 0)"), "\(message)")
        #expect(message.contains("its record says 0x") && message.contains("no writer replaced them"), "\(message)")
        #expect(!message.contains("too slow") && !message.contains("faster"), "\(message)")
        // One index read to find the record, one to see it did not change: no retry rounds.
        #expect(io.indexReads == 2)
        // checkpoint(sequence:) names the checksums too.
        let bySequence = await #expect(throws: PMUError.self) { _ = try await reader.checkpoint(sequence: 1) }
        #expect(bySequence?.code == .damaged && bySequence?.message.contains("its payload's CRC32C is 0x") == true)
    }

    @Test func aDamagedNewestFallsBackToTheIntactOlderOne() async throws {
        let (io, _) = try await damagedRegion(records: [1, 2], damage: [2])
        let latest = try await CheckpointReader.open(io: io).latest()
        #expect(latest?.sequence == 1)
        #expect(String(buffer: latest!.payload) == "payload 1")
    }

    @Test func everyRecordDamagedListsThemAll() async throws {
        let (io, _) = try await damagedRegion(records: [1, 2, 3], damage: [1, 2, 3])
        let error = await #expect(throws: PMUError.self) { _ = try await CheckpointReader.open(io: io).latest() }
        for sequence in 1...3 { #expect(error?.message.contains("checkpoint \(sequence) (") == true) }
    }
}
