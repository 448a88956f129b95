#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import PMUCore
import PMUFailover
import PMUStore
import PMUTransport
import PMUVerbs
import Prometheus
import ServiceLifecycle

/// pmu-server as a Service: open and recover the data directory, serve until graceful shutdown
/// (SIGTERM/SIGINT through ServiceGroup), then stop accepting, close connections and release the lock.
public final class PMUServerService: Service, Sendable {
    public let configuration: ServerConfiguration
    private let logger: Logger
    /// Where swift-metrics records, served at `configuration.metricsListen` (nil: not served).
    private let metricsRegistry: PrometheusCollectorRegistry?

    public init(configuration: ServerConfiguration, logger: Logger, metricsRegistry: PrometheusCollectorRegistry? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.metricsRegistry = metricsRegistry
    }

    public func run() async throws {
        var configuration = self.configuration
        let logger = self.logger
        // Failover first: a restarted primary signals the monitor address before it opens its
        // data directory, which the new primary may hold (issue 13, reboot as monitor).
        // NIO's shared group: the failover controller outlives no server, and needs its loop before the server's own group exists.
        let failover = configuration.failover.map { FailoverController(configuration: $0, group: MultiThreadedEventLoopGroup.singleton, logger: logger) }
        if let failover {
            if case .demotedToMonitor(let reason) = try await failover.boot() {
                guard let monitor = Self.rebootedMonitorConfiguration(configuration) else {
                    try await runDemotedMonitor(failover, reason: reason)
                    return
                }
                // Serves as the new primary's monitor from here on: its data directory becomes the
                // replica (what the new primary does not have is discarded by the first copy).
                logger.notice("restarted as the monitor of the new primary; resynchronising the data directory from it", metadata: [
                    "reason": "\(reason)", "listen": "\(monitor.listen)", "replicaFrom": "\(monitor.pair.replicaFrom.map { "\($0)" } ?? "")",
                ])
                configuration = monitor
            }
            configuration.writeGate = { failover.writeRefusal() }
            configuration.failoverStatus = { failover.status }
        }
        // Order matters: lock the directory before touching anything in it, recover before listening.
        let directory = try DataDirectory(path: configuration.dataDirectory)
        if configuration.secretsPath == nil {
            try SecretsFile.createDefaultIfMissing(dataDirectory: configuration.dataDirectory, logger: logger)
        }
        let secrets = try SecretsFile.load(path: configuration.resolvedSecretsPath)
        // Before the store opens: verbs on a disk filesystem hold regions in shmem shadows, so
        // whether verbs can serve this address is settled first, by binding to it (`auto` then
        // falls back to TCP with the region files mapped directly, not served from shadows).
        let choice = try Self.chooseTransport(configuration)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        var useRDMA = choice.useRDMA
        var reason = choice.reason
        var rdma: RDMAServerTransport?
        if useRDMA {
            let candidate = RDMAServerTransport(endpoint: configuration.listen, group: group, logger: logger, polling: configuration.rdmaPolling)
            do {
                try candidate.bind()
                rdma = candidate
            } catch {
                // `auto` falls back when verbs cannot serve there (e.g. a loopback address).
                guard configuration.transport == .auto else {
                    try? await group.shutdownGracefully()
                    throw error
                }
                useRDMA = false
                reason = "tcp (an RDMA device is present, but: \(error))"
            }
        }
        if useRDMA && !RegionMemoryCheck.registersFileMappings(dataDirectory: configuration.dataDirectory) {
            configuration.store.shadowRegions = true
            logger.info("region memory: shmem shadows copied to the region files on PERSIST (data directory on \(RegistrableFilesystem.name(of: configuration.dataDirectory)))", metadata: [
                "limit": "\(configuration.store.shadowLimitBytes)",
            ])
        }
        let store: RegionStore
        do {
            store = try RegionStore(directory: directory, configuration: configuration.store, logger: logger)
        } catch {
            await rdma?.stop()
            try? await group.shutdownGracefully()
            throw error
        }

        let pool = NIOThreadPool(numberOfThreads: configuration.blockingThreads)
        pool.start()
        let metadataPool = NIOThreadPool(numberOfThreads: 2)
        metadataPool.start()
        // With the event loops' descriptors open, so they are counted.
        DescriptorLimit.fit(&configuration, logger: logger)
        let pair: PairController? = configuration.pair.partner != nil || configuration.pair.receives
            ? try PairController(configuration: configuration, runtime: .init(group: group, pool: pool, metadataPool: metadataPool, secrets: secrets, store: store), logger: logger)
            : nil
        // After the store's recovery (replay needs the regions) and before listening.
        // A journal left by an earlier run is recovered even when this run does not use one.
        let useJournal = configuration.journal.enabled && configuration.pair.partner == nil
        let journal = useJournal || WriteJournal.exists(in: directory)
            ? try WriteJournal(directory: directory, store: store, configuration: configuration.journal, logger: logger)
            : nil
        if !useJournal { journal?.stop() }
        defer { journal?.stop() }
        let state = ServerState(store: store, secrets: secrets, configuration: configuration, pair: pair, journal: useJournal ? journal : nil)
        var transport: any ServerTransport = TCPServerTransport(
            endpoint: configuration.listen, group: group, logger: logger, maxUnsentReplyBytes: configuration.maxUnsentReplyBytes,
            minStreamedWritePayload: configuration.minStreamedWritePayload ?? .max)
        var metrics: MetricsEndpoint?
        do {
            let makeHandler: @Sendable (ConnectionInfo) -> any RequestHandler = { info in
                // Measured around the session: every request and reply passes the meter.
                MeteredHandler.wrap(info, logger: logger) { info in
                    Session(info: info, state: state, pool: pool, metadataPool: metadataPool, logger: logger)
                }
            }
            var bound: Endpoint
            if let rdma {
                do {
                    bound = try await rdma.start(makeHandler: makeHandler)
                    transport = rdma
                } catch {
                    // Bound but unable to listen (rare: the bind above settled the address).
                    await rdma.stop()
                    guard configuration.transport == .auto else { throw error }
                    useRDMA = false
                    reason = "tcp (an RDMA device is present, but: \(error))"
                    if configuration.store.shadowRegions {
                        // The store was opened for verbs (shadows) before verbs failed to listen:
                        // TCP is served from the shadows, so an unpersisted write dies with the
                        // process here, and the journal replays after any crash (it records this).
                        reason += "; regions stay in shmem shadows: unpersisted writes do not survive a crash of pmu-server (start with --transport tcp to map the files directly)"
                        logger.warning("verbs could not listen; serving TCP from shmem shadows: unpersisted writes do not survive a crash of pmu-server; start with --transport tcp to map the region files directly")
                    }
                    bound = try await transport.start(makeHandler: makeHandler)
                }
            } else {
                bound = try await transport.start(makeHandler: makeHandler)
            }
            logger.info("transport: \(reason)")
            state.facts.update {
                $0.listening = "\(bound)"
                $0.transport = useRDMA ? "rdma" : "tcp"
                $0.transportReason = reason
            }
            if let listen = configuration.metricsListen {
                let endpoint = MetricsEndpoint(registry: metricsRegistry ?? PrometheusCollectorRegistry(), logger: logger) {
                    ServerInfo(state: state).publishGauges(pair: state.pair, failover: state.configuration.failoverStatus?())
                }
                let served = try await endpoint.start(endpoint: listen, group: group)
                metrics = endpoint
                state.facts.update { $0.metricsListening = "\(served)" }
            }
            logger.info("pmu-server listening", metadata: [
                "address": "\(bound)", "transport": "\(useRDMA ? "rdma" : "tcp")", "dataDir": "\(configuration.dataDirectory)",
                "regions": "\(store.regionCount)", "clients": "\(secrets.clientIds.joined(separator: ","))",
                "maxClients": "\(configuration.maxClients)", "maxAuthenticating": "\(configuration.maxAuthenticating)",
            ])
            // Paired: reach the partner once listening (so a server given itself as partner finds
            // out) and before the ready file, so a wrong partner fails the start.
            try await pair?.start()
            if let failover {
                let replica: ReplicaController? = failover.role == .monitor ? pair?.replica : nil
                var blocker: (@Sendable () -> String?)?
                if let replica { blocker = { replica.notReadyReason() } }
                failover.start(
                    takeover: failover.role == .monitor ? pair.map { Self.takeoverAction($0, service: configuration.failover?.service) } : nil,
                    blocker: blocker)
                // The first copy waits for the configured number of heartbeats answered.
                let needed = UInt64(configuration.failover?.missLimit ?? 3)
                replica?.start { failover.peerAnswered(atLeast: needed) }
            }
            if let readyFile = configuration.readyFile {
                try writeReadyFile(readyFile, address: bound)
            }
            try await gracefulShutdown()
        } catch is CancellationError {
            // Second signal or group cancellation: fall through to the same orderly stop.
        } catch {
            await failover?.stop()
            await metrics?.stop()
            await transport.stop()
            await pair?.stop()
            journal?.stop()
            try? await pool.shutdownGracefully()
            try? await metadataPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        logger.info("pmu-server shutting down")
        await failover?.stop()
        await metrics?.stop()
        await transport.stop()
        await pair?.stop()
        // Answers what is queued, applies and trims the log, while the event loops still run.
        journal?.stop()
        try? await pool.shutdownGracefully()
        try? await metadataPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        withExtendedLifetime(directory) {}
        logger.info("pmu-server stopped")
    }

    /// A monitor takes over through the pair: fence, replay the primary's mirror log, persist,
    /// take the service address, listen at --takeover-listen.
    static func takeoverAction(_ pair: PairController, service: AddressHook?) -> FailoverController.TakeoverAction {
        let addAddress: @Sendable () throws(PMUError) -> Void = { () throws(PMUError) in try service?.add() }
        return { () async throws(PMUError) -> String in
            try await pair.takeover(beforeListen: addAddress)
        }
    }

    /// A `--role primary` server that rebooted while its monitor took over, given --replica-from,
    /// --monitor-listen, --fence-command and --takeover-listen: it runs as a monitor at
    /// --monitor-listen, with its own home under the data directory (`monitor/`: its mirror logs)
    /// and the data directory itself as the replica of the new primary's portion (the same
    /// portion id), so a second failover serves it again. nil: those options are missing.
    static func rebootedMonitorConfiguration(_ configuration: ServerConfiguration) -> ServerConfiguration? {
        let pair = configuration.pair
        guard let listen = pair.monitorListen, pair.replicaFrom != nil, pair.fenceCommand != nil, pair.takeoverListen != nil, pair.mirrorClient != nil else {
            return nil
        }
        var monitor = configuration
        monitor.secretsPath = configuration.resolvedSecretsPath
        monitor.dataDirectory = configuration.dataDirectory + "/monitor"
        monitor.listen = listen
        monitor.pair.partner = nil
        monitor.pair.partnerPortion = configuration.dataDirectory
        return monitor
    }

    /// A primary that rebooted while its monitor took over: it answers heartbeats as a monitor
    /// and leaves its old portion alone (the new primary holds it). Serving that portion again
    /// needs issue 12's giveback, which is not built: see docs/ARCHITECTURE.md "Failover".
    private func runDemotedMonitor(_ failover: FailoverController, reason: String) async throws {
        logger.notice("not serving: this server restarted as the monitor of the new primary", metadata: ["reason": "\(reason)"])
        failover.start(takeover: nil)
        if let readyFile = configuration.readyFile {
            try writeReadyFile(readyFile, address: configuration.failover?.heartbeatListen ?? configuration.listen)
        }
        try? await gracefulShutdown()
        await failover.stop()
    }

    /// tcp, rdma or auto → which one, and the reason for the log line. `rdma` with no usable
    /// device fails here, at start.
    static func chooseTransport(_ configuration: ServerConfiguration) throws(PMUError) -> (useRDMA: Bool, reason: String) {
        try configuration.transport.resolve()
    }

    private func writeReadyFile(_ path: String, address: Endpoint) throws {
        let temp = path + ".tmp"
        let text = Array("\(address)\n".utf8)
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PMUError(.ioError, "cannot write ready file \(path)") }
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        close(fd)
        guard rename(temp, path) == 0 else { throw PMUError(.ioError, "cannot write ready file \(path)") }
    }
}
