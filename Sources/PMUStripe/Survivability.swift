/// How many more server losses a striped checkpoint survives, from which subsegments are still
/// intact where. Pure: the status command and the tests use it.
public enum Survivability {
    /// - Parameter intact: whether a copy is present and checks out on its server.
    /// - Returns: nil if some group can already not be reassembled; otherwise the largest f such
    ///   that losing any f more servers leaves every group reassemblable.
    public static func additionalLossesSurvivable(_ geometry: StripeGeometry, intact: (SubsegmentID) -> Bool) -> Int? {
        var worst = Int.max
        for group in 0..<geometry.groups {
            // Live copies per subsegment of this group; the group's copies sit on distinct servers,
            // so destroying a subsegment costs exactly its live copy count in servers.
            var live = [Int](repeating: 0, count: geometry.redundancy.groupWidth)
            for id in geometry.copies(inGroup: group) where intact(id) { live[id.index] += 1 }
            let available = live.filter { $0 > 0 }.sorted()
            if available.count < geometry.k { return nil }
            // Breaking the group means removing (available - k + 1) subsegments: cheapest first.
            let cost = available.prefix(available.count - geometry.k + 1).reduce(0, +)
            worst = min(worst, cost - 1)
        }
        return worst == .max ? Int(geometry.serverCount) : worst
    }
}
