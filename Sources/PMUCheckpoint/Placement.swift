import PMUCore

/// Where checkpoint n goes and which older checkpoints it displaces. Pure: the retention rules are
/// tested here without I/O.
public struct Placement: Sendable, Equatable {
    /// Payload position, relative to the data area.
    public var dataOffset: UInt64
    /// Older records whose index entries must be invalidated (and that invalidation made durable)
    /// before the payload is written, because the payload or the index slot overlaps them.
    public var displaced: [CheckpointRecord]
}

public enum PlacementRules {
    /// - Parameters:
    ///   - live: records currently in the index (committed or in flight), any order.
    ///   - head: data-area offset just past the newest record (0 when there is none).
    ///   - newestCommitted: every checkpoint up to this sequence is committed (commits are in order);
    ///     the retention promise counts only these, never ones still in flight.
    ///   - protected: when given, replaces the keep-newest rule: exactly these records may not be
    ///     displaced, every other one may (a caller that knows better, such as the cluster writer,
    ///     whose failed attempts are garbage and whose complete checkpoints are what must stay).
    public static func place(
        sequence: UInt64, payloadLength: UInt64, geometry: CheckpointGeometry, live: [CheckpointRecord], head: UInt64,
        newestCommitted: UInt64, protected: Set<UInt64>? = nil
    ) throws(PMUError) -> Placement {
        guard payloadLength <= geometry.maxPayloadBytes else {
            throw PMUError(.checkpointTooLarge, "checkpoint of \(payloadLength) bytes exceeds this \(geometry.mode) region's capacity of \(geometry.maxPayloadBytes) bytes per checkpoint; create a larger region")
        }
        let span = roundUp(payloadLength, CheckpointGeometry.blockBytes)
        let offset: UInt64
        switch geometry.mode {
        case .overwrite:
            offset = (sequence % 2) * geometry.slotBytes
        case .append:
            // `fits` never forms start + span unless it is below dataBytes: head and pinned ends come
            // from decoded records, which a crafted index can put anywhere it likes.
            func fits(_ start: UInt64) -> Bool { span <= geometry.dataBytes && start <= geometry.dataBytes - span }
            let ring = fits(head) ? head : 0
            if let protected {
                // Kept records pin their space while the ring moves on: skip past them to the first
                // spot that overlaps none (in ring order from the head), rather than refusing.
                let pinned = live.filter { protected.contains($0.sequence) && $0.sequence != sequence }.map(\.span)
                let candidates = [ring, 0] + pinned.map(\.upperBound).sorted().filter { $0 >= ring } + pinned.map(\.upperBound).sorted()
                offset = candidates.first { start in
                    fits(start) && !pinned.contains { span > 0 && $0.overlaps(start..<(start + span)) }
                } ?? ring
            } else {
                offset = ring
            }
        }
        let range = offset..<(offset + span)
        let slot = sequence % UInt64(geometry.indexEntries)
        let conflicting = live.filter { record in
            record.sequence != sequence
                && (record.sequence % UInt64(geometry.indexEntries) == slot || (span > 0 && record.span.overlaps(range)))
        }
        // Checkpoint n may displace only records older than the newest N committed ones, so those
        // stay readable while n is written, whatever happens to n; with no policy (N = 0) nothing.
        let keep = UInt64(geometry.keepNewest)
        func keptByPolicy(_ record: CheckpointRecord) -> Bool {
            let (end, overflow) = record.sequence.addingReportingOverflow(keep)
            return keep == 0 || overflow || end > newestCommitted
        }
        for record in conflicting where protected.map({ $0.contains(record.sequence) }) ?? keptByPolicy(record) {
            let why = record.sequence % UInt64(geometry.indexEntries) == slot
                ? "all \(geometry.indexEntries) checkpoint entries are in use"
                : "the data area has no room for \(payloadLength) more bytes"
            throw PMUError(
                .regionFull,
                protected != nil
                    ? "region is full: \(why) without touching the checkpoints that must be kept"
                    : keep == 0
                    ? "region is full: \(why) and it keeps every checkpoint; create it with a retention policy (keep newest N) or a larger size"
                    : "region is full: \(why) without touching the newest \(keep) checkpoints the retention policy keeps")
        }
        return Placement(dataOffset: offset, displaced: conflicting.sorted { $0.sequence < $1.sequence })
    }
}
