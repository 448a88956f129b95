import NIOConcurrencyHelpers
import NIOCore
import PMUCore

/// How long a client waits, and how much it lets pile up, on one connection.
public struct RequestLimits: Sendable, Equatable {
    /// A request with no reply after this long fails TIMED_OUT and closes its connection: its
    /// outcome is unknown, and every later request on the connection would queue behind it
    /// (the server executes a connection's requests in order). nil waits forever.
    public var requestTimeout: Duration?
    /// Requests in flight on the connection at once; further ones wait for a reply to free a
    /// place (so a caller that issues requests faster than the server answers holds bounded
    /// memory in the table and in the socket). The time waiting counts toward the timeout.
    public var maxPendingRequests: Int

    public static let `default` = RequestLimits(requestTimeout: .seconds(30), maxPendingRequests: 1024)

    public init(requestTimeout: Duration?, maxPendingRequests: Int) {
        self.requestTimeout = requestTimeout
        self.maxPendingRequests = maxPendingRequests
    }

    public func validate() throws(PMUError) {
        guard (1...65536).contains(maxPendingRequests) else {
            throw PMUError(.invalidArgument, "maxPendingRequests must be 1...65536; got \(maxPendingRequests)")
        }
        if let requestTimeout, requestTimeout <= .zero {
            throw PMUError(.invalidArgument, "requestTimeout must be positive (or nil for none); got \(requestTimeout)")
        }
    }

    /// How often a connection looks for requests past their deadline: a tenth of the timeout,
    /// between 10 ms and 1 s, so a deadline fires at most 10% (or 1 s) late at the cost of one
    /// timer per connection rather than one per request.
    public var sweepInterval: Duration? {
        guard let requestTimeout else { return nil }
        return min(max(requestTimeout / 10, .milliseconds(10)), .seconds(1))
    }
}

/// The requests of one client connection awaiting replies: ids, a bound on how many are in
/// flight, deadlines and cancellation. Shared by the TCP and verbs client transports, which
/// differ only in what a waiter is (a NIO promise, a continuation). Thread-safe; its lock is held
/// for table updates only, never while a waiter is completed.
final class RequestTable<Waiter>: @unchecked Sendable {
    private struct Entry {
        var waiter: Waiter?
        var deadline: NIODeadline?
        var what: String
    }

    private struct Queued {
        var ticket: UInt64
        var entry: Entry
        var continuation: CheckedContinuation<Result<UInt64, PMUError>, Never>
    }

    private struct State {
        var nextId: UInt64 = 1
        var entries: [UInt64: Entry] = [:]
        /// Callers waiting for a place, oldest first; a freed place goes to the first of them,
        /// with its entry inserted for it, so nobody can overtake.
        var queued: [Queued] = []
        var nextTicket: UInt64 = 1
        var failure: PMUError?
    }

    let limits: RequestLimits
    private let state = NIOLockedValueBox(State())

    init(limits: RequestLimits) {
        self.limits = limits
    }

    var failure: PMUError? { state.withLockedValue { $0.failure } }

    var pendingCount: Int { state.withLockedValue { $0.entries.count } }

    /// Reserves a place and an id for a request (`what` names it in a timeout message), waiting
    /// while `maxPendingRequests` are in flight. Throws the connection's failure, or CANCELLED
    /// if the calling task is cancelled while waiting.
    func reserve(_ what: String) async throws(PMUError) -> UInt64 {
        let entry = Entry(waiter: nil, deadline: limits.requestTimeout.map { NIODeadline.now() + TimeAmount($0) }, what: what)
        if let immediate = reserveNow(entry) { return try immediate.get() }
        let ticket = state.withLockedValue { state -> UInt64 in
            defer { state.nextTicket &+= 1 }
            return state.nextTicket
        }
        let waitingWhat = "\(what) (waiting for one of \(limits.maxPendingRequests) places for pending requests)"
        let result: Result<UInt64, PMUError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now: Result<UInt64, PMUError>? = state.withLockedValue { state in
                    if let failure = state.failure { return .failure(failure) }
                    if Task.isCancelled { return .failure(Self.cancelled(waitingWhat)) }
                    if state.entries.count < limits.maxPendingRequests, state.queued.isEmpty { return .success(Self.insert(&state, entry)) }
                    state.queued.append(Queued(ticket: ticket, entry: entry, continuation: continuation))
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> CheckedContinuation<Result<UInt64, PMUError>, Never>? in
                guard let index = state.queued.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                return state.queued.remove(at: index).continuation
            }
            waiter?.resume(returning: .failure(Self.cancelled(waitingWhat)))
        }
        return try result.get()
    }

    /// The same without waiting, for callers outside a task: nil when every place is taken (or
    /// others already wait for one), and the caller must take the waiting path.
    func reserveNow(_ what: String) -> Result<UInt64, PMUError>? {
        reserveNow(Entry(waiter: nil, deadline: limits.requestTimeout.map { NIODeadline.now() + TimeAmount($0) }, what: what))
    }

    private func reserveNow(_ entry: Entry) -> Result<UInt64, PMUError>? {
        state.withLockedValue { state in
            if let failure = state.failure { return .failure(failure) }
            guard state.entries.count < limits.maxPendingRequests, state.queued.isEmpty else { return nil }
            return .success(Self.insert(&state, entry))
        }
    }

    private static func insert(_ state: inout State, _ entry: Entry) -> UInt64 {
        defer { state.nextId &+= 1 }
        state.entries[state.nextId] = entry
        return state.nextId
    }

    /// Attaches the waiter to a reserved id. Returns false (the caller fails the waiter itself)
    /// when the entry is gone: the connection failed, or the request was cancelled or timed out.
    func attach(_ id: UInt64, _ waiter: Waiter) -> Bool {
        state.withLockedValue { state in
            guard state.entries[id] != nil else { return false }
            state.entries[id]!.waiter = waiter
            return true
        }
    }

    /// Removes the entry of a reply's id. nil for an id not (or no longer) pending: a reply that
    /// arrived after its request was cancelled is dropped.
    func complete(_ id: UInt64) -> Waiter? {
        let (waiter, next) = state.withLockedValue { state -> (Waiter?, (CheckedContinuation<Result<UInt64, PMUError>, Never>, UInt64)?) in
            guard let entry = state.entries.removeValue(forKey: id) else { return (nil, nil) }
            guard state.failure == nil, !state.queued.isEmpty else { return (entry.waiter, nil) }
            let queued = state.queued.removeFirst()
            return (entry.waiter, (queued.continuation, Self.insert(&state, queued.entry)))
        }
        if let (continuation, nextId) = next { continuation.resume(returning: .success(nextId)) }
        return waiter
    }

    /// The calling task was cancelled: its entry goes (its reply, if one comes, is dropped) and
    /// its waiter is returned to be failed with `cancelled(...)`.
    func cancel(_ id: UInt64) -> Waiter? {
        complete(id)
    }

    /// The request past its deadline with the oldest deadline, if any: the connection is then
    /// failed with `timedOut(...)`.
    func expired(now: NIODeadline = .now()) -> String? {
        state.withLockedValue { state in
            state.entries.values.filter { ($0.deadline ?? .distantFuture) <= now }.map(\.what).first
        }
    }

    /// Fails the connection: every pending waiter and queued caller is returned or resumed, and
    /// every later `reserve` throws `error` (the first failure wins).
    func failAll(_ error: PMUError) -> [Waiter] {
        let (waiters, queued, failure) = state.withLockedValue { state in
            if state.failure == nil { state.failure = error }
            defer {
                state.entries.removeAll()
                state.queued.removeAll()
            }
            return (state.entries.values.compactMap(\.waiter), state.queued.map(\.continuation), state.failure!)
        }
        for continuation in queued { continuation.resume(returning: .failure(failure)) }
        return waiters
    }

    static func cancelled(_ what: String) -> PMUError {
        PMUError(.cancelled, "\(what) was cancelled by its task; if it had been sent, the server may still carry it out")
    }

    func timedOut(_ what: String) -> PMUError {
        let timeout = limits.requestTimeout.map { "\($0)" } ?? "its deadline"
        return PMUError(.timedOut, "no reply from pmu-server to \(what) within \(timeout) (ClientConfiguration.requestTimeout); its outcome is unknown and the connection is closed, reconnect to continue")
    }
}

extension TimeAmount {
    /// Saturates at about 292 years instead of trapping on a huge Duration.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let (nanos, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, overflow2) = nanos.addingReportingOverflow(attoseconds / 1_000_000_000)
        self = .nanoseconds(overflow || overflow2 ? (seconds < 0 ? .min : .max) : total)
    }
}
