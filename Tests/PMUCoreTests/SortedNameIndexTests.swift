import PMUTesting
import Testing

@testable import PMUCore

@Suite struct SortedNameIndexTests {
    /// Seeded random inserts and removes against a reference that sorts everything each time.
    @Test func matchesAFullSortUnderRandomChanges() {
        var generator = SeededGenerator(seed: 42)
        var index = SortedNameIndex()
        // Keyed by bytes: canonically equivalent names ("é", "e\u{301}") are distinct entries here.
        var reference: [[UInt8]: (name: String, id: UInt64)] = [:]
        let alphabet: [String] = ["a", "b", "Z", "é", "e\u{301}", " ", "~", "0"]
        for step in 0..<4000 {
            let length = Int(generator.next() % 4) + 1
            let name = (0..<length).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] }.joined()
            if generator.next() % 3 == 0 {
                index.remove(name)
                reference[Array(name.utf8)] = nil
            } else {
                index.insert(name, id: UInt64(step))
                reference[Array(name.utf8)] = (name, UInt64(step))
            }
        }
        let sorted = reference.keys.sorted { $0.lexicographicallyPrecedes($1) }
        let indexed = index.entries.map { Array($0.name.utf8) }
        #expect(indexed == sorted, "index order differs from a full bytewise sort")
        #expect(index.entries.map(\.id) == sorted.map { reference[$0]!.id })
        #expect(SortedNameIndex(reference.values.map { (name: $0.name, id: $0.id) }) == index)
        // Paging from every position yields the rest, in order, exactly once.
        var mismatches = 0
        for (position, bytes) in sorted.enumerated() {
            let page = index.page(after: reference[bytes]!.name, limit: 3)
            if page.entries.map({ Array($0.name.utf8) }) != Array(sorted.dropFirst(position + 1).prefix(3)) { mismatches += 1 }
            if page.more != (position + 4 < sorted.count) { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }

    @Test func cursorNeedNotBeAName() {
        let index = SortedNameIndex([(name: "apple", id: 1), (name: "banana", id: 2), (name: "cherry", id: 3)])
        #expect(index.page(after: "b", limit: 10).entries.map(\.id) == [2, 3])
        #expect(index.page(after: "", limit: 1).entries.map(\.id) == [1])
        #expect(index.page(after: "", limit: 1).more)
        #expect(index.page(after: "zzz", limit: 5).entries.isEmpty)
        #expect(!index.page(after: "zzz", limit: 5).more)
        #expect(index.page(after: "banana", limit: 0).entries.isEmpty)
    }
}
