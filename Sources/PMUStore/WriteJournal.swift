#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore
import PMUMetrics
import PMULog

public struct JournalConfiguration: Sendable {
    /// PERSISTs of ranges up to this many bytes go through the journal (`--journal-max-persist`);
    /// 0 turns the journal off and every PERSIST is an msync of its region file.
    public var maxPersistBytes: Int = 64 << 10
    /// The log under DATA_DIR/journal (`--journal-max` sets its bound). Records hold one PERSIST's
    /// bytes each, so the payload limit is `maxPersistBytes`.
    public var log: AppendLogConfiguration = {
        // Records are read back up to the largest a PERSIST may name, whatever `maxPersistBytes`
        // was when they were written.
        var log = AppendLogConfiguration(segmentBytes: 16 << 20, maxBytes: 128 << 20, sync: .dataSync, maxPayloadBytes: Limits.maxIOBytes)
        log.zeroFill = true
        return log
    }()
    /// Most PERSISTs one group commit takes (one fdatasync covers them all).
    public var maxBatch = 4096
    /// With records in the log and no PERSIST for this long, the worker applies the log (msyncs the
    /// regions it covers) and trims it, so an idle server's journal empties.
    public var idleCheckpointSeconds = 1.0

    public var enabled: Bool { maxPersistBytes > 0 }

    public init() {}

    public func validate() throws(PMUError) {
        guard maxPersistBytes >= 0, maxPersistBytes <= Limits.maxIOBytes else {
            throw PMUError(.invalidArgument, "--journal-max-persist \(maxPersistBytes) must be between 0 and \(Limits.maxIOBytes) bytes")
        }
        try log.validate()
        // One record of the largest journaled PERSIST must fit a batch (a quarter of the log).
        let record = UInt64(LogRecordFormat.encodedBytes(payloadBytes: maxPersistBytes))
        guard maxPersistBytes == 0 || log.maxBytes / 4 >= record else {
            throw PMUError(.invalidArgument, "--journal-max \(log.maxBytes) bytes is too small for --journal-max-persist \(maxPersistBytes): it must be at least 4 x \(record) bytes")
        }
    }
}

/// What opening the journal found.
public struct JournalRecoveryReport: Sendable, Equatable {
    /// Records the log held (not trimmed) at start.
    public var records = 0
    /// Whether their bytes were written back into the regions: after a machine restart (the boot id
    /// changed) or in the volatile test mode. After a crash of the process alone the region files'
    /// page cache already holds every acknowledged write, newer than the log, so nothing is applied.
    public var replayed = false
    /// Records of regions deleted since (skipped).
    public var skipped = 0
    /// Regions msynced before the log was trimmed.
    public var regions = 0
    public var repairedTornBytes = 0
}

/// The server's write journal: group commit for small PERSISTs (docs/ARCHITECTURE.md, "Durable
/// small writes: the journal"; file format in docs/DATA_FILES.md).
///
/// A PERSIST of at most `maxPersistBytes` does not msync its region file. It is queued; one worker
/// thread takes every queued PERSIST at once, copies each one's bytes from its region's mapping
/// into a log record, appends them all with one fdatasync (`AppendLog`), and only then completes
/// them, one hop per event loop for the whole batch. So one device flush covers many clients'
/// writes into many regions, as Redis's AOF does. The region files get those bytes by the
/// kernel's writeback; the worker applies the log (msync of the journaled ranges) and trims it
/// when idle, when it passes half its bound, and at shutdown.
///
/// The promise is exact: when a PERSIST completes, the bytes of its range, as they were when the
/// worker copied them (after the PERSIST arrived, so covering every write acknowledged before it
/// was sent), are on stable storage in the log, and recovery puts them back.
///
/// Ordering rules that keep replay from ever going backwards:
/// - Records are copied and appended in queue order by the one worker, so log order is copy order
///   and a later record of the same bytes holds newer data.
/// - A large PERSIST (an msync) of a region that has records in the log runs as a barrier on the
///   worker: everything queued before it is appended, then its range is msynced, then the whole
///   log is applied and trimmed before it completes. Otherwise a later replay could write an older
///   journaled value over bytes that PERSIST made durable.
/// - Replay runs only when the region files may have lost page cache (a new boot id, or the
///   volatile test mode); after kill -9 of the server alone the files are newer than the log.
public final class WriteJournal: @unchecked Sendable {
    public let configuration: JournalConfiguration
    public let recoveryReport: JournalRecoveryReport
    private let log: AppendLog
    private let logger: Logger
    /// Queue state, guarded by `queueLock`; its value is "the worker has something to do".
    private let queueLock = ConditionLock(value: false)
    private var queue: [Job] = []
    private var stopping = false
    private var abandoned = false
    /// Whether this run journals PERSISTs: false when the boot id or the writer's mode could not be
    /// recorded (or there is no boot id to record). Set once in init, before the worker starts.
    private var accepting = false
    /// Regions with records queued or in the log (not trimmed): a large PERSIST of one of them is
    /// a barrier. Under `queueLock`.
    private var journaled: Set<UInt64> = []
    /// Set once an append or sync failed: the log's state is unknown, so every later journaled
    /// PERSIST fails with it until the server restarts and recovery reads what is there.
    private var failure: PMUError?
    /// Worker only: the journaled range of each region in the log, to msync before a trim.
    private var live: [UInt64: (mapping: MappedRegion, lower: UInt64, upper: UInt64)] = [:]
    private var lastOrigin: UInt64
    /// Worker only: record bytes appended since the last trim (a checkpoint is due at half the bound).
    private var appendedBytes: UInt64 = 0
    private let worker = NIOThreadPool(numberOfThreads: 1)
    private let finished = ConditionLock(value: false)

    public typealias Completion = @Sendable (PMUError?) -> Void

    private struct Job {
        var mapping: MappedRegion
        var regionId: UInt64
        var offset: UInt64
        var length: UInt64
        /// msync this range, then apply and trim the whole log, instead of journaling it.
        var barrier: Bool
        var eventLoop: (any EventLoop)?
        var completion: Completion
    }

    /// Opens DATA_DIR/journal and recovers it (replays into `store`'s regions when needed, msyncs
    /// them and trims the log), then starts the worker.
    public init(directory: DataDirectory, store: RegionStore, configuration: JournalConfiguration, logger: Logger) throws(PMUError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        log = try AppendLog(path: directory.journalPath, configuration: configuration.log)
        let bootPath = directory.journalPath + "/boot"
        let boot = Self.currentBootId()
        let previousBoot = Sys.exists(bootPath) ? (try? Sys.readWholeFile(bootPath)).map { String(decoding: $0, as: UTF8.self) } : nil
        var report = JournalRecoveryReport()
        report.repairedTornBytes = log.repairedTornBytes
        // Replay when the run that wrote the log held region bytes where a process crash loses them
        // (shadows, the volatile test mode; marked by `volatile`), or this run does, or the
        // machine restarted. The writer's mode matters, not only this run's: a log written from
        // shmem shadows holds the only copy of its bytes even if this run maps the files.
        let volatilePath = directory.journalPath + "/volatile"
        let writerVolatile = Sys.exists(volatilePath)
        report.replayed = !store.regionBytesSurviveProcessCrash || writerVolatile || boot == nil || previousBoot != boot
        var touched: [UInt64: (mapping: MappedRegion, lower: UInt64, upper: UInt64)] = [:]
        var last: UInt64 = 0
        try log.replay { (record: LogRecord) throws(PMUError) in
            report.records += 1
            last = max(last, record.origin)
            guard record.kind == LogRecordFormat.kindWrite else {
                report.skipped += 1
                return
            }
            // Only a deleted region's records are skipped: any other failure to map (shadow memory
            // full, ENOMEM, EMFILE) must stop the start, or the trim below would drop acknowledged
            // PERSISTs.
            let mapping: MappedRegion
            do throws(PMUError) {
                mapping = try store.mapping(id: record.regionId)
            } catch where error.code == .unknownRegion {
                report.skipped += 1
                return
            } catch {
                throw PMUError(error.code, "cannot map region \(record.regionId) to recover journal record \(record.sequence): \(error.message). Fix the cause and restart; the journal is kept")
            }
            let end = record.offset + UInt64(record.payload.count) // cannot overflow: checked by the decoder
            guard end <= mapping.sizeBytes else {
                throw PMUError(.damaged, "journal record \(record.sequence) writes [\(record.offset), \(end)) of region \(record.regionId), which has \(mapping.sizeBytes) bytes; refusing to start. Move DATA_DIR/journal aside to start without it (its PERSISTed writes would be lost)")
            }
            if report.replayed {
                record.payload.withUnsafeBytes { mapping.write($0, at: record.offset) }
            }
            let range = touched[record.regionId].map { (min($0.lower, record.offset), max($0.upper, end)) } ?? (record.offset, end)
            touched[record.regionId] = (mapping, range.0, range.1)
        }
        for (_, entry) in touched {
            try entry.mapping.persist(offset: entry.lower, length: entry.upper - entry.lower)
        }
        report.regions = touched.count
        if last > 0 { try log.trim(through: last) }
        lastOrigin = max(last, log.trimmedThroughOrigin)
        // The boot id and the writer's mode must be on disk before the first record of this run:
        // recovery decides from them whether to replay. Written only when they change (a restart
        // on a full disk then needs no space); if they cannot be written (NO_SPACE, EIO), this run
        // journals nothing, so every PERSIST is an msync and no record can be misjudged later.
        do throws(PMUError) {
            if let boot, boot != previousBoot { try Self.writeBootFile(bootPath, boot) }
            try Self.markWriterMode(volatilePath, volatile: !store.regionBytesSurviveProcessCrash)
            accepting = boot != nil
        } catch {
            accepting = false
            logger.warning("write journal off for this run: \(error.message); every PERSIST is an msync of its region file")
        }
        recoveryReport = report
        if report.records > 0 || report.repairedTornBytes > 0 {
            logger.notice("recovered write journal", metadata: [
                "records": "\(report.records)", "replayed": "\(report.replayed)", "regions": "\(report.regions)",
                "skipped": "\(report.skipped)", "tornBytes": "\(report.repairedTornBytes)",
            ])
        }
        worker.start()
        worker.submit { [self] (_: NIOThreadPool.WorkItemState) in self.run() }
    }

    /// Whether DATA_DIR/journal exists (it must be recovered before regions are served).
    public static func exists(in directory: DataDirectory) -> Bool { Sys.exists(directory.journalPath) }

    /// Whether a PERSIST of `length` bytes goes through the journal.
    public func takes(length: UInt64) -> Bool { accepting && length > 0 && length <= UInt64(configuration.maxPersistBytes) }

    /// Whether `regionId` has records queued or in the log: a large PERSIST of it must be a barrier.
    public func covers(regionId: UInt64) -> Bool {
        queueLock.lock()
        defer { queueLock.unlock() }
        return journaled.contains(regionId)
    }

    /// Makes [offset, offset + length) durable through the journal (length at most
    /// `maxPersistBytes`), or with `barrier` by msync after applying the log. `completion` runs
    /// on `eventLoop` (inline on the worker when nil), nil meaning durable.
    public func persist(_ mapping: MappedRegion, regionId: UInt64, offset: UInt64, length: UInt64, barrier: Bool = false, eventLoop: (any EventLoop)?, completion: @escaping Completion) {
        precondition(offset <= mapping.sizeBytes && length <= mapping.sizeBytes - offset, "journal persist outside region")
        precondition(barrier || takes(length: length), "journal persist larger than its records")
        queueLock.lock()
        if let refused = stopping ? PMUError(.shuttingDown, "server is shutting down") : failure {
            queueLock.unlock()
            return Self.deliver([(eventLoop, { @Sendable in completion(refused) })])
        }
        queue.append(Job(mapping: mapping, regionId: regionId, offset: offset, length: length, barrier: barrier, eventLoop: eventLoop, completion: completion))
        if !barrier { journaled.insert(regionId) }
        queueLock.unlock(withValue: true)
    }

    /// Completes what is queued, applies and trims the log, and stops the worker. Later PERSISTs
    /// fail with SHUTTING_DOWN.
    public func stop() {
        queueLock.lock()
        if stopping {
            queueLock.unlock()
            return
        }
        stopping = true
        queueLock.unlock(withValue: true)
        finished.lock(whenValue: true)
        finished.unlock()
        try? worker.syncShutdownGracefully()
    }

    /// Test seam: the worker stops at once, neither completing what is queued nor applying the
    /// log, as a crash would leave it (the caller then drops the journal and its store).
    func crashForTesting() {
        queueLock.lock()
        stopping = true
        abandoned = true
        queueLock.unlock(withValue: true)
        finished.lock(whenValue: true)
        finished.unlock()
        try? worker.syncShutdownGracefully()
    }

    public var status: LogStatus { log.status }

    // MARK: Worker

    private func run() {
        while true {
            var timedOut = false
            if !queueLock.lock(whenValue: true, timeoutSeconds: configuration.idleCheckpointSeconds) {
                timedOut = true
                queueLock.lock()
            }
            if abandoned {
                queueLock.unlock()
                break
            }
            // A batch is bounded by count and by bytes (a quarter of the log's bound), so that one
            // group commit always fits in the log after a checkpoint and its copy stays bounded.
            var take = 0
            var batchBytes: UInt64 = 0
            let byteBound = configuration.log.maxBytes / 4
            while take < queue.count, take < configuration.maxBatch {
                let bytes = UInt64(LogRecordFormat.encodedBytes(payloadBytes: Int(queue[take].length)))
                if take > 0, batchBytes + bytes > byteBound { break }
                batchBytes += bytes
                take += 1
            }
            let batch = Array(queue.prefix(take))
            queue.removeFirst(batch.count)
            let done = stopping && queue.isEmpty
            queueLock.unlock(withValue: !queue.isEmpty || stopping)
            if !batch.isEmpty { process(batch) }
            if (timedOut || done) && !live.isEmpty {
                do throws(PMUError) { try checkpoint() } catch { fail(error) }
            }
            if done && batch.isEmpty { break }
        }
        finished.lock()
        finished.unlock(withValue: true)
    }

    private func process(_ batch: [Job]) {
        var start = 0
        while start < batch.count {
            if batch[start].barrier {
                let job = batch[start]
                var error: PMUError? = currentFailure()
                if error == nil {
                    do throws(PMUError) {
                        try job.mapping.persist(offset: job.offset, length: job.length)
                        try checkpoint()
                    } catch let failed {
                        error = failed
                    }
                }
                let outcome = error
                let completion = job.completion
                Self.deliver([(job.eventLoop, { @Sendable in completion(outcome) })])
                start += 1
                continue
            }
            var end = start
            while end < batch.count, !batch[end].barrier { end += 1 }
            commit(batch[start..<end])
            start = end
        }
    }

    /// One group commit: copy, append, one fdatasync, then complete every job.
    private func commit(_ jobs: ArraySlice<Job>) {
        var error = currentFailure()
        if error == nil {
            do throws(PMUError) {
                var entries: [LogEntry] = []
                entries.reserveCapacity(jobs.count)
                var origin = lastOrigin
                for job in jobs {
                    origin += 1
                    let bytes = Array(job.mapping.bytes(at: job.offset, length: Int(job.length)))
                    entries.append(LogEntry(origin: origin, regionId: job.regionId, epoch: 0, offset: job.offset, payload: bytes))
                }
                let incoming = entries.reduce(UInt64(0)) { $0 + UInt64(LogRecordFormat.encodedBytes(payloadBytes: $1.payload.count)) }
                if !live.isEmpty, appendedBytes + incoming > configuration.log.maxBytes / 2 { try checkpoint() }
                let started = PMUMetrics.now()
                do throws(PMUError) {
                    try log.append(entries)
                } catch where error.code == .logFull && !live.isEmpty {
                    try checkpoint()
                    try log.append(entries)
                }
                PMUMetrics.journalCommitted(persists: entries.count, nanoseconds: PMUMetrics.now() &- started)
                lastOrigin = origin
                appendedBytes += incoming
                for job in jobs {
                    let end = job.offset + job.length
                    let range = live[job.regionId].map { (min($0.lower, job.offset), max($0.upper, end)) } ?? (job.offset, end)
                    live[job.regionId] = (job.mapping, range.0, range.1)
                }
            } catch let failed {
                // A record may or may not be in the log: later ones must not pretend to know.
                error = failed.code == .logFull ? failed : PMUError(failed.code, "the write journal failed, so this PERSIST is not durable: \(failed.message). Later journaled PERSISTs fail until pmu-server restarts")
                if failed.code != .logFull { fail(error!) }
            }
        }
        let outcome = error
        Self.deliver(jobs.map { job in
            let completion = job.completion
            return (job.eventLoop, { @Sendable in completion(outcome) })
        })
    }

    /// Applies the log to the regions (msync of each one's journaled range) and trims it.
    private func checkpoint() throws(PMUError) {
        for (_, entry) in live {
            try entry.mapping.persist(offset: entry.lower, length: entry.upper - entry.lower)
        }
        if lastOrigin > log.trimmedThroughOrigin { try log.trim(through: lastOrigin) }
        live.removeAll()
        appendedBytes = 0 // every segment's records are trimmed: the trim removed them all
        queueLock.lock()
        journaled = Set(queue.lazy.filter { !$0.barrier }.map(\.regionId))
        queueLock.unlock()
    }

    private func currentFailure() -> PMUError? {
        queueLock.lock()
        defer { queueLock.unlock() }
        return failure
    }

    private func fail(_ error: PMUError) {
        logger.error("write journal failed; journaled PERSISTs fail until restart", metadata: ["error": "\(error)"])
        queueLock.lock()
        if failure == nil { failure = error }
        queueLock.unlock()
    }

    /// One `execute` per event loop for the whole batch (inline when there is no loop).
    private static func deliver(_ completions: [((any EventLoop)?, @Sendable () -> Void)]) {
        var byLoop: [ObjectIdentifier: (any EventLoop, [@Sendable () -> Void])] = [:]
        var order: [ObjectIdentifier] = []
        for (loop, completion) in completions {
            guard let loop else {
                completion()
                continue
            }
            let key = ObjectIdentifier(loop)
            if byLoop[key] == nil {
                byLoop[key] = (loop, [])
                order.append(key)
            }
            byLoop[key]!.1.append(completion)
        }
        for key in order {
            let (loop, batch) = byLoop[key]!
            loop.execute { for completion in batch { completion() } }
        }
    }

    // MARK: Boot identity

    /// The kernel's boot id: it changes at every boot, so an equal one means the page cache the
    /// previous server process wrote into is still the one in use.
    static func currentBootId() -> String? {
        guard let bytes = try? Sys.readWholeFile("/proc/sys/kernel/random/boot_id") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self).filter { !$0.isWhitespace }
        return text.isEmpty ? nil : text
    }

    /// Records, durably and before the first append of this run, whether this run's region bytes
    /// die with the process: the next start must then replay even if it maps the files directly.
    private static func markWriterMode(_ path: String, volatile: Bool) throws(PMUError) {
        guard volatile != Sys.exists(path) else { return }
        if volatile {
            try writeBootFile(path, "regions held in memory until PERSIST: replay after any crash\n")
        } else {
            guard unlink(path) == 0 || errno == ENOENT else { throw Sys.error(.ioError, "cannot remove journal mode file", path) }
            try Sys.fsyncPath(String(path[..<path.lastIndex(of: "/")!]), directory: true)
        }
    }

    private static func writeBootFile(_ path: String, _ boot: String) throws(PMUError) {
        let temp = path + ".new"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot write journal boot file", temp) }
        let bytes = Array(boot.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temp, path) == 0 else {
            unlink(temp)
            throw Sys.error(.ioError, "cannot write journal boot file", path)
        }
        try Sys.fsyncPath(String(path[..<path.lastIndex(of: "/")!]), directory: true)
    }
}
