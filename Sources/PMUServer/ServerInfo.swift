#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import PMUCore
import PMUFailover
import PMUMetrics
import PMUTransport

/// What the server learns as it starts (the transport it chose, where it listens), for INFO.
final class ServerFacts: Sendable {
    struct Started: Sendable {
        var listening: String = ""
        var transport: String = ""
        var transportReason: String = ""
        var metricsListening: String?
    }

    let startedAtMilliseconds = ServerInfo.wallClockMilliseconds()
    let startedNanoseconds = PMUMetrics.now()
    private let started = NIOLockedValueBox(Started())

    func update(_ change: (inout Started) -> Void) { started.withLockedValue(change) }
    var current: Started { started.withLockedValue { $0 } }
}

/// The server's INFO (SERVER_INFO, `pmuctl stats`): version, uptime, counts, limits,
/// configuration, data-directory space and transport. The same snapshot feeds the gauges the
/// metrics endpoint reads when scraped (`publishGauges`), so INFO and /metrics agree.
struct ServerInfo: Codable, Equatable {
    /// PMU's release; the wire protocol's version is `protocolVersion`.
    static let version = "0.16.0"

    struct Counts: Codable, Equatable {
        var regions: Int
        var allocatedBytes: UInt64
        var connectionsAuthenticating: Int
        var connectionsAuthenticated: Int
    }

    struct LimitsInfo: Codable, Equatable {
        var maxClients: Int
        var maxAuthenticating: Int
        var maxConnectionsPerClient: Int
        var maxHandlesPerConnection: Int
        var maxRegions: Int
        var maxRegionBytes: UInt64
        var reserveFreeBytes: UInt64
        var maxUnsentReplyBytes: Int
        var maxIOBytes: Int
        var maxFrameBytes: Int
        var authenticationTimeoutSeconds: Int64
        /// nil: never.
        var idleTimeoutSeconds: Int64?
    }

    struct Configuration: Codable, Equatable {
        var dataDirectory: String
        var listen: String
        var secretsFile: String
        var admins: [String]
        var persistThreads: Int
        var populateOnCreate: Bool
        var durableWrites: Bool
        var partner: String?
        var mirrorClient: String?
        var metricsListen: String?
    }

    struct DataDirectorySpace: Codable, Equatable {
        var path: String
        var freeBytes: UInt64?
        var sizeBytes: UInt64?
    }

    struct TransportInfo: Codable, Equatable {
        var kind: String
        var listening: String
        var reason: String
        /// Where /metrics is served (the bound port, also when --metrics-listen gave port 0).
        var metricsListening: String?
    }

    var version: String
    var protocolVersion: UInt8
    var pid: Int32
    var startedAtMilliseconds: UInt64
    var uptimeSeconds: UInt64
    var counts: Counts
    var limits: LimitsInfo
    var configuration: Configuration
    var dataDirectory: DataDirectorySpace
    var transport: TransportInfo

    init(state: ServerState) {
        let configuration = state.configuration
        let facts = state.facts.current
        let allocation = state.store.allocation
        let connections = state.connectionCounts
        let space = state.store.filesystemSpace
        version = Self.version
        protocolVersion = Limits.protocolVersion
        pid = getpid()
        startedAtMilliseconds = state.facts.startedAtMilliseconds
        uptimeSeconds = (PMUMetrics.now() &- state.facts.startedNanoseconds) / 1_000_000_000
        counts = Counts(
            regions: allocation.regions, allocatedBytes: allocation.bytes,
            connectionsAuthenticating: connections.authenticating, connectionsAuthenticated: connections.authenticated)
        limits = LimitsInfo(
            maxClients: configuration.maxClients, maxAuthenticating: configuration.maxAuthenticating,
            maxConnectionsPerClient: configuration.maxConnectionsPerClient, maxHandlesPerConnection: configuration.maxHandlesPerConnection,
            maxRegions: configuration.store.maxRegions, maxRegionBytes: configuration.store.maxRegionBytes,
            reserveFreeBytes: configuration.store.reserveFreeBytes, maxUnsentReplyBytes: configuration.maxUnsentReplyBytes,
            maxIOBytes: Limits.maxIOBytes, maxFrameBytes: Limits.maxFrameBytes,
            authenticationTimeoutSeconds: configuration.authenticationTimeout.nanoseconds / 1_000_000_000,
            idleTimeoutSeconds: configuration.idleTimeout.map { $0.nanoseconds / 1_000_000_000 })
        self.configuration = Configuration(
            dataDirectory: configuration.dataDirectory, listen: "\(configuration.listen)", secretsFile: configuration.resolvedSecretsPath,
            admins: configuration.adminClients.sorted(), persistThreads: configuration.blockingThreads,
            populateOnCreate: configuration.store.populateOnCreate, durableWrites: configuration.durableWrites,
            partner: configuration.pair.partner.map { "\($0.endpoint)" }, mirrorClient: configuration.pair.mirrorClient,
            metricsListen: configuration.metricsListen.map { "\($0)" })
        dataDirectory = DataDirectorySpace(path: configuration.dataDirectory, freeBytes: space?.freeBytes, sizeBytes: space?.sizeBytes)
        transport = TransportInfo(kind: facts.transport, listening: facts.listening, reason: facts.transportReason, metricsListening: facts.metricsListening)
    }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// Sets the gauges that describe state rather than events; called before each scrape.
    func publishGauges(pair: PairController?, failover: FailoverController.Status? = nil) {
        PMUMetrics.gauge(PMUMetrics.regions, Double(counts.regions))
        PMUMetrics.gauge(PMUMetrics.allocatedBytes, Double(counts.allocatedBytes))
        PMUMetrics.gauge(PMUMetrics.connections, Double(counts.connectionsAuthenticating), [("state", "authenticating")])
        PMUMetrics.gauge(PMUMetrics.connections, Double(counts.connectionsAuthenticated), [("state", "authenticated")])
        PMUMetrics.gauge(PMUMetrics.uptime, Double(uptimeSeconds))
        if let free = dataDirectory.freeBytes { PMUMetrics.gauge(PMUMetrics.dataDirectoryFreeBytes, Double(free)) }
        if let size = dataDirectory.sizeBytes { PMUMetrics.gauge(PMUMetrics.dataDirectorySizeBytes, Double(size)) }
        if let failover {
            PMUMetrics.heartbeat(state: failover.peerState, all: ["waitingForPeer", "alive", "dead"])
            PMUMetrics.gauge(PMUMetrics.heartbeatMisses, Double(failover.misses))
            if let rtt = failover.heartbeatRoundTripMicroseconds { PMUMetrics.gauge(PMUMetrics.heartbeatRoundTrip, Double(rtt) / 1_000_000) }
            PMUMetrics.gauge(PMUMetrics.failoverServing, failover.serving ? 1 : 0)
            PMUMetrics.gauge(PMUMetrics.failoverAcknowledgingWrites, failover.acknowledgingWrites ? 1 : 0)
            PMUMetrics.gauge(PMUMetrics.failoverEpoch, Double(failover.epoch))
        }
        guard let pair else { return }
        if let sender = pair.sender?.status {
            PMUMetrics.gauge(PMUMetrics.partnerConnected, sender.connected ? 1 : 0)
            PMUMetrics.gauge(PMUMetrics.mirrorLagWrites, Double(sender.unpersistedWrites))
            PMUMetrics.gauge(PMUMetrics.mirrorLagBytes, Double(sender.unpersistedBytes))
        }
        for log in pair.receiver?.status ?? [] {
            PMUMetrics.gauge(PMUMetrics.mirrorLogBytes, Double(log.usedBytes), [("portion", log.portion)])
            PMUMetrics.gauge(PMUMetrics.mirrorLogAllocatedBytes, Double(log.allocatedBytes), [("portion", log.portion)])
        }
    }

    static func wallClockMilliseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }
}
