/// The protection and translation table: which access key grants which connection what rights on
/// which region, and the check every READ, WRITE and PERSIST passes before it touches memory.
///
/// Pure (no I/O, no locks): the server owns one instance behind a lock. `Region` is whatever the
/// server translates to (its mapped region object); the table only carries it.
public struct ProtectionTable<Region> {
    public struct Entry {
        public var connection: UInt64
        public var regionId: UInt64
        public var sizeBytes: UInt64
        public var rights: Rights
        public var epoch: UInt64
        public var region: Region
    }

    /// The result of a successful check: where in which region the access lands.
    public struct Translation {
        public var region: Region
        public var regionId: UInt64
        public var offset: UInt64
        public var length: UInt64
        public var epoch: UInt64
    }

    private var entries: [AccessKey: Entry] = [:]
    private var keysByConnection: [UInt64: Set<AccessKey>] = [:]
    private var keysByRegion: [UInt64: Set<AccessKey>] = [:]
    public let maxHandlesPerConnection: Int

    public init(maxHandlesPerConnection: Int) {
        self.maxHandlesPerConnection = maxHandlesPerConnection
    }

    public var count: Int { entries.count }

    public func handleCount(regionId: UInt64) -> Int { keysByRegion[regionId]?.count ?? 0 }

    public func handleCount(connection: UInt64) -> Int { keysByConnection[connection]?.count ?? 0 }

    /// Issues a new key. The caller has already checked the region's access list.
    public mutating func grant<G: RandomNumberGenerator>(
        connection: UInt64, regionId: UInt64, sizeBytes: UInt64, rights: Rights, epoch: UInt64, region: Region,
        using generator: inout G
    ) throws(PMUError) -> AccessKey {
        guard handleCount(connection: connection) < maxHandlesPerConnection else {
            throw PMUError(.tooManyHandles, "this connection holds \(maxHandlesPerConnection) open handles, the limit; close some first")
        }
        var key = AccessKey.random(using: &generator)
        while entries[key] != nil { key = AccessKey.random(using: &generator) }
        entries[key] = Entry(connection: connection, regionId: regionId, sizeBytes: sizeBytes, rights: rights, epoch: epoch, region: region)
        keysByConnection[connection, default: []].insert(key)
        keysByRegion[regionId, default: []].insert(key)
        return key
    }

    /// Checks key, connection, rights and bounds, in that order, and translates.
    ///
    /// A key issued to another connection is reported exactly like an unknown one: a client learns
    /// nothing about other connections' keys by probing.
    public func check(
        key: AccessKey, connection: UInt64, need: Rights, offset: UInt64, length: UInt64
    ) throws(PMUError) -> Translation {
        guard let entry = entries[key], entry.connection == connection else {
            throw PMUError(.invalidKey, "\(key) is not an open handle on this connection (never issued, closed, revoked by a delete, or issued to another connection)")
        }
        guard entry.rights.isSuperset(of: need) else {
            throw PMUError(.permissionDenied, "handle grants \(entry.rights) access; this operation needs \(need); open the region for read-write")
        }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= entry.sizeBytes else {
            throw PMUError(.outOfBounds, "range [\(offset), \(offset) + \(length)) is outside the region of \(entry.sizeBytes) bytes")
        }
        return Translation(region: entry.region, regionId: entry.regionId, offset: offset, length: length, epoch: entry.epoch)
    }

    public func entry(for key: AccessKey, connection: UInt64) -> Entry? {
        guard let entry = entries[key], entry.connection == connection else { return nil }
        return entry
    }

    @discardableResult
    public mutating func revoke(key: AccessKey, connection: UInt64) throws(PMUError) -> Entry {
        guard let entry = entries[key], entry.connection == connection else {
            throw PMUError(.invalidKey, "\(key) is not an open handle on this connection")
        }
        remove(key, entry)
        return entry
    }

    /// Drops every key of a connection that went away. Returns what was dropped.
    @discardableResult
    public mutating func revokeAll(connection: UInt64) -> [Entry] {
        let keys = keysByConnection[connection] ?? []
        return keys.compactMap { key in entries[key].map { remove(key, $0); return $0 } }
    }

    /// Drops every key on a region that is being deleted, whichever connection holds it.
    @discardableResult
    public mutating func revokeAll(regionId: UInt64) -> [Entry] {
        let keys = keysByRegion[regionId] ?? []
        return keys.compactMap { key in entries[key].map { remove(key, $0); return $0 } }
    }

    private mutating func remove(_ key: AccessKey, _ entry: Entry) {
        entries[key] = nil
        keysByConnection[entry.connection]?.remove(key)
        if keysByConnection[entry.connection]?.isEmpty == true { keysByConnection[entry.connection] = nil }
        keysByRegion[entry.regionId]?.remove(key)
        if keysByRegion[entry.regionId]?.isEmpty == true { keysByRegion[entry.regionId] = nil }
    }
}

/// Access-list decisions, separate from the key table: who may open a region with which rights.
public enum AccessPolicy {
    public static let anyone = "*"

    public static func may(
        _ clientId: String, open rights: Rights, owner: String, readers: [String], writers: [String], isAdmin: Bool
    ) -> Bool {
        if isAdmin || clientId == owner { return true }
        let canWrite = writers.contains(clientId) || writers.contains(anyone)
        if rights.contains(.write) { return canWrite }
        return canWrite || readers.contains(clientId) || readers.contains(anyone)
    }

    /// Whether a client may see a region in LIST and STAT: anyone who may open it.
    public static func mayView(_ clientId: String, owner: String, readers: [String], writers: [String], isAdmin: Bool) -> Bool {
        may(clientId, open: .read, owner: owner, readers: readers, writers: writers, isAdmin: isAdmin)
    }

    /// Only the owner or an admin deletes.
    public static func mayDelete(_ clientId: String, owner: String, isAdmin: Bool) -> Bool {
        isAdmin || clientId == owner
    }
}

extension ProtectionTable: Sendable where Region: Sendable {}
extension ProtectionTable.Entry: Sendable where Region: Sendable {}
extension ProtectionTable.Translation: Sendable where Region: Sendable {}
