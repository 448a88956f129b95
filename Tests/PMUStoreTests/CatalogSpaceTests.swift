import Foundation
import Testing

@testable import PMUCore
@testable import PMUStore

/// Catalog compaction that cannot write, the catalog's preallocated headroom, and LIST's index.
@Suite struct CatalogSpaceTests {
    /// A start-up compaction that cannot write catalog.new (here: a directory of that name stands
    /// in for a full disk, which the integration suite reproduces for real on a small tmpfs) is
    /// skipped; the store opens with every region, keeps working, and compacts once it can.
    @Test func startUpCompactionThatCannotWriteIsSkippedAndRetried() throws {
        let temp = TempDir()
        do {
            let store = try openStore(temp.data)
            let record = try store.create(CreateRegion(name: "a", sizeBytes: 4096), owner: "o")
            for _ in 0..<100 { _ = try store.update(id: record.id) { (r: inout RegionRecord) throws(PMUError) in r.writerEpoch += 1 } }
        }
        try FileManager.default.createDirectory(atPath: temp.data + "/catalog.new", withIntermediateDirectories: false)
        let catalogBefore = try Data(contentsOf: URL(fileURLWithPath: temp.data + "/catalog"))
        do {
            let store = try openStore(temp.data)
            #expect(store.recoveryReport.compactionSkipped != nil)
            #expect(!store.recoveryReport.compacted)
            #expect(store.record(named: "a")?.writerEpoch == 100)
            // Metadata changes still commit; the retry (after 64 more records) fails again quietly.
            for _ in 0..<70 { _ = try store.update(id: store.record(named: "a")!.id) { (r: inout RegionRecord) throws(PMUError) in r.writerEpoch += 1 } }
            #expect(store.record(named: "a")?.writerEpoch == 170)
        }
        let catalogAfter = try Data(contentsOf: URL(fileURLWithPath: temp.data + "/catalog"))
        #expect(catalogAfter.count > catalogBefore.count) // appended, never compacted
        try FileManager.default.removeItem(atPath: temp.data + "/catalog.new")
        let store = try openStore(temp.data)
        #expect(store.recoveryReport.compacted)
        #expect(store.record(named: "a")?.writerEpoch == 170)
        let compacted = try Data(contentsOf: URL(fileURLWithPath: temp.data + "/catalog"))
        #expect(compacted.count < catalogBefore.count)
    }

    /// The catalog keeps blocks allocated past its end (its size is unchanged, so recovery reads
    /// exactly the records), and a create counts them as part of --reserve-free.
    @Test func catalogKeepsHeadroomAllocatedInsideTheReserve() throws {
        let temp = TempDir()
        let configuration = StoreConfiguration(reserveFreeBytes: 4 << 20)
        #expect(configuration.catalogHeadroomBytes == 2 << 20)
        let store = try openStore(temp.data, configuration)
        _ = try store.create(CreateRegion(name: "a", sizeBytes: 4096), owner: "o")
        var info = stat()
        #expect(stat(temp.data + "/catalog", &info) == 0)
        #expect(Int(info.st_blocks) * 512 >= 2 << 20) // allocated
        #expect(Int(info.st_size) < 4096) // but not part of the log
        #expect(try openStore(temp.data + "-other").recoveryReport.regions == 0)
        try? FileManager.default.removeItem(atPath: temp.data + "-other")
    }

    /// LIST's order is raw UTF-8 bytes, kept across creates, deletes and restarts.
    @Test func listPagesInByteOrderAcrossChanges() throws {
        let temp = TempDir()
        let names = ["b", "a", "Z", "é", "e\u{301}x", "aa", "a b"]
        do {
            let store = try openStore(temp.data)
            for name in names { _ = try store.create(CreateRegion(name: name, sizeBytes: 1), owner: "o") }
            _ = try store.delete(named: "aa") { _ in }
        }
        let store = try openStore(temp.data)
        let expected = names.filter { $0 != "aa" }.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        var seen: [String] = []
        var after = ""
        while true {
            let page = store.list(after: after, limit: 2)
            seen += page.records.map(\.name)
            guard page.more, let last = page.records.last else { break }
            after = last.name
        }
        #expect(seen == expected)
        #expect(store.list(after: "", limit: 100).more == false)
    }
}
