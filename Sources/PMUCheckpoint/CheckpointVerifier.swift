import PMUCore

/// `pmuctl checkpoint verify`: checks every record, says which are damaged.
public struct VerificationReport: Sendable {
    public enum Status: String, Sendable {
        case ok
        /// Header valid, payload does not match its CRC32C.
        case damaged
    }

    public struct Item: Sendable {
        public var record: CheckpointRecord
        public var status: Status
    }

    public var geometry: CheckpointGeometry
    public var items: [Item]
    /// Index slots holding bytes that are not a valid header (a header torn by power loss); not
    /// checkpoints, reported for information.
    public var unreadableSlots: [Int]

    public var damaged: [Item] { items.filter { $0.status == .damaged } }
    public var isClean: Bool { damaged.isEmpty }
}

public enum CheckpointVerifier {
    public static func verify(io: some RegionIO) async throws(PMUError) -> VerificationReport {
        guard let geometry = try await CheckpointIndex.geometry(of: io) else {
            throw PMUError(.notCheckpointRegion, "region has no checkpoint header (never written as a checkpoint region)")
        }
        let entries = try await CheckpointIndex.entries(of: io, geometry: geometry)
        var items: [VerificationReport.Item] = []
        var unreadable: [Int] = []
        for (slot, entry) in entries.enumerated() {
            switch entry {
            case .empty:
                continue
            case .unreadable:
                unreadable.append(slot)
            case .record(let record):
                let ok = try await CheckpointIndex.payload(of: record, io: io, geometry: geometry) != nil
                items.append(.init(record: record, status: ok ? .ok : .damaged))
            }
        }
        // A writer may have displaced a record while we read it: a record whose index entry has
        // changed since is not damage, it is gone. Re-check the suspects against a fresh index.
        if items.contains(where: { $0.status == .damaged }) {
            let now = try await CheckpointIndex.entries(of: io, geometry: geometry)
            items = try await items.asyncCompactMap { item throws(PMUError) -> VerificationReport.Item? in
                guard item.status == .damaged else { return item }
                let slot = Int(item.record.sequence % UInt64(geometry.indexEntries))
                guard case .record(let current) = now[slot], current == item.record else { return nil }
                let ok = try await CheckpointIndex.payload(of: current, io: io, geometry: geometry) != nil
                return .init(record: current, status: ok ? .ok : .damaged)
            }
        }
        return VerificationReport(geometry: geometry, items: items.sorted { $0.record.sequence < $1.record.sequence }, unreadableSlots: unreadable)
    }
}

extension Array {
    func asyncCompactMap<T>(_ transform: (Element) async throws(PMUError) -> T?) async throws(PMUError) -> [T] {
        var result: [T] = []
        for element in self { if let value = try await transform(element) { result.append(value) } }
        return result
    }
}
