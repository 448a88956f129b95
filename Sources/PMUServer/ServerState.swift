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
/// fences. The table has its own lock, separate from the store's, so the data path (check key,
/// copy bytes) never waits on a metadata fsync, and it is held for lookups only: a checkpoint
/// WRITE's copy runs under its region's `RegionFence` (shared), not under the table lock.
/// Lock order where several are held: store's catalog lock, then table, then a region's fence.
final class ServerState: Sendable {
    let store: RegionStore
    let secrets: SecretsTable
    let configuration: ServerConfiguration
    /// Write mirroring and takeover (nil when the server runs unpaired).
    let pair: PairController?
    /// Start time, chosen transport and addresses, for INFO (`ServerInfo`).
    let facts = ServerFacts()
    /// Uploads of whole checkpoints and the forming of their pieces (Session+Forming.swift).
    let forming: FormingService
    /// Group commit for small PERSISTs (nil: every PERSIST is an msync).
    let journal: WriteJournal?
    /// The last resume of each region, so that a resume whose reply was lost can be retried.
    let resumeGrants = ResumeGrants()
    private let table: NIOLockedValueBox<Table>
    /// Who holds a connection slot, with how to close each connection it may displace. Its own
    /// lock: admission never waits for the data path's table.
    private let admission: NIOLockedValueBox<(table: AdmissionTable, displace: [UInt64: @Sendable () -> Void])>

    struct Table: Sendable {
        var keys: ProtectionTable<ServedRegion>
        /// Per checkpoint region: its current writer epoch and the lock that fences older writers.
        var fences: [UInt64: RegionFence] = [:]
        /// Verbs connections' memory registrations, told about every revocation and takeover.
        var registrars: [UInt64: any MemoryRegistrar] = [:]

        mutating func fence(for regionId: UInt64) -> RegionFence {
            if let fence = fences[regionId] { return fence }
            let fence = RegionFence()
            fences[regionId] = fence
            return fence
        }
    }

    init(store: RegionStore, secrets: SecretsTable, configuration: ServerConfiguration, pair: PairController? = nil, journal: WriteJournal? = nil) {
        self.store = store
        self.journal = journal
        self.secrets = secrets
        self.configuration = configuration
        self.pair = pair
        self.forming = FormingService(configuration.forming)
        self.table = NIOLockedValueBox(Table(keys: ProtectionTable(maxHandlesPerConnection: configuration.maxHandlesPerConnection)))
        self.admission = NIOLockedValueBox((AdmissionTable(limits: configuration.admissionLimits), [:]))
    }

    func isAdmin(_ clientId: String) -> Bool { configuration.adminClients.contains(clientId) }

    /// A new connection, let in to authenticate. `displace` closes it should a newer one need its
    /// place; the one displaced now, if any, is closed here (outside the lock).
    func arrive(connection: UInt64, displace: @escaping @Sendable () -> Void) {
        let victim = admission.withLockedValue { admission -> (@Sendable () -> Void)? in
            admission.displace[connection] = displace
            guard let displaced = admission.table.arrive(connection) else { return nil }
            return admission.displace.removeValue(forKey: displaced)
        }
        victim?()
    }

    /// HELLO arrived: the connection is displaced only after the silent ones.
    func helloReceived(connection: UInt64) {
        admission.withLockedValue { $0.table.helloReceived(connection) }
    }

    /// AUTHENTICATE succeeded: take a client slot (TOO_MANY_CLIENTS if none is left for it).
    func authenticated(connection: UInt64, clientId: String) throws(PMUError) {
        try admission.withTypedLock { admission throws(PMUError) in
            try admission.table.authenticate(connection, clientId: clientId)
            admission.displace[connection] = nil
        }
    }

    /// Connections by admission state, for INFO and the pmu_connections gauge.
    var connectionCounts: (authenticating: Int, authenticated: Int) {
        admission.withLockedValue { ($0.table.authenticatingCount, $0.table.authenticatedCount) }
    }

    /// A verbs connection's registrar, so that revocations on any connection reach its rkeys.
    func attach(_ registrar: any MemoryRegistrar, connection: UInt64) {
        table.withLockedValue { $0.registrars[connection] = registrar }
    }

    func connectionClosed(_ connection: UInt64) {
        table.withLockedValue { table in
            table.registrars[connection] = nil
            table.keys.revokeAll(connection: connection)
        }
        admission.withLockedValue { admission in
            admission.table.leave(connection)
            admission.displace[connection] = nil
        }
    }

    func grant(connection: UInt64, record: RegionRecord, rights: Rights, epoch: UInt64, region: ServedRegion) throws(PMUError) -> AccessKey {
        let (key, fence) = try table.withTypedLock { table throws(PMUError) -> (AccessKey, RegionFence?) in
            var generator = SystemRandomNumberGenerator()
            let fence = rights.contains(.write) && record.kind != .raw ? table.fence(for: record.id) : nil
            let key = try table.keys.grant(
                connection: connection, regionId: record.id, sizeBytes: record.sizeBytes, rights: rights, epoch: epoch,
                region: region, using: &generator)
            return (key, fence)
        }
        // Outside the table lock: raising waits for copies in flight. (An OPEN read-write has
        // already raised to this epoch in `raiseEpoch`; this matters for CREATE's first grant.)
        fence?.raise(to: epoch)
        return key
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

    /// WRITE: check, then copy. The table lock covers the key lookup only. For checkpoint regions
    /// the epoch check and the copy run under the region's fence held shared, and a takeover
    /// raises the epoch holding it exclusive, so a takeover cannot fall between a stale writer's
    /// fence check and its bytes landing; writers of different regions never wait for each other.
    /// `copy`, when given, does the copy instead (the pair's mirror wraps it to order and mirror
    /// the write), under the same fence.
    func write(key: AccessKey, connection: UInt64, offset: UInt64, data: ByteBuffer, copy: ((ProtectionTable<ServedRegion>.Translation) -> Void)? = nil) throws(PMUError) {
        let (translation, fence) = try checkWrite(key: key, connection: connection, offset: offset, length: UInt64(data.readableBytes))
        let apply: () -> Void = copy.map { copy in { copy(translation) } }
            ?? { data.withUnsafeReadableBytes { translation.region.mapping.write($0, at: offset) } }
        if let fence {
            try fence.whileCurrent(translation.epoch, apply)
        } else {
            apply()
        }
    }

    /// A WRITE whose payload arrives in pieces (`Session.beginWrite`): everything `write` checks,
    /// for the whole range, before its first byte lands; each piece then goes through `write`
    /// (key and fence again, the copy under the fence), so no piece lands after a takeover or a
    /// revocation, and the region is left with a prefix of the payload if one stops it.
    /// Returns the region's mapping.
    func admitWrite(key: AccessKey, connection: UInt64, offset: UInt64, length: UInt64) throws(PMUError) -> MappedRegion {
        let (translation, fence) = try checkWrite(key: key, connection: connection, offset: offset, length: length)
        try fence?.whileCurrent(translation.epoch) {}
        return translation.region.mapping
    }

    /// Key, connection, write rights and bounds under the table lock, and the region's fence for
    /// checkpoint regions (nil for raw ones).
    private func checkWrite(key: AccessKey, connection: UInt64, offset: UInt64, length: UInt64) throws(PMUError) -> (ProtectionTable<ServedRegion>.Translation, RegionFence?) {
        try table.withTypedLock { table throws(PMUError) -> (ProtectionTable<ServedRegion>.Translation, RegionFence?) in
            let translation = try table.keys.check(key: key, connection: connection, need: .write, offset: offset, length: length)
            return (translation, translation.region.kind == .raw ? nil : table.fence(for: translation.regionId))
        }
    }

    /// Records a region's new writer epoch as soon as it is durable, before anything else can fail.
    /// One-sided writes bypass the epoch check `write` makes, so for checkpoint regions the
    /// older writers' memory registrations go too, before the caller sends the new GRANT.
    func raiseEpoch(regionId: UInt64, to epoch: UInt64, kind: RegionKind) {
        guard kind != .raw else { return }
        let (fence, registrars) = table.withLockedValue { table -> (RegionFence, [any MemoryRegistrar]) in
            (table.fence(for: regionId), Array(table.registrars.values))
        }
        // Exclusive: returns once no older-epoch copy is running; later ones see the new epoch.
        fence.raise(to: epoch)
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
        let found = table.withLockedValue { table -> (granted: Bool, fence: RegionFence?) in
            (table.keys.entry(for: key, connection: connection) != nil, table.fences[regionId])
        }
        guard found.granted else {
            return PMUError(.unknownRegion, "region \(regionId) was deleted while it was being opened")
        }
        // Read after the table lock is released: the fence's lock may wait for a copy in flight.
        // A takeover raises the fence before it scans registrations, so this order still holds.
        if writable, kind != .raw, let newest = found.fence?.currentEpoch, newest > epoch {
            return PMUError(.fenced, "another writer took over the region (epoch \(newest)) while this open (epoch \(epoch)) was registering its memory")
        }
        return nil
    }

    func revokeAll(regionId: UInt64) {
        let registrars = table.withLockedValue { table -> [any MemoryRegistrar] in
            table.keys.revokeAll(regionId: regionId)
            table.fences[regionId] = nil
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
