import PMUFailover
import Testing

@Suite struct FailoverRulesTests {
    let healthy = OwnerView(record: OwnerRecord(owner: "a", generation: 1), modRevision: 7)

    @Test func takeoverClaimsAtOnceWhenTheOwnerIsUnchangedSinceTheLastPong() {
        #expect(TakeoverRule.decide(me: "b", seen: healthy, lastHealthyRevision: 7, peerMemberPresent: true) == .claim(expectedRevision: 7))
    }

    @Test func takeoverWaitsForTheLeaseWhenTheOwnerChangedSince() {
        let changed = OwnerView(record: OwnerRecord(owner: "a", generation: 2), modRevision: 9)
        guard case .wait = TakeoverRule.decide(me: "b", seen: changed, lastHealthyRevision: 7, peerMemberPresent: true) else {
            Issue.record("claimed over an owner record it never saw healthy, with the owner's lease alive")
            return
        }
        // Never saw it healthy at all (a monitor started while etcd was down): same rule.
        guard case .wait = TakeoverRule.decide(me: "b", seen: changed, lastHealthyRevision: nil, peerMemberPresent: true) else {
            Issue.record("claimed without a healthy revision")
            return
        }
        // Once the owner's member key (bound to its lease) is gone, claim against what was read.
        #expect(TakeoverRule.decide(me: "b", seen: changed, lastHealthyRevision: 7, peerMemberPresent: false) == .claim(expectedRevision: 9))
    }

    @Test func takeoverOfAnAbsentOrOwnRecord() {
        #expect(TakeoverRule.decide(me: "b", seen: OwnerView(record: nil, modRevision: 0), lastHealthyRevision: nil, peerMemberPresent: false)
            == .claim(expectedRevision: 0))
        #expect(TakeoverRule.decide(me: "a", seen: healthy, lastHealthyRevision: nil, peerMemberPresent: true) == .alreadyOwner)
    }

    func answer(serving: Bool, role: FailoverRole) -> HeartbeatMessage {
        HeartbeatMessage(kind: .pong, role: role, serving: serving, sequence: 1, epoch: 12, senderId: "b", sentAtNanoseconds: 0)
    }

    @Test func bootBecomesMonitorWhenTheMonitorAddressAnswersAsServingPrimary() {
        guard case .monitor = BootDecision.decide(me: "a", peerAnswer: answer(serving: true, role: .primary), authority: (healthy, true)) else {
            Issue.record("a rebooted primary took the primary role from a serving peer")
            return
        }
    }

    @Test func bootBecomesPrimaryOnlyWithTheAuthoritysGrant() {
        let mine = OwnerView(record: OwnerRecord(owner: "a", generation: 3), modRevision: 20)
        let theirs = OwnerView(record: OwnerRecord(owner: "b", generation: 4), modRevision: 21)
        // A plain monitor answering, or nobody: ask the authority.
        #expect(BootDecision.decide(me: "a", peerAnswer: answer(serving: false, role: .monitor), authority: (mine, true)) == .claimPrimary(expectedRevision: 20))
        #expect(BootDecision.decide(me: "a", peerAnswer: nil, authority: (OwnerView(record: nil, modRevision: 0), true)) == .claimPrimary(expectedRevision: 0))
        // The other server owns it and its lease lives: refused.
        guard case .refuse = BootDecision.decide(me: "a", peerAnswer: nil, authority: (theirs, true)) else {
            Issue.record("became primary while the authority names a live owner")
            return
        }
        // Its lease lapsed: claim against its revision.
        #expect(BootDecision.decide(me: "a", peerAnswer: nil, authority: (theirs, false)) == .claimPrimary(expectedRevision: 21))
        // Shared nothing: the last owner's copy is the only current one, lease or not.
        guard case .refuse(let reason) = BootDecision.decide(me: "a", peerAnswer: nil, authority: (theirs, false), sharedNothing: true) else {
            Issue.record("a shared-nothing server became primary over the last owner's newer copy")
            return
        }
        #expect(reason.contains("last owner"))
        #expect(BootDecision.decide(me: "a", peerAnswer: nil, authority: (mine, false), sharedNothing: true) == .claimPrimary(expectedRevision: 20))
        #expect(BootDecision.decide(me: "a", peerAnswer: nil, authority: (OwnerView(record: nil, modRevision: 0), true), sharedNothing: true) == .claimPrimary(expectedRevision: 0))
        // No authority: primary when no serving peer answered.
        guard case .primary = BootDecision.decide(me: "a", peerAnswer: nil, authority: nil) else {
            Issue.record("no authority, no peer: not primary")
            return
        }
    }

    @Test func leaseGateStopsAcknowledgingBeforeTheLeaseCanLapse() {
        let s: UInt64 = 1_000_000_000
        var gate = LeaseGate(ttlNanoseconds: 2 * s, marginNanoseconds: s / 2)
        #expect(!gate.mayAcknowledge(nowNanoseconds: 0)) // never renewed
        gate.renewed(sentAtNanoseconds: 10 * s)
        #expect(gate.mayAcknowledge(nowNanoseconds: 10 * s))
        #expect(gate.mayAcknowledge(nowNanoseconds: 11 * s + s / 2 - 1))
        #expect(!gate.mayAcknowledge(nowNanoseconds: 11 * s + s / 2))
        #expect(gate.remainingNanoseconds(nowNanoseconds: 11 * s) == s)
        // An older answer arriving late never moves the deadline back.
        gate.renewed(sentAtNanoseconds: 9 * s)
        #expect(gate.mayAcknowledge(nowNanoseconds: 11 * s))
        gate.lapsed()
        #expect(!gate.mayAcknowledge(nowNanoseconds: 10 * s))
        // Near the end of the clock: no overflow into "forever".
        gate.renewed(sentAtNanoseconds: .max - 1)
        #expect(!gate.mayAcknowledge(nowNanoseconds: .max - 1))
    }
}
