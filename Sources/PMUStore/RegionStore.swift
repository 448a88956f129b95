#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import PMUCore

public struct StoreConfiguration: Sendable {
    /// Largest region a client may create.
    public var maxRegionBytes: UInt64
    /// Most regions the store holds. Each live region that has been opened keeps one mapping, and
    /// Linux allows 65530 mappings per process by default (vm.max_map_count).
    public var maxRegions: Int
    /// Free space a create must leave on the data directory's filesystem, so the catalog and other
    /// regions' metadata can still be written when regions fill the disk. Part of it (half, at
    /// most 8 MiB: `catalogHeadroomBytes`) is kept preallocated at the catalog's end, so metadata
    /// changes still work when something else fills the disk.
    public var reserveFreeBytes: UInt64
    /// Pre-fault each new region's pages at create (`--populate`): create then costs O(size) and the
    /// region occupies page cache at once, but first writes run at memcpy speed instead of paying
    /// the kernel's zeroing of every new page-cache page (70% of the server's time in a profile of
    /// a 1 GiB first write), and the zeros written back convert the file's unwritten extents early.
    public var populateOnCreate: Bool
    /// Test mode only (`--test-volatile-until-persist`): region bytes stay in process memory
    /// until PERSIST writes them to the file (see `RegionMemory.volatileUntilPersist`).
    public var volatileUntilPersist = false
    /// Hold regions in shmem shadows copied out on PERSIST (`RegionMemory.shadow`): set by the
    /// server when the verbs transport serves a data directory on a disk filesystem.
    public var shadowRegions = false
    /// Bound on the shadows' total size (`--rdma-shadow-memory`): mapping a region whose shadow
    /// would exceed it fails SHADOW_MEMORY_FULL. Each mapped region keeps its shadow until deleted.
    public var shadowLimitBytes: UInt64 = StoreConfiguration.defaultShadowLimitBytes

    /// Half of physical memory: shadows are RAM, pinned while verbs clients hold grants.
    public static var defaultShadowLimitBytes: UInt64 {
        UInt64(max(0, sysconf(Int32(_SC_PHYS_PAGES)))) * UInt64(Sys.pageSize) / 2
    }

    public var regionMemory: RegionMemory {
        volatileUntilPersist ? .volatileUntilPersist : shadowRegions ? .shadow : .fileMapping
    }

    /// Blocks the catalog keeps allocated past its end (see `CatalogFile`).
    public var catalogHeadroomBytes: Int { Int(min(reserveFreeBytes / 2, 8 << 20)) }

    public init(maxRegionBytes: UInt64 = 1 << 40, maxRegions: Int = 50_000, reserveFreeBytes: UInt64 = 64 << 20, populateOnCreate: Bool = false) {
        self.maxRegionBytes = maxRegionBytes
        self.maxRegions = maxRegions
        self.reserveFreeBytes = reserveFreeBytes
        self.populateOnCreate = populateOnCreate
    }
}

/// What start-up recovery found and repaired; logged by the server and returned for tests.
public struct RecoveryReport: Sendable, Equatable {
    public var regions = 0
    public var catalogRecords = 0
    public var tornTailBytes = 0
    public var removedIncompleteCreates: [String] = []
    public var removedOrphans: [String] = []
    public var quarantined: [String] = []
    public var compacted = false
    /// Start-up compaction was due but could not write (a full disk, say): skipped, retried later.
    public var compactionSkipped: String?

    public var repairedSomething: Bool {
        tornTailBytes > 0 || !removedIncompleteCreates.isEmpty || !removedOrphans.isEmpty || !quarantined.isEmpty
    }
}

/// The regions of one data directory: their files, mappings and crash-consistent metadata.
///
/// Invariant kept across kill -9 at any instant: a region is in the catalog if and only if its
/// file exists under its final name with exactly the catalog's size.
/// - create: preallocate ID.tmp, fsync, rename to ID.region, fsync dir, then append the catalog
///   record and fdatasync. A crash before the record leaves a file recovery deletes.
/// - delete: append the delete record and fdatasync, then unlink. A crash before the unlink leaves
///   a file with no record, which recovery deletes.
///
/// Thread-safe, with two locks, so that lookups never wait for a disk:
/// - `catalogLock` serialises metadata changes: it is held across the catalog append and its
///   fdatasync, and across compaction. Only the metadata pool takes it.
/// - `lock` guards the in-memory state (catalog state, name index, mappings, creates and deletes in
///   progress) and is held for lookups and in-memory updates only, never across I/O. STAT, LIST and
///   OPEN's lookups on event loops take only this one.
/// A change reads the state under `lock`, appends and syncs under `catalogLock` alone, then applies
/// under `lock`: the catalog lock keeps changes in log order, so nothing changes the state's
/// durable part in between. Order: `catalogLock`, then `lock`. Region bytes are accessed through
/// `MappedRegion` without either. Mutating calls block (fsync, fallocate): run them off event loops.
public final class RegionStore: @unchecked Sendable {
    public let directory: DataDirectory
    public let configuration: StoreConfiguration
    public private(set) var recoveryReport: RecoveryReport
    private let logger: Logger
    private let catalogLock = NIOLock()
    private let lock = NIOLock()
    private var state: CatalogState
    /// Names in LIST order, kept next to `state` under `lock`.
    private var names: SortedNameIndex
    private let catalog: CatalogFile
    private var mappings: [UInt64: MappedRegion] = [:]
    /// Bytes of shadows mapped or being loaded (`RegionMemory.shadow`), against `shadowLimitBytes`.
    private var shadowBytes: UInt64 = 0
    /// Names whose create is in progress, so two concurrent creates of one name cannot both proceed.
    private var creating: Set<String> = []
    /// Regions whose delete is being committed: no new mapping (so no new grant) for them.
    private var deleting: Set<UInt64> = []
    /// After a compaction failed: retry once the log has grown by this many more records.
    private var compactionRetryAt: Int?
    private static let compactionRetryRecords = 64

    public init(directory: DataDirectory, configuration: StoreConfiguration = .init(), logger: Logger) throws(PMUError) {
        self.directory = directory
        self.configuration = configuration
        self.logger = logger
        var report = RecoveryReport()

        // 1. Replay the catalog, cutting off a torn last record.
        let bytes = Sys.exists(directory.catalogPath) ? try Sys.readWholeFile(directory.catalogPath) : []
        let scan = CatalogFormat.scan(bytes)
        switch scan.tail {
        case .clean:
            break
        case .torn(let tornBytes):
            report.tornTailBytes = tornBytes
            logger.warning("catalog ends in a partial record (a crash during a metadata change); discarding it", metadata: [
                "bytes": "\(tornBytes)", "offset": "\(scan.validBytes)",
            ])
        case .corrupt(let offset, let reason):
            throw PMUError(
                .ioError,
                "catalog \(directory.catalogPath) is damaged at byte \(offset) (\(reason)) and valid records follow; refusing to start rather than lose committed metadata. Restore the data directory from a backup or move the damaged catalog aside.")
        }
        var state = CatalogState(replaying: scan.entries)
        report.catalogRecords = scan.entries.count
        if Sys.exists(directory.catalogTempPath) {
            // A compaction that crashed before its rename: the old log is still the truth.
            unlink(directory.catalogTempPath)
        }
        catalog = try CatalogFile(
            path: directory.catalogPath, tempPath: directory.catalogTempPath, directoryPath: directory.path,
            validBytes: scan.validBytes, records: scan.entries.count, headroomBytes: configuration.catalogHeadroomBytes,
            warn: { [logger] message in logger.warning("\(message)") })

        // 2. Reconcile region files with the catalog.
        var removed = false
        var lost: [UInt64] = []
        var seen = Set<UInt64>()
        for file in try Sys.listDirectory(directory.regionsPath) {
            let path = directory.regionsPath + "/" + file
            if file.hasSuffix(".tmp") {
                unlink(path)
                removed = true
                report.removedIncompleteCreates.append(file)
                logger.notice("removed region file of a create that did not commit", metadata: ["file": "\(file)"])
                continue
            }
            guard file.hasSuffix(".region"), file.count == 16 + 7, file.dropLast(7).allSatisfy({ $0.isHexDigit && !$0.isUppercase }),
                let id = UInt64(file.dropLast(7), radix: 16)
            else {
                if !file.hasSuffix(".quarantine") {
                    logger.warning("ignoring unexpected file in regions directory", metadata: ["file": "\(file)"])
                }
                continue
            }
            guard let record = state.regions[id] else {
                unlink(path)
                removed = true
                report.removedOrphans.append(file)
                logger.notice("removed region file with no catalog record (create before commit, or delete after commit)", metadata: ["file": "\(file)"])
                continue
            }
            seen.insert(id)
            if Sys.fileSize(path) != record.sizeBytes {
                // Cannot happen through PMU (files are preallocated before the record commits); keep
                // the bytes for an operator rather than serve a region whose size is wrong.
                let quarantine = directory.regionsPath + "/" + DataDirectory.hex(id) + ".quarantine"
                guard rename(path, quarantine) == 0 else {
                    throw Sys.error(.ioError, "cannot move aside mis-sized region file", path)
                }
                removed = true // the directory changed: synced below before the catalog drops the region
                lost.append(id)
                report.quarantined.append(record.name)
                logger.error("region file size does not match its metadata; moved aside and dropped the region", metadata: [
                    "region": "\(record.name)", "expected": "\(record.sizeBytes)", "actual": "\(Sys.fileSize(quarantine) ?? 0)",
                    "file": "\(quarantine)",
                ])
            }
        }
        for (id, record) in state.regions where !seen.contains(id) && !lost.contains(id) {
            lost.append(id)
            report.quarantined.append(record.name)
            logger.error("region in the catalog has no file; dropping its metadata", metadata: ["region": "\(record.name)", "id": "\(id)"])
        }
        if removed { try Sys.fsyncPath(directory.regionsPath, directory: true) }
        for id in lost {
            let sequence = state.lastSequence + 1
            try catalog.append(CatalogFormat.encode(.delete(id: id), sequence: sequence))
            state.apply(.delete(id: id), sequence: sequence)
        }

        report.regions = state.regions.count
        let compactionDue = catalog.recordsSinceCompaction > 2 * state.regions.count + 64
        self.state = state
        self.names = SortedNameIndex(state.regions.values.map { (name: $0.name, id: $0.id) })
        self.recoveryReport = report
        if compactionDue {
            // Intact data always starts: a compaction that cannot write (a full disk) only costs
            // a longer log, so it is skipped and retried after later metadata changes.
            do throws(PMUError) {
                try compactLocked()
                report.compacted = true
            } catch {
                report.compactionSkipped = error.message
                compactionRetryAt = catalog.recordsSinceCompaction + Self.compactionRetryRecords
                logger.warning("start-up catalog compaction skipped; starting with the uncompacted log and retrying later", metadata: ["error": "\(error)"])
            }
        }
        recoveryReport = report
        logger.info("recovered data directory", metadata: [
            "dir": "\(directory.path)", "regions": "\(report.regions)", "catalogRecords": "\(report.catalogRecords)",
            "tornTailBytes": "\(report.tornTailBytes)", "removedIncomplete": "\(report.removedIncompleteCreates.count)",
            "removedOrphans": "\(report.removedOrphans.count)", "dropped": "\(report.quarantined.count)",
        ])
    }

    public var regionCount: Int { lock.withLock { state.regions.count } }

    /// Regions and the sum of their sizes, for metrics and INFO. O(regions) under the lock (50,000
    /// regions: tens of microseconds), read once a scrape, not on the data path.
    public var allocation: (regions: Int, bytes: UInt64) {
        lock.withLock {
            (state.regions.count, state.regions.values.reduce(UInt64(0)) { $0 &+ $1.sizeBytes })
        }
    }

    /// The data directory's filesystem: bytes free to this process and its size (statvfs).
    public var filesystemSpace: (freeBytes: UInt64, sizeBytes: UInt64)? {
        Sys.filesystemSpace(directory.regionsPath)
    }
    /// Whether bytes written into a region's mapping outlive a crash of this process (they are in
    /// the file's page cache). False in the volatile test mode, where they live in process memory
    /// until PERSIST: the write journal then replays at every start, as after a machine crash.
    /// Shmem shadows (verbs on a disk filesystem) do not outlive the process either: their bytes
    /// reach the file only at PERSIST, so the journal must replay after any crash there too.
    public var regionBytesSurviveProcessCrash: Bool { !configuration.volatileUntilPersist && !configuration.shadowRegions }

    public func record(named name: String) -> RegionRecord? {
        lock.withLock { state.region(named: name) }
    }

    public func record(id: UInt64) -> RegionRecord? {
        lock.withLock { state.regions[id] }
    }

    /// Regions sorted by name (bytewise), strictly after `after`, at most `limit`, and whether
    /// more follow. O(log n + limit) under the lock: a binary search in the name index and a copy.
    public func list(after: String, limit: Int) -> (records: [RegionRecord], more: Bool) {
        lock.withLock {
            let page = names.page(after: after, limit: limit)
            return (page.entries.compactMap { state.regions[$0.id] }, page.more)
        }
    }

    /// Creates and commits a region. Blocks for the preallocation and two syncs.
    public func create(_ request: CreateRegion, owner: String) throws(PMUError) -> RegionRecord {
        try NameRules.validateRegionName(request.name)
        guard request.sizeBytes > 0 else {
            throw PMUError(.invalidSize, "region size is 0; give a size of at least 1 byte (e.g. 4KiB, 64MiB)")
        }
        guard request.sizeBytes <= configuration.maxRegionBytes else {
            throw PMUError(.invalidSize, "region size \(request.sizeBytes) bytes exceeds this server's limit of \(configuration.maxRegionBytes) bytes (--max-region-size)")
        }
        let id: UInt64 = try lock.withTypedLock { () throws(PMUError) -> UInt64 in
            guard state.region(named: request.name) == nil, !creating.contains(request.name) else {
                throw PMUError(.regionExists, "a region named \(NameRules.quoted(request.name)) already exists; delete it first or choose another name")
            }
            guard state.regions.count + creating.count < configuration.maxRegions else {
                throw PMUError(.tooManyRegions, "the server holds \(configuration.maxRegions) regions, its limit (--max-regions); delete some first")
            }
            creating.insert(request.name)
            // Ids are never reused, so a stale file or log line can never be mistaken for a new region.
            let id = state.nextId
            state.apply(.nextId(id + 1), sequence: state.lastSequence)
            return id
        }
        defer { _ = lock.withLock { creating.remove(request.name) } }

        // The catalog's preallocated headroom is already taken from the disk but counts as part of
        // the reserve: together they are what metadata changes can still use.
        let headroom = UInt64(catalogLock.withLock { catalog.unusedHeadroomBytes })
        let free = Sys.freeBytes(directory.regionsPath) ?? 0
        let reserve = configuration.reserveFreeBytes > headroom ? configuration.reserveFreeBytes - headroom : 0
        guard free >= reserve, request.sizeBytes <= free - reserve else {
            throw PMUError(.noSpace, "region of \(request.sizeBytes) bytes does not fit: \(free) bytes free on the data directory's filesystem, \(reserve) of them reserved for metadata (--reserve-free \(configuration.reserveFreeBytes), of which \(headroom) already preallocated to the catalog)")
        }
        let final = try installRegionFile(id: id, sizeBytes: request.sizeBytes)

        let record = RegionRecord(
            id: id, name: request.name, sizeBytes: request.sizeBytes, kind: request.kind,
            createdAtMilliseconds: Sys.nowMilliseconds(), owner: owner, readers: request.readers, writers: request.writers)
        do throws(PMUError) {
            try commit(.put(record))
        } catch {
            unlink(final)
            throw error
        }
        if configuration.populateOnCreate {
            populate(record)
        }
        return record
    }

    /// A replica's region (issue 13, docs/ARCHITECTURE.md "Failover"): created under the
    /// primary's id with the primary's metadata (name, size, kind, writer epoch, access lists),
    /// so that mirrored writes, which name regions by id, land in it. Its bytes start as zeros;
    /// the replica copies them. The caller removed any region holding the id or the name first.
    /// Blocks (preallocation and two syncs), like `create`.
    public func adopt(_ record: RegionRecord) throws(PMUError) {
        try NameRules.validateRegionName(record.name)
        guard record.sizeBytes > 0, record.sizeBytes <= configuration.maxRegionBytes else {
            throw PMUError(.invalidSize, "replica region \(NameRules.quoted(record.name)) of \(record.sizeBytes) bytes exceeds this server's limit of \(configuration.maxRegionBytes) bytes (--max-region-size must be at least the primary's)")
        }
        try lock.withTypedLock { () throws(PMUError) in
            guard state.regions[record.id] == nil, state.region(named: record.name) == nil, !creating.contains(record.name) else {
                throw PMUError(.regionExists, "the replica already holds region id \(record.id) or name \(NameRules.quoted(record.name))")
            }
            guard state.regions.count + creating.count < configuration.maxRegions else {
                throw PMUError(.tooManyRegions, "the replica holds \(configuration.maxRegions) regions, this server's limit (--max-regions must be at least the primary's)")
            }
            creating.insert(record.name)
        }
        defer { _ = lock.withLock { creating.remove(record.name) } }
        let final = try installRegionFile(id: record.id, sizeBytes: record.sizeBytes)
        do throws(PMUError) {
            try commit(.put(record))
        } catch {
            unlink(final)
            throw error
        }
    }

    /// A region file under its final name, preallocated and durable in the directory, before its
    /// catalog record commits (a crash in between leaves a file recovery deletes). Returns its path.
    private func installRegionFile(id: UInt64, sizeBytes: UInt64) throws(PMUError) -> String {
        let temp = directory.tempRegionPath(id: id)
        let final = directory.regionPath(id: id)
        try preallocate(path: temp, sizeBytes: sizeBytes)
        guard rename(temp, final) == 0 else {
            let failure = Sys.error(.ioError, "cannot rename region file to", final)
            unlink(temp)
            throw failure
        }
        do throws(PMUError) {
            try Sys.fsyncPath(directory.regionsPath, directory: true)
        } catch {
            unlink(final)
            throw error
        }
        return final
    }

    /// A replica's region takes the primary's newer metadata (writer epoch, access lists); same
    /// id, name, size and kind.
    public func replaceMetadata(_ record: RegionRecord) throws(PMUError) {
        try catalogLock.withTypedLock { () throws(PMUError) in
            guard let current = lock.withLock({ state.regions[record.id] }), current.name == record.name, current.sizeBytes == record.sizeBytes, current.kind == record.kind else {
                throw PMUError(.unknownRegion, "the replica holds no region id \(record.id) named \(NameRules.quoted(record.name)) of \(record.sizeBytes) bytes")
            }
            try commitLocked(.put(record))
        }
    }

    /// Best effort: a region larger than half the machine's memory, or a kernel without
    /// MADV_POPULATE_WRITE (before 5.14), is left to fault in on first touch.
    private func populate(_ record: RegionRecord) {
        let memory = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(Sys.pageSize)
        guard record.sizeBytes <= memory / 2 else {
            logger.warning("not populating region \(record.id): \(record.sizeBytes) bytes is more than half of memory")
            return
        }
        do throws(PMUError) {
            try mapping(id: record.id).populate()
        } catch {
            logger.warning("not populating region \(record.id): \(error.message)")
        }
    }

    /// fallocate'd, never sparse: a write into a sparse mapping could hit ENOSPC as SIGBUS, and
    /// writes into preallocated pages ran ~5x faster here.
    private func preallocate(path: String, sizeBytes: UInt64) throws(PMUError) {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Sys.error(.ioError, "cannot create region file", path) }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(path) }
        }
        let result = posix_fallocate(fd, 0, off_t(sizeBytes))
        guard result == 0 else {
            if result == ENOSPC || result == EFBIG {
                throw PMUError(.noSpace, "region of \(sizeBytes) bytes does not fit on the data directory's filesystem (\(path))")
            }
            throw Sys.error(.ioError, "cannot preallocate \(sizeBytes) bytes for", path, errno: result)
        }
        guard fsync(fd) == 0 else { throw Sys.error(.ioError, "cannot fsync region file", path) }
        ok = true
    }

    /// The region's mapping, created on first use and kept until the region is deleted.
    /// The mmap (and a shadow's load) runs outside the lock; of two racing first uses one mapping
    /// is kept. A shadow's bytes are reserved against the limit before it is loaded.
    public func mapping(id: UInt64) throws(PMUError) -> MappedRegion {
        let memory = configuration.regionMemory
        let (existing, size) = try lock.withTypedLock { () throws(PMUError) -> (MappedRegion?, UInt64) in
            if let mapped = mappings[id] { return (mapped, mapped.sizeBytes) }
            guard let record = state.regions[id], !deleting.contains(id) else {
                throw PMUError(.unknownRegion, "region id \(id) no longer exists")
            }
            if memory == .shadow { try reserveShadowLocked(record) }
            return (nil, record.sizeBytes)
        }
        if let existing { return existing }
        let fresh: MappedRegion
        do throws(PMUError) {
            fresh = try MappedRegion(id: id, path: directory.regionPath(id: id), sizeBytes: size, memory: memory)
        } catch {
            if memory == .shadow { lock.withLock { shadowBytes -= size } }
            throw error
        }
        return try lock.withTypedLock { () throws(PMUError) -> MappedRegion in
            let kept = mappings[id]
            let alive = state.regions[id] != nil && !deleting.contains(id)
            if memory == .shadow && (kept != nil || !alive) { shadowBytes -= size }
            if let kept { return kept }
            guard alive else { throw PMUError(.unknownRegion, "region id \(id) no longer exists") }
            mappings[id] = fresh
            return fresh
        }
    }

    /// Total bytes of the shadows held now (`RegionMemory.shadow`; 0 otherwise).
    public var shadowMemoryBytes: UInt64 { lock.withLock { shadowBytes } }

    private func reserveShadowLocked(_ record: RegionRecord) throws(PMUError) {
        let limit = configuration.shadowLimitBytes
        guard shadowBytes <= limit, record.sizeBytes <= limit - shadowBytes else {
            throw PMUError(.shadowMemoryFull, """
                region \(NameRules.quoted(record.name)) (\(record.sizeBytes) bytes) cannot be opened: over RDMA on a disk \
                filesystem every region in use is held in a shmem shadow of its size, and the shadows already take \
                \(shadowBytes) of the \(limit) bytes allowed (--rdma-shadow-memory). Delete regions no longer needed, \
                raise --rdma-shadow-memory (RAM permitting), or put the data directory on tmpfs (no shadow, no power-loss durability)
                """)
        }
        shadowBytes += record.sizeBytes
    }

    /// Changes a region's metadata durably (bumping its generation) and returns the new record.
    /// `committed` runs under the catalog lock right after the change is durable, so that changes
    /// reach it in commit order (a mirrored owner gives them mirror sequences there).
    public func update(id: UInt64, _ change: (inout RegionRecord) throws(PMUError) -> Void, committed: (CatalogEntry) -> Void = { _ in }) throws(PMUError) -> RegionRecord {
        try catalogLock.withTypedLock { () throws(PMUError) -> RegionRecord in
            let current = lock.withLock { deleting.contains(id) ? nil : state.regions[id] }
            guard var record = current else {
                throw PMUError(.unknownRegion, "region id \(id) no longer exists")
            }
            try change(&record)
            record.generation += 1
            try commitLocked(.put(record))
            committed(.put(record))
            return record
        }
    }

    /// Deletes a region. `authorize` runs under the lock on the current record, so the check and
    /// the delete see the same region even if another client races to recreate the name.
    /// `committed` as for `update`.
    public func delete(named name: String, authorize: (RegionRecord) throws(PMUError) -> Void, committed: (CatalogEntry) -> Void = { _ in }) throws(PMUError) -> RegionRecord {
        let record = try catalogLock.withTypedLock { () throws(PMUError) -> RegionRecord in
            // Marked first: from here no new mapping, so no new grant, can be made for it.
            let found = lock.withLock { () -> RegionRecord? in
                guard let record = state.region(named: name), !deleting.contains(record.id) else { return nil }
                deleting.insert(record.id)
                return record
            }
            guard let record = found else {
                throw PMUError(.unknownRegion, "no region named \(NameRules.quoted(name))")
            }
            defer { _ = lock.withLock { deleting.remove(record.id) } }
            try authorize(record)
            try commitLocked(.delete(id: record.id))
            committed(.delete(id: record.id))
            return record
        }
        // Committed: from here a crash leaves an orphan file that recovery removes.
        let path = directory.regionPath(id: record.id)
        if unlink(path) != 0 {
            logger.warning("could not remove deleted region's file; it will be removed at next start", metadata: ["file": "\(path)"])
        } else {
            try? Sys.fsyncPath(directory.regionsPath, directory: true)
        }
        return record
    }

    /// Appends `entry` durably, then applies it. Takes the catalog lock.
    private func commit(_ entry: CatalogEntry) throws(PMUError) {
        try catalogLock.withTypedLock { () throws(PMUError) in try commitLocked(entry) }
    }

    /// The caller holds `catalogLock`: no other change can take the next sequence meanwhile, and
    /// lookups go on under `lock` while the fdatasync runs.
    private func commitLocked(_ entry: CatalogEntry) throws(PMUError) {
        let sequence = lock.withLock { state.lastSequence } + 1
        try catalog.append(CatalogFormat.encode(entry, sequence: sequence))
        lock.withLock {
            if case .put(let record) = entry, let previous = state.regions[record.id], previous.name != record.name {
                names.remove(previous.name)
            }
            if case .delete(let id) = entry, let previous = state.regions[id] {
                names.remove(previous.name)
                // The mapping is released when the last in-flight operation holding it finishes.
                if let mapped = mappings.removeValue(forKey: id), mapped.memory == .shadow { shadowBytes -= mapped.sizeBytes }
            }
            state.apply(entry, sequence: sequence)
            if case .put(let record) = entry { names.insert(record.name, id: record.id) }
        }
        compactIfNeededLocked()
    }

    /// Compaction never fails the operation that triggered it: that operation has already
    /// committed. A failed compaction (a full disk, say) is logged and retried after
    /// `compactionRetryRecords` more records, so a disk that stays full is not rewritten per change.
    private func compactIfNeededLocked() {
        let regions = lock.withLock { state.regions.count }
        let records = catalog.recordsSinceCompaction
        let due = compactionRetryAt.map { records >= $0 } ?? (records > max(1024, 4 * regions))
        guard due else { return }
        do throws(PMUError) {
            try compactLocked()
            compactionRetryAt = nil
        } catch {
            compactionRetryAt = records + Self.compactionRetryRecords
            logger.error("catalog compaction failed; the log keeps growing until it succeeds", metadata: ["error": "\(error)"])
        }
    }

    /// The caller holds `catalogLock` (or is `init`). The snapshot is a copy-on-write value taken
    /// under `lock`; encoding and writing it run without `lock`.
    private func compactLocked() throws(PMUError) {
        let snapshot = lock.withLock { state }
        var sequence: UInt64 = 0
        let records = snapshot.snapshotEntries().map { entry -> [UInt8] in
            sequence += 1
            return CatalogFormat.encode(entry, sequence: sequence)
        }
        try catalog.compact(to: records)
        // Sequences restart with the compacted log; the in-memory state must continue from them.
        lock.withLock { state.restartSequences(at: sequence) }
        logger.debug("compacted catalog", metadata: ["records": "\(records.count)"])
    }
}
