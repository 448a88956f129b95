import PMUCore

/// When a checkpoint writer that lost its server may carry on as the same primary on the server
/// it reconnected to (docs/ARCHITECTURE.md section 12a). Pure: the caller has already won the
/// server's compare-and-set on the writer epoch (OPEN_RESUME), so no other writer opened the
/// region since; what remains is to check that the region holds exactly what this writer left.
///
/// The writer has at most one checkpoint in doubt (sent, not acknowledged) when it fails, and it
/// always has the bytes of that one. The region it finds must hold its last acknowledged
/// checkpoint, record for record, and nothing newer except, possibly, the one in doubt, complete
/// and with its payload's length and CRC32C under the writer's old epoch. Then:
/// - nothing newer: the one in doubt never committed; it is written again, with the same sequence;
/// - the one in doubt is there: it committed before the failure (only its acknowledgement was
///   lost); it is reported committed, once its payload has been read back and checked;
/// - anything else refuses the resume (CHECKPOINT_LOST or RESUME_REFUSED), and the writer stops.
public enum ResumeRule {
    /// The checkpoint in doubt: what its record must say if it committed.
    public struct InDoubt: Sendable, Equatable {
        public var sequence: UInt64
        public var epoch: UInt64
        public var payloadLength: UInt64
        public var payloadCRC: UInt32

        public init(sequence: UInt64, epoch: UInt64, payloadLength: UInt64, payloadCRC: UInt32) {
            self.sequence = sequence
            self.epoch = epoch
            self.payloadLength = payloadLength
            self.payloadCRC = payloadCRC
        }

        func matches(_ record: CheckpointRecord) -> Bool {
            record.sequence == sequence && record.epoch == epoch && record.payloadLength == payloadLength && record.payloadCRC == payloadCRC
        }
    }

    public enum Decision: Sendable, Equatable {
        /// The region is as the writer left it; the checkpoint in doubt (if any) did not commit.
        case resume
        /// The checkpoint in doubt committed: this is its record (check its payload, then report it).
        case inDoubtCommitted(CheckpointRecord)
        case refused(PMUError)
    }

    /// `acknowledged`: the newest checkpoint the writer knows committed (its last acknowledged
    /// one, or the newest the region held when the writer opened it; nil if there was none).
    /// `found`: the records with valid headers in the region now, any order.
    public static func decide(acknowledged: CheckpointRecord?, inDoubt: InDoubt?, found: [CheckpointRecord], region: String) -> Decision {
        let newestAcknowledged = acknowledged?.sequence ?? 0
        if let acknowledged, !found.contains(acknowledged) {
            let newest = found.map(\.sequence).max().map { "its newest is \($0)" } ?? "it holds no checkpoint"
            return .refused(PMUError(
                .checkpointLost,
                "\(region): checkpoint \(acknowledged.sequence) (epoch \(acknowledged.epoch)) was acknowledged to this writer but is not on the server it reconnected to (\(newest)); an acknowledged checkpoint was lost, so the writer stops without writing over what is there"))
        }
        let newer = found.filter { $0.sequence > newestAcknowledged }.sorted { $0.sequence < $1.sequence }
        guard let first = newer.first else { return .resume }
        if newer.count == 1, let inDoubt, inDoubt.matches(first) { return .inDoubtCommitted(first) }
        let described = newer.prefix(4).map { "\($0.sequence) (epoch \($0.epoch), \($0.payloadLength) bytes)" }.joined(separator: ", ")
        return .refused(PMUError(
            .resumeRefused,
            "\(region) holds checkpoint\(newer.count == 1 ? "" : "s") \(described)\(newer.count > 4 ? ", ..." : "") newer than this writer's last acknowledged \(newestAcknowledged) that \(newer.count == 1 ? "is not" : "are not") the one it had in doubt\(inDoubt.map { " (\($0.sequence), epoch \($0.epoch), \($0.payloadLength) bytes)" } ?? ""); another writer wrote there, so this one stops"))
    }
}
