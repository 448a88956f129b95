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
    public static func place(
        sequence: UInt64, payloadLength: UInt64, geometry: CheckpointGeometry, live: [CheckpointRecord], head: UInt64,
        newestCommitted: UInt64
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
            offset = head + span <= geometry.dataBytes ? head : 0
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
        for record in conflicting where keep == 0 || record.sequence + keep > newestCommitted {
            let why = record.sequence % UInt64(geometry.indexEntries) == slot
                ? "all \(geometry.indexEntries) checkpoint entries are in use"
                : "the data area has no room for \(payloadLength) more bytes"
            throw PMUError(
                .regionFull,
                keep == 0
                    ? "region is full: \(why) and it keeps every checkpoint; create it with a retention policy (keep newest N) or a larger size"
                    : "region is full: \(why) without touching the newest \(keep) checkpoints the retention policy keeps")
        }
        return Placement(dataOffset: offset, displaced: conflicting.sorted { $0.sequence < $1.sequence })
    }
}
