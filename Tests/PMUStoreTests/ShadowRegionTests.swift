import Foundation
import Testing

@testable import PMUCore
@testable import PMUStore

/// `RegionMemory.shadow` (what the verbs transport uses on ext4/xfs) with real files: the shadow is
/// separate memory that reaches the file only on PERSIST, exactly the persisted pages; a reopened
/// store loads the file; the total shadow size is bounded with SHADOW_MEMORY_FULL.
@Suite struct ShadowRegionTests {
    func shadowStore(_ path: String, limit: UInt64 = 1 << 30) throws -> RegionStore {
        var configuration = StoreConfiguration()
        configuration.shadowRegions = true
        configuration.shadowLimitBytes = limit
        return try openStore(path, configuration)
    }

    func fileBytes(_ dir: String, id: UInt64, at offset: Int, count: Int) throws -> [UInt8] {
        let handle = try #require(FileHandle(forReadingAtPath: dir + "/regions/" + DataDirectory.hex(id) + ".region"))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    @Test func writesReachTheFileOnlyThroughPersistOfTheirPages() throws {
        let temp = TempDir()
        let page = Sys.pageSize
        let bytes: [UInt8] = (0..<3 * page).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        let id: UInt64
        do {
            let store = try shadowStore(temp.data)
            let record = try store.create(CreateRegion(name: "s", sizeBytes: UInt64(16 * page)), owner: "admin")
            id = record.id
            let region = try store.mapping(id: id)
            #expect(region.memory == .shadow)
            #expect(store.shadowMemoryBytes == UInt64(16 * page))
            bytes.withUnsafeBytes { region.write($0, at: UInt64(page)) }           // pages 1, 2, 3
            bytes.withUnsafeBytes { region.write($0, at: UInt64(10 * page)) }      // pages 10, 11, 12
            #expect(try fileBytes(temp.data, id: id, at: page, count: bytes.count) == [UInt8](repeating: 0, count: bytes.count))
            // A persist of a few bytes inside page 2 writes page 2 whole, nothing else.
            try region.persist(offset: UInt64(2 * page + 10), length: 20)
            #expect(try fileBytes(temp.data, id: id, at: 2 * page, count: page) == Array(bytes[page..<2 * page]))
            #expect(try fileBytes(temp.data, id: id, at: page, count: page) == [UInt8](repeating: 0, count: page))
            #expect(try fileBytes(temp.data, id: id, at: 3 * page, count: page) == [UInt8](repeating: 0, count: page))
            try region.persist(offset: UInt64(10 * page), length: UInt64(bytes.count))
            #expect(try fileBytes(temp.data, id: id, at: 10 * page, count: bytes.count) == bytes)
        }
        // Reopened (a restart): the shadow is loaded from the file, which has only what was persisted.
        let store = try shadowStore(temp.data)
        let region = try store.mapping(id: id)
        #expect(Array(region.bytes(at: UInt64(10 * page), length: bytes.count)) == bytes)
        #expect(Array(region.bytes(at: UInt64(2 * page), length: page)) == Array(bytes[page..<2 * page]))
        #expect(Array(region.bytes(at: UInt64(page), length: page)) == [UInt8](repeating: 0, count: page))
    }

    @Test func aRegionWhoseSizeIsNotAPageMultiplePersistsItsTail() throws {
        let temp = TempDir()
        let store = try shadowStore(temp.data)
        let record = try store.create(CreateRegion(name: "odd", sizeBytes: 10_001), owner: "admin")
        let region = try store.mapping(id: record.id)
        let tail: [UInt8] = (0..<101).map { UInt8($0 + 1) }
        tail.withUnsafeBytes { region.write($0, at: 9_900) }
        try region.persist(offset: 9_900, length: 101)
        #expect(try fileBytes(temp.data, id: record.id, at: 9_900, count: 101) == tail)
        #expect(Sys.fileSize(temp.data + "/regions/" + DataDirectory.hex(record.id) + ".region") == 10_001)
    }

    @Test func theShadowLimitRefusesWithAClearErrorAndDeleteReleasesIt() throws {
        let temp = TempDir()
        let store = try shadowStore(temp.data, limit: 3 << 20)
        let a = try store.create(CreateRegion(name: "a", sizeBytes: 2 << 20), owner: "admin")
        let b = try store.create(CreateRegion(name: "b", sizeBytes: 2 << 20), owner: "admin")
        _ = try store.mapping(id: a.id)
        #expect(throws: PMUError.self) { _ = try store.mapping(id: b.id) }
        do {
            _ = try store.mapping(id: b.id)
        } catch {
            #expect(error.code == .shadowMemoryFull)
            #expect(error.message.contains("--rdma-shadow-memory") && error.message.contains("\"b\""), "\(error.message)")
        }
        #expect(store.shadowMemoryBytes == 2 << 20)
        // Mapping the same region again costs nothing more.
        _ = try store.mapping(id: a.id)
        #expect(store.shadowMemoryBytes == 2 << 20)
        _ = try store.delete(named: "a") { _ in }
        #expect(store.shadowMemoryBytes == 0)
        _ = try store.mapping(id: b.id)
        #expect(store.shadowMemoryBytes == 2 << 20)
    }
}
