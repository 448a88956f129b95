import NIOCore
import PMUCore
import PMUStore

/// PERSIST through the server's write journal (WriteJournal), kept out of Session.swift.
extension Session {
    /// Sends the PERSIST to the journal and returns true when it goes there: a small range is a
    /// record of the next group commit; a large range of a region that has journal records is a
    /// barrier (msync after the log is applied), so replay can never go behind it. False: the
    /// caller msyncs on the pool as without a journal. Verbs sessions and a paired owner never use
    /// it (one-sided writes need the memory-registration path's own PERSIST; the mirror's trims
    /// rely on region msyncs).
    func persistThroughJournal(_ translation: ProtectionTable<ServedRegion>.Translation, offset: UInt64, id: UInt64) -> Bool {
        guard let journal = state.journal, info.memory == nil, state.pair?.sender == nil else { return false }
        let length = translation.length
        let small = journal.takes(length: length)
        guard small || (length > 0 && journal.covers(regionId: translation.regionId)) else { return false }
        persistsInFlight += 1
        let replies = info.replies
        journal.persist(translation.region.mapping, regionId: translation.regionId, offset: offset, length: length, barrier: !small, eventLoop: info.eventLoop) { [self] error in
            // On the connection's event loop, with the rest of the batch's replies for this loop.
            self.persistsInFlight -= 1
            replies.send(error.map { .error($0) } ?? .ok, requestId: id)
        }
        return true
    }
}
