/// The decisions of failover, pure so that every case is tested without etcd or sockets.
/// docs/ARCHITECTURE.md "Failover" explains why these rules keep at most one server
/// acknowledging writes.

/// The portion's owner as the authority stores it (etcd key PREFIX/owner, JSON). Changed only by
/// compare-and-set on the key's mod_revision; the revision after the change is the owner's
/// fencing token ("epoch").
public struct OwnerRecord: Sendable, Codable, Equatable {
    public var owner: String
    /// Incremented by each successful claim (a human-readable count; the revision fences).
    public var generation: UInt64
    public init(owner: String, generation: UInt64) {
        self.owner = owner
        self.generation = generation
    }
}

/// What the authority answered about the owner key: absent (revision 0) or a record and the
/// key's mod_revision.
public struct OwnerView: Sendable, Equatable {
    public var record: OwnerRecord?
    public var modRevision: Int64
    public init(record: OwnerRecord?, modRevision: Int64) {
        self.record = record
        self.modRevision = modRevision
    }
}

public enum TakeoverRule {
    public enum Decision: Sendable, Equatable {
        /// Claim by compare-and-set against this revision.
        case claim(expectedRevision: Int64)
        /// Already ours (a claim of ours succeeded before a crash of the takeover that followed).
        case alreadyOwner
        /// Not now: the reason goes to the log and to pair status; the monitor asks again next tick.
        case wait(String)
    }

    /// The monitor, its peer declared dead, asks whether it may claim the portion.
    ///
    /// - The owner record unchanged since the monitor last saw the peer answering: the peer was
    ///   primary with mirrored writes; nothing it can acknowledge from now on reaches a quorum
    ///   (its mirror log here is sealed at takeover), so claim at once.
    /// - The record changed since (someone else claimed): claim only once the peer's member key,
    ///   bound to its lease, is gone: its lease lapsed, and a primary stops acknowledging writes
    ///   before its lease can lapse (LeaseGate).
    public static func decide(me: String, seen: OwnerView, lastHealthyRevision: Int64?, peerMemberPresent: Bool) -> Decision {
        if seen.record?.owner == me { return .alreadyOwner }
        if let lastHealthyRevision, seen.modRevision == lastHealthyRevision { return .claim(expectedRevision: seen.modRevision) }
        if !peerMemberPresent { return .claim(expectedRevision: seen.modRevision) }
        return .wait("the owner record changed (revision \(seen.modRevision)) since the primary last answered, and its member lease is still alive")
    }
}

public enum BootDecision {
    public enum Outcome: Sendable, Equatable {
        case monitor(reason: String)
        case claimPrimary(expectedRevision: Int64)
        case primary(reason: String)
        case refuse(String)
    }

    /// A server started `--role primary` signals the monitor address first and waits for
    /// `missLimit` intervals.
    /// - answered by a server that serves (it took over while we were down): become its monitor;
    /// - unanswered, or answered by a plain monitor: be primary only with the authority's grant:
    ///   the record is ours, absent, or its owner's lease is gone; otherwise refuse.
    /// - `authority` nil (a pair run without etcd): primary only if the peer did not answer as
    ///   serving; the fence command is what stands between a takeover and a split brain then.
    /// - `sharedNothing` (the replica, `--replica-from`): each server serves its own copy, so a
    ///   server whose peer was the last owner must not become primary even once that owner's
    ///   lease lapsed: its copy lacks what the last owner acknowledged. Only the last owner (or
    ///   the first server of a new pair) may.
    public static func decide(
        me: String, peerAnswer: HeartbeatMessage?, authority: (view: OwnerView, ownerMemberPresent: Bool)?, sharedNothing: Bool = false
    ) -> Outcome {
        if let peerAnswer, peerAnswer.serving, peerAnswer.role == .primary {
            return .monitor(reason: "\(peerAnswer.senderId) answered at the monitor address as the serving primary (epoch \(peerAnswer.epoch))")
        }
        guard let authority else { return .primary(reason: "no authority configured and no serving peer answered") }
        let record = authority.view.record
        if sharedNothing, let record, record.owner != me {
            return .refuse("the authority names \(record.owner) as the last owner (revision \(authority.view.modRevision)): this server's copy of the portion lacks what \(record.owner) acknowledged since, so it does not become primary; start \(record.owner) first (this server then resynchronises from it as its monitor)")
        }
        if record == nil || record?.owner == me || !authority.ownerMemberPresent {
            return .claimPrimary(expectedRevision: authority.view.modRevision)
        }
        return .refuse("the authority names \(record?.owner ?? "?") as owner (revision \(authority.view.modRevision)) and its lease is alive; not becoming primary")
    }
}

/// Patroni's watchdog rule: a server acknowledges writes only while its lease is surely alive
/// at the authority. The lease's remaining time is counted from when the last successful
/// keep-alive was *sent* (the authority renewed it no earlier), less a margin for clock rate
/// differences and the time a write takes to be acknowledged.
public struct LeaseGate: Sendable, Equatable {
    public let ttlNanoseconds: UInt64
    public let marginNanoseconds: UInt64
    public private(set) var renewedSentAtNanoseconds: UInt64?

    public init(ttlNanoseconds: UInt64, marginNanoseconds: UInt64) {
        precondition(marginNanoseconds < ttlNanoseconds, "the margin must be shorter than the lease")
        self.ttlNanoseconds = ttlNanoseconds
        self.marginNanoseconds = marginNanoseconds
    }

    /// A keep-alive sent at `sentAtNanoseconds` was answered with the lease alive.
    public mutating func renewed(sentAtNanoseconds: UInt64) {
        if let previous = renewedSentAtNanoseconds, previous > sentAtNanoseconds { return }
        renewedSentAtNanoseconds = sentAtNanoseconds
    }

    /// The authority said the lease is gone.
    public mutating func lapsed() { renewedSentAtNanoseconds = nil }

    public func mayAcknowledge(nowNanoseconds: UInt64) -> Bool {
        guard let renewed = renewedSentAtNanoseconds else { return false }
        let (deadline, overflow) = renewed.addingReportingOverflow(ttlNanoseconds - marginNanoseconds)
        return !overflow && nowNanoseconds < deadline
    }

    public func remainingNanoseconds(nowNanoseconds: UInt64) -> UInt64 {
        guard let renewed = renewedSentAtNanoseconds else { return 0 }
        let deadline = renewed &+ ttlNanoseconds
        return deadline > nowNanoseconds ? deadline - nowNanoseconds : 0
    }
}
