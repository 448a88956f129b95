import Foundation
import Testing

@testable import PMUCore
@testable import PMUStore

/// `RegionFileWriter` with real files: bytes written through the region file are the mapping's
/// bytes at once (one page cache), at any alignment, and persist like bytes copied into the
/// mapping; it refuses regions whose memory is not the file's page cache, and a file that is gone.
@Suite struct RegionFileWriterTests {
    @Test func bytesWrittenThroughTheFileAreTheMappingsAndPersist() throws {
        let temp = TempDir()
        let size = 1 << 20
        let expected: [UInt8]
        let id: UInt64
        do {
            let store = try openStore(temp.data)
            id = try store.create(CreateRegion(name: "f", sizeBytes: UInt64(size)), owner: "admin").id
            let region = try store.mapping(id: id)
            let writer = try #require(RegionFileWriter(region))
            var model = [UInt8](repeating: 0, count: size)
            var generator = SystemRandomNumberGenerator()
            // Unaligned pieces, back to back, then one over the mapping's own earlier copy.
            var at = 3
            for count in [1, 4095, 4097, 70_000, 300_001] {
                let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
                bytes.withUnsafeBytes { writer.write($0, at: UInt64(at)) }
                model.replaceSubrange(at..<(at + count), with: bytes)
                at += count
            }
            let copied = [UInt8](repeating: 0x5A, count: 10_000)
            copied.withUnsafeBytes { region.write($0, at: 500_000) }
            let over = [UInt8](repeating: 0xC3, count: 5000)
            over.withUnsafeBytes { writer.write($0, at: 502_000) }
            model.replaceSubrange(500_000..<510_000, with: copied)
            model.replaceSubrange(502_000..<507_000, with: over)
            #expect(Array(region.bytes(at: 0, length: size)) == model)
            try region.persist(offset: 0, length: UInt64(size))
            expected = model
        }
        let reopened = try openStore(temp.data)
        #expect(Array(try reopened.mapping(id: id).bytes(at: 0, length: size)) == expected)
    }

    @Test func onlyForTheMappedFile() throws {
        let temp = TempDir()
        var configuration = StoreConfiguration()
        configuration.volatileUntilPersist = true
        let volatile = try openStore(temp.data + "-volatile", configuration)
        let privateMapping = try volatile.mapping(id: try volatile.create(CreateRegion(name: "v", sizeBytes: 4096), owner: "admin").id)
        #expect(RegionFileWriter(privateMapping) == nil)  // MAP_PRIVATE: the file is not its memory

        let store = try openStore(temp.data)
        let record = try store.create(CreateRegion(name: "d", sizeBytes: 4096), owner: "admin")
        let region = try store.mapping(id: record.id)
        #expect(RegionFileWriter(region) != nil)
        _ = try store.delete(named: "d") { _ throws(PMUError) in }
        #expect(RegionFileWriter(region) == nil)  // the file is gone: copy into the mapping instead
    }
}
