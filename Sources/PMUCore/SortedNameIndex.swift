/// Region names in LIST order (raw UTF-8 bytes), each with its region id: a sorted array.
///
/// LIST needs "the next names after X" in O(log n + page) instead of sorting every region per
/// request. A sorted array answers that with a binary search and a slice; insert and remove move
/// up to n references (about 0.8 MB at 50,000 regions, tens of microseconds), which only CREATE and
/// DELETE pay, and both already wait for an fsync. (swift-collections' B-tree `SortedSet` would
/// make those O(log n) too, but it ships only behind an "unstable, not for production" trait.)
///
/// Pure; the store keeps one next to its catalog state, under the same lock.
public struct SortedNameIndex: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var id: UInt64
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    /// Builds the index in one sort (start-up replays tens of thousands of regions).
    public init(_ regions: some Sequence<(name: String, id: UInt64)>) {
        entries = regions.map { Entry(name: $0.name, id: $0.id) }
        entries.sort { Self.precedes($0.name, $1.name) }
    }

    public var count: Int { entries.count }

    /// Bytewise UTF-8 order, the order LIST promises (not `String`'s Unicode order).
    public static func precedes(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    /// Position of the first name strictly after `name` (bytewise).
    public func firstIndex(after name: String) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let mid = low + (high - low) / 2
            if Self.precedes(name, entries[mid].name) { high = mid } else { low = mid + 1 }
        }
        return low
    }

    /// Position of the first name not before `name`.
    private func lowerBound(_ name: String) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let mid = low + (high - low) / 2
            if Self.precedes(entries[mid].name, name) { low = mid + 1 } else { high = mid }
        }
        return low
    }

    private func position(of name: String) -> Int? {
        let index = lowerBound(name)
        guard index < entries.count, entries[index].name.utf8.elementsEqual(name.utf8) else { return nil }
        return index
    }

    /// Adds `name` (or moves an existing entry with exactly these bytes to `id`).
    public mutating func insert(_ name: String, id: UInt64) {
        if let index = position(of: name) {
            entries[index].id = id
        } else {
            entries.insert(Entry(name: name, id: id), at: lowerBound(name))
        }
    }

    public mutating func remove(_ name: String) {
        if let index = position(of: name) { entries.remove(at: index) }
    }

    /// At most `limit` entries strictly after `after`, and whether any follow them.
    public func page(after: String, limit: Int) -> (entries: ArraySlice<Entry>, more: Bool) {
        let start = firstIndex(after: after)
        let end = start + min(max(0, limit), entries.count - start)
        return (entries[start..<end], end < entries.count)
    }
}
