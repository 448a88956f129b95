import Metrics
import PMUMetrics
import Prometheus

/// pmu-server's swift-metrics backend: a Prometheus registry, with histogram buckets that fit a
/// storage server (10 microseconds to 10 seconds), and the HELP lines Prometheus shows.
enum MetricsBackend {
    /// Request and sync latencies: a loopback WRITE takes tens of microseconds, an msync of a
    /// large range on a busy disk seconds.
    static let durationBuckets: [Duration] = [
        .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
    ]

    /// Bootstraps swift-metrics (once a process) and returns the registry to serve.
    static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = durationBuckets
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// One line of help per metric, inserted before its TYPE line when scraped (swift-metrics
    /// has no help text; swift-prometheus emits a HELP line only when given one).
    static let help: [String: String] = [
        PMUMetrics.requests: "Requests answered, by verb and result (OK or the error code).",
        PMUMetrics.requestDuration: "Seconds from a request's arrival to its reply, by verb.",
        PMUMetrics.bytesRead: "Payload bytes of answered READs.",
        PMUMetrics.bytesWritten: "Payload bytes of acknowledged WRITEs.",
        PMUMetrics.bytesPersisted: "Bytes of region ranges synced to the region files.",
        PMUMetrics.authenticationFailures: "AUTHENTICATE refused: unknown client id or wrong secret.",
        PMUMetrics.fencedWrites: "WRITEs refused FENCED: a newer writer took the checkpoint region over.",
        PMUMetrics.persistQueueDepth: "PERSISTs received and not yet answered.",
        PMUMetrics.syncDuration: "Seconds one msync or fdatasync of a region range took.",
        PMUMetrics.syncFailures: "Syncs of region ranges that failed with an I/O error.",
        PMUMetrics.regions: "Regions the server holds.",
        PMUMetrics.allocatedBytes: "Sum of the regions' sizes (their files are preallocated).",
        PMUMetrics.connections: "Open client connections, by state (authenticating, authenticated).",
        PMUMetrics.dataDirectoryFreeBytes: "Bytes free on the data directory's filesystem.",
        PMUMetrics.dataDirectorySizeBytes: "Size of the data directory's filesystem.",
        PMUMetrics.uptime: "Seconds since the server started.",
        PMUMetrics.partnerConnected: "1 while the mirror channel to the partner is up, else 0.",
        PMUMetrics.mirrorLagWrites: "Mirrored writes the partner holds that no PERSIST here has covered yet.",
        PMUMetrics.mirrorLagBytes: "Bytes of mirrored writes no PERSIST here has covered yet.",
        PMUMetrics.mirrorLogBytes: "Bytes used in the mirror log kept for a partner's portion.",
        PMUMetrics.mirrorLogAllocatedBytes: "Bytes allocated to the mirror log kept for a partner's portion.",
        PMUMetrics.heartbeatState: "1 for the pair heartbeat's current state, 0 for the others.",
        PMUMetrics.journalCommitDuration: "Seconds one write-journal group commit (append + fdatasync) took.",
        PMUMetrics.journalCommits: "Write-journal group commits (each one fdatasync).",
        PMUMetrics.journalPersists: "Small PERSISTs made durable through the write journal.",
        PMUMetrics.failovers: "Takeovers of the partner's portion this server ran, by result.",
        PMUMetrics.heartbeatMisses: "Consecutive heartbeats to the peer that got no answer.",
        PMUMetrics.heartbeatRoundTrip: "Round trip of the last answered heartbeat, in seconds.",
        PMUMetrics.failoverServing: "1 while this pair member serves the portion at the service address.",
        PMUMetrics.failoverAcknowledgingWrites: "1 while this member acknowledges writes (serving, not fenced, lease alive).",
        PMUMetrics.failoverEpoch: "The authority revision of this member's last claim (its fencing token).",
    ]

    /// The exposition text with a HELP line before each TYPE line that has one.
    static func withHelp(_ exposition: [UInt8]) -> [UInt8] {
        let typePrefix = Array("# TYPE ".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(exposition.count + help.count * 64)
        for line in exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: typePrefix) {
                let name = line.dropFirst(typePrefix.count).prefix { $0 != UInt8(ascii: " ") }
                if let text = help[String(decoding: name, as: UTF8.self)] {
                    out += Array("# HELP ".utf8) + name + [UInt8(ascii: " ")] + Array(text.utf8) + [UInt8(ascii: "\n")]
                }
            }
            out += line
            out.append(UInt8(ascii: "\n"))
        }
        // split kept the text's final empty piece: drop the newline added after it.
        if exposition.last == UInt8(ascii: "\n") || exposition.isEmpty { out.removeLast() }
        return out
    }
}
