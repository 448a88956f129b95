import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUStore
import PMUTransport

/// A region as the server serves it: its mapping plus what fencing needs.
final class ServedRegion: Sendable {
    let mapping: MappedRegion
    let kind: RegionKind

    init(mapping: MappedRegion, kind: RegionKind) {
        self.mapping = mapping
        self.kind = kind
    }
}

/// State shared by every session: the store, the secrets, the protection table and the writer
/// epochs. The table has its own lock, separate from the store's, so the data path (check key,
/// copy bytes) never waits on a metadata fsync. Lock order where both are held: store, then table.
final class ServerState: Sendable {
    let store: RegionStore
    let secrets: SecretsTable
    let configuration: ServerConfiguration
    /// Write mirroring and takeover (nil when the server runs unpaired).
    let pair: PairController?
    private let table: NIOLockedValueBox<Table>

    struct Table: Sendable {
        var keys: ProtectionTable<ServedRegion>
        /// Current writer epoch per region id; grants from older epochs are fenced.
        var epochs: [UInt64: UInt64] = [:]
        var connections = 0
        /// Verbs connections' memory registrations, told about every revocation and takeover.
        var registrars: [UInt64: any MemoryRegistrar] = [:]
    }

    init(store: RegionStore, secrets: SecretsTable, configuration: ServerConfiguration, pair: PairController? = nil) {
        self.store = store
        self.secrets = secrets
        self.configuration = configuration
        self.pair = pair
        self.table = NIOLockedValueBox(Table(keys: ProtectionTable(maxHandlesPerConnection: configuration.maxHandlesPerConnection)))
    }

    func isAdmin(_ clientId: String) -> Bool { configuration.adminClients.contains(clientId) }

    /// Admits a connection if under the limit.
    func admitConnection() -> Bool {
        table.withLockedValue { table in
            guard table.connections < configuration.maxClients else { return false }
            table.connections += 1
            return true
        }
    }

    /// A verbs connection's registrar, so that revocations on any connection reach its rkeys.
    func attach(_ registrar: any MemoryRegistrar, connection: UInt64) {
        table.withLockedValue { $0.registrars[connection] = registrar }
    }

    func connectionClosed(_ connection: UInt64, admitted: Bool) {
        table.withLockedValue { table in
            table.registrars[connection] = nil
            table.keys.revokeAll(connection: connection)
            if admitted { table.connections -= 1 }
        }
    }

    func grant(connection: UInt64, record: RegionRecord, rights: Rights, epoch: UInt64, region: ServedRegion) throws(PMUError) -> AccessKey {
        try table.withTypedLock { table throws(PMUError) in
            var generator = SystemRandomNumberGenerator()
            if rights.contains(.write) { table.epochs[record.id] = max(table.epochs[record.id] ?? 0, epoch) }
            return try table.keys.grant(
                connection: connection, regionId: record.id, sizeBytes: record.sizeBytes, rights: rights, epoch: epoch,
                region: region, using: &generator)
        }
    }

    /// The check every data operation passes: key, connection, rights, bounds, and for checkpoint
    /// regions the writer epoch.
    /// READ and PERSIST: key, connection, read rights and bounds. (WRITE goes through `write`,
    /// which also applies fencing.) A `length` of nil means "from `offset` to the end of the region",
    /// resolved against the region's size in the same check.
    func translateForRead(key: AccessKey, connection: UInt64, offset: UInt64, length: UInt64?) throws(PMUError) -> ProtectionTable<ServedRegion>.Translation {
        try table.withTypedLock { table throws(PMUError) in
            let resolved: UInt64
            if let length {
                resolved = length
            } else {
                guard let entry = table.keys.entry(for: key, connection: connection) else {
                    return try table.keys.check(key: key, connection: connection, need: .read, offset: offset, length: 0) // throws INVALID_KEY
                }
                resolved = entry.sizeBytes >= offset ? entry.sizeBytes - offset : 0
            }
            return try table.keys.check(key: key, connection: connection, need: .read, offset: offset, length: resolved)
        }
    }

    /// WRITE: check and copy. For checkpoint regions the copy happens under the table lock, so a
    /// takeover (which raises the epoch under the same lock) cannot fall between a stale writer's
    /// fence check and its bytes landing. Raw regions copy outside the lock. `copy`, when given,
    /// does the copy instead (the pair's mirror wraps it to order and mirror the write).
    func write(key: AccessKey, connection: UInt64, offset: UInt64, data: ByteBuffer, copy: ((ProtectionTable<ServedRegion>.Translation) -> Void)? = nil) throws(PMUError) {
        let length = UInt64(data.readableBytes)
        let apply = copy ?? { translation in data.withUnsafeReadableBytes { translation.region.mapping.write($0, at: offset) } }
        let translation: ProtectionTable<ServedRegion>.Translation? = try table.withTypedLock { table throws(PMUError) in
            let translation = try table.keys.check(key: key, connection: connection, need: .write, offset: offset, length: length)
            guard translation.region.kind != .raw else { return translation }
            if let current = table.epochs[translation.regionId], translation.epoch < current {
                throw PMUError(.fenced, "this handle's writer epoch \(translation.epoch) was superseded by epoch \(current): another primary opened the region for writing; this writer must stop")
            }
            apply(translation)
            return nil
        }
        if let translation { apply(translation) }
    }

    /// Records a region's new writer epoch as soon as it is durable, before anything else can fail.
    /// One-sided writes bypass the epoch check `write` makes, so for checkpoint regions the
    /// older writers' memory registrations go too, before the caller sends the new GRANT.
    func raiseEpoch(regionId: UInt64, to epoch: UInt64, kind: RegionKind) {
        let registrars = table.withLockedValue { table -> [any MemoryRegistrar] in
            table.epochs[regionId] = max(table.epochs[regionId] ?? 0, epoch)
            return Array(table.registrars.values)
        }
        guard kind != .raw else { return }
        for registrar in registrars { registrar.fence(regionId: regionId, below: epoch) }
    }

    func close(key: AccessKey, connection: UInt64) throws(PMUError) {
        let (registrar, revoked) = table.withLockedValue { table -> ((any MemoryRegistrar)?, Result<Void, PMUError>) in
            do throws(PMUError) {
                _ = try table.keys.revoke(key: key, connection: connection)
                return (table.registrars[connection], .success(()))
            } catch {
                return (table.registrars[connection], .failure(error))
            }
        }
        // Deregistered before CLOSE is answered: the rkey is dead when the client hears OK. Also
        // when the key was already gone (revoked by a DELETE that raced its registration), so no
        // registration can outlive its key.
        registrar?.invalidate(key: key)
        try revoked.get()
    }

    /// After a grant's memory registration: is the grant still what it was? A DELETE (revokes the
    /// key) or a takeover (raises the epoch) may have run while the region was being registered,
    /// and their invalidation could not see a registration that did not exist yet. Checked under
    /// the same lock they change the table under, after the registration is visible to them: a
    /// change before this check fails it, a change after it finds the registration and removes it.
    func stillGranted(key: AccessKey, connection: UInt64, regionId: UInt64, epoch: UInt64, writable: Bool, kind: RegionKind) -> PMUError? {
        table.withLockedValue { table in
            guard table.keys.entry(for: key, connection: connection) != nil else {
                return PMUError(.unknownRegion, "region \(regionId) was deleted while it was being opened")
            }
            if writable, kind != .raw, let newest = table.epochs[regionId], newest > epoch {
                return PMUError(.fenced, "another writer took over the region (epoch \(newest)) while this open (epoch \(epoch)) was registering its memory")
            }
            return nil
        }
    }

    func revokeAll(regionId: UInt64) {
        let registrars = table.withLockedValue { table -> [any MemoryRegistrar] in
            table.keys.revokeAll(regionId: regionId)
            table.epochs[regionId] = nil
            return Array(table.registrars.values)
        }
        for registrar in registrars { registrar.invalidate(regionId: regionId) }
    }

    /// Checked before slow work that ends in a grant, so a create never commits and then fails.
    func checkHandleRoom(connection: UInt64) throws(PMUError) {
        let count = table.withLockedValue { $0.keys.handleCount(connection: connection) }
        guard count < configuration.maxHandlesPerConnection else {
            throw PMUError(.tooManyHandles, "this connection holds \(configuration.maxHandlesPerConnection) open handles, the limit (--max-handles); close some first")
        }
    }

    func handleCount(regionId: UInt64) -> Int {
        table.withLockedValue { $0.keys.handleCount(regionId: regionId) }
    }
}

extension NIOLockedValueBox {
    /// `withLockedValue` keeping the body's typed error.
    func withTypedLock<T>(_ body: (inout Value) throws(PMUError) -> T) throws(PMUError) -> T {
        let result: Result<T, PMUError> = withLockedValue { value in
            do throws(PMUError) { return .success(try body(&value)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
