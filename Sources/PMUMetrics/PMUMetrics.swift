import Metrics

/// Every metric PMU emits, by name, and the calls that emit them: one place, so the code, the
/// Prometheus rules (systemd/pmu-alerts.yml), the tests and docs/ARCHITECTURE.md ("Metrics") agree.
///
/// Through swift-metrics only: this module picks no backend. pmu-server bootstraps Prometheus
/// (`--metrics-listen`); an application using the client library bootstraps whatever it uses,
/// and without a bootstrap every call here is a no-op.
///
/// Handles are made per call, not cached in statics: a static made before the application's
/// `MetricsSystem.bootstrap` would stay bound to the no-op backend for good. The Prometheus
/// backend looks a made handle up in its registry (one lock, one dictionary), so a call costs
/// well under a microsecond.
public enum PMUMetrics {
    // MARK: Server: requests (recorded where each reply leaves the server, RequestMeter)

    /// Counter, labels `verb` (HELLO, WRITE, ...) and `result` (OK or the error code's name).
    public static let requests = "pmu_requests_total"
    /// Histogram (seconds), label `verb`: request arrival to its reply handed to the transport.
    public static let requestDuration = "pmu_request_duration_seconds"
    /// Counters: payload bytes of answered READs, acknowledged WRITEs, and bytes PERSIST synced.
    public static let bytesRead = "pmu_read_bytes_total"
    public static let bytesWritten = "pmu_written_bytes_total"
    public static let bytesPersisted = "pmu_persisted_bytes_total"
    /// Counter: AUTHENTICATE refused (unknown client id or wrong secret).
    public static let authenticationFailures = "pmu_authentication_failures_total"
    /// Counter: WRITEs refused FENCED (a newer writer took the checkpoint region over).
    public static let fencedWrites = "pmu_fenced_writes_total"
    /// Gauge: PERSISTs received and not yet answered (waiting for or running on the persist threads).
    public static let persistQueueDepth = "pmu_persist_queue_depth"
    /// Histogram (seconds): one msync (or fdatasync) of a region range, in the store.
    public static let syncDuration = "pmu_sync_duration_seconds"
    /// The write journal's group commits: append + fdatasync duration (histogram, seconds), and
    /// the PERSISTs each covered (counter of commits and of PERSISTs; their ratio is the batching).
    public static let journalCommitDuration = "pmu_journal_commit_duration_seconds"
    public static let journalCommits = "pmu_journal_commits_total"
    public static let journalPersists = "pmu_journal_persists_total"
    /// Counter: syncs that failed (an I/O error; the PERSIST was refused).
    public static let syncFailures = "pmu_sync_failures_total"

    // MARK: Server: state, read when scraped (ServerGauges)

    public static let regions = "pmu_regions"
    /// Sum of the regions' sizes (their files are preallocated to it).
    public static let allocatedBytes = "pmu_allocated_bytes"
    /// Label `state`: authenticating or authenticated.
    public static let connections = "pmu_connections"
    public static let dataDirectoryFreeBytes = "pmu_data_directory_free_bytes"
    public static let dataDirectorySizeBytes = "pmu_data_directory_size_bytes"
    public static let uptime = "pmu_uptime_seconds"
    /// Owner side of a pair: 1 while the mirror channel to the partner is up.
    public static let partnerConnected = "pmu_mirror_partner_connected"
    /// Owner side: mirrored writes (and their bytes) not yet covered by a PERSIST: how far the
    /// partner's log is ahead of this server's durable state (the mirror lag).
    public static let mirrorLagWrites = "pmu_mirror_lag_writes"
    public static let mirrorLagBytes = "pmu_mirror_lag_bytes"
    /// Partner side, label `portion`: bytes used in and allocated to that portion's mirror log.
    public static let mirrorLogBytes = "pmu_mirror_log_bytes"
    public static let mirrorLogAllocatedBytes = "pmu_mirror_log_allocated_bytes"

    // MARK: Server: pair liveness (for the failover module to call)

    /// Gauge, label `state`: 1 for the heartbeat's current state, 0 for the others.
    public static let heartbeatState = "pmu_heartbeat_state"
    /// Counter, label `result` (e.g. completed, refused): takeovers this server ran.
    public static let failovers = "pmu_failovers_total"
    /// Gauges of a failover pair member (`--role`), read from its controller at each scrape.
    public static let heartbeatMisses = "pmu_heartbeat_misses"
    public static let heartbeatRoundTrip = "pmu_heartbeat_round_trip_seconds"
    public static let failoverServing = "pmu_failover_serving"
    public static let failoverAcknowledgingWrites = "pmu_failover_acknowledging_writes"
    public static let failoverEpoch = "pmu_failover_epoch"

    // MARK: Client library

    /// Histogram (seconds) and counter (bytes), label `kind` (overwrite, append).
    public static let checkpointDuration = "pmu_client_checkpoint_duration_seconds"
    public static let checkpointBytes = "pmu_client_checkpoint_bytes_total"
    /// Histograms (seconds): a whole live snapshot, and the time the application's writers were
    /// stopped for it; counter: bytes a snapshot streamed.
    public static let snapshotDuration = "pmu_client_snapshot_duration_seconds"
    public static let snapshotPause = "pmu_client_snapshot_pause_seconds"
    public static let snapshotBytes = "pmu_client_snapshot_bytes_total"

    // MARK: Emitting

    /// One answered request. `result` is "OK" or the error code's wire name.
    public static func request(verb: String, result: String, nanoseconds: UInt64) {
        Counter(label: requests, dimensions: [("verb", verb), ("result", result)]).increment()
        Timer(label: requestDuration, dimensions: [("verb", verb)]).recordNanoseconds(clamped(nanoseconds))
    }

    public static func count(_ name: String, by amount: Int = 1) {
        guard amount > 0 else { return }
        Counter(label: name).increment(by: amount)
    }

    public static func persistQueued(_ delta: Int) {
        let meter = Meter(label: persistQueueDepth)
        if delta >= 0 { meter.increment(by: Double(delta)) } else { meter.decrement(by: Double(-delta)) }
    }

    /// One sync in the store: its bytes and duration, or a failure.
    public static func synced(bytes: UInt64, nanoseconds: UInt64, failed: Bool) {
        if failed { return Counter(label: syncFailures).increment() }
        Timer(label: syncDuration).recordNanoseconds(clamped(nanoseconds))
        Counter(label: bytesPersisted).increment(by: Int(clamping: bytes))
    }

    /// One group commit of the write journal: `persists` PERSISTs covered by one append + fdatasync.
    public static func journalCommitted(persists: Int, nanoseconds: UInt64) {
        Timer(label: journalCommitDuration).recordNanoseconds(clamped(nanoseconds))
        Counter(label: journalCommits).increment()
        Counter(label: journalPersists).increment(by: persists)
    }

    /// Sets a gauge (state read when scraped).
    public static func gauge(_ name: String, _ value: Double, _ dimensions: [(String, String)] = []) {
        Gauge(label: name, dimensions: dimensions).record(value)
    }

    /// The heartbeat entered `state`; `all` lists every state so the others read 0.
    public static func heartbeat(state: String, all: [String]) {
        for candidate in all where candidate != state { gauge(heartbeatState, 0, [("state", candidate)]) }
        gauge(heartbeatState, 1, [("state", state)])
    }

    public static func failover(result: String) {
        Counter(label: failovers, dimensions: [("result", result)]).increment()
    }

    /// A checkpoint the client wrote: `kind` overwrite or append.
    public static func checkpoint(kind: String, bytes: UInt64, nanoseconds: UInt64) {
        Timer(label: checkpointDuration, dimensions: [("kind", kind)]).recordNanoseconds(clamped(nanoseconds))
        Counter(label: checkpointBytes, dimensions: [("kind", kind)]).increment(by: Int(clamping: bytes))
    }

    /// A live snapshot: its whole duration, the writers' pause, and the bytes streamed.
    public static func snapshot(bytes: UInt64, nanoseconds: UInt64, pauseNanoseconds: UInt64) {
        Timer(label: snapshotDuration).recordNanoseconds(clamped(nanoseconds))
        Timer(label: snapshotPause).recordNanoseconds(clamped(pauseNanoseconds))
        Counter(label: snapshotBytes).increment(by: Int(clamping: bytes))
    }

    /// Monotonic nanoseconds, for durations.
    public static func now() -> UInt64 { DispatchFreeClock.nanoseconds() }

    private static func clamped(_ nanoseconds: UInt64) -> Int64 { Int64(clamping: nanoseconds) }
}

/// `ContinuousClock` as nanoseconds since an arbitrary start, without Foundation.
enum DispatchFreeClock {
    private static let origin = ContinuousClock.now

    static func nanoseconds() -> UInt64 {
        let elapsed = ContinuousClock.now - origin
        let (seconds, attoseconds) = elapsed.components
        return UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(clamping: attoseconds / 1_000_000_000)
    }
}
