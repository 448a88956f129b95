import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import PMUCore
@testable import PMULog
@testable import PMUPair

/// The shared-nothing replica's pure plan, and the receiver's rule that no record leaves the
/// log before it is in the replica (real log files, no sockets).
@Suite struct ReplicaTests {
    func region(_ id: UInt64, _ name: String, size: UInt64 = 4096, epoch: UInt64 = 0) -> RegionRecord {
        RegionRecord(id: id, name: name, sizeBytes: size, kind: .raw, createdAtMilliseconds: 1, writerEpoch: epoch, owner: "o", readers: [], writers: [])
    }

    @Test func planCopiesWhatIsNewDiscardsWhatThePrimaryLacksAndUpdatesMetadata() {
        let primary = [region(1, "a"), region(2, "b", epoch: 3), region(4, "d", size: 8192), region(7, "c")]
        let replica = [region(1, "a"), region(2, "b", epoch: 2), region(3, "gone"), region(4, "d"), region(5, "c")]
        let plan = ReplicaPlan.make(primary: primary, replica: replica, fullCopy: false)
        // 3 is gone on the primary; 5's name now belongs to id 7; 4 changed size (same id: recreated).
        #expect(plan.remove == [3, 4, 5])
        #expect(plan.create.map(\.id) == [4, 7])
        #expect(plan.update == [region(2, "b", epoch: 3)])
        #expect(plan.copy == [4, 7])
        let full = ReplicaPlan.make(primary: primary, replica: replica, fullCopy: true)
        #expect(full.copy == [1, 2, 4, 7])
        #expect(ReplicaPlan.make(primary: primary, replica: primary, fullCopy: false).isEmpty)
        // An empty replica: everything created and copied, nothing removed.
        let first = ReplicaPlan.make(primary: primary, replica: [], fullCopy: true)
        #expect(first.remove.isEmpty && first.create.count == 4 && first.copy == [1, 2, 4, 7])
    }

    @Test func trimsApplyRecordsToTheReplicaFirstAndWaitWhileACopyHoldsThem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-replica-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let portion = String(repeating: "b", count: 32)
        let receiver = try MirrorReceiver(
            dataDirectory: dir, ownPortion: String(repeating: "a", count: 32), instance: [UInt8](repeating: 1, count: 16),
            logConfiguration: AppendLogConfiguration(segmentBytes: 64 * 1024, maxBytes: 256 * 1024, sync: .pageCache, maxPayloadBytes: 4096),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let applied = NIOLockedValueBox<[UInt64]>([])
        receiver.setReplicaApply { (_: String, records: [LogRecord]) throws(PMUError) in applied.withLockedValue { $0 += records.map(\.origin) } }
        _ = try receiver.open(portion: portion, instance: [UInt8](repeating: 2, count: 16), connection: 1)
        #expect(receiver.attachment(portion: portion)?.generation == 1)
        func append(_ sequence: UInt64) throws {
            try receiver.append(MirrorAppend(sequence: sequence, regionId: 1, epoch: 0, offset: 0, data: ByteBuffer(bytes: [UInt8(sequence)])), connection: 1)
        }
        // Out of arrival order: applied in the owner's order, only through the trim point.
        try append(2)
        try append(1)
        try append(3)
        try receiver.trim(through: 2, connection: 1)
        #expect(applied.withLockedValue { $0 } == [1, 2])
        // A copy holds trims: nothing applied, nothing trimmed, until the release applies every
        // untrimmed record over the copy, then trims.
        receiver.holdTrims(portion: portion)
        try append(4)
        try receiver.trim(through: 4, connection: 1)
        #expect(applied.withLockedValue { $0 } == [1, 2])
        #expect(receiver.status.first?.trimmedThrough == 2)
        try receiver.releaseTrims(portion: portion)
        #expect(applied.withLockedValue { $0 } == [1, 2, 3, 4])
        #expect(receiver.status.first?.trimmedThrough == 4)
        // A new attachment: records of the previous one are never applied (the full copy after
        // the attachment holds them).
        try append(5)
        receiver.connectionClosed(1)
        _ = try receiver.open(portion: portion, instance: [UInt8](repeating: 2, count: 16), connection: 2)
        let attachment = try #require(receiver.attachment(portion: portion))
        #expect(attachment.generation == 2 && attachment.base == 5)
        try receiver.append(MirrorAppend(sequence: 6, regionId: 1, epoch: 0, offset: 0, data: ByteBuffer(bytes: [6])), connection: 2)
        try receiver.trim(through: 6, connection: 2)
        #expect(applied.withLockedValue { $0 } == [1, 2, 3, 4, 6])
        // An applier that refuses (the replica is being taken over) keeps the log whole.
        receiver.setReplicaApply { (_: String, _: [LogRecord]) throws(PMUError) in throw PMUError(.fenced, "taken over") }
        try receiver.append(MirrorAppend(sequence: 7, regionId: 1, epoch: 0, offset: 0, data: ByteBuffer(bytes: [7])), connection: 2)
        #expect(throws: PMUError.self) { try receiver.trim(through: 7, connection: 2) }
        #expect(receiver.status.first?.trimmedThrough == 6)
    }
}
