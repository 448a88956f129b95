import Foundation
import Logging
import NIOCore
import Testing

@testable import PMUCore
@testable import PMULog
@testable import PMUPair

/// The partner's bookkeeping, on real files without sockets: who may mirror what, and that a
/// taken-over portion stays refused across a restart of the partner.
@Suite struct MirrorReceiverTests {
    let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    let own = String(repeating: "a", count: 32)
    let owner = String(repeating: "b", count: 32)
    let myInstance = [UInt8](repeating: 1, count: 16)
    let ownerInstance = [UInt8](repeating: 2, count: 16)
    let config = AppendLogConfiguration(segmentBytes: 64 * 1024, maxBytes: 256 * 1024, sync: .pageCache, maxPayloadBytes: 4096)

    func receiver(_ dir: String) throws -> MirrorReceiver {
        try MirrorReceiver(dataDirectory: dir, ownPortion: own, instance: myInstance, logConfiguration: config, logger: quiet)
    }

    func scratch() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-pair-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func append(_ sequence: UInt64) -> MirrorAppend {
        MirrorAppend(sequence: sequence, regionId: 1, epoch: 0, offset: sequence * 10, data: ByteBuffer(bytes: [UInt8](repeating: UInt8(sequence), count: 10)))
    }

    @Test func refusesItselfItsOwnPortionASecondClaimantAndAppendsBeforeOpen() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mirror = try receiver(dir)
        #expect(throws: PMUError.self) { try mirror.open(portion: owner, instance: myInstance, connection: 1) }
        #expect(throws: PMUError.self) { try mirror.open(portion: own, instance: ownerInstance, connection: 1) }
        #expect(throws: PMUError.self) { try mirror.open(portion: "x", instance: ownerInstance, connection: 1) }
        #expect(throws: PMUError.self) { try mirror.append(append(1), connection: 1) } // not open
        #expect(try mirror.open(portion: owner, instance: ownerInstance, connection: 1) == 0)
        do {
            _ = try mirror.open(portion: owner, instance: [UInt8](repeating: 3, count: 16), connection: 2)
            Issue.record("a second connection claimed a mirrored portion")
        } catch {
            #expect(error.code == .regionExists)
        }
        try mirror.append(append(1), connection: 1)
        try mirror.append(append(2), connection: 1)
        try mirror.trim(through: 1, connection: 1)
        try mirror.append(append(1), connection: 1) // late, already trimmed: not kept
        #expect(mirror.status.first?.liveRecords == 1)
        // The claimant leaves: another may open; it learns the highest sequence held.
        mirror.connectionClosed(1)
        #expect(mirror.status.first?.owner == "gone")
        #expect(mirror.status.first?.ownerGoneSinceMilliseconds != nil)
        #expect(try mirror.open(portion: owner, instance: ownerInstance, connection: 3) == 2)
        #expect(mirror.status.first?.owner == "mirroring")
    }

    /// An owner mirrors over one channel per event loop: the same instance may attach several
    /// connections, each appending (in any order; replay sorts by sequence). The portion counts
    /// as mirrored until its last channel closes.
    @Test func oneOwnerMayMirrorOverSeveralChannels() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var synced = config
        synced.sync = .dataSync
        let mirror = try MirrorReceiver(dataDirectory: dir, ownPortion: own, instance: myInstance, logConfiguration: synced, logger: quiet)
        #expect(try mirror.open(portion: owner, instance: ownerInstance, connection: 1) == 0)
        #expect(try mirror.open(portion: owner, instance: ownerInstance, connection: 2) == 0)
        try mirror.append(append(2), connection: 2)
        try mirror.append(append(1), connection: 1)
        // Group commit path: written, then synced by the returned step.
        let sync = try #require(try mirror.appendForGroupCommit(append(3), connection: 2))
        try sync()
        #expect(mirror.status.first?.liveRecords == 3)
        #expect(try mirror.log(portion: owner).status.dataSyncs == 3)
        // Under page-cache there is nothing to sync.
        try FileManager.default.createDirectory(atPath: dir + "/cached", withIntermediateDirectories: true)
        let cached = try receiver(dir + "/cached")
        _ = try cached.open(portion: owner, instance: ownerInstance, connection: 9)
        #expect(try cached.appendForGroupCommit(append(1), connection: 9) == nil)
        mirror.connectionClosed(1)
        #expect(mirror.status.first?.mirroring == true)
        try mirror.append(append(4), connection: 2)
        #expect(throws: PMUError.self) { try mirror.append(append(5), connection: 1) } // that channel closed
        mirror.connectionClosed(2)
        #expect(mirror.status.first?.mirroring == false)
        #expect(mirror.status.first?.owner == "gone")
        var origins: [UInt64] = []
        try mirror.log(portion: owner).replay { origins.append($0.origin) }
        #expect(origins == [2, 1, 3, 4])
    }

    @Test func takenOverPortionStaysRefusedAfterRestartAndItsLogIsSealed() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let mirror = try receiver(dir)
            _ = try mirror.open(portion: owner, instance: ownerInstance, connection: 1)
            try mirror.append(append(1), connection: 1)
            let log = try mirror.beginTakeover(portion: owner)
            do {
                try mirror.append(append(2), connection: 1)
                Issue.record("the stale owner appended after the takeover began")
            } catch {
                #expect(error.code == .fenced)
            }
            #expect(throws: PMUError.self) { try log.append([LogEntry(origin: 3, regionId: 1, epoch: 0, offset: 0, payload: [1])]) }
            var records: [LogRecord] = []
            try log.replay { records.append($0) }
            #expect(records.map(\.origin) == [1])
        }
        let restarted = try receiver(dir)
        do {
            _ = try restarted.open(portion: owner, instance: ownerInstance, connection: 9)
            Issue.record("the stale owner was let in after the partner restarted")
        } catch {
            #expect(error.code == .fenced)
            #expect(error.message.contains("taken over"))
        }
    }

    @Test func portionIdIsCreatedOnceAndChecked() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: PMUError.self) { try PortionIdentity.load(dataDirectory: dir, create: false) }
        let id = try PortionIdentity.load(dataDirectory: dir, create: true)
        #expect(PortionIdentity.isValid(id))
        #expect(try PortionIdentity.load(dataDirectory: dir, create: true) == id)
        try "not an id\n".write(toFile: dir + "/portion-id", atomically: true, encoding: .utf8)
        #expect(throws: PMUError.self) { try PortionIdentity.load(dataDirectory: dir, create: true) }
    }
}
