import NIOConcurrencyHelpers

/// The last OPEN_RESUME that raised each region's writer epoch, with its token and client, kept in
/// this server process only (a restart or another server forgets it: the retry is then FENCED,
/// safe if needless). At most one entry per region; an entry goes with its region's DELETE.
final class ResumeGrants: Sendable {
    private struct Entry {
        var epoch: UInt64
        var token: [UInt8]
        var clientId: String
    }

    private let entries = NIOLockedValueBox<[UInt64: Entry]>([:])

    /// Recorded only after the raised epoch is committed to the catalog, and before the reply is
    /// sent: a retry (which follows the reply's loss) always finds it.
    func record(regionId: UInt64, epoch: UInt64, token: [UInt8]?, clientId: String) {
        entries.withLockedValue { entries in
            if let token {
                entries[regionId] = Entry(epoch: epoch, token: token, clientId: clientId)
            } else {
                entries[regionId] = nil
            }
        }
    }

    func matches(regionId: UInt64, epoch: UInt64, token: [UInt8]?, clientId: String) -> Bool {
        guard let token else { return false }
        return entries.withLockedValue { entries in
            guard let entry = entries[regionId] else { return false }
            return entry.epoch == epoch && entry.token == token && entry.clientId == clientId
        }
    }

    func forget(regionId: UInt64) {
        _ = entries.withLockedValue { $0.removeValue(forKey: regionId) }
    }
}
