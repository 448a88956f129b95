import PMUCore

/// What a run of mirror-log records (writes and catalog changes, sorted by origin) does to a
/// copy of the owner's catalog: the steps that make the copy hold them, in order. Pure (no
/// I/O), so the apply rule is tested without a store or a socket; the monitor's replica runs it
/// at each trim and at takeover (docs/ARCHITECTURE.md "Failover", docs/DATA_FILES.md).
///
/// The rule, record by record, in the owner's order:
/// - catalog `put` of an id the copy lacks: create it under the owner's id and metadata (a
///   region of the copy holding the same name goes first: the owner's catalog wins);
/// - `put` of an id the copy holds with the same name, size and kind: its metadata, unless the
///   copy's generation is the same or newer (a record older than what a copy pass read);
/// - `put` of an id the copy holds with another name, size or kind: removed, then created;
/// - `delete`: removed (nothing if the copy lacks it);
/// - write: into the region if the copy holds it and the bytes fit, else counted, not applied.
/// Writes that follow a catalog record in the owner's order land in the region it made.
public struct CatalogReplay: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        /// Create this region (the owner's id and metadata, zero bytes).
        case create(RegionRecord)
        /// Same id, name, size and kind: newer metadata (writer epoch, access lists).
        case update(RegionRecord)
        /// Delete this region of the copy.
        case remove(RegionRecord)
        /// Copy the record's payload into its region at its offset.
        case write(LogRecord)
    }

    public private(set) var steps: [Step] = []
    /// The copy's catalog after the steps.
    public private(set) var catalog: [UInt64: RegionRecord] = [:]
    /// Writes for a region the copy does not hold (deleted before them, or not copied yet).
    public private(set) var unknownRegionWrites = 0
    /// Writes whose bytes fall outside their region in the copy: the copy does not match the
    /// owner (a takeover refuses to serve it; the replica copies everything again).
    public private(set) var outOfBounds: [LogRecord] = []
    /// Catalog records applied, and those skipped (older than the copy's, or `applyCatalog` off).
    public private(set) var catalogRecordsApplied = 0
    public private(set) var catalogRecordsSkipped = 0

    /// `applyCatalog` false: the catalog is authoritative as it stands (a portion on shared
    /// storage, whose catalog the owner made durable before acknowledging any change), so only
    /// writes are replayed. Throws DAMAGED for a catalog record whose payload is not one valid
    /// catalog record, or that carries a kind other than put or delete.
    public static func make(records: [LogRecord], catalog: [RegionRecord], applyCatalog: Bool = true) throws(PMUError) -> CatalogReplay {
        var replay = CatalogReplay()
        var byName: [String: UInt64] = [:]
        for region in catalog {
            replay.catalog[region.id] = region
            byName[region.name] = region.id
        }
        func remove(_ id: UInt64) {
            guard let held = replay.catalog.removeValue(forKey: id) else { return }
            if byName[held.name] == id { byName[held.name] = nil }
            replay.steps.append(.remove(held))
        }
        for record in records {
            switch record.kind {
            case LogRecordFormat.kindWrite:
                guard let region = replay.catalog[record.regionId] else {
                    replay.unknownRegionWrites += 1
                    continue
                }
                let (end, overflow) = record.offset.addingReportingOverflow(UInt64(record.payload.count))
                guard !overflow, end <= region.sizeBytes else {
                    replay.outOfBounds.append(record)
                    continue
                }
                replay.steps.append(.write(record))
            case LogRecordFormat.kindCatalog:
                let entry = try Self.entry(of: record)
                guard applyCatalog else {
                    replay.catalogRecordsSkipped += 1
                    continue
                }
                switch entry {
                case .put(let wanted):
                    if let held = replay.catalog[wanted.id], held.name == wanted.name, held.sizeBytes == wanted.sizeBytes, held.kind == wanted.kind {
                        guard held.generation < wanted.generation else {
                            replay.catalogRecordsSkipped += 1
                            continue
                        }
                        replay.catalog[wanted.id] = wanted
                        replay.steps.append(.update(wanted))
                    } else {
                        remove(wanted.id)
                        if let other = byName[wanted.name] { remove(other) }
                        replay.catalog[wanted.id] = wanted
                        byName[wanted.name] = wanted.id
                        replay.steps.append(.create(wanted))
                    }
                case .delete(let id):
                    remove(id)
                case .nextId:
                    break
                }
                replay.catalogRecordsApplied += 1
            default:
                throw PMUError(.damaged, "mirror log record \(record.sequence) has kind \(record.kind), which this build does not replay")
            }
        }
        return replay
    }

    /// The catalog entry a catalog record carries, checked: one valid catalog record naming the
    /// log record's region, a put or a delete.
    public static func entry(of record: LogRecord) throws(PMUError) -> CatalogEntry {
        let entry: CatalogEntry
        do throws(PMUError) {
            entry = try CatalogFormat.decodeOne(record.payload).entry
        } catch {
            throw PMUError(.damaged, "mirror log record \(record.sequence): \(error.message)")
        }
        let id: UInt64
        switch entry {
        case .put(let region): id = region.id
        case .delete(let deleted): id = deleted
        case .nextId:
            throw PMUError(.damaged, "mirror log record \(record.sequence) carries a catalog next-id entry; only puts and deletes are mirrored")
        }
        guard id == record.regionId else {
            throw PMUError(.damaged, "mirror log record \(record.sequence) is filed under region \(record.regionId) but its catalog entry names region \(id)")
        }
        return entry
    }

    /// The log entry that carries a catalog change (`.put` or `.delete`) at origin `origin`. The
    /// catalog record inside has sequence 1: the log record's origin orders it.
    public static func logEntry(_ entry: CatalogEntry, origin: UInt64) -> LogEntry {
        let regionId: UInt64
        let epoch: UInt64
        switch entry {
        case .put(let region): (regionId, epoch) = (region.id, region.writerEpoch)
        case .delete(let id): (regionId, epoch) = (id, 0)
        case .nextId: (regionId, epoch) = (0, 0)
        }
        return LogEntry(kind: LogRecordFormat.kindCatalog, origin: origin, regionId: regionId, epoch: epoch, offset: 0, payload: CatalogFormat.encode(entry, sequence: 1))
    }
}
