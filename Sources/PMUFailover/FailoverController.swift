import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUMetrics
import PMUTransport

/// Runs a server's side of failover: answers heartbeats, watches the peer (as monitor), keeps
/// the member lease and the write gate (with an authority), and, on `missLimit` misses, claims
/// the portion and calls `takeover` (fence, replay, take the address, serve).
///
/// Threads: heartbeat ticks and datagrams run on the socket's event loop; authority calls in
/// Tasks. Every field lives in one locked box, held only to read or update it, never across a
/// call to etcd, the takeover or a send.
public final class FailoverController: Sendable {
    public typealias TakeoverAction = @Sendable () async throws(PMUError) -> String

    public let configuration: FailoverConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let authority: Authority?
    private let state: NIOLockedValueBox<State>
    private let socket = NIOLockedValueBox<HeartbeatSocket?>(nil)
    private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let ticker = NIOLockedValueBox<RepeatedTask?>(nil)
    private let takeoverAction = NIOLockedValueBox<TakeoverAction?>(nil)
    /// Says why this monitor must not take over now (nil: it may): the shared-nothing replica
    /// without a complete copy would serve less than the primary acknowledged.
    private let takeoverBlocker = NIOLockedValueBox<(@Sendable () -> String?)?>(nil)
    private let bootAnswer = NIOLockedValueBox<HeartbeatMessage?>(nil)

    struct State: Sendable {
        var role: FailoverRole
        var serving = false
        var detector: HeartbeatDetector
        var epoch: Int64 = 0
        var lastHealthyRevision: Int64?
        var gate: LeaseGate?
        var lease: Int64?
        var demoted: String?
        var takeoverRunning = false
        var lastFailover: FailoverEvent?
        var lastAuthorityError: String?
        var garbageDatagrams: UInt64 = 0
        var pingsAnswered: UInt64 = 0
        var bootReason = ""
    }

    public struct FailoverEvent: Sendable, Codable, Equatable {
        public var atMilliseconds: UInt64
        public var misses: Int
        /// From the death verdict to the portion served at the service address.
        public var takeoverMilliseconds: UInt64
        public var epoch: Int64
        public var peer: String?
        public var report: String?
        public var error: String?
    }

    public init(configuration: FailoverConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        authority = configuration.etcd.map {
            Authority(etcd: EtcdClient(endpoint: $0, group: group), prefix: configuration.etcdPrefix, memberId: configuration.memberId)
        }
        var initial = State(role: configuration.role, detector: HeartbeatDetector(missLimit: configuration.missLimit))
        if authority != nil {
            initial.gate = LeaseGate(
                ttlNanoseconds: UInt64(configuration.leaseTTLSeconds) * 1_000_000_000,
                marginNanoseconds: UInt64(configuration.leaseMarginMilliseconds) * 1_000_000)
        }
        state = NIOLockedValueBox(initial)
    }

    public var role: FailoverRole { state.withLockedValue { $0.role } }

    /// The peer answers (detector alive) and has answered at least `count` heartbeats: a
    /// monitor's replica copy starts after the configured number of heartbeats.
    public func peerAnswered(atLeast count: UInt64) -> Bool {
        state.withLockedValue { $0.detector.state == .alive && $0.detector.pongsReceived >= count }
    }
    public var serving: Bool { state.withLockedValue { $0.serving } }

    // MARK: boot

    public enum BootResult: Sendable, Equatable {
        /// Serve the service address (`--role primary` granted).
        case primary
        /// Watch the primary (`--role monitor`).
        case monitor
        /// Started as primary, but the monitor answered as the serving primary: this server
        /// became its monitor and must not open its old portion (the new primary serves it).
        case demotedToMonitor(String)
    }

    /// Binds the heartbeat address, registers at the authority and, for `--role primary`,
    /// signals the monitor address first (BootDecision). Throws NOT_PRIMARY when the authority
    /// does not grant the primary role.
    public func boot() async throws(PMUError) -> BootResult {
        try configuration.validate()
        let bound = try await HeartbeatSocket.bind(
            configuration.heartbeatListen, group: group, secret: configuration.secret,
            onMessage: { [self] message, address in self.handle(message, from: address) },
            onGarbage: { [self] in self.state.withLockedValue { $0.garbageDatagrams += 1 } })
        socket.withLockedValue { $0 = bound }
        if authority != nil { try await register() }
        guard configuration.role == .primary else {
            // A monitor never holds the service address (a stale one from before a crash would
            // draw clients away from the primary at the next ARP).
            try? configuration.service?.remove()
            state.withLockedValue { $0.bootReason = "started as monitor" }
            return .monitor
        }
        let answer = await probePeer()
        var authorityView: (view: OwnerView, ownerMemberPresent: Bool)?
        if let authority {
            let view = try await authority.owner()
            let owner = view.record?.owner
            let present = owner == nil || owner == configuration.memberId ? true : try await authority.memberPresent(owner ?? "")
            authorityView = (view, present)
        }
        switch BootDecision.decide(me: configuration.memberId, peerAnswer: answer, authority: authorityView, sharedNothing: configuration.sharedNothing) {
        case .monitor(let reason):
            try? configuration.service?.remove()
            state.withLockedValue {
                $0.role = .monitor
                $0.bootReason = reason
            }
            logger.notice("booted as monitor", metadata: ["reason": "\(reason)"])
            await publishRole()
            return .demotedToMonitor(reason)
        case .primary(let reason):
            try becomePrimary(epoch: 0, reason: reason)
            return .primary
        case .claimPrimary(let expected):
            guard let authority, let epoch = try await authority.claim(previous: authorityView?.view.record, expectedRevision: expected) else {
                throw PMUError(.notPrimary, "another server claimed the portion at the authority while this one booted; not becoming primary (restart to retry)")
            }
            try becomePrimary(epoch: epoch, reason: "granted by the authority at revision \(epoch)")
            await publishRole()
            return .primary
        case .refuse(let reason):
            throw PMUError(.notPrimary, reason)
        }
    }

    private func becomePrimary(epoch: Int64, reason: String) throws(PMUError) {
        try configuration.service?.add()
        state.withLockedValue {
            $0.role = .primary
            $0.serving = true
            $0.epoch = epoch
            $0.bootReason = reason
        }
        logger.notice("serving as primary", metadata: ["reason": "\(reason)", "epoch": "\(epoch)"])
    }

    /// Pings the peer every interval for missLimit + 1 intervals; the first pong ends the wait.
    private func probePeer() async -> HeartbeatMessage? {
        guard let socket = socket.withLockedValue({ $0 }), let address = try? peerAddress() else { return nil }
        for sequence in 1...UInt64(configuration.missLimit + 1) {
            socket.send(ping(sequence: sequence), to: address)
            try? await Task.sleep(for: .milliseconds(configuration.intervalMilliseconds))
            if let answer = bootAnswer.withLockedValue({ $0 }) { return answer }
        }
        return nil
    }

    // MARK: running

    /// Starts heartbeats (monitor) and the authority loop. `takeover` runs once per death verdict.
    public func start(takeover: TakeoverAction?, blocker: (@Sendable () -> String?)? = nil) {
        takeoverAction.withLockedValue { $0 = takeover }
        takeoverBlocker.withLockedValue { $0 = blocker }
        guard let socket = socket.withLockedValue({ $0 }) else { return }
        let interval = TimeAmount.milliseconds(configuration.intervalMilliseconds)
        let repeated = socket.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in self.tick() }
        ticker.withLockedValue { $0 = repeated }
        if authority != nil {
            let task = Task { [self] in await self.authorityLoop() }
            tasks.withLockedValue { $0.append(task) }
        }
    }

    public func stop() async {
        ticker.withLockedValue { $0?.cancel() }
        for task in tasks.withLockedValue({ $0 }) { task.cancel() }
        if let authority, let lease = state.withLockedValue({ $0.lease }) { try? await authority.etcd.revoke(lease: lease) }
        await socket.withLockedValue { $0 }?.close()
    }

    /// nil: a write may be acknowledged. Checked as each WRITE arrives; the lease margin covers
    /// the time until its acknowledgement leaves.
    public func writeRefusal() -> PMUError? {
        state.withLockedValue { state in
            if let demoted = state.demoted { return PMUError(.notPrimary, "this server was fenced: \(demoted); write to the service address") }
            guard state.serving else {
                return PMUError(.notPrimary, "this server is the pair's monitor, not serving the portion; write to the service address")
            }
            if let gate = state.gate, !gate.mayAcknowledge(nowNanoseconds: FailoverClock.nowNanoseconds()) {
                return PMUError(.leaseLapsed, "this primary's lease at the authority is about to lapse (etcd unreachable?); writes are refused until it is renewed, so a monitor can take over safely")
            }
            return nil
        }
    }

    private func peerAddress() throws -> SocketAddress {
        try SocketAddress.makeAddressResolvingHost(configuration.peerHeartbeat.host, port: configuration.peerHeartbeat.port)
    }

    private func ping(sequence: UInt64) -> HeartbeatMessage {
        let (role, serving, epoch) = state.withLockedValue { ($0.role, $0.serving, $0.epoch) }
        return HeartbeatMessage(
            kind: .ping, role: role, serving: serving, sequence: sequence, epoch: UInt64(max(epoch, 0)), senderId: configuration.memberId,
            sentAtNanoseconds: FailoverClock.nowNanoseconds())
    }

    /// On the event loop, every interval: only a monitor that is not serving pings.
    private func tick() {
        let action: HeartbeatDetector.Action = state.withLockedValue { state in
            guard state.role == .monitor, !state.serving, state.demoted == nil else { return .none }
            return state.detector.tick(nowNanoseconds: FailoverClock.nowNanoseconds())
        }
        switch action {
        case .sendPing(let sequence):
            guard let socket = socket.withLockedValue({ $0 }), let address = try? peerAddress() else { return }
            socket.send(ping(sequence: sequence), to: address)
        case .declareDead(let misses):
            logger.warning("primary declared dead", metadata: ["misses": "\(misses)", "peer": "\(configuration.peerHeartbeat)"])
            let task = Task { [self] in await self.failover(misses: misses) }
            tasks.withLockedValue { $0.append(task) }
        case .none:
            break
        }
    }

    private func handle(_ message: HeartbeatMessage, from address: SocketAddress) {
        switch message.kind {
        case .ping:
            guard message.senderId != configuration.memberId else { return }
            let (role, serving, epoch) = state.withLockedValue { state in
                state.pingsAnswered += 1
                return (state.role, state.serving, state.epoch)
            }
            let pong = HeartbeatMessage(
                kind: .pong, role: role, serving: serving, sequence: message.sequence, epoch: UInt64(max(epoch, 0)),
                senderId: configuration.memberId, sentAtNanoseconds: message.sentAtNanoseconds)
            socket.withLockedValue { $0 }?.send(pong, to: address)
        case .pong:
            bootAnswer.withLockedValue { if $0 == nil { $0 = message } }
            state.withLockedValue { state in
                _ = state.detector.received(pongFor: message.sequence, sentAtNanoseconds: message.sentAtNanoseconds, nowNanoseconds: FailoverClock.nowNanoseconds())
            }
        }
    }

    // MARK: takeover

    private func failover(misses: Int) async {
        let started = FailoverClock.nowNanoseconds()
        let go: Bool = state.withLockedValue { state in
            guard !state.takeoverRunning, !state.serving else { return false }
            state.takeoverRunning = true
            return true
        }
        guard go else { return }
        var event = FailoverEvent(atMilliseconds: FailoverClock.wallMilliseconds(), misses: misses, takeoverMilliseconds: 0, epoch: 0)
        do throws(PMUError) {
            // Checked before the claim: a monitor that could not serve everything must not
            // become the owner at the authority either.
            if let reason = takeoverBlocker.withLockedValue({ $0 })?() {
                throw PMUError(.replicaNotReady, "not taking over: \(reason)")
            }
            let (epoch, peer) = try await win()
            event.epoch = epoch
            event.peer = peer
            guard let action = takeoverAction.withLockedValue({ $0 }) else {
                throw PMUError(.invalidArgument, "this monitor has nothing to take over: start it with --partner-portion (shared storage) or --replica-from (its own copy), --fence-command and --takeover-listen")
            }
            event.report = try await action()
            event.takeoverMilliseconds = (FailoverClock.nowNanoseconds() - started) / 1_000_000
            // Serving and its event in one update: pair status never shows one without the other.
            state.withLockedValue { [event] in
                $0.role = .primary
                $0.serving = true
                $0.epoch = epoch
                $0.lastFailover = event
            }
            logger.notice("took over as primary", metadata: ["epoch": "\(epoch)", "ms": "\(event.takeoverMilliseconds)"])
        } catch {
            event.error = "\(error)"
            event.takeoverMilliseconds = (FailoverClock.nowNanoseconds() - started) / 1_000_000
            logger.error("takeover failed; watching the primary again", metadata: ["error": "\(error)"])
            // Watch again: a primary that answers is alive after all; a dead one is declared dead again.
            state.withLockedValue { $0.detector.reset() }
        }
        state.withLockedValue { [event] in
            $0.takeoverRunning = false
            $0.lastFailover = event
        }
        PMUMetrics.failover(result: event.error == nil ? "completed" : "failed")
        if event.error == nil { await publishRole() }
    }

    /// Wins the portion at the authority (TakeoverRule), retried each interval while the rule says
    /// wait or etcd is unreachable, for at most lease TTL + 2 s (then the verdict is dropped and
    /// the detector re-armed). With no authority: epoch 0, the fence command decides.
    private func win() async throws(PMUError) -> (Int64, String?) {
        guard let authority else { return (0, nil) }
        let limit = FailoverClock.nowNanoseconds() + UInt64(configuration.leaseTTLSeconds + 2) * 1_000_000_000
        var lastReason = "no attempt"
        while FailoverClock.nowNanoseconds() < limit {
            do throws(PMUError) {
                let view = try await authority.owner()
                let peer = view.record?.owner
                var present = false
                if let peer { present = try await authority.memberPresent(peer) }
                let healthy = state.withLockedValue { $0.lastHealthyRevision }
                switch TakeoverRule.decide(me: configuration.memberId, seen: view, lastHealthyRevision: healthy, peerMemberPresent: present) {
                case .alreadyOwner:
                    return (view.modRevision, peer)
                case .claim(let expected):
                    if let revision = try await authority.claim(previous: view.record, expectedRevision: expected) { return (revision, peer) }
                    lastReason = "lost the compare-and-set at revision \(expected)"
                case .wait(let reason):
                    lastReason = reason
                }
            } catch {
                lastReason = "authority unreachable: \(error.message)"
                state.withLockedValue { $0.lastAuthorityError = error.message }
            }
            try? await Task.sleep(for: .milliseconds(configuration.intervalMilliseconds))
        }
        throw PMUError(.notPrimary, "no takeover: the authority did not grant the portion (\(lastReason))")
    }

    // MARK: authority

    private func register() async throws(PMUError) {
        guard let authority else { return }
        let (role, serving) = state.withLockedValue { ($0.role, $0.serving) }
        let member = Authority.Member(
            id: configuration.memberId, role: serving ? "primary" : role.rawValue, heartbeat: "\(configuration.heartbeatListen)",
            service: configuration.service?.address)
        let sent = FailoverClock.nowNanoseconds()
        let lease = try await authority.register(member, ttlSeconds: configuration.leaseTTLSeconds)
        state.withLockedValue {
            $0.lease = lease
            $0.gate?.renewed(sentAtNanoseconds: sent)
        }
    }

    /// Rewrites this server's member key with its current role (`pmuctl cluster members`), under
    /// its lease; best effort (the owner key, not the member key, decides who serves).
    private func publishRole() async {
        guard let authority, let lease = state.withLockedValue({ $0.lease }) else { return }
        let (role, serving) = state.withLockedValue { ($0.role, $0.serving) }
        let member = Authority.Member(
            id: configuration.memberId, role: serving ? "primary" : role.rawValue, heartbeat: "\(configuration.heartbeatListen)",
            service: configuration.service?.address)
        try? await authority.update(member, lease: lease)
    }

    /// Every TTL/4: renew the lease (the write gate follows), check that a serving primary is
    /// still the owner (else it is fenced for good and drops the address), and let a monitor
    /// note the owner revision while its primary answers (TakeoverRule).
    private func authorityLoop() async {
        guard let authority else { return }
        let period = max(Int64(configuration.leaseTTLSeconds) * 1000 / 4, 50)
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(period))
            if Task.isCancelled { return }
            do throws(PMUError) {
                let sent = FailoverClock.nowNanoseconds()
                let lease = state.withLockedValue { $0.lease }
                if let lease, try await authority.etcd.keepAlive(lease: lease) > 0 {
                    state.withLockedValue { $0.gate?.renewed(sentAtNanoseconds: sent) }
                } else {
                    state.withLockedValue { $0.gate?.lapsed() }
                    logger.warning("member lease lapsed; registering again")
                    try await register()
                }
                let (serving, epoch, alive, demoted) = state.withLockedValue { ($0.serving, $0.epoch, $0.detector.state == .alive, $0.demoted) }
                let view = try await authority.owner()
                if serving, demoted == nil, view.record?.owner != configuration.memberId || (epoch != 0 && view.modRevision != epoch) {
                    let reason = "the authority names \(view.record?.owner ?? "nobody") as owner at revision \(view.modRevision) (this server's epoch was \(epoch))"
                    state.withLockedValue { $0.demoted = reason }
                    logger.error("fenced: no longer the primary", metadata: ["reason": "\(reason)"])
                    try? configuration.service?.remove()
                } else if !serving, alive {
                    state.withLockedValue { $0.lastHealthyRevision = view.modRevision }
                }
                state.withLockedValue { $0.lastAuthorityError = nil }
            } catch {
                state.withLockedValue { $0.lastAuthorityError = error.message }
            }
        }
    }

    // MARK: status

    public struct Status: Sendable, Codable, Equatable {
        public var memberId: String
        public var configuredRole: String
        public var role: String
        public var serving: Bool
        public var fenced: String?
        public var bootReason: String
        public var heartbeatAddress: String
        public var peerHeartbeatAddress: String
        public var serviceAddress: String?
        public var heartbeatIntervalMilliseconds: Int64
        public var missLimit: Int
        public var peerState: String
        public var misses: Int
        public var heartbeatRoundTripMicroseconds: UInt64?
        public var pingsSent: UInt64
        public var pongsReceived: UInt64
        public var pingsAnswered: UInt64
        public var garbageDatagrams: UInt64
        public var epoch: Int64
        public var authority: String?
        public var leaseRemainingMilliseconds: UInt64?
        public var acknowledgingWrites: Bool
        public var lastAuthorityError: String?
        public var lastFailover: FailoverEvent?
    }

    public var status: Status {
        let refusal = writeRefusal()
        return state.withLockedValue { state in
            Status(
                memberId: configuration.memberId, configuredRole: configuration.role.rawValue, role: state.role.rawValue, serving: state.serving,
                fenced: state.demoted, bootReason: state.bootReason, heartbeatAddress: "\(configuration.heartbeatListen)",
                peerHeartbeatAddress: "\(configuration.peerHeartbeat)", serviceAddress: configuration.service?.address,
                heartbeatIntervalMilliseconds: configuration.intervalMilliseconds, missLimit: configuration.missLimit,
                peerState: state.detector.state.rawValue, misses: state.detector.misses,
                heartbeatRoundTripMicroseconds: state.detector.lastRoundTripNanoseconds.map { $0 / 1000 },
                pingsSent: state.detector.pingsSent, pongsReceived: state.detector.pongsReceived, pingsAnswered: state.pingsAnswered,
                garbageDatagrams: state.garbageDatagrams, epoch: state.epoch, authority: configuration.etcd.map { "http://\($0)\(configuration.etcdPrefix)" },
                leaseRemainingMilliseconds: state.gate.map { $0.remainingNanoseconds(nowNanoseconds: FailoverClock.nowNanoseconds()) / 1_000_000 },
                acknowledgingWrites: refusal == nil, lastAuthorityError: state.lastAuthorityError, lastFailover: state.lastFailover)
        }
    }
}
