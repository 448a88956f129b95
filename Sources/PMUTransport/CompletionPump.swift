import CVerbs
#if canImport(Glibc)
import Glibc
#endif
import PMUCore
import PMUVerbs

/// How a verbs completion thread waits for work completions: `--rdma-poll` on pmu-server,
/// `ClientConfiguration.rdmaPolling` in the client library, PMU_RDMA_POLL for both defaults.
public enum RDMAPolling: Sendable, Equatable, CustomStringConvertible {
    /// Sleep on the completion channel whenever the queue is empty: least CPU, but every
    /// completion costs a wake-up (tens of microseconds; far more under emulation).
    case event
    /// Keep polling for this many microseconds after the last completion, then sleep: a
    /// request/reply exchange usually completes within the window, so it costs no wake-up.
    case adaptive(microseconds: Int)
    /// Never sleep: each connection's completion thread keeps one CPU busy. Lowest latency,
    /// for a few latency-critical connections on a machine with cores to spare.
    case busy

    /// adaptive, 50 µs; PMU_RDMA_POLL (event, adaptive, adaptive:US, busy) or the older
    /// PMU_RDMA_SPIN_US (microseconds of adaptive; 0 = event) override it.
    public static let `default`: RDMAPolling = {
        if let text = getenv("PMU_RDMA_POLL"), let mode = try? RDMAPolling(parsing: String(cString: text)) { return mode }
        if let text = getenv("PMU_RDMA_SPIN_US"), let value = Int(String(cString: text)), value >= 0 {
            return value == 0 ? .event : .adaptive(microseconds: value)
        }
        return .adaptive(microseconds: 50)
    }()

    public init(parsing text: String) throws(PMUError) {
        switch text {
        case "event": self = .event
        case "busy": self = .busy
        case "adaptive": self = .adaptive(microseconds: 50)
        default:
            guard text.hasPrefix("adaptive:"), let value = Int(text.dropFirst("adaptive:".count)), (1...1_000_000).contains(value) else {
                throw PMUError(.invalidArgument, "RDMA polling mode \(NameRules.quoted(text)) is not event, adaptive, adaptive:MICROSECONDS (1 to 1000000) or busy")
            }
            self = .adaptive(microseconds: value)
        }
    }

    public var description: String {
        switch self {
        case .event: "event"
        case .adaptive(let microseconds): "adaptive:\(microseconds)"
        case .busy: "busy"
        }
    }

    /// How long to poll before sleeping: busy polls in 1 ms rounds between which it only
    /// glances (poll timeout 0) at the descriptors the thread also watches.
    var spinMicroseconds: Int {
        switch self {
        case .event: 0
        case .adaptive(let microseconds): microseconds
        case .busy: 1000
        }
    }
}

/// The completion loop both halves of a verbs connection run on their own thread (the client's
/// transport and each server connection): drain the completion queue into a fixed array (nothing
/// allocated per poll), hand each completion to `handle` outside the owner's lock, and between
/// bursts spin or sleep on the completion channel as `polling` says.
final class CompletionPump {
    let polling: RDMAPolling
    private static let batch = 16
    private let entries: UnsafeMutablePointer<ibv_wc>

    init(polling: RDMAPolling) {
        self.polling = polling
        entries = .allocate(capacity: Self.batch)
        entries.initialize(repeating: ibv_wc(), count: Self.batch)
    }

    deinit { entries.deallocate() }

    /// The owner's side of the loop. `poll` runs `ibv_poll_cq` under the owner's lock (0 once
    /// the queue is gone); `arm` re-arms the queue's notification; `sleep` waits on the
    /// completion channel (and anything else the owner watches) for up to the given milliseconds
    /// and consumes what it saw; `tick` runs once per round (deadlines). With `jobs`, the
    /// thread also runs the tasks that prefer it, between polls (its `sleep` must watch
    /// `jobs.wakeDescriptor` and call `jobs.awake`).
    struct Owner {
        var stopped: () -> Bool
        var tick: () -> Void = {}
        var jobs: CompletionThreadExecutor? = nil
        var poll: (_ entries: UnsafeMutablePointer<ibv_wc>, _ capacity: Int) throws(VerbsError) -> Int
        var arm: () throws(VerbsError) -> Void
        var sleep: (_ milliseconds: Int32) -> Void
        var handle: (WorkCompletion) -> Void
        var failed: (VerbsError) -> Void
    }

    func run(_ owner: Owner) {
        while !owner.stopped() {
            owner.tick()
            // Jobs first: a task resumed by the last drain posts its next request now.
            if let jobs = owner.jobs, jobs.runPending() > 0 { continue }
            do {
                if try spin(owner) > 0 { continue }
                if let jobs = owner.jobs, !jobs.prepareToSleep() { continue }
                owner.sleep(polling == .busy ? 0 : 200)
                try owner.arm()
                // Drain after re-arming: a completion that slipped in between raises no event.
                while try drain(owner) > 0 {}
            } catch {
                owner.failed(error)
            }
        }
    }

    /// Polls until something completes, a job is queued, or the spin window passes (at once
    /// for `event`). Returns how many completions were handled (1 for a job).
    private func spin(_ owner: Owner) throws(VerbsError) -> Int {
        let window = polling.spinMicroseconds
        guard window > 0 else { return 0 }
        let deadline = ContinuousClock.now.advanced(by: .microseconds(window))
        var spins = 0
        while true {
            let found = try drain(owner)
            if found > 0 { return found }
            if let jobs = owner.jobs, jobs.hasPending { return 1 }
            spins += 1
            // Reading the clock costs more than an empty poll: only now and then.
            if spins & 0x3f == 0, ContinuousClock.now >= deadline { return 0 }
        }
    }

    private func drain(_ owner: Owner) throws(VerbsError) -> Int {
        let count = try owner.poll(entries, Self.batch)
        for index in 0..<count { owner.handle(WorkCompletion(entries[index])) }
        return count
    }
}
