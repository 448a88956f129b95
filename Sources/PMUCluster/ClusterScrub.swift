import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUStripe

/// How a scrub pass reads and repairs.
public struct ScrubOptions: Sendable {
    /// Average read rate bound over the pass (at least 4096).
    public var bytesPerSecond: UInt64
    /// Rewrite damaged subsegments from parity; false only reports them.
    public var repair: Bool

    public static let defaultBytesPerSecond: UInt64 = 32 << 20

    public init(bytesPerSecond: UInt64 = ScrubOptions.defaultBytesPerSecond, repair: Bool = true) {
        self.bytesPerSecond = bytesPerSecond
        self.repair = repair
    }
}

/// What one scrub pass over a set found and did.
public struct ScrubReport: Sendable {
    public var set: String
    /// The counters, as stored in each server's NAME.scrub region.
    public var record: ScrubRecord
    /// "server:gG.I of checkpoint S" for each subsegment that failed its CRC32C.
    public var damaged: [String]
    public var repaired: [String]
    /// Damaged subsegments left as they were, with why.
    public var unrepaired: [String: String]
    /// Subsegments whose piece was displaced by a newer checkpoint between read and repair (not damage).
    public var displaced: [String]
    /// Stripe servers whose pieces were not (fully) checked, with why.
    public var unchecked: [String: String]
    /// Servers on which the scrub record could not be stored.
    public var recordFailures: [String: PMUError]
}

/// Writes a repaired subsegment back into a server's piece region.
protocol ScrubRepairer: Sendable {
    /// false: the piece is no longer live where it was read (displaced); nothing was written.
    func repair(_ piece: PieceRef, entry: Int, bytes: ByteBuffer) async throws(PMUError) -> Bool
    func finish() async
}

enum ScrubRepair {
    /// Writes entry `entry` of `piece` back, durably, through `writer` (which holds the writer role
    /// on the server's piece region, so nothing else writes it meanwhile), but only if the piece
    /// is still live in that region's index at the same place and its header still reads back
    /// unchanged: a piece displaced after the scrub read it must not be written over the newer
    /// piece now in its space.
    static func writeIfLive(_ piece: PieceRef, entry: Int, bytes: ByteBuffer, writer: CheckpointPrimary, client: PMUClient) async throws(PMUError) -> Bool {
        let live = await writer.writer.records
        guard live.contains(where: { $0.sequence == piece.record.sequence && $0.dataOffset == piece.record.dataOffset && $0.payloadCRC == piece.record.payloadCRC }) else {
            return false
        }
        let io = RemoteRegion(client: client, handle: writer.handle)
        let expected = piece.header.encode()
        guard try await io.read(at: piece.offset, length: expected.readableBytes) == expected else { return false }
        try await io.writeDurably(at: piece.offset + UInt64(piece.header.offset(ofEntry: entry)), bytes)
        return true
    }
}

/// For a scrub with no primary of its own (pmuctl): takes the writer role on a server's piece
/// region only when that server has something to repair, once per pass. This fences a primary
/// writing the set on that server (its next checkpoint fails with FENCED): a running primary
/// scrubs through `ClusterPrimary.scrub` instead.
actor FencingRepairer: ScrubRepairer {
    let cluster: Cluster
    let name: String
    private var opened: [String: CheckpointPrimary] = [:]

    init(cluster: Cluster, name: String) {
        self.cluster = cluster
        self.name = name
    }

    func repair(_ piece: PieceRef, entry: Int, bytes: ByteBuffer) async throws(PMUError) -> Bool {
        let client = try cluster.client(piece.server)
        let writer: CheckpointPrimary
        if let existing = opened[piece.server] {
            writer = existing
        } else {
            writer = try await client.openPrimary(name)
            opened[piece.server] = writer
        }
        return try await ScrubRepair.writeIfLive(piece, entry: entry, bytes: bytes, writer: writer, client: client)
    }

    func finish() async {
        for writer in opened.values { try? await writer.close() }
        opened = [:]
    }
}

extension Cluster {
    /// One scrub pass over set `name` (see `scrubPass`), repairing with a writer role taken only on
    /// servers that need a repair (which fences a primary there: use `ClusterPrimary.scrub` from a
    /// running primary).
    public func scrub(set name: String, options: ScrubOptions = ScrubOptions()) async throws(PMUError) -> ScrubReport {
        let repairer = FencingRepairer(cluster: self, name: name)
        do throws(PMUError) {
            let report = try await scrubPass(name, options: options, repairer: options.repair ? repairer : nil)
            await repairer.finish()
            return report
        } catch {
            await repairer.finish()
            throw error
        }
    }

    /// Scrubs set `name` every `interval` (measured from the start of one pass to the next) until
    /// `passes` passes have run (nil: until the task is cancelled). `onPass` sees each report; a
    /// pass that throws is reported as such and the loop goes on (a server down now may be back
    /// at the next pass). Returns the reports (or errors) of the passes run.
    public func scrubEvery(
        _ interval: Duration, set name: String, passes: Int?, options: ScrubOptions = ScrubOptions(),
        onPass: @Sendable (Result<ScrubReport, PMUError>) async -> Void = { _ in }
    ) async -> Int {
        await scrubLoop(interval, passes: passes, onPass: onPass) { () async throws(PMUError) in try await self.scrub(set: name, options: options) }
    }

    /// Reads every subsegment of every server's piece of every complete checkpoint and checks its
    /// CRC32C, at most `options.bytesPerSecond` on average. A damaged subsegment is regenerated from
    /// the others (`ClusterBackup.regeneratedPieces`: the reassembly of degraded reads and rebuild)
    /// and, with a repairer, written back in place; the regenerated bytes must match the piece
    /// header's CRC32C first. Then the pass's counters are stored in NAME.scrub on every server
    /// holding the set. Servers that are unreachable or fail mid-read are reported, not fatal.
    func scrubPass(_ name: String, options: ScrubOptions, repairer: ScrubRepairer?) async throws(PMUError) -> ScrubReport {
        let pacing = try ScrubPacing(bytesPerSecond: options.bytesPerSecond)
        let started = ClusterPrimary.now()
        let view = try await SetView.read(name, cluster: self)
        var report = ScrubReport(
            set: name,
            record: ScrubRecord(
                setID: view.descriptor.setID, startedNanoseconds: started, finishedNanoseconds: started, passes: 1, piecesChecked: 0,
                subsegmentsChecked: 0, bytesRead: 0, damaged: 0, repaired: 0, unrepaired: 0, newestSequence: view.completeSequences.first ?? 0),
            damaged: [], repaired: [], unrepaired: [:], displaced: [], unchecked: view.missing.mapValues { "\($0.code): \($0.message)" }, recordFailures: [:])
        do throws(PMUError) {
            let backup = try ClusterBackup(name: name, cluster: self)
            let clock = ContinuousClock()
            let start = clock.now
            for sequence in view.completeSequences.reversed() {
                var bad: [(piece: PieceRef, entry: Int)] = []
                for piece in view.pieces(of: sequence) {
                    let sub = piece.header.geometry.subsegmentBytes
                    // About 1 MiB per read, so the pacing has something to bound between reads.
                    let perRead = max(1, (1 << 20) / sub)
                    var whole = true
                    for chunk in stride(from: 0, to: piece.header.entries.count, by: perRead) {
                        let indices = Array(chunk..<min(chunk + perRead, piece.header.entries.count))
                        let read: (intact: [StripeAssembler.Key: ByteBuffer], damaged: [String])
                        do throws(PMUError) {
                            read = try await ClusterBackup.readEntries(piece, indices: indices)
                        } catch {
                            report.unchecked[piece.server] = "read failed at checkpoint \(sequence): \(error.code): \(error.message)"
                            whole = false
                            break
                        }
                        report.record.subsegmentsChecked += UInt64(indices.count)
                        report.record.bytesRead += UInt64(indices.count * sub)
                        for i in indices {
                            let id = piece.header.entries[i].id
                            if read.intact[StripeAssembler.Key(group: id.group, index: id.index)] == nil { bad.append((piece, i)) }
                        }
                        let elapsed = nanoseconds(clock.now - start)
                        let wait = pacing.delayNanoseconds(afterBytes: report.record.bytesRead, elapsedNanoseconds: elapsed)
                        if wait > 0 { try? await Task.sleep(nanoseconds: wait) }
                    }
                    if whole { report.record.piecesChecked += 1 }
                }
                guard !bad.isEmpty else { continue }
                try await repairDamage(bad, of: sequence, view: view, backup: backup, repairer: repairer, into: &report)
            }
            await view.close(cluster: self)
        } catch {
            await view.close(cluster: self)
            throw error
        }
        report.record.finishedNanoseconds = max(started, ClusterPrimary.now())
        report.recordFailures = await storeScrubRecord(&report.record, set: name, on: view.servers.keys.sorted())
        return report
    }

    private func repairDamage(
        _ bad: [(piece: PieceRef, entry: Int)], of sequence: UInt64, view: SetView, backup: ClusterBackup, repairer: ScrubRepairer?,
        into report: inout ScrubReport
    ) async throws(PMUError) {
        func label(_ item: (piece: PieceRef, entry: Int)) -> String { "\(item.piece.server):\(item.piece.header.entries[item.entry].id) of checkpoint \(sequence)" }
        guard let repairer else {
            for item in bad { report.damaged.append(label(item)); report.unrepaired[label(item)] = "not repaired (report only)" }
            report.record.damaged += UInt64(bad.count)
            report.record.unrepaired += UInt64(bad.count)
            return
        }
        var regenerated: [ByteBuffer] = []
        var why: String?
        do throws(PMUError) {
            regenerated = try await backup.regeneratedPieces(sequence, view: view)
        } catch {
            guard error.code == .unrecoverable || error.code == .damaged else { throw error }
            why = "cannot regenerate it: \(error.code): \(error.message)"
        }
        for item in bad {
            let entry = item.piece.header.entries[item.entry]
            let sub = item.piece.header.geometry.subsegmentBytes
            var failure = why
            if failure == nil {
                let piece = regenerated[item.piece.header.serverIndex]
                let bytes = piece.getSlice(at: piece.readerIndex + item.piece.header.offset(ofEntry: item.entry), length: sub)!
                if bytes.withUnsafeReadableBytes({ CRC32C.checksum($0) }) != entry.crc {
                    failure = "the regenerated subsegment does not match the piece header's CRC32C"
                } else {
                    do throws(PMUError) {
                        if try await !repairer.repair(item.piece, entry: item.entry, bytes: bytes) {
                            // Displaced by a newer checkpoint: what was read as damage may have been the new piece arriving.
                            report.displaced.append(label(item))
                            continue
                        }
                    } catch {
                        failure = "write failed: \(error.code): \(error.message)"
                    }
                }
            }
            report.damaged.append(label(item))
            report.record.damaged += 1
            if let failure {
                report.unrepaired[label(item)] = failure
                report.record.unrepaired += 1
            } else {
                report.repaired.append(label(item))
                report.record.repaired += 1
            }
        }
    }

    /// Stores the pass's record in NAME.scrub on each of `servers` (created if missing), counting
    /// passes on from the newest record any of them holds.
    private func storeScrubRecord(_ record: inout ScrubRecord, set name: String, on servers: [String]) async -> [String: PMUError] {
        if let previous = await scrubRecord(set: name, setID: record.setID) {
            record.passes = previous.passes &+ 1 == 0 ? previous.passes : previous.passes + 1
        }
        let encoded = record.encode()
        let region = SetRegions.scrubName(name)
        return partition(await each(servers) { _, client throws(PMUError) in
            let writer: CheckpointPrimary
            do throws(PMUError) {
                writer = try await client.openPrimary(region)
            } catch {
                guard error.code == .unknownRegion else { throw error }
                // Sets created before scrubbing existed have no scrub region yet.
                try await client.createCheckpointRegion(region, sizeBytes: SetRegions.scrubRegionBytes, options: CheckpointOptions(mode: .overwrite))
                writer = try await client.openPrimary(region)
            }
            do throws(PMUError) {
                _ = try await writer.checkpoint(encoded)
                try await writer.close()
            } catch {
                try? await writer.close()
                throw error
            }
        }).failures
    }

    /// The newest scrub record of set `setID` that any reachable server holds (nil: never scrubbed).
    func scrubRecord(set name: String, setID: SetID) async -> ScrubRecord? {
        let region = SetRegions.scrubName(name)
        let found = partition(await each(reachable) { _, client throws(PMUError) -> ScrubRecord? in
            let backup = try await client.openBackup(region)
            let latest: Checkpoint?
            do throws(PMUError) {
                latest = try await backup.latest()
            } catch {
                try? await backup.close()
                throw error
            }
            try? await backup.close()
            return latest.flatMap { ScrubRecord.decode($0.payload) }
        }).values.values.compactMap { $0 }.filter { $0.setID == setID }
        return found.max { ($0.finishedNanoseconds, $0.passes) < ($1.finishedNanoseconds, $1.passes) }
    }
}

extension ClusterPrimary {
    /// One scrub pass run by the primary itself: reads concurrently with its checkpoints, and
    /// writes each repair through its own writer handles in a turn of its queue (never between a
    /// checkpoint's pieces and its marker), so the primary is not fenced and a piece displaced by
    /// a newer checkpoint is never written over.
    public nonisolated func scrub(_ options: ScrubOptions = ScrubOptions()) async throws(PMUError) -> ScrubReport {
        try await cluster.scrubPass(name, options: options, repairer: options.repair ? PrimaryRepairer(primary: self) : nil)
    }

    /// `Cluster.scrubEvery` through this primary: every `interval` until `passes` (nil: until cancelled).
    public nonisolated func scrubEvery(
        _ interval: Duration, passes: Int?, options: ScrubOptions = ScrubOptions(),
        onPass: @Sendable (Result<ScrubReport, PMUError>) async -> Void = { _ in }
    ) async -> Int {
        await scrubLoop(interval, passes: passes, onPass: onPass) { () async throws(PMUError) in try await self.scrub(options) }
    }
}

struct PrimaryRepairer: ScrubRepairer {
    let primary: ClusterPrimary

    func repair(_ piece: PieceRef, entry: Int, bytes: ByteBuffer) async throws(PMUError) -> Bool {
        try await primary.repairInTurn(piece, entry: entry, bytes: bytes)
    }

    func finish() async {}
}

/// Runs `pass` every `interval` (start to start) until `passes` have run (nil: until cancelled);
/// a failed pass is handed to `onPass` and the loop goes on. Returns how many passes ran.
public func scrubLoop(
    _ interval: Duration, passes: Int?, onPass: @Sendable (Result<ScrubReport, PMUError>) async -> Void,
    _ pass: () async throws(PMUError) -> ScrubReport
) async -> Int {
    var done = 0
    while passes.map({ done < $0 }) ?? true, !Task.isCancelled {
        let start = ContinuousClock.now
        do throws(PMUError) {
            await onPass(.success(try await pass()))
        } catch {
            await onPass(.failure(error))
        }
        done += 1
        if let passes, done >= passes { break }
        let next = start + interval
        if next > ContinuousClock.now { try? await Task.sleep(until: next, clock: .continuous) }
    }
    return done
}

private func nanoseconds(_ duration: Duration) -> UInt64 {
    let (seconds, attoseconds) = duration.components
    guard seconds >= 0 else { return 0 }
    let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
    return overflow ? UInt64.max : whole &+ UInt64(max(0, attoseconds) / 1_000_000_000)
}
