import NIOCore
import PMUCheckpoint
import PMUCore
import PMUMetrics

/// A checkpoint primary that survives its server's takeover or failover (issues 12 and 13): when
/// its connection dies or the server stops serving, it reconnects through a `ReconnectingClient`
/// (the same service address, or the pair's next endpoint), takes its writer role back with
/// OPEN_RESUME, and carries on from its last acknowledged checkpoint as the same primary, where
/// that is safe (docs/ARCHITECTURE.md section 12a):
///
/// - the server's compare-and-set on the writer epoch must succeed: no other writer opened the
///   region since this one did (else FENCED, and the writer stops for good);
/// - the region must hold this writer's last acknowledged checkpoint, record for record, and
///   nothing newer but the one checkpoint in doubt (`ResumeRule`; else CHECKPOINT_LOST or
///   RESUME_REFUSED, and the writer stops).
///
/// At most one checkpoint is in flight (calls queue), so at a failure exactly one is in doubt;
/// `checkpoint(_:)` keeps its bytes until it returns. After the resume it is either found
/// complete on the new server (payload read back and compared) and reported with the sequence it
/// got, or written again with that same sequence: never silently half there, never twice.
///
/// Bounds: one checkpoint call retries for at most the client's `policy.deadline`; the backoff is
/// the client's. The resumed handle's epoch is the old one + 1, which fences this writer's own
/// handles on a connection that only looked dead.
public actor ResumingCheckpointPrimary {
    public nonisolated let name: String
    private let connection: ReconnectingClient
    private var client: PMUClient?
    private var handle: RegionHandle?
    private var writer: CheckpointWriter?
    /// The newest checkpoint known committed: the last acknowledged, or the newest at open.
    private var acknowledged: CheckpointRecord?
    /// The writer epoch held at the server (raised by each successful OPEN_RESUME).
    public private(set) var epoch: UInt64
    /// Set once the writer may not go on (fenced, a lost or foreign checkpoint, a final error).
    public private(set) var stoppedBy: PMUError?
    /// Successful resumes (a count for tests and status lines).
    public private(set) var resumes = 0
    /// The checkpoint sent and not acknowledged, with its bytes, until a resume settles it.
    private var pending: Pending?
    private struct Pending {
        var inDoubt: ResumeRule.InDoubt
        var payload: ByteBuffer
    }
    /// The last checkpoint in doubt a resume settled: its sequence and whether it had committed.
    /// For a call that gave up (its deadline passed) before the resume: that is its fate.
    public private(set) var lastSettled: (sequence: UInt64, committed: Bool)?
    private var busy = false
    private var queued: [CheckedContinuation<Void, Never>] = []

    /// Opens `name` as its primary through `connection` (a new writer epoch: any earlier primary
    /// is fenced), retrying while no server answers.
    public static func open(_ name: String, through connection: ReconnectingClient) async throws(PMUError) -> ResumingCheckpointPrimary {
        let primary = try await connection.retrying { client throws(PMUError) in try await client.openPrimary(name) }
        let client = try await connection.connected()
        return ResumingCheckpointPrimary(name: name, connection: connection, client: client, primary: primary, acknowledged: await primary.writer.records.last)
    }

    private init(name: String, connection: ReconnectingClient, client: PMUClient, primary: CheckpointPrimary, acknowledged: CheckpointRecord?) {
        self.name = name
        self.connection = connection
        self.client = client
        self.handle = primary.handle
        self.writer = primary.writer
        self.epoch = primary.epoch
        self.acknowledged = acknowledged
    }

    /// The newest checkpoint this writer knows committed (nil: none yet in the region).
    public var lastAcknowledgedSequence: UInt64? { acknowledged?.sequence }

    /// Saves a checkpoint; returns its sequence once it is durable, across a failover if need be.
    public func checkpoint(_ payload: [UInt8]) async throws(PMUError) -> UInt64 {
        try await checkpoint(ByteBuffer(bytes: payload))
    }

    public func checkpoint(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        await acquire()
        defer { release() }
        let measured = PMUMetrics.now()
        let sequence = try await checkpointOnce(payload)
        PMUMetrics.checkpoint(kind: writer?.geometry.mode == .append ? "append" : "overwrite", bytes: UInt64(payload.readableBytes), nanoseconds: PMUMetrics.now() &- measured)
        return sequence
    }

    /// Releases the writer's handle (the writer role stays with this epoch until another opens it).
    public func close() async {
        if let client, let handle { try? await client.close(handle) }
        handle = nil
        writer = nil
        stoppedBy = stoppedBy ?? PMUError(.invalidArgument, "checkpoint writer for region \(NameRules.quoted(name)) was closed")
    }

    // MARK: one checkpoint, resuming as needed

    private func checkpointOnce(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        let started = ContinuousClock.now
        var backoff = connection.policy.initialBackoff
        while true {
            if let stoppedBy { throw PMUError(stoppedBy.code, "checkpoint writer for region \(NameRules.quoted(name)) stopped: \(stoppedBy.message)") }
            guard let writer else {
                if try await resume(started: started) == .committed(payload) {
                    // This call's own checkpoint committed before the failure: report it, once.
                    return acknowledged!.sequence
                }
                continue
            }
            pending = Pending(
                inDoubt: ResumeRule.InDoubt(sequence: await writer.upcomingSequence, epoch: writer.epoch, payloadLength: UInt64(payload.readableBytes), payloadCRC: crc),
                payload: payload)
            do throws(PMUError) {
                let sequence = try await writer.checkpoint(payload)
                pending = nil
                acknowledged = await writer.records.last { $0.sequence == sequence }
                return sequence
            } catch {
                // Refused before anything was written (too large, region full): the writer goes on.
                guard await writer.stoppedBy != nil else {
                    pending = nil
                    throw error
                }
                self.writer = nil
                self.handle = nil
                if error.code == .fenced {
                    // Either another writer took the region (the resume's OPEN_RESUME will say
                    // FENCED again, and that verdict is final) or this server is a stale owner
                    // whose partner took its portion over: try the next endpoint first. Bounded by
                    // the deadline like any retry; past it the FENCED stands and the writer stops.
                    if ContinuousClock.now - started >= connection.policy.deadline {
                        stoppedBy = error
                        throw error
                    }
                    await connection.advanceEndpoint()
                } else {
                    try giveUpUnlessRetryable(error, started: started)
                }
                await connection.drop(because: error)
                try await connection.pause(&backoff)
            }
        }
    }

    /// What the resume found of the checkpoint in doubt.
    enum Outcome: Equatable {
        case nothingInDoubt
        case committed(ByteBuffer)
        case notCommitted
    }

    /// Reconnects, takes the writer role back and checks the region (ResumeRule). The checkpoint
    /// in doubt is settled here: committed (its payload read back and compared, then acknowledged)
    /// or not (the caller writes it again, or, if that caller already gave up, it stays absent;
    /// `lastSettled` says which). Throws, and stops the writer, when resuming is not safe.
    private func resume(started: ContinuousClock.Instant) async throws(PMUError) -> Outcome {
        var backoff = connection.policy.initialBackoff
        // One token for every try of this resume (same epoch): a try whose reply was lost after
        // the server raised the epoch is then granted again rather than FENCED by itself.
        var generator = SystemRandomNumberGenerator()
        let token = (0..<Limits.resumeTokenBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        while true {
            do throws(PMUError) {
                let client = try await connection.connected()
                let handle = try await client.resumeRegion(name, epoch: epoch, token: token)
                // Held from here: the next attempt must present the new epoch, not be fenced by it.
                epoch = handle.epoch
                let io = RemoteRegion(client: client, handle: handle)
                let writer: CheckpointWriter
                let decision: ResumeRule.Decision
                do throws(PMUError) {
                    writer = try await CheckpointWriter.open(io: io, epoch: handle.epoch)
                    decision = ResumeRule.decide(acknowledged: acknowledged, inDoubt: pending?.inDoubt, found: await writer.records, region: io.regionDescription)
                } catch {
                    try? await client.close(handle)
                    throw error
                }
                let outcome: Outcome
                switch decision {
                case .refused(let error):
                    try? await client.close(handle)
                    stoppedBy = error
                    throw error
                case .resume:
                    outcome = pending == nil ? .nothingInDoubt : .notCommitted
                case .inDoubtCommitted(let record):
                    // Its header says it committed; its bytes must say so too before it is reported.
                    let stored = try await CheckpointIndex.payload(of: record, io: io, geometry: writer.geometry)
                    guard let stored, let pending, stored == pending.payload else {
                        try? await client.close(handle)
                        let error = PMUError(.damaged, "\(io.regionDescription): checkpoint \(record.sequence), in doubt at the failure, has a valid record on the new server but its payload does not match what this writer sent; not resuming")
                        stoppedBy = error
                        throw error
                    }
                    acknowledged = record
                    outcome = .committed(pending.payload)
                }
                if let pending { lastSettled = (pending.inDoubt.sequence, outcome != .notCommitted) }
                pending = nil
                self.client = client
                self.handle = handle
                self.writer = writer
                resumes += 1
                return outcome
            } catch {
                if stoppedBy != nil { throw error }
                try giveUpUnlessRetryable(error, started: started)
                await connection.drop(because: error)
                try await connection.pause(&backoff)
            }
        }
    }

    /// FENCED, or an error no reconnect cures: the writer stops. A retryable error past the
    /// deadline is thrown without stopping it (no verdict on the region): a later call resumes.
    private func giveUpUnlessRetryable(_ error: PMUError, started: ContinuousClock.Instant) throws(PMUError) {
        guard ReconnectingClient.isRetryable(error) else {
            stoppedBy = error
            throw error
        }
        if ContinuousClock.now - started >= connection.policy.deadline { throw error }
    }

    // MARK: one call at a time

    private func acquire() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { queued.append($0) }
    }

    private func release() {
        if queued.isEmpty {
            busy = false
        } else {
            queued.removeFirst().resume()
        }
    }
}
