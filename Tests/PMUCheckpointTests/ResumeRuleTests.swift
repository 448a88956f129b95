import PMUCore
import Testing

@testable import PMUCheckpoint

/// The rule that lets a checkpoint writer carry on after a failover (ARCHITECTURE.md 12a), every
/// case without a server: resume, the checkpoint in doubt found committed, and each refusal.
@Suite struct ResumeRuleTests {
    func record(_ sequence: UInt64, epoch: UInt64 = 7, length: UInt64 = 100, crc: UInt32 = 0xABCD) -> CheckpointRecord {
        CheckpointRecord(sequence: sequence, epoch: epoch, dataOffset: sequence * 4096, payloadLength: length, timestampNanoseconds: sequence, payloadCRC: crc)
    }

    func doubt(_ sequence: UInt64, epoch: UInt64 = 7, length: UInt64 = 100, crc: UInt32 = 0xABCD) -> ResumeRule.InDoubt {
        ResumeRule.InDoubt(sequence: sequence, epoch: epoch, payloadLength: length, payloadCRC: crc)
    }

    func decide(_ acknowledged: CheckpointRecord?, _ inDoubt: ResumeRule.InDoubt?, _ found: [CheckpointRecord]) -> ResumeRule.Decision {
        ResumeRule.decide(acknowledged: acknowledged, inDoubt: inDoubt, found: found, region: "region 'r'")
    }

    func refusal(_ decision: ResumeRule.Decision) -> PMUErrorCode? {
        if case .refused(let error) = decision { return error.code }
        return nil
    }

    @Test func regionAsTheWriterLeftItResumes() {
        // Nothing in doubt, or the one in doubt never committed: resume (and rewrite it).
        #expect(decide(record(5), nil, [record(4), record(5)]) == .resume)
        #expect(decide(record(5), doubt(6), [record(4), record(5)]) == .resume)
        // A fresh region: nothing acknowledged, nothing there.
        #expect(decide(nil, doubt(1), []) == .resume)
        // Found in any order.
        #expect(decide(record(5), doubt(6), [record(5), record(3), record(4)]) == .resume)
    }

    @Test func inDoubtCheckpointThatCommittedIsReported() {
        #expect(decide(record(5), doubt(6), [record(5), record(6)]) == .inDoubtCommitted(record(6)))
        #expect(decide(nil, doubt(1), [record(1)]) == .inDoubtCommitted(record(1)))
        // Overwrite mode: the one in doubt displaced the one before last.
        #expect(decide(record(5), doubt(6), [record(6), record(5)]) == .inDoubtCommitted(record(6)))
    }

    @Test func lostAcknowledgedCheckpointStopsTheWriter() {
        #expect(refusal(decide(record(5), doubt(6), [record(3), record(4)])) == .checkpointLost)
        #expect(refusal(decide(record(5), nil, [])) == .checkpointLost)
        // Same sequence, different record (another epoch wrote it): not the acknowledged one.
        #expect(refusal(decide(record(5), nil, [record(4), record(5, epoch: 9)])) == .checkpointLost)
        #expect(refusal(decide(record(5), nil, [record(5, crc: 1)])) == .checkpointLost)
    }

    @Test func checkpointsTheWriterDidNotWriteRefuseTheResume() {
        // Newer than acknowledged but not the one in doubt: another epoch, length or CRC.
        #expect(refusal(decide(record(5), doubt(6), [record(5), record(6, epoch: 8)])) == .resumeRefused)
        #expect(refusal(decide(record(5), doubt(6), [record(5), record(6, length: 99)])) == .resumeRefused)
        #expect(refusal(decide(record(5), doubt(6), [record(5), record(6, crc: 1)])) == .resumeRefused)
        // Nothing was in doubt, yet there is a newer one.
        #expect(refusal(decide(record(5), nil, [record(5), record(6)])) == .resumeRefused)
        // More than the one in doubt.
        #expect(refusal(decide(record(5), doubt(6), [record(5), record(6), record(7)])) == .resumeRefused)
        // A skipped sequence is not the one in doubt either.
        #expect(refusal(decide(record(5), doubt(6), [record(5), record(7)])) == .resumeRefused)
        // Empty region at open, but something is there now that is not ours.
        #expect(refusal(decide(nil, nil, [record(1)])) == .resumeRefused)
    }

    @Test func refusalsSayWhatWasFound() {
        guard case .refused(let error) = decide(record(5), doubt(6), [record(5), record(6, epoch: 8), record(7, epoch: 8)]) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(error.message.contains("6 (epoch 8") && error.message.contains("7 (epoch 8") && error.message.contains("region 'r'"), "\(error.message)")
    }
}
