/// What OPEN_RESUME does with a region's stored writer epoch (docs/ARCHITECTURE.md section 12a).
/// Pure: the server runs it under its catalog lock, so nothing can change the epoch between this
/// decision and the update that carries it out.
public enum ResumeEpochRule {
    public enum Decision: Equatable, Sendable {
        /// The epoch is still the writer's: raise it by one and grant at the raised epoch.
        case raise
        /// This very resume raised it already and its reply was lost: grant again, at the stored
        /// epoch, without raising (raising would fence the writer by its own retry).
        case grantAgain
        /// Another writer opened the region since: the writer must stop.
        case fenced
        /// The store holds an older epoch than the writer wrote through: not its store.
        case refused
    }

    /// `lastResumeMatches`: the server process remembers, for this region, that a resume carrying
    /// the same token from the same client raised the epoch to `stored`.
    public static func decide(stored: UInt64, asked: UInt64, lastResumeMatches: Bool) -> Decision {
        if stored == asked { return .raise }
        if stored < asked { return .refused }
        // Only the resume's own raise, by exactly one, and only with its own token, is undone here:
        // any other writer's OPEN in between raised the epoch again.
        if lastResumeMatches, asked < UInt64.max, stored == asked + 1 { return .grantAgain }
        return .fenced
    }
}
