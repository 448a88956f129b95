#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import PMUCore
import PMUStore
import PMUTransport
import PMUVerbs
import ServiceLifecycle

/// pmu-server as a Service: open and recover the data directory, serve until graceful shutdown
/// (SIGTERM/SIGINT through ServiceGroup), then stop accepting, close connections and release the lock.
public final class PMUServerService: Service, Sendable {
    public let configuration: ServerConfiguration
    private let logger: Logger

    public init(configuration: ServerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        var configuration = self.configuration
        let logger = self.logger
        // Order matters: lock the directory before touching anything in it, recover before listening.
        let directory = try DataDirectory(path: configuration.dataDirectory)
        if configuration.secretsPath == nil {
            try SecretsFile.createDefaultIfMissing(dataDirectory: configuration.dataDirectory, logger: logger)
        }
        let secrets = try SecretsFile.load(path: configuration.resolvedSecretsPath)
        // Before the store opens: verbs on a disk filesystem hold regions in shmem shadows.
        let choice = try Self.chooseTransport(configuration)
        if choice.useRDMA && !RegionMemoryCheck.registersFileMappings(dataDirectory: configuration.dataDirectory) {
            configuration.store.shadowRegions = true
            logger.info("region memory: shmem shadows copied to the region files on PERSIST (data directory on \(RegistrableFilesystem.name(of: configuration.dataDirectory)))", metadata: [
                "limit": "\(configuration.store.shadowLimitBytes)",
            ])
        }
        let store = try RegionStore(directory: directory, configuration: configuration.store, logger: logger)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let pool = NIOThreadPool(numberOfThreads: configuration.blockingThreads)
        pool.start()
        let metadataPool = NIOThreadPool(numberOfThreads: 2)
        metadataPool.start()
        // With the event loops' descriptors open, so they are counted.
        DescriptorLimit.fit(&configuration, logger: logger)
        let pair: PairController? = configuration.pair.partner != nil || configuration.pair.receives
            ? try PairController(configuration: configuration, runtime: .init(group: group, pool: pool, metadataPool: metadataPool, secrets: secrets, store: store), logger: logger)
            : nil
        let state = ServerState(store: store, secrets: secrets, configuration: configuration, pair: pair)
        var transport: any ServerTransport = TCPServerTransport(
            endpoint: configuration.listen, group: group, logger: logger, maxUnsentReplyBytes: configuration.maxUnsentReplyBytes)
        var useRDMA = false
        do {
            let makeHandler: @Sendable (ConnectionInfo) -> any RequestHandler = { info in
                Session(info: info, state: state, pool: pool, metadataPool: metadataPool, logger: logger)
            }
            useRDMA = choice.useRDMA
            var reason = choice.reason
            var bound: Endpoint
            if useRDMA {
                let rdma = RDMAServerTransport(endpoint: configuration.listen, group: group, logger: logger, polling: configuration.rdmaPolling)
                do {
                    bound = try await rdma.start(makeHandler: makeHandler)
                    transport = rdma
                } catch {
                    // `auto` falls back when verbs cannot listen there (e.g. a loopback address).
                    guard configuration.transport == .auto else { throw error }
                    useRDMA = false
                    reason = "tcp (an RDMA device is present, but: \(error))"
                    bound = try await transport.start(makeHandler: makeHandler)
                }
            } else {
                bound = try await transport.start(makeHandler: makeHandler)
            }
            logger.info("transport: \(reason)")
            logger.info("pmu-server listening", metadata: [
                "address": "\(bound)", "transport": "\(useRDMA ? "rdma" : "tcp")", "dataDir": "\(configuration.dataDirectory)",
                "regions": "\(store.regionCount)", "clients": "\(secrets.clientIds.joined(separator: ","))",
                "maxClients": "\(configuration.maxClients)", "maxAuthenticating": "\(configuration.maxAuthenticating)",
            ])
            // Paired: reach the partner once listening (so a server given itself as partner finds
            // out) and before the ready file, so a wrong partner fails the start.
            try await pair?.start()
            if let readyFile = configuration.readyFile {
                try writeReadyFile(readyFile, address: bound)
            }
            try await gracefulShutdown()
        } catch is CancellationError {
            // Second signal or group cancellation: fall through to the same orderly stop.
        } catch {
            await transport.stop()
            await pair?.stop()
            try? await pool.shutdownGracefully()
            try? await metadataPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        logger.info("pmu-server shutting down")
        await transport.stop()
        await pair?.stop()
        try? await pool.shutdownGracefully()
        try? await metadataPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        withExtendedLifetime(directory) {}
        logger.info("pmu-server stopped")
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
