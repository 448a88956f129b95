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

    /// The newest complete checkpoint, or nil if there is none.
    public func latest() async throws(PMUError) -> Checkpoint? {
        // A writer reusing space can overwrite a payload between our index read and payload read;
        // a few rounds settle it (bounded: each round is one index read).
        for _ in 0..<8 {
            let records = try await records()
            var sawTorn = false
            for record in records.reversed() {
                if let payload = try await CheckpointIndex.payload(of: record, io: io, geometry: geometry) {
                    if !sawTorn { return Self.checkpoint(record, payload) }
                    // An older one is complete but a newer was torn: re-read the index in case the
                    // newer was rewritten under us, unless the index did not change.
                    let again = try await self.records()
                    if again == records { return Self.checkpoint(record, payload) }
                    break
                }
                sawTorn = true
            }
            if records.isEmpty { return nil }
            if !sawTorn { return nil }
        }
        throw PMUError(.damaged, "no complete checkpoint could be read after repeated attempts (writer overwriting faster than we read?)")
    }

    /// Every complete checkpoint, oldest first; records whose payload fails its checksum are left out.
    public func all() async throws(PMUError) -> [Checkpoint] {
        var result: [Checkpoint] = []
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
        guard let payload = try await CheckpointIndex.payload(of: record, io: io, geometry: geometry) else {
            throw PMUError(.damaged, "checkpoint \(sequence) is damaged: its payload does not match its CRC32C")
        }
        return Self.checkpoint(record, payload)
    }

    /// Polls until a complete checkpoint newer than `sequence` exists, or the time is up (nil).
    public func waitForNewer(than sequence: UInt64, timeout: Duration, pollInterval: Duration = .milliseconds(20)) async throws(PMUError) -> Checkpoint? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            if let newest = try await latest(), newest.sequence > sequence { return newest }
            if clock.now >= deadline { return nil }
            do { try await Task.sleep(for: pollInterval) } catch { return nil }
        }
    }

    static func checkpoint(_ record: CheckpointRecord, _ payload: ByteBuffer) -> Checkpoint {
        Checkpoint(sequence: record.sequence, epoch: record.epoch, timestampNanoseconds: record.timestampNanoseconds, payload: payload)
    }
}
