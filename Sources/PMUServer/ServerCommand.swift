#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import PMUCore
import PMULog
import PMUPair
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

    @Option(help: "tcp, rdma (RDMA verbs: one-sided writes and reads into registered region memory; --listen an address of the RDMA interface) or auto (rdma when an RDMA device with an active port exists, else tcp). Over rdma with the data directory on a disk filesystem (ext4, xfs) each region in use is held in a shmem shadow copied to its file on PERSIST (see --rdma-shadow-memory).")
    var transport = "tcp"

    @Option(name: .customLong("rdma-poll"), help: "Over rdma, how each connection's completion thread waits: event (sleep on the completion channel; least CPU), adaptive (poll 50 us after the last completion, then sleep; adaptive:US sets the window) or busy (never sleep: a CPU per connection; lowest latency). Default: PMU_RDMA_POLL, else adaptive.")
    var rdmaPoll: String?

    @Option(name: .customLong("rdma-shadow-memory"), help: "Over rdma on a disk filesystem: bound on the shmem shadows of the regions in use, each the size of its region, kept until the region is deleted (default: half of physical memory). An OPEN or CREATE over it fails SHADOW_MEMORY_FULL.")
    var rdmaShadowMemory: String?

    @Option(help: "Partner server, HOST:PORT: every WRITE is acknowledged only once it is also in the partner's mirror log.")
    var partner: String?

    @Option(name: .customLong("partner-client"), help: "Client id this server authenticates with at its partner (and, by default, the id it accepts mirroring from).")
    var partnerClient: String?

    @Option(name: .customLong("partner-secret-file"), help: "File holding --partner-client's secret alone.")
    var partnerSecretFile: String?

    @Option(name: .customLong("partner-max-unpersisted"), help: "Mirrored bytes not yet covered by a PERSIST before WRITEs are refused LOG_FULL.")
    var partnerMaxUnpersisted = "96MiB"

    @Option(name: .customLong("partner-down"), help: "While the partner is unreachable: durable (each write is msync'd here before it is acknowledged) or refuse (writes fail SERVER_UNAVAILABLE).")
    var partnerDown = "durable"

    @Option(name: .customLong("mirror-client"), help: "Client id allowed to mirror its portion into this server (default: --partner-client).")
    var mirrorClient: String?

    @Option(name: .customLong("mirror-log-max"), help: "Bound on each partner's mirror log under DATA_DIR/mirror/ (32 MiB segments).")
    var mirrorLogMax = "256MiB"

    @Option(name: .customLong("mirror-sync"), help: "fdatasync (a mirrored write survives the loss of this machine) or page-cache (only a crash of this process).")
    var mirrorSync = "fdatasync"

    @Option(name: .customLong("partner-portion"), help: "The partner's data directory, opened by `pmuctl pair takeover`.")
    var partnerPortion: String?

    @Option(name: .customLong("fence-command"), help: "Shell command that must exit 0 before a takeover touches the partner's portion (gets PMU_PORTION, PMU_PORTION_DIR).")
    var fenceCommand: String?

    @Option(name: .customLong("takeover-listen"), help: "HOST:PORT to serve the taken-over portion on (the failed owner's address).")
    var takeoverListen: String?

    @Flag(name: .customLong("test-volatile-until-persist"), help: "TEST MODE (needs PMU_ALLOW_TEST_MODES=1): keep region bytes in process memory until PERSIST, so kill -9 loses unpersisted writes as a machine loss would.")
    var testVolatileUntilPersist = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    public init() {}

    public func validate() throws {
        _ = try Endpoint(parsing: listen)
        _ = try ByteSize.parse(maxRegionSize)
        _ = try ByteSize.parse(reserveFree)
        if let rdmaShadowMemory { _ = try ByteSize.parse(rdmaShadowMemory) }
        if let rdmaPoll { _ = try RDMAPolling(parsing: rdmaPoll) }
        _ = try TransportChoice(parsing: transport)
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard maxClients > 0, maxHandles > 0, maxRegions > 0, authTimeoutSeconds > 0, (1...1024).contains(persistThreads),
              maxAuthenticating > 0, maxConnectionsPerClient > 0, idleTimeoutSeconds >= 0 else { throw ValidationError("limits must be positive") }
        let unsent = try ByteSize.parse(maxUnsentReplies)
        guard unsent >= 64 * 1024, unsent <= 1 << 40 else { throw ValidationError("--max-unsent-replies must be between 64KiB and 1TiB") }
        for admin in admins { try NameRules.validateClientId(admin) }
        if let partner {
            _ = try Endpoint(parsing: partner)
            guard partnerClient != nil, partnerSecretFile != nil else {
                throw ValidationError("--partner needs --partner-client and --partner-secret-file (the partner authenticates this server like any client)")
            }
            guard transport == "tcp" else {
                // One-sided RDMA writes bypass the server's CPU: they cannot be mirrored write by write (issue 12 item 6, not built).
                throw ValidationError("--partner needs --transport tcp: writes over RDMA verbs are one-sided and cannot be mirrored yet")
            }
            guard try Endpoint(parsing: partner) != (try Endpoint(parsing: listen)) else {
                throw ValidationError("--partner \(partner) is this server's own --listen address; a partner must be another server")
            }
        }
        if testVolatileUntilPersist && getenv("PMU_ALLOW_TEST_MODES").map({ String(cString: $0) }) != "1" {
            throw ValidationError("--test-volatile-until-persist is a fault-injection test mode that loses acknowledged writes on a crash; it is refused unless PMU_ALLOW_TEST_MODES=1")
        }
        if let takeoverListen { _ = try Endpoint(parsing: takeoverListen) }
        _ = try ByteSize.parse(mirrorLogMax)
        _ = try ByteSize.parse(partnerMaxUnpersisted)
        guard PartnerDownPolicy(rawValue: partnerDown) != nil else { throw ValidationError("--partner-down must be durable or refuse") }
        guard LogSyncPolicy(rawValue: mirrorSync) != nil else { throw ValidationError("--mirror-sync must be fdatasync or page-cache") }
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
        configuration.store.volatileUntilPersist = testVolatileUntilPersist
        if let rdmaShadowMemory { configuration.store.shadowLimitBytes = try ByteSize.parse(rdmaShadowMemory) }
        if let rdmaPoll { configuration.rdmaPolling = try RDMAPolling(parsing: rdmaPoll) }
        configuration.readyFile = readyFile
        configuration.authenticationTimeout = .seconds(Int64(authTimeoutSeconds))
        configuration.blockingThreads = persistThreads
        configuration.transport = try TransportChoice(parsing: transport)
        var pair = PairSettings()
        if let partner, let partnerClient, let partnerSecretFile {
            let secret = try SecretsTable.parseClientSecret(try SecretsFile.readText(partnerSecretFile, what: "--partner-secret-file"), source: partnerSecretFile)
            pair.partner = PartnerConfiguration(
                endpoint: try Endpoint(parsing: partner), clientId: partnerClient, secret: secret, maxUnpersistedBytes: try ByteSize.parse(partnerMaxUnpersisted),
                partnerDown: PartnerDownPolicy(rawValue: partnerDown) ?? .durable)
        }
        pair.mirrorClient = mirrorClient ?? partnerClient
        pair.mirrorLog.maxBytes = try ByteSize.parse(mirrorLogMax)
        pair.mirrorLog.sync = LogSyncPolicy(rawValue: mirrorSync) ?? .dataSync
        pair.partnerPortion = partnerPortion
        pair.fenceCommand = fenceCommand
        pair.takeoverListen = try takeoverListen.map { try Endpoint(parsing: $0) }
        configuration.pair = pair
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
