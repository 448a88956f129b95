#if canImport(Glibc)
import Glibc
#endif
import Logging
import PMULog
import PMUCore
import PMUStore

/// What a takeover did, returned to `pmuctl pair takeover` as JSON.
public struct TakeoverReport: Sendable, Codable, Equatable {
    public var portion: String
    public var portionDirectory: String
    public var fenceCommand: String
    public var replayedRecords: Int
    public var replayedBytes: UInt64
    /// Records for regions the owner deleted before it failed: nothing to replay them into.
    public var skippedDeletedRegions: Int
    public var regionsPersisted: Int
    public var regions: Int
    public var milliseconds: UInt64
    public var serving: String?
    /// Catalog records (CREATE, DELETE, writer-epoch raises) replayed into a replica's catalog,
    /// and those skipped (shared storage, or older than the replica's copy).
    public var catalogRecordsApplied: Int = 0
    public var catalogRecordsSkipped: Int = 0
}

/// Takes over the partner's portion, in the order that keeps the promise (ARCHITECTURE.md,
/// "Write mirroring"): fence, open the portion, replay the mirror log in sequence order, make the
/// replayed writes durable, and only then return the store for the server to serve.
public enum Takeover {
    /// Runs `fenceCommand` with /bin/sh; it must exit 0 before the owner's portion is touched
    /// (STONITH: power the owner off, revoke its storage access, or, on one machine, kill it).
    /// It sees PMU_PORTION and PMU_PORTION_DIR in its environment.
    static func fence(_ command: String, portion: String, directory: String) throws(PMUError) {
        var pid: pid_t = 0
        let argv: [String] = ["/bin/sh", "-c", command]
        var environment = ProcessEnvironment.current
        environment["PMU_PORTION"] = portion
        environment["PMU_PORTION_DIR"] = directory
        let env = environment.map { "\($0.key)=\($0.value)" }
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer {
            for pointer in cArgs { free(pointer) }
            for pointer in cEnv { free(pointer) }
        }
        let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, cArgs, cEnv)
        guard spawned == 0 else { throw PMUError(.ioError, "cannot run fence command: posix_spawn failed (\(spawned))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw PMUError(.ioError, "cannot wait for fence command") }
        }
        let exited = (status & 0x7F) == 0
        let code = (status >> 8) & 0xFF
        guard exited, code == 0 else {
            throw PMUError(.fenced, "fence command \(NameRules.quoted(command)) failed (\(exited ? "exit status \(code)" : "killed by signal \(status & 0x7F)")); the owner may still be running, so its portion was not touched. Make sure it is down, then retry")
        }
    }

    /// Fences, replays and persists; returns the portion's store, ready to serve.
    /// `replica`: the monitor's own copy of the portion (the shared-nothing replica), already
    /// open, and the origin through which its log's records predate the copy (not replayed).
    /// nil: the portion directory on shared storage is opened after the fence.
    public static func run(
        receiver: MirrorReceiver, portionDirectory: String, fenceCommand: String, storeConfiguration: StoreConfiguration, logger: Logger,
        replica: (directory: DataDirectory, store: RegionStore, replayAfter: UInt64)? = nil
    ) throws(PMUError) -> (DataDirectory, RegionStore, TakeoverReport) {
        let started = PairClock.nowMilliseconds()
        let portion = try PortionIdentity.load(dataDirectory: portionDirectory, create: false)
        guard portion != receiver.ownPortion else {
            throw PMUError(.invalidArgument, "--partner-portion \(portionDirectory) is this server's own portion; give the partner's data directory")
        }
        // 1. Fence: from here the old owner's mirror connection is refused, and it must be down.
        let log = try receiver.beginTakeover(portion: portion)
        try fence(fenceCommand, portion: portion, directory: portionDirectory)
        // 2. Open the portion. Its LOCK refuses if the owner still runs there.
        let directory: DataDirectory
        let store: RegionStore
        var replayAfter: UInt64 = 0
        if let replica {
            (directory, store, replayAfter) = replica
        } else {
            do throws(PMUError) {
                directory = try DataDirectory(path: portionDirectory)
            } catch {
                throw PMUError(error.code, "cannot take over portion \(portion): \(error.message). Two servers cannot serve one portion; the fence command did not stop its owner")
            }
            store = try RegionStore(directory: directory, configuration: storeConfiguration, logger: logger)
        }
        // 3. Replay every record not trimmed, in the owner's sequence order (records of concurrent
        //    writers may sit slightly out of order in the log). Catalog records (CREATE, DELETE, a
        //    writer-epoch raise) shape a replica's catalog before the writes that follow them; a
        //    portion on shared storage has its own catalog, durable before any change was
        //    acknowledged and at least as new as any record, so there they are skipped.
        let records = try MirrorReceiver.records(log, after: replayAfter)
        let replay = try CatalogReplay.make(records: records, catalog: store.list(after: "", limit: Int.max).records, applyCatalog: replica != nil)
        if let record = replay.outOfBounds.first {
            let size = replay.catalog[record.regionId]?.sizeBytes ?? 0
            throw PMUError(.damaged, "mirror log record \(record.sequence) writes [\(record.offset), +\(record.payload.count)) outside region id \(record.regionId) of \(size) bytes; not serving a portion replayed from a log that does not match it")
        }
        var touched = try replay.apply(to: store)
        var report = TakeoverReport(
            portion: portion, portionDirectory: portionDirectory, fenceCommand: fenceCommand, replayedRecords: 0, replayedBytes: 0,
            skippedDeletedRegions: replay.unknownRegionWrites, regionsPersisted: 0, regions: store.regionCount, milliseconds: 0, serving: nil,
            catalogRecordsApplied: replay.catalogRecordsApplied, catalogRecordsSkipped: replay.catalogRecordsSkipped)
        for case .write(let record) in replay.steps {
            report.replayedRecords += 1
            report.replayedBytes += UInt64(record.payload.count)
        }
        // 4. Durable before anything is served. A replica's copied bytes and the records applied
        //    to it since were not synced (only a copy pass syncs what it copied): every region.
        if replica != nil {
            for region in store.list(after: "", limit: Int.max).records where touched[region.id] == nil {
                touched[region.id] = try store.mapping(id: region.id)
            }
        }
        for mapping in touched.values {
            try mapping.persist(offset: 0, length: mapping.sizeBytes)
        }
        report.regionsPersisted = touched.count
        if let highest = records.last?.origin { try log.trim(through: highest) }
        report.milliseconds = PairClock.nowMilliseconds() - started
        logger.notice("took over partner's portion", metadata: [
            "portion": "\(portion)", "replayed": "\(report.replayedRecords)", "bytes": "\(report.replayedBytes)", "ms": "\(report.milliseconds)",
        ])
        return (directory, store, report)
    }
}

enum ProcessEnvironment {
    static var current: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
