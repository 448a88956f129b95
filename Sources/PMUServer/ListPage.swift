import PMUCore
import PMUStore

/// One LIST reply, with the work it may cost bounded: at most `Limits.listScanBudget` names are
/// examined, visible to the client or not, so one request costs O(log n + budget) whatever the
/// number of regions. The cursor is the last name examined: a client that can see none of the
/// regions still moves forward by a whole budget per request instead of making the server scan
/// everything on its event loop.
struct ListPage {
    var entries: [RegionInfo] = []
    var more = false
    var cursor: String

    static func build(
        after: String, limit: UInt32, maxReplyBytes: Int, store: RegionStore,
        visible: (RegionRecord) -> Bool, openHandles: (UInt64) -> Int
    ) -> ListPage {
        let cap = min(limit == 0 ? Limits.maxListEntries : Int(limit), Limits.maxListEntries)
        // Stay well inside the frame limit however long the access lists are.
        let byteBudget = maxReplyBytes / 2
        let scan = store.list(after: after, limit: Limits.listScanBudget)
        var page = ListPage(cursor: after)
        var replyBytes = 0
        for (index, record) in scan.records.enumerated() {
            page.cursor = record.name
            guard visible(record) else { continue }
            page.entries.append(record.info(openHandles: openHandles(record.id)))
            replyBytes += 64 + record.name.utf8.count + record.owner.utf8.count
                + (record.readers + record.writers).reduce(0) { $0 + 2 + $1.utf8.count }
            if page.entries.count == cap || replyBytes > byteBudget {
                page.more = scan.more || index < scan.records.count - 1
                return page
            }
        }
        page.more = scan.more
        return page
    }
}
