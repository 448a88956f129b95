import Foundation
import Testing

@testable import PMUCore
@testable import PMULog
@testable import PMUStore

/// The write journal at the store seam. `volatileUntilPersist` maps regions MAP_PRIVATE, so
/// dropping the store loses every byte not made durable, as a machine crash would; the journal's
/// `crashForTesting` stops its worker without applying the log. What reopening finds is exactly
/// what a restart after losing the machine would find.
@Suite struct WriteJournalTests {
    static let volatile: StoreConfiguration = {
        var configuration = StoreConfiguration()
        configuration.volatileUntilPersist = true
        return configuration
    }()

    static func bytes(_ seed: UInt64, _ count: Int) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    /// The journal's PERSIST, awaited.
    static func persist(_ journal: WriteJournal, _ mapping: MappedRegion, _ id: UInt64, _ offset: UInt64, _ length: UInt64, barrier: Bool = false) async -> PMUError? {
        await withCheckedContinuation { continuation in
            journal.persist(mapping, regionId: id, offset: offset, length: length, barrier: barrier, eventLoop: nil) { continuation.resume(returning: $0) }
        }
    }

    struct Opened {
        var store: RegionStore
        var journal: WriteJournal
    }

    static func open(_ path: String, _ configuration: StoreConfiguration) throws -> Opened {
        let directory = try DataDirectory(path: path)
        let store = try RegionStore(directory: directory, configuration: configuration, logger: quiet)
        var journal = JournalConfiguration()
        journal.idleCheckpointSeconds = 3600 // the tests decide when the log is applied
        return Opened(store: store, journal: try WriteJournal(directory: directory, store: store, configuration: journal, logger: quiet))
    }

    @Test func journaledPersistsSurviveLossOfUnsyncedWrites() async throws {
        let temp = TempDir()
        var durable: [Int: [UInt8]] = [:]
        var lost: [Int: [UInt8]] = [:]
        let id: UInt64
        do {
            let opened = try Self.open(temp.data, Self.volatile)
            id = try opened.store.create(CreateRegion(name: "r", sizeBytes: 1 << 20), owner: "o").id
            let mapping = try opened.store.mapping(id: id)
            // 64 small PERSISTs from concurrent tasks (group-committed), then writes never persisted.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<64 {
                    let bytes = Self.bytes(UInt64(index + 1), 100 + index * 50)
                    durable[index * 8192 + index] = bytes
                    bytes.withUnsafeBytes { mapping.write($0, at: UInt64(index * 8192 + index)) }
                    group.addTask {
                        let error = await Self.persist(opened.journal, mapping, id, UInt64(index * 8192 + index), UInt64(bytes.count))
                        if let error { throw error }
                    }
                }
                try await group.waitForAll()
            }
            for index in 0..<8 {
                let bytes = Self.bytes(UInt64(1000 + index), 3000)
                lost[600_000 + index * 4096] = bytes
                bytes.withUnsafeBytes { mapping.write($0, at: UInt64(600_000 + index * 4096)) }
            }
            #expect(opened.journal.status.records == 64)
            opened.journal.crashForTesting()
        }
        do {
            let reopened = try Self.open(temp.data, Self.volatile)
            #expect(reopened.journal.recoveryReport.replayed)
            #expect(reopened.journal.recoveryReport.records == 64)
            let mapping = try reopened.store.mapping(id: id)
            for (offset, bytes) in durable {
                #expect(Array(mapping.bytes(at: UInt64(offset), length: bytes.count)) == bytes, "journaled PERSIST at \(offset) lost")
            }
            // The seam is real: what was never persisted is gone (zeros), not kept by accident.
            for (offset, bytes) in lost {
                #expect(Array(mapping.bytes(at: UInt64(offset), length: bytes.count)) == [UInt8](repeating: 0, count: bytes.count))
            }
            // Recovery applied the log to the region file and trimmed it.
            #expect(reopened.journal.status.liveRecords == 0)
            reopened.journal.crashForTesting()
        }
        let third = try Self.open(temp.data, Self.volatile)
        #expect(third.journal.recoveryReport.records == 0)
        let again = try third.store.mapping(id: id)
        for (offset, bytes) in durable {
            #expect(Array(again.bytes(at: UInt64(offset), length: bytes.count)) == bytes)
        }
        third.journal.stop()
    }

    /// A large PERSIST (an msync) of a region with journal records is a barrier: replay must never
    /// write the older journaled bytes over what it made durable.
    @Test func largePersistAfterJournaledOneIsNotUndoneByReplay() async throws {
        let temp = TempDir()
        let old = Self.bytes(1, 4096)
        let new = Self.bytes(2, 4096)
        let id: UInt64
        do {
            let opened = try Self.open(temp.data, Self.volatile)
            id = try opened.store.create(CreateRegion(name: "r", sizeBytes: 4 << 20), owner: "o").id
            let mapping = try opened.store.mapping(id: id)
            old.withUnsafeBytes { mapping.write($0, at: 8192) }
            #expect(await Self.persist(opened.journal, mapping, id, 8192, 4096) == nil)
            #expect(opened.journal.covers(regionId: id))
            new.withUnsafeBytes { mapping.write($0, at: 8192) }
            #expect(await Self.persist(opened.journal, mapping, id, 0, 4 << 20, barrier: true) == nil)
            #expect(!opened.journal.covers(regionId: id))
            opened.journal.crashForTesting()
        }
        let reopened = try Self.open(temp.data, Self.volatile)
        let mapping = try reopened.store.mapping(id: id)
        #expect(Array(mapping.bytes(at: 8192, length: 4096)) == new)
        reopened.journal.stop()
    }

    /// After a crash of the process alone (same boot, regions in the page cache), the region files
    /// hold every acknowledged write, newer than the log: recovery must not replay over them.
    @Test func processCrashKeepsWritesNewerThanTheJournal() async throws {
        let temp = TempDir()
        let persisted = Self.bytes(3, 4096)
        let newer = Self.bytes(4, 4096)
        let id: UInt64
        do {
            let opened = try Self.open(temp.data, StoreConfiguration())
            id = try opened.store.create(CreateRegion(name: "r", sizeBytes: 1 << 20), owner: "o").id
            let mapping = try opened.store.mapping(id: id)
            persisted.withUnsafeBytes { mapping.write($0, at: 0) }
            #expect(await Self.persist(opened.journal, mapping, id, 0, 4096) == nil)
            newer.withUnsafeBytes { mapping.write($0, at: 0) } // acknowledged, never persisted
            opened.journal.crashForTesting()
        }
        let reopened = try Self.open(temp.data, StoreConfiguration())
        #expect(reopened.journal.recoveryReport.records == 1)
        #expect(!reopened.journal.recoveryReport.replayed)
        #expect(Array(try reopened.store.mapping(id: id).bytes(at: 0, length: 4096)) == newer)
        reopened.journal.stop()
    }

    /// A log written while regions were shmem shadows (verbs on disk) holds the only durable copy
    /// of its PERSISTs: a restart that maps the files directly (e.g. `--transport tcp`) must still
    /// replay it, because the writer's mode is recorded in the journal, not inferred from this run.
    @Test func aLogWrittenFromShadowsIsReplayedByARunThatMapsTheFiles() async throws {
        let temp = TempDir()
        let persisted = Self.bytes(7, 4096)
        var shadows = StoreConfiguration()
        shadows.shadowRegions = true
        let id: UInt64
        do {
            let opened = try Self.open(temp.data, shadows)
            id = try opened.store.create(CreateRegion(name: "r", sizeBytes: 1 << 20), owner: "o").id
            let mapping = try opened.store.mapping(id: id)
            persisted.withUnsafeBytes { mapping.write($0, at: 8192) }
            #expect(await Self.persist(opened.journal, mapping, id, 8192, 4096) == nil)
            opened.journal.crashForTesting() // the shadow dies with the process; the file never saw it
            // A shadow keeps its store (its reservation) alive; a dead process would release the lock.
            opened.store.directory.releaseLock()
        }
        do {
            let reopened = try Self.open(temp.data, StoreConfiguration())
            #expect(reopened.journal.recoveryReport.records == 1)
            #expect(reopened.journal.recoveryReport.replayed)
            #expect(Array(try reopened.store.mapping(id: id).bytes(at: 8192, length: 4096)) == persisted)
            reopened.journal.stop()
            reopened.store.directory.releaseLock()
        }
        // That run mapped the files: the next start after a process crash no longer needs a replay.
        let third = try Self.open(temp.data, StoreConfiguration())
        #expect(!third.journal.recoveryReport.replayed)
        #expect(Array(try third.store.mapping(id: id).bytes(at: 8192, length: 4096)) == persisted)
        third.journal.stop()
    }

    @Test func aBatchTooLargeForTheLogIsRefusedAtConfiguration() {
        var journal = JournalConfiguration()
        journal.maxPersistBytes = Limits.maxIOBytes
        journal.log.maxBytes = UInt64(journal.log.segmentBytes) // valid for the log alone
        #expect(throws: Never.self) { try journal.log.validate() }
        // ...but a quarter of it (one batch) cannot hold one record of the largest journaled PERSIST.
        let refused = #expect(throws: PMUError.self) { try journal.validate() }
        #expect(refused?.message.contains("--journal-max") == true)
        journal.log.maxBytes = 4 * UInt64(journal.log.segmentBytes)
        #expect(throws: Never.self) { try journal.validate() }
    }

    /// A crash in the middle of an append leaves a torn record after the acknowledged ones: the
    /// open cuts it off and replays the rest; a region deleted since is skipped.
    @Test func tornJournalTailAndDeletedRegionsAreHandled() async throws {
        let temp = TempDir()
        let kept = Self.bytes(5, 2000)
        let id: UInt64
        do {
            let opened = try Self.open(temp.data, Self.volatile)
            id = try opened.store.create(CreateRegion(name: "keep", sizeBytes: 1 << 20), owner: "o").id
            let gone = try opened.store.create(CreateRegion(name: "gone", sizeBytes: 1 << 20), owner: "o")
            let mapping = try opened.store.mapping(id: id)
            kept.withUnsafeBytes { mapping.write($0, at: 10) }
            #expect(await Self.persist(opened.journal, mapping, id, 10, 2000) == nil)
            let goneMapping = try opened.store.mapping(id: gone.id)
            #expect(await Self.persist(opened.journal, goneMapping, gone.id, 0, 4096) == nil)
            _ = try opened.store.delete(named: "gone") { _ in }
            opened.journal.crashForTesting()
        }
        // Half a record's header after the last one, as an interrupted pwrite leaves.
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: temp.data + "/journal").first { $0.hasSuffix(".pmulog") })
        let path = temp.data + "/journal/" + segment
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let used = LogRecordFormat.scan(bytes).validBytes
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seek(toOffset: UInt64(used))
        try handle.write(contentsOf: Data([0x50, 0x4D, 0x55, 0x4C, 1, 0, 1, 0, 9, 9, 9]))
        try handle.close()
        let reopened = try Self.open(temp.data, Self.volatile)
        #expect(reopened.journal.recoveryReport.repairedTornBytes > 0)
        #expect(reopened.journal.recoveryReport.records == 2)
        #expect(reopened.journal.recoveryReport.skipped == 1)
        #expect(Array(try reopened.store.mapping(id: id).bytes(at: 10, length: 2000)) == kept)
        reopened.journal.stop()
    }
}
