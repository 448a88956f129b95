import NIOCore
import PMUCore

/// A checkpoint as a backup reads it back.
public struct Checkpoint: Sendable, Equatable {
    public var sequence: UInt64
    public var epoch: UInt64
    public var timestampNanoseconds: UInt64
    public var payload: ByteBuffer
}

/// The backup's side: reads complete checkpoints and never disturbs the writer (read-only).
///
/// Every checkpoint returned has a valid header and a payload whose CRC32C matches it. A payload
/// that fails its check (torn by a crash, or overwritten by the writer while being read) is skipped;
/// `latest()` re-reads the index and tries again, so it returns the newest complete checkpoint.
public struct CheckpointReader: Sendable {
    public let geometry: CheckpointGeometry
    private let io: any RegionIO

    public static func open(io: some RegionIO) async throws(PMUError) -> CheckpointReader {
        guard let geometry = try await CheckpointIndex.geometry(of: io) else {
            throw PMUError(.notCheckpointRegion, "region has no checkpoint header (never written as a checkpoint region)")
        }
        return CheckpointReader(geometry: geometry, io: io)
    }

    private init(geometry: CheckpointGeometry, io: any RegionIO) {
        self.geometry = geometry
        self.io = io
    }

    public func records() async throws(PMUError) -> [CheckpointRecord] {
        try await CheckpointIndex.records(of: io, geometry: geometry)
    }

    /// A header the reader saw may be visible but not yet durable (its writer died between WRITE
    /// and PERSIST). Persisting it before handing the checkpoint out means a backup never acts on
    /// a checkpoint a power loss could take back. Read rights suffice; a clean page costs nothing.
    private func makeDurable(_ record: CheckpointRecord) async throws(PMUError) {
        try await io.persist(at: geometry.entryOffset(sequence: record.sequence), length: CheckpointGeometry.entryBytes)
    }

    /// The newest complete checkpoint, or nil if there is none.
    public func latest() async throws(PMUError) -> Checkpoint? {
        try await newest(after: 0)
    }

    /// Rounds `latest()` makes while the index keeps changing under it (9.8 of DATA_FILES.md).
    public static let maxRounds = 8

    /// The newest complete checkpoint with a sequence above `floor`, or nil.
    private func newest(after floor: UInt64) async throws(PMUError) -> Checkpoint? {
        // A writer reusing space can overwrite a payload between our index read and payload read,
        // but it always removes the record from the index first. So a payload that fails its check
        // while the index reads the same before and after is damaged, not overwritten: say so at
        // once. Only an index that changed is a reason to go round again.
        var records = try await records().filter { $0.sequence > floor }
        for round in 0..<Self.maxRounds {
            if records.isEmpty { return nil }
            var failed: [(record: CheckpointRecord, crc: UInt32)] = []
            for record in records.reversed() {
                let read = try await CheckpointIndex.readPayload(of: record, io: io, geometry: geometry)
                guard read.crc == record.payloadCRC else {
                    failed.append((record, read.crc))
                    continue
                }
                // An older one is complete but a newer one failed: trust it only if the index did
                // not change meanwhile (else the newer one was being rewritten: go round again).
                if !failed.isEmpty, try await self.records().filter({ $0.sequence > floor }) != records { break }
                try await makeDurable(record)
                return Self.checkpoint(record, read.bytes)
            }
            let now = try await self.records().filter { $0.sequence > floor }
            if now == records, failed.count == records.count {
                let list = failed.map { CheckpointIndex.mismatch($0.record, actualCRC: $0.crc) }.joined(separator: "; ")
                throw PMUError(
                    .damaged,
                    "\(io.regionDescription) holds no complete checkpoint\(floor > 0 ? " after \(floor)" : ""): every record's payload fails its CRC32C while the index stays unchanged, so no writer replaced them; they are damaged: \(list) (pmuctl checkpoint verify lists them)")
            }
            records = now
            if round >= 2 { try? await Task.sleep(for: .milliseconds(min(100, 1 << round))) }
        }
        throw PMUError(.damaged, "\(io.regionDescription): the index changed in each of \(Self.maxRounds) rounds before a complete checkpoint could be read; the writer replaces checkpoints faster than this reader reads them (read over a faster link, keep more checkpoints, or checkpoint less often)")
    }

    /// Every complete checkpoint, oldest first; records whose payload fails its checksum are left out.
    public func all() async throws(PMUError) -> [Checkpoint] {
        var result: [Checkpoint] = []
        try await io.persist(at: geometry.indexOffset, length: geometry.indexBytes) // see makeDurable
        for record in try await records() {
            if let payload = try await CheckpointIndex.payload(of: record, io: io, geometry: geometry) {
                result.append(Self.checkpoint(record, payload))
            }
        }
        return result
    }

    /// Complete checkpoints with sequence in `range`, oldest first.
    public func checkpoints(in range: ClosedRange<UInt64>) async throws(PMUError) -> [Checkpoint] {
        var result: [Checkpoint] = []
        try await io.persist(at: geometry.indexOffset, length: geometry.indexBytes) // see makeDurable
        for record in try await records() where range.contains(record.sequence) {
            if let payload = try await CheckpointIndex.payload(of: record, io: io, geometry: geometry) {
                result.append(Self.checkpoint(record, payload))
            }
        }
        return result
    }

    public func checkpoint(sequence: UInt64) async throws(PMUError) -> Checkpoint {
        let records = try await records()
        guard let record = records.first(where: { $0.sequence == sequence }) else {
            let known = records.isEmpty ? "none" : "\(records.first!.sequence)...\(records.last!.sequence)"
            throw PMUError(.unknownSequence, "no checkpoint with sequence \(sequence) in this region (present: \(known))")
        }
        let read = try await CheckpointIndex.readPayload(of: record, io: io, geometry: geometry)
        guard read.crc == record.payloadCRC else {
            // Replaced by the writer while we read it, or really damaged: the index tells which.
            if try await self.records().first(where: { $0.sequence == sequence }) != record {
                throw PMUError(.unknownSequence, "checkpoint \(sequence) was replaced by a newer one while it was being read (retention reused its space)")
            }
            throw PMUError(.damaged, "\(io.regionDescription): \(CheckpointIndex.mismatch(record, actualCRC: read.crc)); the checkpoint is damaged")
        }
        try await makeDurable(record)
        return Self.checkpoint(record, read.bytes)
    }

    /// Polls until a complete checkpoint newer than `sequence` exists, or the time is up (nil).
    public func waitForNewer(than sequence: UInt64, timeout: Duration, pollInterval: Duration = .milliseconds(20)) async throws(PMUError) -> Checkpoint? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            // Reads only the index until something newer exists; the payload is fetched once.
            if let newest = try await newest(after: sequence) { return newest }
            if clock.now >= deadline { return nil }
            do { try await Task.sleep(for: pollInterval) } catch { return nil }
        }
    }

    static func checkpoint(_ record: CheckpointRecord, _ payload: ByteBuffer) -> Checkpoint {
        Checkpoint(sequence: record.sequence, epoch: record.epoch, timestampNanoseconds: record.timestampNanoseconds, payload: payload)
    }
}
