import PMUClient
import PMUCore

extension PMUClient {
    /// Creates a region of kind `snapshot` sized for an arena of `arenaBytes`
    /// (`SnapshotLayout.requiredRegionBytes`: twice the arena, two page maps, 16 KiB) and formats it.
    /// Opening it takes the writer role (epoch) for this client.
    public func createSnapshotTarget(
        _ name: String, arenaBytes: UInt64, readers: [String] = [], writers: [String] = []
    ) async throws(PMUError) -> SnapshotTarget {
        let layout = try SnapshotLayout(pageBytes: UInt64(SnapshotArena.systemPageBytes), arenaBytes: arenaBytes)
        let handle = try await createRegion(name, sizeBytes: layout.requiredRegionBytes, kind: .snapshot, readers: readers, writers: writers)
        return try await SnapshotTarget.open(io: RemoteRegion(client: self, handle: handle), name: name, epoch: handle.epoch,
                                             formatFor: arenaBytes, nowMilliseconds: LiveSnapshotter.wallMilliseconds())
    }

    /// Opens a snapshot target. `writable` takes the writer role: from then on the server refuses
    /// the previous writer's writes (FENCED), so a standby that takes over stops the old live
    /// program from committing anything more. A region of kind snapshot never formatted is formatted
    /// for `formatFor` (when given and writable); another kind is refused with NOT_SNAPSHOT_REGION.
    public func openSnapshotTarget(_ name: String, writable: Bool, formatFor arenaBytes: UInt64? = nil) async throws(PMUError) -> SnapshotTarget {
        let info = try await stat(name)
        guard info.kind == .snapshot else {
            throw PMUError(.notSnapshotRegion, "region '\(name)' is of kind \(info.kind), not snapshot; create snapshot targets with createSnapshotTarget or `pmuctl region create --kind snapshot`")
        }
        if writable {
            // Check the geometry through a read-only handle first: a mismatched open must fail
            // without taking the writer role, which would fence the live program's writes.
            let probe = try await openRegion(name, rights: .read)
            do {
                _ = try await SnapshotTarget.checkGeometry(io: RemoteRegion(client: self, handle: probe), name: name, formatFor: arenaBytes)
            } catch {
                try? await close(probe)
                throw error
            }
            try await close(probe)
        }
        let handle = try await openRegion(name, rights: writable ? .readWrite : .read)
        return try await SnapshotTarget.open(io: RemoteRegion(client: self, handle: handle), name: name, epoch: handle.epoch,
                                             formatFor: writable ? arenaBytes : nil, nowMilliseconds: LiveSnapshotter.wallMilliseconds())
    }
}
