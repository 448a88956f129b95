/// One figure of a set's newest scrub pass, named and described for a metrics exporter. The
/// metrics work (issue 16) exports these with a `set` label; this module has no metrics
/// dependency. Names follow Prometheus conventions (base units, `_total` for counters).
public struct ScrubFigure: Sendable, Equatable {
    public enum Kind: String, Sendable { case gauge, counter }
    public var name: String
    public var help: String
    public var kind: Kind
    public var value: Double
}

extension ScrubRecord {
    /// The record as figures. Counts are those of the newest pass (the record keeps no older
    /// pass), except `passes`, which counts every pass recorded for the set.
    public var figures: [ScrubFigure] {
        let seconds = { (nanoseconds: UInt64) in Double(nanoseconds) / 1e9 }
        return [
            ScrubFigure(name: "pmu_cluster_scrub_last_finished_timestamp_seconds", help: "When the newest scrub pass of the set finished (Unix time).", kind: .gauge, value: seconds(finishedNanoseconds)),
            ScrubFigure(name: "pmu_cluster_scrub_last_duration_seconds", help: "How long the newest scrub pass took.", kind: .gauge, value: seconds(finishedNanoseconds >= startedNanoseconds ? finishedNanoseconds - startedNanoseconds : 0)),
            ScrubFigure(name: "pmu_cluster_scrub_passes_total", help: "Scrub passes recorded for the set.", kind: .counter, value: Double(passes)),
            ScrubFigure(name: "pmu_cluster_scrub_last_pieces_checked", help: "Pieces whose every subsegment the newest pass read.", kind: .gauge, value: Double(piecesChecked)),
            ScrubFigure(name: "pmu_cluster_scrub_last_subsegments_checked", help: "Subsegments the newest pass checked against their CRC32C.", kind: .gauge, value: Double(subsegmentsChecked)),
            ScrubFigure(name: "pmu_cluster_scrub_last_read_bytes", help: "Bytes the newest pass read.", kind: .gauge, value: Double(bytesRead)),
            ScrubFigure(name: "pmu_cluster_scrub_last_damaged_subsegments", help: "Subsegments the newest pass found damaged.", kind: .gauge, value: Double(damaged)),
            ScrubFigure(name: "pmu_cluster_scrub_last_repaired_subsegments", help: "Damaged subsegments the newest pass repaired from parity or copies.", kind: .gauge, value: Double(repaired)),
            ScrubFigure(name: "pmu_cluster_scrub_last_unrepaired_subsegments", help: "Damaged subsegments the newest pass could not repair.", kind: .gauge, value: Double(unrepaired)),
            ScrubFigure(name: "pmu_cluster_scrub_last_newest_sequence", help: "Newest complete checkpoint the newest pass covered.", kind: .gauge, value: Double(newestSequence)),
        ]
    }
}
