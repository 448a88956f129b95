#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import PMUCore
import SystemPackage

/// When an append is on stable storage.
public enum LogSyncPolicy: String, Sendable, CaseIterable {
    /// Appended into the page cache only: survives a crash of this process, not of its machine.
    case pageCache = "page-cache"
    /// fdatasync after every append batch before it returns: survives the loss of this machine.
    case dataSync = "fdatasync"
}

public struct AppendLogConfiguration: Sendable, Equatable {
    /// Size of each preallocated segment file. A record never spans segments.
    public var segmentBytes: Int
    /// Bound on the bytes of all segment files together: an append that would need more throws
    /// LOG_FULL (backpressure) and appends nothing.
    public var maxBytes: UInt64
    public var sync: LogSyncPolicy
    /// Largest payload of one record (also what the decoder accepts).
    public var maxPayloadBytes: Int
    /// Write zeros over each new segment (after preallocating it) before records go in. An append
    /// into fallocate'd space converts an unwritten extent, so its fdatasync must also commit the
    /// filesystem's journal; into written zeros it flushes only the data: 2-3x faster per sync on
    /// ext4 here (the write journal sets this; creating a segment then writes its size once).
    public var zeroFill = false

    public init(segmentBytes: Int = 32 << 20, maxBytes: UInt64 = 256 << 20, sync: LogSyncPolicy = .dataSync, maxPayloadBytes: Int = LogRecordFormat.defaultMaxPayloadBytes) {
        self.segmentBytes = segmentBytes
        self.maxBytes = maxBytes
        self.sync = sync
        self.maxPayloadBytes = maxPayloadBytes
    }

    public func validate() throws(PMUError) {
        guard maxPayloadBytes >= 0, segmentBytes >= LogRecordFormat.headerBytes + maxPayloadBytes, segmentBytes <= 1 << 30 else {
            throw PMUError(.invalidArgument, "log segment size \(segmentBytes) must hold one largest record (\(LogRecordFormat.headerBytes + maxPayloadBytes) bytes) and be at most 1 GiB")
        }
        guard maxBytes >= UInt64(segmentBytes) else {
            throw PMUError(.invalidArgument, "log bound \(maxBytes) bytes is smaller than one segment (\(segmentBytes) bytes)")
        }
    }
}

/// A record to append; the log assigns its sequence.
public struct LogEntry: Sendable, Equatable {
    public var kind: UInt16
    public var origin: UInt64
    public var regionId: UInt64
    public var epoch: UInt64
    public var offset: UInt64
    public var payload: [UInt8]

    public init(kind: UInt16 = LogRecordFormat.kindWrite, origin: UInt64, regionId: UInt64, epoch: UInt64, offset: UInt64, payload: [UInt8]) {
        self.kind = kind
        self.origin = origin
        self.regionId = regionId
        self.epoch = epoch
        self.offset = offset
        self.payload = payload
    }
}

/// What a log holds, for status reports.
public struct LogStatus: Sendable, Equatable {
    public var segments: Int
    /// Bytes of the segment files (preallocated), at most the configured bound.
    public var allocatedBytes: UInt64
    /// Bytes of records in them, trimmed or not.
    public var usedBytes: UInt64
    /// Records in the segments, including trimmed ones not yet reclaimed.
    public var records: Int
    /// Records not trimmed.
    public var liveRecords: Int
    public var nextSequence: UInt64
    /// Records with an origin at most this are no longer needed.
    public var trimmedThrough: UInt64
    public var maxOrigin: UInt64
    /// fdatasyncs of records done since the log was opened (group commit makes it fewer than
    /// the records appended).
    public var dataSyncs: UInt64 = 0
}

/// A file-backed append-only log of `LogRecord`s (docs/DATA_FILES.md, "The append-only log").
///
/// One directory: segment files `<first sequence, 16 hex digits>.pmulog`, each preallocated to
/// `segmentBytes` (so an append never allocates blocks and unwritten space reads as zeros), and
/// `trim`, 24 bytes naming the origin trimmed through and the next sequence. Records are written
/// with pwrite; a record that does not fit the active segment starts a new one. Trimming removes
/// whole segments whose every record is trimmed; a partially trimmed segment stays until its last
/// record is trimmed too, and replay skips its trimmed records.
///
/// Crash order: a segment file is preallocated and synced (with its directory) before a record
/// goes into it; at open a torn last record is zeroed, damage followed by valid records refuses
/// the open. A lost `trim` file only makes replay redo writes that were already durable.
///
/// Thread-safe: one lock around appends, trims and the segment table. It is held across the
/// pwrite and, with `.dataSync`, the fdatasync of a batch: appends are ordered by it, and a
/// caller wanting throughput batches several records into one `append`.
public final class AppendLog: @unchecked Sendable {
    public let path: String
    public let configuration: AppendLogConfiguration
    /// What the open found and repaired: bytes of a torn tail zeroed.
    public let repairedTornBytes: Int
    private let lock = NIOLock()
    private var segments: [Segment] = []
    private var nextSequence: UInt64
    private var trimmedThrough: UInt64
    private var active: Int32 = -1
    /// Set by `seal`: every later append throws it.
    private var sealed: PMUError? = nil
    /// Group commit (`appendUnsynced` + `sync(through:)`): every record up to this sequence is on
    /// stable storage. `syncLock` is held across one fdatasync, never with `lock` held.
    private var durableThrough: UInt64 = 0
    private var dataSyncs: UInt64 = 0
    private let syncLock = NIOLock()

    private struct Segment {
        var firstSequence: UInt64
        var usedBytes: Int
        var sizeBytes: Int
        var records: Int
        var maxOrigin: UInt64
        /// Each record's origin, to count the live ones (8 bytes a record, bounded with the log).
        var origins: [UInt64]
        var path: String
    }

    public init(path: String, configuration: AppendLogConfiguration = .init()) throws(PMUError) {
        try configuration.validate()
        self.path = path
        self.configuration = configuration
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw LogIO.error("cannot create log directory", path)
        }
        let trim = try LogIO.readTrimFile(path + "/trim")
        trimmedThrough = trim?.trimmedThrough ?? 0
        nextSequence = trim?.nextSequence ?? 1
        var repaired = 0
        let names = try LogIO.listDirectory(path).compactMap(Self.firstSequence(ofFile:)).sorted()
        for (index, first) in names.enumerated() {
            let file = path + "/" + Self.fileName(first)
            let bytes = try LogIO.readWholeFile(file)
            if let previous = segments.last, previous.firstSequence + UInt64(previous.records) != first {
                throw PMUError(.damaged, "log \(path): segment \(Self.fileName(first)) should start at sequence \(previous.firstSequence + UInt64(previous.records)); a segment is missing or foreign. Move the log aside to start without it")
            }
            let scan = LogRecordFormat.scan(bytes, firstSequence: first, maxPayloadBytes: configuration.maxPayloadBytes)
            let isLast = index == names.count - 1
            switch scan.stop {
            case .clean:
                break
            case .torn(let offset, let reason) where isLast:
                // A crash during the last append: those bytes were never acknowledged.
                try LogIO.zero(file, from: offset, to: bytes.count)
                repaired = bytes.count - offset
                _ = reason
            case .torn(let offset, let reason), .corrupt(let offset, let reason):
                throw PMUError(.damaged, "log segment \(file) is damaged at byte \(offset) (\(reason))\(isLast ? " and valid records follow" : " and is not the last segment"); refusing to open rather than drop records. Move the log aside or restore it")
            }
            let origins = scan.records.map(\.origin)
            let segment = Segment(firstSequence: first, usedBytes: scan.validBytes, sizeBytes: bytes.count, records: scan.records.count, maxOrigin: origins.max() ?? 0, origins: origins, path: file)
            segments.append(segment)
            nextSequence = first + UInt64(scan.records.count)
        }
        // A last segment holding no record and smaller than a segment is a crash between its
        // creation and its preallocation (startSegment): nothing was written there. Removed, so
        // the next append creates it again; kept, that append would find it too small and try
        // to create the same name (O_EXCL: EEXIST) — every later append would fail.
        if let last = segments.last, last.records == 0, last.sizeBytes < configuration.segmentBytes {
            guard unlink(last.path) == 0 || errno == ENOENT else { throw LogIO.error("cannot remove an unprepared log segment", last.path) }
            segments.removeLast()
        }
        repairedTornBytes = repaired
        durableThrough = nextSequence - 1
        if let last = segments.last {
            active = open(last.path, O_RDWR | O_CLOEXEC)
            guard active >= 0 else { throw LogIO.error("cannot open log segment", last.path) }
        }
    }

    deinit {
        if active >= 0 { close(active) }
    }

    static func fileName(_ first: UInt64) -> String {
        let hex = String(first, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + ".pmulog"
    }

    static func firstSequence(ofFile name: String) -> UInt64? {
        guard name.hasSuffix(".pmulog"), name.utf8.count == 16 + 7 else { return nil }
        let hex = name.dropLast(7)
        guard hex.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return UInt64(hex, radix: 16)
    }

    /// Records with an origin at most this are trimmed (cheap: no counting, unlike `status`).
    public var trimmedThroughOrigin: UInt64 { lock.withLock { trimmedThrough } }

    public var status: LogStatus {
        lock.withLock {
            LogStatus(
                segments: segments.count, allocatedBytes: segments.reduce(0) { $0 + UInt64($1.sizeBytes) },
                usedBytes: segments.reduce(0) { $0 + UInt64($1.usedBytes) }, records: segments.reduce(0) { $0 + $1.records },
                liveRecords: segments.reduce(0) { count, segment in count + segment.origins.lazy.filter { $0 > self.trimmedThrough }.count }, nextSequence: nextSequence, trimmedThrough: trimmedThrough,
                maxOrigin: segments.map(\.maxOrigin).max() ?? 0, dataSyncs: dataSyncs)
        }
    }

    /// Appends the entries in order, all or none: LOG_FULL when they would need a segment beyond
    /// the bound. With `.dataSync` they are on stable storage when this returns. Returns the
    /// sequence of the last one.
    @discardableResult
    public func append(_ entries: [LogEntry]) throws(PMUError) -> UInt64 {
        try append(entries, syncing: configuration.sync == .dataSync)
    }

    /// Group commit, first half: appends like `append` but returns before any fdatasync (with
    /// `.dataSync`, a segment that fills up is still synced before the next one starts, so only
    /// the active segment can hold unsynced records). Pass the returned sequence to
    /// `sync(through:)` before acknowledging the records.
    public func appendUnsynced(_ entries: [LogEntry]) throws(PMUError) -> UInt64 {
        try append(entries, syncing: false)
    }

    /// Group commit, second half: returns once every record up to `sequence` is on stable storage
    /// (at once with `.pageCache`, whose promise is the page cache). One fdatasync covers every
    /// record appended before it starts: callers arriving while one runs wait for it, and the
    /// first of them then syncs for all who came meanwhile.
    public func sync(through sequence: UInt64) throws(PMUError) {
        guard configuration.sync == .dataSync, lock.withLock({ durableThrough < sequence }) else { return }
        try syncLock.withTypedLock { () throws(PMUError) in
            let target = try lock.withTypedLock { () throws(PMUError) -> (fd: Int32, through: UInt64, path: String)? in
                guard durableThrough < sequence else { return nil }
                guard active >= 0, let last = segments.last else {
                    // No active segment: the rest were synced when their segment closed, or trimmed.
                    durableThrough = nextSequence - 1
                    return nil
                }
                // A duplicate, so a trim closing the active segment meanwhile cannot pull the
                // descriptor from under the fdatasync.
                let fd = dup(active)
                guard fd >= 0 else { throw LogIO.error("cannot duplicate the descriptor of log segment", last.path) }
                return (fd, nextSequence - 1, last.path)
            }
            guard let target else { return }
            defer { close(target.fd) }
            try LogIO.dataSync(target.fd, target.path)
            lock.withLock {
                durableThrough = max(durableThrough, target.through)
                dataSyncs += 1
            }
        }
    }

    private func append(_ entries: [LogEntry], syncing: Bool) throws(PMUError) -> UInt64 {
        try lock.withTypedLock { () throws(PMUError) -> UInt64 in
            if let sealed { throw sealed }
            for entry in entries where entry.payload.count > configuration.maxPayloadBytes {
                throw PMUError(.requestTooLarge, "log record payload of \(entry.payload.count) bytes exceeds the log's limit of \(configuration.maxPayloadBytes)")
            }
            // Capacity first, so a full log appends nothing of the batch.
            var used = segments.last?.usedBytes ?? configuration.segmentBytes
            var size = segments.last?.sizeBytes ?? 0
            var newSegments = 0
            for entry in entries {
                let bytes = LogRecordFormat.encodedBytes(payloadBytes: entry.payload.count)
                if used + bytes > size {
                    newSegments += 1
                    used = 0
                    size = configuration.segmentBytes
                }
                used += bytes
            }
            let allocated = segments.reduce(UInt64(0)) { $0 + UInt64($1.sizeBytes) }
            guard allocated + UInt64(newSegments) * UInt64(configuration.segmentBytes) <= configuration.maxBytes else {
                throw PMUError(.logFull, "log \(path) is full: \(segments.count) segments of \(configuration.segmentBytes) bytes reach its bound of \(configuration.maxBytes) bytes; it must be trimmed first (a mirror log is trimmed when the owner PERSISTs)")
            }
            var toSync: Set<Int32> = []
            for entry in entries {
                let record = LogRecord(kind: entry.kind, sequence: nextSequence, origin: entry.origin, regionId: entry.regionId, epoch: entry.epoch, offset: entry.offset, payload: entry.payload)
                let encoded = LogRecordFormat.encode(record)
                if segments.isEmpty || segments[segments.count - 1].usedBytes + encoded.count > segments[segments.count - 1].sizeBytes {
                    if active >= 0 {
                        if configuration.sync == .dataSync {
                            try LogIO.dataSync(active, segments[segments.count - 1].path)
                            dataSyncs += 1
                        }
                        toSync.remove(active)
                        close(active)
                        active = -1
                    }
                    try startSegment()
                }
                let last = segments.count - 1
                try LogIO.pwriteAll(active, encoded, at: segments[last].usedBytes, path: segments[last].path)
                segments[last].usedBytes += encoded.count
                segments[last].records += 1
                segments[last].maxOrigin = max(segments[last].maxOrigin, entry.origin)
                segments[last].origins.append(entry.origin)
                nextSequence += 1
                toSync.insert(active)
            }
            if syncing, let last = segments.last {
                for fd in toSync {
                    try LogIO.dataSync(fd, last.path)
                    dataSyncs += 1
                }
                durableThrough = nextSequence - 1
            }
            return nextSequence - 1
        }
    }

    private func startSegment() throws(PMUError) {
        let file = path + "/" + Self.fileName(nextSequence)
        let fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LogIO.error("cannot create log segment", file) }
        let result = posix_fallocate(fd, 0, off_t(configuration.segmentBytes))
        guard result == 0 else {
            close(fd)
            unlink(file)
            throw LogIO.error(result == ENOSPC ? "no space to preallocate log segment" : "cannot preallocate log segment", file, errno: result, code: result == ENOSPC ? .noSpace : .ioError)
        }
        if configuration.zeroFill {
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            var at = 0
            while at < configuration.segmentBytes {
                let chunk = min(zeros.count, configuration.segmentBytes - at)
                do throws(PMUError) {
                    try LogIO.pwriteAll(fd, chunk == zeros.count ? zeros : Array(zeros[0..<chunk]), at: at, path: file)
                } catch {
                    close(fd)
                    unlink(file)
                    throw error
                }
                at += chunk
            }
        }
        if configuration.sync == .dataSync {
            // The segment and its name must exist after a machine crash before records go in.
            do throws(PMUError) {
                try LogIO.fullSync(fd, file)
                try LogIO.syncDirectory(path)
            } catch {
                close(fd)
                unlink(file)
                throw error
            }
        }
        active = fd
        segments.append(Segment(firstSequence: nextSequence, usedBytes: 0, sizeBytes: configuration.segmentBytes, records: 0, maxOrigin: 0, origins: [], path: file))
    }

    /// Refuses every later append with `error`. Waits for an append in progress (it holds the
    /// lock), so once this returns the log's contents are final: a takeover seals the log before
    /// it replays it, and no acknowledged record can land behind the replay.
    public func seal(_ error: PMUError) {
        lock.withLock { sealed = error }
    }

    /// Records with origin at most `origin` are no longer needed (their writes are durable where
    /// they belong). Reclaims every segment all of whose records are trimmed, oldest first; the
    /// active one too, so the next append starts a fresh segment. Trimming backwards is a no-op.
    public func trim(through origin: UInt64) throws(PMUError) {
        try lock.withTypedLock { () throws(PMUError) in
            guard origin > trimmedThrough else { return }
            trimmedThrough = origin
            try LogIO.writeTrimFile(path + "/trim", trimmedThrough: trimmedThrough, nextSequence: nextSequence, sync: configuration.sync == .dataSync)
            var removed = 0
            while removed < segments.count, segments[removed].maxOrigin <= origin {
                if removed == segments.count - 1, active >= 0 {
                    close(active)
                    active = -1
                }
                unlink(segments[removed].path)
                removed += 1
            }
            if removed > 0 {
                segments.removeFirst(removed)
                if configuration.sync == .dataSync { try LogIO.syncDirectory(path) }
            }
        }
    }

    /// Every record not trimmed, in log order, read back from the files.
    public func replay(_ body: (LogRecord) throws(PMUError) -> Void) throws(PMUError) {
        let (files, trimmed) = lock.withLock { (segments.map { ($0.path, $0.firstSequence, $0.usedBytes) }, trimmedThrough) }
        for (file, first, used) in files {
            let bytes = try LogIO.readWholeFile(file)
            let scan = LogRecordFormat.scan(Array(bytes.prefix(used)), firstSequence: first, maxPayloadBytes: configuration.maxPayloadBytes)
            if case .corrupt(let offset, let reason) = scan.stop {
                throw PMUError(.damaged, "log segment \(file) is damaged at byte \(offset) (\(reason))")
            }
            if case .torn(let offset, let reason) = scan.stop {
                throw PMUError(.damaged, "log segment \(file) changed under the log: damaged at byte \(offset) (\(reason))")
            }
            for record in scan.records where record.origin > trimmed { try body(record) }
        }
    }
}

extension NIOLock {
    func withTypedLock<T>(_ body: () throws(PMUError) -> T) throws(PMUError) -> T {
        let result: Result<T, PMUError> = withLock {
            do throws(PMUError) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
