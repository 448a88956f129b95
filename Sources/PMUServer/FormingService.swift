import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMUCluster
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// One connection's upload of a whole checkpoint. Confined to that connection's event loop (every
/// FORM_DATA of a connection runs there), then handed to the forming task whole.
final class FormingUpload: @unchecked Sendable {
    let set: String
    let length: UInt64
    let crc: UInt32
    var bytes: ByteBuffer

    init(set: String, length: UInt64, crc: UInt32) {
        self.set = set
        self.length = length
        self.crc = crc
        // Capacity for the declared length, which begin() has already reserved from the budget.
        self.bytes = ByteBufferAllocator().buffer(capacity: Int(length))
    }
}

/// The server's side of forming for primaries (docs/CLUSTER.md section 7b): the byte budget of
/// uploads (`--max-forming-bytes`), each connection's upload, and the forming itself.
///
/// The budget is reserved whole at FORM_BEGIN (the declared length), so a server never holds more
/// than the bound in uploads however FORM_DATA arrives; it is given back when the connection
/// closes, starts another upload, or its forming ends.
final class FormingService: Sendable {
    let settings: FormingSettings
    private let uploads: NIOLockedValueBox<(reserved: UInt64, byConnection: [UInt64: FormingUpload])>
    private let former: ClusterFormer?

    init(_ settings: FormingSettings) {
        self.settings = settings
        self.uploads = NIOLockedValueBox((0, [:]))
        self.former = settings.clusterMap.map { ClusterFormer(mapPath: $0, rebuildEmpty: settings.rebuildEmpty) }
    }

    /// Bytes reserved by uploads in progress and formings running (for tests and status).
    var reservedBytes: UInt64 { uploads.withLockedValue { $0.reserved } }

    /// FORM_BEGIN: replaces the connection's unfinished upload, reserves `length` bytes.
    func begin(connection: UInt64, set: String, length: UInt64, crc: UInt32) throws(PMUError) {
        guard former != nil else {
            throw PMUError(.formingUnavailable, "this pmu-server does not form checkpoints for primaries: start it with --cluster-map MAP (docs/CLUSTER.md section 7b), or form in the primary")
        }
        let limit = settings.maxFormingBytes
        guard length <= limit else {
            throw PMUError(.formingLimit, "a checkpoint of \(length) bytes is larger than this server forms (--max-forming-bytes \(limit)); form it in the primary, or raise the server's --max-forming-bytes")
        }
        try uploads.withTypedLock { state throws(PMUError) in
            let previous = state.byConnection.removeValue(forKey: connection)?.length ?? 0
            state.reserved -= previous
            guard state.reserved + length <= limit else {
                throw PMUError(.formingLimit, "this server already holds \(state.reserved) bytes of other primaries' checkpoints; \(length) more would pass --max-forming-bytes \(limit). Try again when they are formed, or form in the primary")
            }
            state.reserved += length
            // A placeholder until the buffer is allocated outside the lock.
            state.byConnection[connection] = nil
        }
        let upload = FormingUpload(set: set, length: length, crc: crc)
        uploads.withLockedValue { $0.byConnection[connection] = upload }
    }

    /// FORM_DATA: the next bytes, in order. The copy runs outside the lock (the upload is this
    /// connection's alone).
    func append(connection: UInt64, offset: UInt64, data: ByteBuffer) throws(PMUError) {
        guard let upload = uploads.withLockedValue({ $0.byConnection[connection] }) else {
            throw PMUError(.formingUnavailable, "FORM_DATA without an upload in progress on this connection: send FORM_BEGIN first")
        }
        let received = UInt64(upload.bytes.readableBytes)
        guard offset == received else {
            throw PMUError(.invalidArgument, "FORM_DATA at offset \(offset), but \(received) bytes have been received: send the checkpoint in order")
        }
        let (end, overflow) = received.addingReportingOverflow(UInt64(data.readableBytes))
        guard !overflow, end <= upload.length else {
            throw PMUError(.invalidArgument, "FORM_DATA goes past the \(upload.length) bytes announced by FORM_BEGIN")
        }
        var data = data
        upload.bytes.writeBuffer(&data)
    }

    /// FORM_COMMIT: the connection's complete upload, taken off the connection (its reservation
    /// stays until `formed` gives it back).
    func take(connection: UInt64) throws(PMUError) -> FormingUpload {
        try uploads.withTypedLock { state throws(PMUError) -> FormingUpload in
            guard let upload = state.byConnection[connection] else {
                throw PMUError(.formingUnavailable, "FORM_COMMIT without an upload in progress on this connection: send FORM_BEGIN and FORM_DATA first")
            }
            guard UInt64(upload.bytes.readableBytes) == upload.length else {
                throw PMUError(.invalidArgument, "FORM_COMMIT after \(upload.bytes.readableBytes) of the \(upload.length) bytes announced; send the rest first")
            }
            state.byConnection[connection] = nil
            return upload
        }
    }

    /// Checks the upload's CRC, forms and stores it across the set (off the event loop), gives
    /// the reservation back. Returns the checkpoint's sequence and the piece bytes written.
    func form(_ upload: FormingUpload) async throws(PMUError) -> (sequence: UInt64, pieceBytes: UInt64) {
        defer { uploads.withLockedValue { $0.reserved -= upload.length } }
        let crc = upload.bytes.withUnsafeReadableBytes { CRC32C.checksum($0) }
        guard crc == upload.crc else {
            throw PMUError(.damaged, "the uploaded checkpoint's CRC32C is \(hex(crc)), FORM_BEGIN announced \(hex(upload.crc)): damaged on the way; nothing was stored")
        }
        guard let former else { throw PMUError(.formingUnavailable, "this pmu-server has no --cluster-map") }
        return try await former.form(set: upload.set, payload: upload.bytes)
    }

    /// FORM_REBUILD: empty `server` rejoins `set` through this server's primary of it and gets its
    /// missing pieces, while checkpoints formed here go on.
    func rebuild(set: String, server: String) async throws(PMUError) -> RebuildReport {
        guard let former else {
            throw PMUError(.formingUnavailable, "this pmu-server does not form checkpoints (no --cluster-map), so it cannot rebuild through its primary; use pmuctl cluster rebuild without --online")
        }
        return try await former.rebuild(set: set, server: server)
    }

    func connectionClosed(_ connection: UInt64) {
        uploads.withLockedValue { state in
            if let upload = state.byConnection.removeValue(forKey: connection) { state.reserved -= upload.length }
        }
    }

    private func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
}

/// Forms checkpoints on the cluster of the map: the same `ClusterPrimary` as the client library
/// (the same pieces, headers and commit protocol), connected to every server of the set as a
/// client, this one included. One forming at a time; the primary of each set is kept open between
/// calls (its open fences any other primary of the set, as pmuctl checkpoint put does).
actor ClusterFormer {
    let mapPath: String
    private var cluster: Cluster?
    private var primaries: [String: ClusterPrimary] = [:]
    private var tail: Task<Void, Never>?
    /// PMU_FORMING_FAULT (with PMU_ALLOW_TEST_MODES=1), tests only: kill -9 this process at
    /// `before-fanout`, `after-piece:SERVER` (that server's piece durable) or `after-pieces`.
    private let fault: String?
    private let rebuildEmpty: Bool
    /// Backfills started by --rebuild-empty, by "set/server", so one runs at a time per server.
    private var backfilling: Set<String> = []
    private let logger = Logger(label: "pmu.forming")

    init(mapPath: String, rebuildEmpty: Bool) {
        self.mapPath = mapPath
        self.rebuildEmpty = rebuildEmpty
        let environment = ProcessInfo.processInfo.environment
        self.fault = environment["PMU_ALLOW_TEST_MODES"] == "1" ? environment["PMU_FORMING_FAULT"] : nil
    }

    func form(set: String, payload: ByteBuffer) async throws(PMUError) -> (sequence: UInt64, pieceBytes: UInt64) {
        try await inTurn { () async throws(PMUError) in try await self.formNow(set: set, payload: payload) }
    }

    /// Online rebuild (docs/CLUSTER.md 6b) by the set's primary here: reopened in a turn with
    /// `server` rejoining, then backfilled outside the turns, so checkpoints formed meanwhile are
    /// written to every server, `server` included.
    func rebuild(set: String, server: String) async throws(PMUError) -> RebuildReport {
        let primary = try await inTurn { () async throws(PMUError) -> ClusterPrimary in
            await self.drop()
            let cluster = try await self.connected()
            let primary: ClusterPrimary
            do throws(PMUError) {
                primary = try await ClusterPrimary.open(set, cluster: cluster, rejoining: [server])
            } catch {
                await self.drop()
                throw PMUError(error.code, "forming server: \(error.message)")
            }
            await self.install(primary, for: set)
            return primary
        }
        return try await primary.backfill(server: server)
    }

    /// Runs `body` after every earlier forming or rejoin of this server has finished.
    private func inTurn<T: Sendable>(_ body: @escaping @Sendable () async throws(PMUError) -> T) async throws(PMUError) -> T {
        let (turn, next) = Turns.after(tail, body)
        tail = next
        return try await turn.value.get()
    }

    private func formNow(set: String, payload: ByteBuffer) async throws(PMUError) -> (sequence: UInt64, pieceBytes: UInt64) {
        if fault == "before-fanout" { Self.die() }
        // A primary kept from an earlier call may have been fenced, or a server restarted since:
        // then reconnect and reopen once. A freshly opened primary's failure is the answer.
        var attempt = 0
        while true {
            attempt += 1
            let (primary, fresh) = try await primary(for: set)
            do throws(PMUError) {
                let sequence = try await primary.checkpoint(payload)
                return (sequence, await primary.lastPieceBytes)
            } catch {
                await drop()
                if fresh || attempt > 1 { throw error }
            }
        }
    }

    private func connected() async throws(PMUError) -> Cluster {
        if let cluster { return cluster }
        let cluster = await Cluster.connect(try ClusterMap.load(path: mapPath))
        self.cluster = cluster
        return cluster
    }

    private func primary(for set: String) async throws(PMUError) -> (ClusterPrimary, fresh: Bool) {
        if let primary = primaries[set] { return (primary, false) }
        let cluster = try await connected()
        let primary: ClusterPrimary
        var rejoined: [String] = []
        do throws(PMUError) {
            if rebuildEmpty {
                (primary, rejoined) = try await ClusterPrimary.openRejoiningEmptyServers(set, cluster: cluster)
            } else {
                primary = try await ClusterPrimary.open(set, cluster: cluster)
            }
        } catch {
            await drop()
            throw PMUError(error.code, "forming server: \(error.message)")
        }
        await install(primary, for: set)
        for server in rejoined { startBackfill(primary, set: set, server: server) }
        return (primary, true)
    }

    /// --rebuild-empty: the rejoined server's older pieces, in the background.
    private func startBackfill(_ primary: ClusterPrimary, set: String, server: String) {
        let key = set + "/" + server
        guard backfilling.insert(key).inserted else { return }
        logger.notice("empty server rejoined a set formed here; rebuilding it", metadata: ["set": "\(set)", "server": "\(server)"])
        Task {
            do throws(PMUError) {
                let report = try await primary.backfill(server: server)
                logger.notice("rebuilt empty server", metadata: ["set": "\(set)", "server": "\(server)", "rebuilt": "\(report.rebuilt)", "unrecoverable": "\(report.unrecoverable)", "bytes": "\(report.bytesWritten)"])
            } catch {
                logger.error("rebuilding empty server failed", metadata: ["set": "\(set)", "server": "\(server)", "error": "\(error)"])
            }
            self.backfillEnded(key)
        }
    }

    private func backfillEnded(_ key: String) { backfilling.remove(key) }

    private func install(_ primary: ClusterPrimary, for set: String) async {
        if let fault {
            await primary.injectFaults { server in
                if fault == "after-pieces" && server == nil { Self.die() }
                if let server, fault == "after-piece:" + server { Self.die() }
            }
        }
        primaries[set] = primary
    }

    /// Closes every primary and the connections (servers may have moved: the map is re-read).
    private func drop() async {
        for primary in primaries.values { await primary.close() }
        primaries = [:]
        await cluster?.disconnect()
        cluster = nil
    }

    private static func die() -> Never {
        kill(getpid(), SIGKILL)
        fatalError("SIGKILL did not stop the process")
    }
}
