import PMUCore

/// What one pass of the replica copy does to make the monitor's copy of the primary's portion
/// hold the primary's regions (docs/ARCHITECTURE.md "Failover", the shared-nothing replica).
/// Pure, so every case is tested without a server.
///
/// ONTAP's giveback rule: whatever the replica holds that the primary does not is discarded
/// (a region the primary no longer has, or one whose id now names another name, size or kind).
public struct ReplicaPlan: Sendable, Equatable {
    /// Replica regions to delete first (their ids or names are reused below).
    public var remove: [UInt64] = []
    /// Regions to create under the primary's id and metadata, then copy.
    public var create: [RegionRecord] = []
    /// Same region, newer metadata (writer epoch, access lists).
    public var update: [RegionRecord] = []
    /// Regions whose bytes are copied from the primary: every created one, and with a full
    /// copy every region.
    public var copy: [UInt64] = []

    public init() {}

    public var isEmpty: Bool { remove.isEmpty && create.isEmpty && update.isEmpty && copy.isEmpty }

    /// `fullCopy`: the first pass after the primary (re)attached its mirror channel copies every
    /// region's bytes, since writes acknowledged while it was not mirroring (degraded mode) or
    /// records of a previous attachment are not replayed into the replica.
    public static func make(primary: [RegionRecord], replica: [RegionRecord], fullCopy: Bool) -> ReplicaPlan {
        var plan = ReplicaPlan()
        var held: [UInt64: RegionRecord] = [:]
        for region in replica { held[region.id] = region }
        let wanted = Set(primary.map(\.id))
        for region in replica where !wanted.contains(region.id) { plan.remove.append(region.id) }
        for region in primary.sorted(by: { $0.id < $1.id }) {
            guard let mine = held[region.id] else {
                plan.create.append(region)
                plan.copy.append(region.id)
                continue
            }
            if mine.name != region.name || mine.sizeBytes != region.sizeBytes || mine.kind != region.kind {
                plan.remove.append(region.id)
                plan.create.append(region)
                plan.copy.append(region.id)
                continue
            }
            if mine != region { plan.update.append(region) }
            if fullCopy { plan.copy.append(region.id) }
        }
        plan.remove.sort()
        return plan
    }
}

extension RegionRecord {
    /// The catalog record a LIST or REPLICA_CATALOG entry describes.
    public init(_ info: RegionInfo) {
        self.init(
            id: info.id, name: info.name, sizeBytes: info.sizeBytes, kind: info.kind, createdAtMilliseconds: info.createdAtMilliseconds,
            generation: info.generation, writerEpoch: info.writerEpoch, owner: info.owner, readers: info.readers, writers: info.writers)
    }
}
