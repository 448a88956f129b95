import ArgumentParser
import Logging
import PMUCore
import PMUStore
import PMUTransport
import NIOCore
import ServiceLifecycle

/// `pmu-server`'s command line. Lives in the library so it can be tested without a process.
public struct ServerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pmu-server",
        abstract: "Serve persistent memory regions to remote clients.",
        discussion: """
            With no options: serves ./pmu-data on 127.0.0.1:\(Endpoint.defaultPort). On first start it creates \
            DATA_DIR/secrets with a random secret for client 'admin', and DATA_DIR/admin.secret holding that secret \
            for `pmuctl --secret-file`. A write is durable once a PERSIST covering it has been answered.
            """)

    @Option(name: .customLong("data-dir"), help: "Directory for region files and metadata (created if missing; its parent must exist).")
    var dataDirectory = "pmu-data"

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen = "127.0.0.1:\(Endpoint.defaultPort)"

    @Option(help: "Secrets file, one CLIENT_ID:SECRET a line, mode 0600 (default: DATA_DIR/secrets, created on first start).")
    var secrets: String?

    @Option(name: .customLong("admin"), help: "Client id allowed to open, list and delete every region (repeatable).")
    var admins: [String] = ["admin"]

    @Option(name: .customLong("max-clients"), help: "Authenticated connections served at once (lowered at start if the open-file limit cannot hold them).")
    var maxClients = 1024

    @Option(name: .customLong("max-authenticating"), help: "Connections still authenticating, a budget separate from --max-clients; when full, the one waiting longest is closed to make room.")
    var maxAuthenticating = 64

    @Option(name: .customLong("max-connections-per-client"), help: "Authenticated connections one client id may hold.")
    var maxConnectionsPerClient = 256

    @Option(name: .customLong("idle-timeout"), help: "Seconds an authenticated connection may go without a request before it is closed (0: never).")
    var idleTimeoutSeconds = 3600

    @Option(name: .customLong("max-unsent-replies"), help: "Reply bytes a TCP connection may have waiting to be written to its socket; over it, its requests wait until the client reads (at least 64KiB).")
    var maxUnsentReplies = "16MiB"

    @Option(name: .customLong("max-handles"), help: "Open region handles per connection.")
    var maxHandles = 4096

    @Option(name: .customLong("max-regions"), help: "Regions the server holds.")
    var maxRegions = 50_000

    @Option(name: .customLong("max-region-size"), help: "Largest region a client may create (e.g. 64GiB).")
    var maxRegionSize = "1TiB"

    @Option(name: .customLong("reserve-free"), help: "Free space a create must leave on the data directory's filesystem; half of it (at most 8 MiB) stays preallocated to the catalog, so metadata changes still work when the disk fills.")
    var reserveFree = "64MiB"

    @Flag(help: "Pre-fault each new region's pages at create (MADV_POPULATE_WRITE): create costs O(size) and fills page cache; first writes then skip the kernel's page zeroing. Regions over half of memory are not populated.")
    var populate = false

    @Option(name: .customLong("persist-threads"), help: "Threads running msync for PERSIST (concurrent syncs let the filesystem batch journal commits).")
    var persistThreads = 8

    @Option(name: .customLong("auth-timeout"), help: "Seconds a connection has to authenticate before it is closed.")
    var authTimeoutSeconds = 10

    @Option(name: .customLong("ready-file"), help: "Write the bound HOST:PORT to this file once accepting connections.")
    var readyFile: String?

    @Option(help: "tcp, rdma (RDMA verbs: one-sided writes and reads into registered region memory; the data directory must be on tmpfs or hugetlbfs, and --listen an address of the RDMA interface) or auto (rdma when an RDMA device with an active port exists, else tcp).")
    var transport = "tcp"

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    public init() {}

    public func validate() throws {
        _ = try Endpoint(parsing: listen)
        _ = try ByteSize.parse(maxRegionSize)
        _ = try ByteSize.parse(reserveFree)
        _ = try TransportChoice(parsing: transport)
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard maxClients > 0, maxHandles > 0, maxRegions > 0, authTimeoutSeconds > 0, (1...1024).contains(persistThreads),
              maxAuthenticating > 0, maxConnectionsPerClient > 0, idleTimeoutSeconds >= 0 else { throw ValidationError("limits must be positive") }
        let unsent = try ByteSize.parse(maxUnsentReplies)
        guard unsent >= 64 * 1024, unsent <= 1 << 40 else { throw ValidationError("--max-unsent-replies must be between 64KiB and 1TiB") }
        for admin in admins { try NameRules.validateClientId(admin) }
    }

    public func makeConfiguration() throws -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.dataDirectory = dataDirectory
        configuration.listen = try Endpoint(parsing: listen)
        configuration.secretsPath = secrets
        configuration.adminClients = Set(admins)
        configuration.maxClients = maxClients
        configuration.maxAuthenticating = maxAuthenticating
        configuration.maxConnectionsPerClient = maxConnectionsPerClient
        configuration.idleTimeout = idleTimeoutSeconds == 0 ? nil : .seconds(Int64(idleTimeoutSeconds))
        configuration.maxUnsentReplyBytes = Int(try ByteSize.parse(maxUnsentReplies))
        configuration.maxHandlesPerConnection = maxHandles
        configuration.store = StoreConfiguration(
            maxRegionBytes: try ByteSize.parse(maxRegionSize), maxRegions: maxRegions, reserveFreeBytes: try ByteSize.parse(reserveFree),
            populateOnCreate: populate)
        configuration.readyFile = readyFile
        configuration.authenticationTimeout = .seconds(Int64(authTimeoutSeconds))
        configuration.blockingThreads = persistThreads
        configuration.transport = try TransportChoice(parsing: transport)
        return configuration
    }

    /// Named `execute`, not `run`: see main.swift.
    public func execute() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "pmu-server")
        let service = PMUServerService(configuration: try makeConfiguration(), logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch let error as PMUError {
            logger.critical("pmu-server cannot run", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
    }
}
