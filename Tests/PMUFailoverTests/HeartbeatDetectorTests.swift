import PMUFailover
import Testing

/// The failure detector as a pure state machine: every tick and pong given by hand.
@Suite struct HeartbeatDetectorTests {
    let ms: UInt64 = 1_000_000

    @Test func notArmedBeforeTheFirstPong() {
        var detector = HeartbeatDetector(missLimit: 3)
        for tick in 0..<20 {
            do { let result = detector.tick(nowNanoseconds: UInt64(tick) * 100 * ms); #expect(result == .sendPing(sequence: UInt64(tick + 1))) }
        }
        #expect(detector.state == .waitingForPeer && detector.misses == 0)
    }

    @Test func declaredDeadAfterExactlyMissLimitUnansweredPingsThenSilent() {
        var detector = HeartbeatDetector(missLimit: 3)
        do { let result = detector.tick(nowNanoseconds: 0); #expect(result == .sendPing(sequence: 1)) }
        do { let result = detector.received(pongFor: 1, sentAtNanoseconds: 0, nowNanoseconds: 2 * ms); #expect(result) }
        #expect(detector.state == .alive && detector.lastRoundTripNanoseconds == 2 * ms)
        do { let result = detector.tick(nowNanoseconds: 100 * ms); #expect(result == .sendPing(sequence: 2)) } // 1 answered: no miss
        do { let result = detector.tick(nowNanoseconds: 200 * ms); #expect(result == .sendPing(sequence: 3)) } // miss 1
        #expect(detector.misses == 1)
        do { let result = detector.tick(nowNanoseconds: 300 * ms); #expect(result == .sendPing(sequence: 4)) } // miss 2
        do { let result = detector.tick(nowNanoseconds: 400 * ms); #expect(result == .declareDead(misses: 3)) }
        #expect(detector.state == .dead)
        // Dead is reported once; late pongs do not revive it (the takeover decides).
        do { let result = detector.tick(nowNanoseconds: 500 * ms); #expect(result == HeartbeatDetector.Action.none) }
        do { let result = detector.received(pongFor: 4, sentAtNanoseconds: 300 * ms, nowNanoseconds: 501 * ms); #expect(!result) }
        detector.reset()
        #expect(detector.state == .waitingForPeer)
        do { let result = detector.tick(nowNanoseconds: 600 * ms); #expect(result == .sendPing(sequence: 5)) } // sequences never reused
    }

    @Test func aLatePongResetsTheCount() {
        var detector = HeartbeatDetector(missLimit: 3)
        _ = detector.tick(nowNanoseconds: 0)
        detector.received(pongFor: 1, sentAtNanoseconds: 0, nowNanoseconds: 1 * ms)
        _ = detector.tick(nowNanoseconds: 100 * ms)
        _ = detector.tick(nowNanoseconds: 200 * ms)
        _ = detector.tick(nowNanoseconds: 300 * ms)
        #expect(detector.misses == 2)
        // The pong for ping 2 arrives 250 ms late: alive, only slow.
        do { let result = detector.received(pongFor: 2, sentAtNanoseconds: 100 * ms, nowNanoseconds: 350 * ms); #expect(result) }
        #expect(detector.misses == 0 && detector.lastRoundTripNanoseconds == 250 * ms)
        do { let result = detector.tick(nowNanoseconds: 400 * ms); #expect(result == .sendPing(sequence: 5)) } // ping 4 unanswered: miss 1
        #expect(detector.misses == 1)
    }

    @Test func pongsForSequencesNeverSentAreIgnored() {
        var detector = HeartbeatDetector(missLimit: 2)
        _ = detector.tick(nowNanoseconds: 0)
        do { let result = detector.received(pongFor: 0, sentAtNanoseconds: 0, nowNanoseconds: 1); #expect(!result) }
        do { let result = detector.received(pongFor: 2, sentAtNanoseconds: 0, nowNanoseconds: 1); #expect(!result) }
        do { let result = detector.received(pongFor: .max, sentAtNanoseconds: 0, nowNanoseconds: 1); #expect(!result) }
        #expect(detector.state == .waitingForPeer && detector.pongsReceived == 0)
    }

    @Test func missLimitOneDeclaresAtTheFirstUnansweredTick() {
        var detector = HeartbeatDetector(missLimit: 1)
        _ = detector.tick(nowNanoseconds: 0)
        detector.received(pongFor: 1, sentAtNanoseconds: 0, nowNanoseconds: 1)
        _ = detector.tick(nowNanoseconds: 100 * ms)
        do { let result = detector.tick(nowNanoseconds: 200 * ms); #expect(result == .declareDead(misses: 1)) }
    }

    /// Seeded random schedules of answered/lost pings: dead exactly when missLimit consecutive
    /// pings after the first answered one went unanswered, never earlier.
    @Test func seededSchedulesAgreeWithACountingModel() {
        var seed: UInt64 = 0x5EED
        func next() -> UInt64 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return seed >> 33
        }
        for round in 0..<200 {
            let limit = Int(next() % 4) + 1
            var detector = HeartbeatDetector(missLimit: limit)
            var armed = false, consecutive = 0, expectedDead = false, lastAnswered = false
            for step in 0..<60 where !expectedDead {
                let action = detector.tick(nowNanoseconds: UInt64(step) * 100 * ms)
                if armed && step > 0 && !lastAnswered { consecutive += 1 } else if armed { consecutive = 0 }
                if armed && consecutive >= limit {
                    #expect(action == .declareDead(misses: limit), "round \(round) step \(step)")
                    expectedDead = true
                    break
                }
                guard case .sendPing(let sequence) = action else {
                    Issue.record("round \(round) step \(step): \(action)")
                    return
                }
                lastAnswered = next() % 3 != 0
                if lastAnswered {
                    detector.received(pongFor: sequence, sentAtNanoseconds: 0, nowNanoseconds: UInt64(step) * 100 * ms + 1)
                    armed = true
                }
            }
            #expect((detector.state == .dead) == expectedDead, "round \(round)")
        }
    }
}
