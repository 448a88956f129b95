/// The monitor's failure detector, pure: no clock, no socket. The caller ticks it once per
/// heartbeat interval with the time, sends the ping it asks for, and feeds it every pong.
///
/// A tick whose previous ping got no pong is a miss; `missLimit` consecutive misses declare the
/// peer dead, once. Any pong for a ping of the current run resets the count (a late pong proves
/// the peer is alive, only slow). The detector arms only after the first pong: a monitor started
/// before its primary does not take over a primary that never answered.
///
/// Detection time: between missLimit and missLimit + 1 intervals after the last pong
/// (100 ms x 3: 300-400 ms), plus the time of the takeover itself.
public struct HeartbeatDetector: Sendable {
    public enum State: String, Sendable, Codable { case waitingForPeer, alive, dead }
    public enum Action: Sendable, Equatable {
        case sendPing(sequence: UInt64)
        /// Sent once per death; the caller takes over. The detector stays dead until `reset()`.
        case declareDead(misses: Int)
        case none
    }

    public let missLimit: Int
    public private(set) var state: State = .waitingForPeer
    public private(set) var misses = 0
    public private(set) var lastRoundTripNanoseconds: UInt64?
    public private(set) var lastPongNanoseconds: UInt64?
    public private(set) var pingsSent: UInt64 = 0
    public private(set) var pongsReceived: UInt64 = 0
    private var nextSequence: UInt64 = 1
    /// Sequence of the latest ping and whether a pong for it came.
    private var outstanding: (sequence: UInt64, answered: Bool)?

    public init(missLimit: Int) {
        precondition(missLimit >= 1, "a miss limit below 1 would declare every peer dead")
        self.missLimit = missLimit
    }

    public mutating func tick(nowNanoseconds: UInt64) -> Action {
        if state == .dead { return .none }
        if let outstanding, !outstanding.answered, state == .alive {
            misses += 1
            if misses >= missLimit {
                state = .dead
                return .declareDead(misses: misses)
            }
        }
        let sequence = nextSequence
        nextSequence += 1
        outstanding = (sequence, false)
        pingsSent += 1
        return .sendPing(sequence: sequence)
    }

    /// A pong from the peer. `sentAtNanoseconds` is the echo of the ping's send time.
    /// Returns false (ignored) for a sequence this run never sent or for pongs after death.
    @discardableResult
    public mutating func received(pongFor sequence: UInt64, sentAtNanoseconds: UInt64, nowNanoseconds: UInt64) -> Bool {
        guard state != .dead, sequence >= 1, sequence < nextSequence else { return false }
        pongsReceived += 1
        if let outstanding, outstanding.sequence == sequence { self.outstanding = (sequence, true) }
        misses = 0
        state = .alive
        lastPongNanoseconds = nowNanoseconds
        if nowNanoseconds >= sentAtNanoseconds { lastRoundTripNanoseconds = nowNanoseconds - sentAtNanoseconds }
        return true
    }

    /// After a takeover or when the monitor starts watching a new primary.
    public mutating func reset() {
        state = .waitingForPeer
        misses = 0
        outstanding = nil
    }
}
