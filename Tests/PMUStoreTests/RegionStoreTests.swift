import Foundation
import Logging
import Testing

@testable import PMUCore
@testable import PMUStore

/// A fresh data directory under the system temp dir, removed afterwards.
final class TempDir {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-store-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    var data: String { path + "/data" }
}

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

func openStore(_ path: String, _ configuration: StoreConfiguration = .init()) throws -> RegionStore {
    try RegionStore(directory: try DataDirectory(path: path), configuration: configuration, logger: quiet)
}

func files(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/regions")) ?? []).sorted()
}

@Suite struct RegionStoreTests {
    @Test func createWriteReopenRead() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            let record = try store.create(CreateRegion(name: "a", sizeBytes: 10_000), owner: "admin")
            #expect(record.id == 1)
            let region = try store.mapping(id: record.id)
            let bytes: [UInt8] = (0..<10_000).map { UInt8($0 % 251) }
            bytes.withUnsafeBytes { region.write($0, at: 0) }
            try region.persist(offset: 0, length: 10_000)
            #expect(FileManager.default.fileExists(atPath: temp.data + "/regions/0000000000000001.region"))
        }
        let store = try openStore(temp.data)
        #expect(store.recoveryReport.regions == 1)
        #expect(!store.recoveryReport.repairedSomething)
        let record = try #require(store.record(named: "a"))
        let mapped = try store.mapping(id: record.id)
        #expect(Array(mapped.bytes(at: 0, length: 10_000)) == (0..<10_000).map { UInt8($0 % 251) })
    }

    @Test func badCreatesAreRefusedAndChangeNothing() throws {
        let temp = TempDir()
        let store = try openStore(temp.data, StoreConfiguration(maxRegionBytes: 1 << 50, maxRegions: 2))
        _ = try store.create(CreateRegion(name: "keep", sizeBytes: 4096), owner: "o")
        func code(_ request: CreateRegion) -> PMUErrorCode? {
            do { _ = try store.create(request, owner: "o"); return nil } catch { return error.code }
        }
        #expect(code(CreateRegion(name: "keep", sizeBytes: 1)) == .regionExists)
        #expect(code(CreateRegion(name: "z", sizeBytes: 0)) == .invalidSize)
        #expect(code(CreateRegion(name: "a/b", sizeBytes: 1)) == .invalidName)
        // Larger than the disk: refused at create, never a SIGBUS later.
        #expect(code(CreateRegion(name: "huge", sizeBytes: 1 << 49)) == .noSpace)
        _ = try store.create(CreateRegion(name: "second", sizeBytes: 1), owner: "o")
        #expect(code(CreateRegion(name: "third", sizeBytes: 1)) == .tooManyRegions)
        #expect(store.regionCount == 2)
        #expect(files(temp.data) == ["0000000000000001.region", "0000000000000003.region"])
        let limited = try openStore(temp.path + "/other", StoreConfiguration(maxRegionBytes: 1024))
        #expect((try? limited.create(CreateRegion(name: "big", sizeBytes: 1025), owner: "o")) == nil)
    }

    @Test func deleteRemovesFileAndIdsAreNeverReused() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 1), owner: "o")
            _ = try store.create(CreateRegion(name: "b", sizeBytes: 1), owner: "o")
            _ = try store.delete(named: "b") { _ in }
            #expect(files(temp.data) == ["0000000000000001.region"])
            #expect(throws: PMUError.self) { _ = try store.delete(named: "b") { _ in } }
            let denied = #expect(throws: PMUError.self) {
                _ = try store.delete(named: "a") { _ throws(PMUError) in throw PMUError(.accessDenied, "no") }
            }
            #expect(denied?.code == .accessDenied)
            #expect(store.record(named: "a") != nil)
        }
        let store = try openStore(temp.data)
        #expect(store.record(named: "b") == nil)
        let again = try store.create(CreateRegion(name: "b", sizeBytes: 1), owner: "o")
        #expect(again.id == 3)
    }

    @Test func metadataUpdatesAreDurable() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            let record = try store.create(CreateRegion(name: "a", sizeBytes: 1), owner: "o")
            for _ in 0..<3 { _ = try store.update(id: record.id) { (r: inout RegionRecord) throws(PMUError) in r.writerEpoch += 1 } }
        }
        let record = try #require(try openStore(temp.data).record(named: "a"))
        #expect(record.writerEpoch == 3)
        #expect(record.generation == 4)
    }

    @Test func secondStoreOnTheSameDirectoryIsRefused() throws {
        let temp = TempDir()
        do {
            let first = try DataDirectory(path: temp.data)
            let error = #expect(throws: PMUError.self) { _ = try DataDirectory(path: temp.data) }
            #expect(error?.message.contains("in use by another pmu-server") == true)
            withExtendedLifetime(first) {}
        }
        _ = try DataDirectory(path: temp.data) // released with the first
    }

    @Test func missingParentAndNonDirectoryAreRefused() throws {
        let temp = TempDir()
        #expect(throws: PMUError.self) { _ = try DataDirectory(path: temp.path + "/no/such/dir") }
        FileManager.default.createFile(atPath: temp.path + "/file", contents: Data())
        #expect(throws: PMUError.self) { _ = try DataDirectory(path: temp.path + "/file") }
    }

    @Test func unwritableDirectoryIsRefused() throws {
        guard getuid() != 0 else { return } // root writes anywhere; the check is covered by the message path
        let temp = TempDir()
        try FileManager.default.createDirectory(atPath: temp.data, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o500])
        #expect(throws: PMUError.self) { _ = try DataDirectory(path: temp.data) }
    }

    @Test func compactionKeepsTheStateAndShrinksTheLog() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            let record = try store.create(CreateRegion(name: "a", sizeBytes: 1), owner: "o")
            for _ in 0..<1100 { _ = try store.update(id: record.id) { (r: inout RegionRecord) throws(PMUError) in r.writerEpoch += 1 } }
        }
        let size = try #require(try FileManager.default.attributesOfItem(atPath: temp.data + "/catalog")[.size] as? Int)
        #expect(size < 1100 * 40)
        do {
            let store = try openStore(temp.data)
            #expect(store.record(named: "a")?.writerEpoch == 1100)
            _ = try store.create(CreateRegion(name: "b", sizeBytes: 1), owner: "o")
        }
        #expect(try openStore(temp.data).record(named: "b")?.id == 2)
    }
}

/// Crash states a kill -9 can leave between the steps of create and delete, built by hand, and
/// what recovery must make of each.
@Suite struct RecoveryTests {
    @Test func incompleteCreateIsRemoved() throws {
        let temp = TempDir()
        _ = try openStore(temp.data)
        FileManager.default.createFile(atPath: temp.data + "/regions/0000000000000005.tmp", contents: Data(count: 100))
        let store = try openStore(temp.data)
        #expect(store.recoveryReport.removedIncompleteCreates == ["0000000000000005.tmp"])
        #expect(files(temp.data).isEmpty)
    }

    @Test func fileWithoutRecordIsRemoved() throws {
        // Create crashed after the rename but before the catalog record; or delete crashed after
        // its record but before the unlink. Either way the region does not exist.
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 4096), owner: "o")
        }
        FileManager.default.createFile(atPath: temp.data + "/regions/0000000000000009.region", contents: Data(count: 4096))
        let store = try openStore(temp.data)
        #expect(store.recoveryReport.removedOrphans == ["0000000000000009.region"])
        #expect(store.regionCount == 1)
        #expect(files(temp.data) == ["0000000000000001.region"])
    }

    @Test func deleteCommittedBeforeUnlinkDoesNotComeBack() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 4096), owner: "o")
            // Keep a copy of the file, delete (record + unlink), then put the file back: the state
            // of a crash between the delete record and the unlink.
            try FileManager.default.copyItem(atPath: temp.data + "/regions/0000000000000001.region", toPath: temp.path + "/saved")
            _ = try store.delete(named: "a") { _ in }
        }
        try FileManager.default.moveItem(atPath: temp.path + "/saved", toPath: temp.data + "/regions/0000000000000001.region")
        let store = try openStore(temp.data)
        #expect(store.record(named: "a") == nil)
        #expect(files(temp.data).isEmpty)
    }

    @Test func tornCatalogTailIsCutAndItsCreateUndone() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 4096), owner: "o")
            _ = try store.create(CreateRegion(name: "b", sizeBytes: 4096), owner: "o")
        }
        // Cut the last record (b's create) in half: b's file is there, its record torn.
        let catalog = temp.data + "/catalog"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: catalog))
        let records = CatalogFormat.scan(Array(bytes))
        #expect(records.entries.count == 2) // one put per create
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: catalog))
        do {
            let store = try openStore(temp.data)
            #expect(store.recoveryReport.tornTailBytes > 0)
            #expect(store.record(named: "a") != nil)
            #expect(store.record(named: "b") == nil)
            #expect(files(temp.data) == ["0000000000000001.region"])
            // The torn bytes are gone from disk: the next append follows a whole record.
            _ = try store.create(CreateRegion(name: "c", sizeBytes: 1), owner: "o")
        }
        #expect(try openStore(temp.data).record(named: "c") != nil)
    }

    @Test func corruptCatalogRefusesToStart() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 1), owner: "o")
            _ = try store.create(CreateRegion(name: "b", sizeBytes: 1), owner: "o")
        }
        let catalog = temp.data + "/catalog"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: catalog))
        bytes[20] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: catalog))
        let error = #expect(throws: PMUError.self) { _ = try openStore(temp.data) }
        #expect(error?.message.contains("damaged") == true)
        #expect(files(temp.data).count == 2) // nothing removed
    }

    @Test func regionWhoseFileVanishedIsDroppedLoudly() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 1), owner: "o")
        }
        try FileManager.default.removeItem(atPath: temp.data + "/regions/0000000000000001.region")
        let store = try openStore(temp.data)
        #expect(store.recoveryReport.quarantined == ["a"])
        #expect(store.record(named: "a") == nil)
    }

    @Test func sizeMismatchIsQuarantinedNotServed() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            _ = try store.create(CreateRegion(name: "a", sizeBytes: 8192), owner: "o")
        }
        truncate(temp.data + "/regions/0000000000000001.region", 4096)
        let store = try openStore(temp.data)
        #expect(store.record(named: "a") == nil)
        #expect(files(temp.data) == ["0000000000000001.quarantine"])
    }
}
