import NIOCore
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// The primary's side: appends or replaces checkpoints in one region.
///
/// `checkpoint(_:)` returns the new sequence number once the checkpoint is committed (durable).
/// Several calls may be in flight: payloads are written concurrently, commits happen strictly in
/// sequence order, so a crash never leaves checkpoint n committed without n - 1.
///
/// Each checkpoint: (1) if it displaces older records, invalidate their index entries and persist
/// that; (2) write the payload and persist it; (3) write the record header and persist it. After
/// any failure the writer refuses further calls (its view of the region may be wrong): open a
/// new one, which rescans the index.
public actor CheckpointWriter {
    public nonisolated let geometry: CheckpointGeometry
    public nonisolated let epoch: UInt64
    private let io: any RegionIO
    private var live: [UInt64: CheckpointRecord]
    private var nextSequence: UInt64
    private var head: UInt64
    private var lastCommit: Task<Void, Never>?
    private var failure: PMUError?
    /// Every checkpoint up to this sequence is committed; those above it up to nextSequence - 1 are
    /// in flight (commits happen in order, and after a failure nothing more commits).
    private var newestCommitted: UInt64
    /// Set by a caller that knows more than this region does (a striped checkpoint is complete only
    /// when every server has its piece): exactly these records are kept, any other may be displaced.
    /// nil: the region's keep-newest rule.
    private var protected: Set<UInt64>?

    /// Opens a region for writing checkpoints. If it was never formatted (a create interrupted
    /// before its header was written, or a region created by hand), `format` formats it.
    public static func open(io: some RegionIO, epoch: UInt64, format: CheckpointGeometry? = nil) async throws(PMUError) -> CheckpointWriter {
        var geometry = try await CheckpointIndex.geometry(of: io)
        if geometry == nil, let format {
            // Format only a region whose header block was never written: a header that is there
            // but fails its checksum is damage, and formatting over it would lose the checkpoints.
            let block = try await io.read(at: 0, length: Int(format.dataOffset))
            guard block.readableBytesView.allSatisfy({ $0 == 0 }) else {
                throw PMUError(.damaged, "the region's checkpoint header is damaged or missing while its index is not empty; not formatting over it. Read what is left with pmuctl read, then recreate the region")
            }
            try await io.write(at: 0, format.encode())
            try await io.persist(at: 0, length: CheckpointGeometry.headerBytes)
            geometry = format
        }
        guard let geometry else {
            throw PMUError(.notCheckpointRegion, "region has no checkpoint header; create it as a checkpoint region (overwrite or append)")
        }
        // A header is visible once its WRITE is answered but committed only once persisted; a
        // primary that died in between leaves a visible, uncommitted one. Persisting the index now
        // makes everything this writer is about to build on durable (payloads were persisted
        // before their headers were written), so a later power loss cannot take it back.
        try await io.persist(at: geometry.indexOffset, length: geometry.indexBytes)
        let records = try await CheckpointIndex.records(of: io, geometry: geometry)
        return CheckpointWriter(io: io, geometry: geometry, epoch: epoch, records: records)
    }

    private init(io: any RegionIO, geometry: CheckpointGeometry, epoch: UInt64, records: [CheckpointRecord]) {
        self.io = io
        self.geometry = geometry
        self.epoch = epoch
        self.live = Dictionary(uniqueKeysWithValues: records.map { ($0.sequence, $0) })
        let newest = records.last
        // A record with sequence UInt64.max has no successor: nextSequence stays above
        // maxSequence and checkpoint(_:) says the sequences are exhausted.
        self.nextSequence = newest.map { $0.sequence == .max ? .max : $0.sequence + 1 } ?? 1
        self.newestCommitted = newest?.sequence ?? 0
        self.head = newest.map { $0.span.upperBound } ?? 0
    }

    /// The error that stopped this writer (nil while it works). A call refused before it wrote
    /// anything (too large, region full) does not stop it.
    public var stoppedBy: PMUError? { failure }

    /// The sequence the next checkpoint will get.
    public var upcomingSequence: UInt64 { nextSequence }

    /// Replaces the keep-newest rule: from now on exactly `sequences` are kept (see `protected`).
    public func retainOnly(_ sequences: Set<UInt64>) {
        protected = sequences
    }

    /// Records in the index (committed or in flight), oldest first.
    public var records: [CheckpointRecord] { live.values.sorted { $0.sequence < $1.sequence } }

    /// Sequences present in the index (committed or in flight), oldest first.
    public var sequences: [UInt64] { live.keys.sorted() }

    /// Writes a checkpoint and returns its sequence number once it is durable.
    public func checkpoint(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        let length = UInt64(payload.readableBytes)
        var placement: Placement
        var sequence: UInt64
        while true {
            if let failure { throw PMUError(failure.code, "checkpoint writer stopped after an earlier failure: \(failure.message)") }
            sequence = nextSequence
            guard sequence <= CheckpointRecord.maxSequence else {
                throw PMUError(
                    .regionFull,
                    "\(io.regionDescription) has used up its sequence numbers: its newest checkpoint is \(sequence - 1) and the largest a checkpoint may have is \(CheckpointRecord.maxSequence); create a new region")
            }
            do throws(PMUError) {
                placement = try PlacementRules.place(
                    sequence: sequence, payloadLength: length, geometry: geometry, live: Array(live.values), head: head,
                    newestCommitted: newestCommitted, protected: protected)
                break
            } catch {
                // Space held by checkpoints still in flight frees up as they commit: wait, then retry.
                guard error.code == .regionFull, nextSequence - 1 > newestCommitted, let pending = lastCommit else { throw error }
                await pending.value
            }
        }
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        let record = CheckpointRecord(
            sequence: sequence, epoch: epoch, dataOffset: placement.dataOffset, payloadLength: length,
            timestampNanoseconds: Self.now(), payloadCRC: crc)
        // Claim the sequence and space before the first suspension, so concurrent calls plan around it.
        nextSequence += 1
        head = record.span.upperBound
        for displaced in placement.displaced { live[displaced.sequence] = nil }
        live[sequence] = record
        let previousCommit = lastCommit
        let commit = Task<Result<Void, PMUError>, Never> {
            do throws(PMUError) {
                try await self.write(record, payload: payload, placement: placement)
                await previousCommit?.value
                try await self.commit(record)
                return .success(())
            } catch {
                // Recorded before this task ends, so a caller waiting on it sees the failure.
                await self.recordFailure(error)
                return .failure(error)
            }
        }
        lastCommit = Task { _ = await commit.value }
        switch await commit.value {
        case .success:
            return sequence
        case .failure(let error):
            throw error
        }
    }

    private func write(_ record: CheckpointRecord, payload: ByteBuffer, placement: Placement) async throws(PMUError) {
        let zero = ByteBuffer(repeating: 0, count: Int(CheckpointGeometry.entryBytes))
        let slots = Set(placement.displaced.map { geometry.entryOffset(sequence: $0.sequence) } + [geometry.entryOffset(sequence: record.sequence)])
        if !placement.displaced.isEmpty {
            // Invalidate first and make that durable: otherwise a power loss mid-payload could leave
            // an old header describing bytes that are half overwritten.
            for slot in slots { try await io.write(at: slot, zero) }
            for slot in slots { try await io.persist(at: slot, length: CheckpointGeometry.entryBytes) }
        }
        try await io.writeDurably(at: geometry.dataOffset + record.dataOffset, payload)
    }

    private func recordFailure(_ error: PMUError) {
        failure = failure ?? error
    }

    private func commit(_ record: CheckpointRecord) async throws(PMUError) {
        if let failure { throw failure } // an earlier checkpoint failed: committing this one would leave a gap
        let offset = geometry.entryOffset(sequence: record.sequence)
        try await io.writeDurably(at: offset, record.encode())
        newestCommitted = record.sequence
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
