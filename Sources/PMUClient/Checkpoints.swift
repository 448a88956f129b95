import NIOCore
import PMUCheckpoint
import PMUCore
import PMUMetrics

/// A remote region as the checkpoint code sees it: the same code runs over any transport.
public struct RemoteRegion: RegionIO {
    public let client: PMUClient
    public let handle: RegionHandle

    public init(client: PMUClient, handle: RegionHandle) {
        self.client = client
        self.handle = handle
    }

    public var sizeBytes: UInt64 { handle.sizeBytes }

    public var regionDescription: String { "region \(NameRules.quoted(handle.name))" }

    public func read(at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        try await client.read(handle, at: offset, length: length)
    }

    public func write(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        try await client.write(handle, at: offset, bytes)
    }

    public func persist(at offset: UInt64, length: UInt64) async throws(PMUError) {
        guard length > 0 else { return } // 0 would mean "to the end of the region" on the wire
        try await client.persist(handle, offset: offset, length: length)
    }

    public func writeDurably(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        try await client.writeDurably(handle, at: offset, bytes)
    }
}

/// How a checkpoint region is laid out, chosen when it is created.
public struct CheckpointOptions: Sendable {
    public var mode: CheckpointMode
    /// Append mode: the most checkpoints that can exist at once (index entries).
    public var maxCheckpoints: UInt32
    /// Append mode: keep the newest N and reuse older ones' space; 0 keeps all and refuses new
    /// checkpoints with REGION_FULL when there is no room.
    public var keepNewest: UInt32
    public var readers: [String]
    public var writers: [String]

    public init(mode: CheckpointMode, maxCheckpoints: UInt32 = 1024, keepNewest: UInt32 = 0, readers: [String] = [], writers: [String] = []) {
        self.mode = mode
        self.maxCheckpoints = maxCheckpoints
        self.keepNewest = keepNewest
        self.readers = readers
        self.writers = writers
    }
}

/// The primary's handle on a checkpoint region: it holds the writer role under its epoch.
public final class CheckpointPrimary: Sendable {
    public let handle: RegionHandle
    public let writer: CheckpointWriter
    private let client: PMUClient

    init(client: PMUClient, handle: RegionHandle, writer: CheckpointWriter) {
        self.client = client
        self.handle = handle
        self.writer = writer
    }

    public var epoch: UInt64 { writer.epoch }
    public var geometry: CheckpointGeometry { writer.geometry }

    /// Saves a checkpoint; returns its sequence number once it is durable on the server.
    /// Throws FENCED if another primary has taken over the region since this one opened it.
    /// Each completed checkpoint is reported through swift-metrics (`PMUMetrics.checkpoint`:
    /// duration and payload bytes, by region kind) to whatever backend the application bootstrapped.
    public func checkpoint(_ payload: ByteBuffer) async throws(PMUError) -> UInt64 {
        let started = PMUMetrics.now()
        let sequence = try await writer.checkpoint(payload)
        PMUMetrics.checkpoint(
            kind: geometry.mode == .append ? "append" : "overwrite", bytes: UInt64(payload.readableBytes), nanoseconds: PMUMetrics.now() &- started)
        return sequence
    }

    public func checkpoint(_ payload: [UInt8]) async throws(PMUError) -> UInt64 {
        try await checkpoint(ByteBuffer(bytes: payload))
    }

    public func close() async throws(PMUError) {
        try await client.close(handle)
    }
}

/// The backup's handle on a checkpoint region: read-only, never disturbs the primary.
public struct CheckpointBackup: Sendable {
    public let handle: RegionHandle
    public let reader: CheckpointReader
    let client: PMUClient

    /// Releases the read handle (long-running backups that reopen should close the old one).
    public func close() async throws(PMUError) {
        try await client.close(handle)
    }

    public var geometry: CheckpointGeometry { reader.geometry }

    /// The newest complete checkpoint, or nil if none has been committed.
    public func latest() async throws(PMUError) -> Checkpoint? { try await reader.latest() }
    /// Every complete checkpoint, oldest first.
    public func all() async throws(PMUError) -> [Checkpoint] { try await reader.all() }
    public func checkpoints(in range: ClosedRange<UInt64>) async throws(PMUError) -> [Checkpoint] { try await reader.checkpoints(in: range) }
    public func checkpoint(sequence: UInt64) async throws(PMUError) -> Checkpoint { try await reader.checkpoint(sequence: sequence) }
    /// Waits (polling the region) for a checkpoint newer than `sequence`; nil when `timeout` passes.
    public func waitForNewer(than sequence: UInt64, timeout: Duration) async throws(PMUError) -> Checkpoint? {
        try await reader.waitForNewer(than: sequence, timeout: timeout)
    }
}

extension PMUClient {
    /// Creates a region for checkpoints and writes its layout header (durably) before returning.
    @discardableResult
    public func createCheckpointRegion(_ name: String, sizeBytes: UInt64, options: CheckpointOptions) async throws(PMUError) -> CheckpointGeometry {
        let geometry = try CheckpointGeometry.plan(
            mode: options.mode, regionBytes: sizeBytes, maxCheckpoints: options.maxCheckpoints, keepNewest: options.keepNewest)
        let handle = try await createRegion(name, sizeBytes: sizeBytes, kind: options.mode.regionKind, readers: options.readers, writers: options.writers)
        let region = RemoteRegion(client: self, handle: handle)
        do throws(PMUError) {
            try await region.write(at: 0, geometry.encode())
            try await region.persist(at: 0, length: CheckpointGeometry.headerBytes)
            try await close(handle)
        } catch {
            // Never leave a region whose layout options were not written (a later open would format
            // it with defaults): remove it, best effort, and report the original error.
            try? await close(handle)
            try? await delete(name)
            throw error
        }
        return geometry
    }

    /// Opens a checkpoint region as its primary: takes the writer role with a new epoch (any
    /// earlier primary is fenced from then on) and finds where the last primary left off.
    public func openPrimary(_ name: String) async throws(PMUError) -> CheckpointPrimary {
        let handle = try await openRegion(name, rights: .readWrite)
        do throws(PMUError) {
            guard let mode = CheckpointMode(kind: handle.kind) else {
                throw PMUError(.notCheckpointRegion, "region \(NameRules.quoted(name)) was created as a raw region, not for checkpoints; create one with mode overwrite or append")
            }
            // A create interrupted before its header was written is formatted now, keeping all checkpoints.
            let fallback = try CheckpointGeometry.plan(mode: mode, regionBytes: handle.sizeBytes, maxCheckpoints: UInt32(min(1024, max(2, handle.sizeBytes / 65536))))
            let writer = try await CheckpointWriter.open(io: RemoteRegion(client: self, handle: handle), epoch: handle.epoch, format: fallback)
            return CheckpointPrimary(client: self, handle: handle, writer: writer)
        } catch {
            try? await close(handle)
            throw error
        }
    }

    /// Opens a checkpoint region read-only, as a backup.
    public func openBackup(_ name: String) async throws(PMUError) -> CheckpointBackup {
        let handle = try await openRegion(name, rights: .read)
        do throws(PMUError) {
            guard CheckpointMode(kind: handle.kind) != nil else {
                throw PMUError(.notCheckpointRegion, "region \(NameRules.quoted(name)) was created as a raw region, not for checkpoints")
            }
            return CheckpointBackup(handle: handle, reader: try await CheckpointReader.open(io: RemoteRegion(client: self, handle: handle)), client: self)
        } catch {
            try? await close(handle)
            throw error
        }
    }
}
