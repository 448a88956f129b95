#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import PMUCore
import PMUStore
import PMUTransport
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
        let configuration = self.configuration
        let logger = self.logger
        // Order matters: lock the directory before touching anything in it, recover before listening.
        let directory = try DataDirectory(path: configuration.dataDirectory)
        if configuration.secretsPath == nil {
            try SecretsFile.createDefaultIfMissing(dataDirectory: configuration.dataDirectory, logger: logger)
        }
        let secrets = try SecretsFile.load(path: configuration.resolvedSecretsPath)
        let store = try RegionStore(directory: directory, configuration: configuration.store, logger: logger)
        let state = ServerState(store: store, secrets: secrets, configuration: configuration)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let pool = NIOThreadPool(numberOfThreads: configuration.blockingThreads)
        pool.start()
        let metadataPool = NIOThreadPool(numberOfThreads: 2)
        metadataPool.start()
        let choice = try configuration.transport.resolve()
        if choice.useRDMA { try RegionMemoryCheck.requireRegistrable(dataDirectory: configuration.dataDirectory) }
        let transport: any ServerTransport = choice.useRDMA
            ? RDMAServerTransport(endpoint: configuration.listen, group: group, logger: logger)
            : TCPServerTransport(endpoint: configuration.listen, group: group, logger: logger)
        logger.info("transport: \(choice.reason)")
        do {
            let bound = try await transport.start { info in
                Session(info: info, state: state, pool: pool, metadataPool: metadataPool, logger: logger)
            }
            logger.info("pmu-server listening", metadata: [
                "address": "\(bound)", "transport": "\(choice.useRDMA ? "rdma" : "tcp")", "dataDir": "\(configuration.dataDirectory)",
                "regions": "\(store.regionCount)", "clients": "\(secrets.clientIds.joined(separator: ","))",
            ])
            if let readyFile = configuration.readyFile {
                try writeReadyFile(readyFile, address: bound)
            }
            try await gracefulShutdown()
        } catch is CancellationError {
            // Second signal or group cancellation: fall through to the same orderly stop.
        } catch {
            await transport.stop()
            try? await pool.shutdownGracefully()
            try? await metadataPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        logger.info("pmu-server shutting down")
        await transport.stop()
        try? await pool.shutdownGracefully()
        try? await metadataPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        withExtendedLifetime(directory) {}
        logger.info("pmu-server stopped")
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
