#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import PMUCore
import PMUFailover
import PMULog
import PMUPair
import PMUStore
import PMUTransport
import NIOCore
import ServiceLifecycle

enum LogFormat: String {
    case text, json
}

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

    @Option(name: .customLong("streamed-write-min"), help: "TCP WRITEs with at least this much payload are copied into the region as each socket read arrives instead of being gathered whole first (one copy fewer); 0 gathers every WRITE whole.")
    var streamedWriteMin = "64KiB"

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

    @Option(name: .customLong("journal-max-persist"), help: "PERSISTs of at most this many bytes are group-committed through the write journal (DATA_DIR/journal: one fdatasync covers many clients' PERSISTs) instead of an msync each; 0 turns the journal off. Not used on a paired owner or over verbs.")
    var journalMaxPersist = "64KiB"

    @Option(name: .customLong("journal-max"), help: "Bound on the write journal's files (16 MiB segments); it is applied to the regions and trimmed at half of it, when idle for a second, and at shutdown.")
    var journalMax = "128MiB"

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

    @Option(name: .customLong("partner-down"), help: "While the partner is unreachable: durable (each write is msync'd here before it is acknowledged) or refuse (writes fail SERVER_UNAVAILABLE). Default durable; refuse with --role (a primary cut off from its monitor must not acknowledge what a takeover would not replay).")
    var partnerDown: String?

    @Option(name: .customLong("partner-timeout-ms"), help: "A mirror channel silent this long (heartbeats every third of it) is declared dead: the owner applies --partner-down, the partner reports its owner silent in pair status (100...600000).")
    var partnerTimeoutMilliseconds = 3000

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

    @Option(name: .customLong("replica-from"), help: "HOST:PORT of the primary to copy its portion from (the shared-nothing replica of a --role monitor): --partner-portion is then this server's own directory holding the copy, never the primary's. Authenticates as --mirror-client with --partner-secret-file (or --heartbeat-secret-file).")
    var replicaFrom: String?

    @Option(name: .customLong("takeover-partner"), help: "With --replica-from: HOST:PORT of the other server's mirror listener (a monitor's --listen, a rebooted primary's --monitor-listen). A portion this server takes over mirrors its writes there once it answers, so it can be copied and taken over in turn.")
    var takeoverPartner: String?

    @Option(name: .customLong("replica-interval"), help: "With --replica-from: milliseconds between the copy passes that follow a complete full copy (default: --heartbeat-interval). Creates, deletes and writer-epoch raises reach the copy through the mirror log; a pass re-checks the catalog.")
    var replicaIntervalMilliseconds: Int64?

    @Option(name: .customLong("monitor-listen"), help: "With --role primary and --replica-from: HOST:PORT where this server listens when it reboots as the monitor of the new primary (the service address is the new primary's): it takes the new primary's mirror channel there and copies the portion into its data directory.")
    var monitorListen: String?

    @Option(name: .customLong("takeover-listen"), help: "HOST:PORT to serve the taken-over portion on (the failed owner's address).")
    var takeoverListen: String?

    @Option(help: "Failover role: primary (serves the service address) or monitor (heartbeats the primary and takes over on --heartbeat-misses misses). Omitted: no failover.")
    var role: String?

    @Option(name: .customLong("member-id"), help: "This server's name in heartbeats and at the authority (1-16 bytes).")
    var memberId: String?

    @Option(name: .customLong("heartbeat-listen"), help: "This server's UDP heartbeat address, HOST:PORT (for a monitor: the monitor address).")
    var heartbeatListen: String?

    @Option(name: .customLong("peer-heartbeat"), help: "The other server's UDP heartbeat address (for a monitor: the primary's; for a primary: the monitor address it signals at boot).")
    var peerHeartbeat: String?

    @Option(name: .customLong("heartbeat-interval"), help: "Milliseconds between heartbeats.")
    var heartbeatIntervalMilliseconds: Int64 = 1000

    @Option(name: .customLong("heartbeat-misses"), help: "Consecutive unanswered heartbeats after which the monitor takes over.")
    var heartbeatMisses = 3

    @Option(name: .customLong("heartbeat-secret-file"), help: "File holding the secret heartbeats are tagged with (default: --partner-secret-file).")
    var heartbeatSecretFile: String?

    @Option(name: .customLong("service-address"), help: "The service address the primary holds, ADDRESS/PREFIX (e.g. 10.77.0.100/24): added with ip addr add and a gratuitous ARP, or through --address-hook.")
    var serviceAddress: String?

    @Option(name: .customLong("service-interface"), help: "Interface for --service-address.")
    var serviceInterface = "eth0"

    @Option(name: .customLong("address-hook"), help: "Shell command that adds or removes the service address instead of ip/arping (gets PMU_ADDRESS_ACTION=add|del, PMU_ADDRESS, PMU_INTERFACE; must exit 0).")
    var addressHook: String?

    @Option(help: "The authority, etcd's client URL http://HOST:PORT (its JSON gateway). Omitted: no authority; the fence command alone guards a takeover.")
    var etcd: String?

    @Option(name: .customLong("etcd-prefix"), help: "Key prefix of this pair at the authority.")
    var etcdPrefix = "/pmu/pair"

    @Option(name: .customLong("lease-ttl"), help: "Seconds of this server's member lease at the authority.")
    var leaseTTLSeconds = 2

    @Option(name: .customLong("lease-margin"), help: "Milliseconds before its lease could lapse at which a primary stops acknowledging writes.")
    var leaseMarginMilliseconds: Int64 = 500

    @Flag(name: .customLong("test-volatile-until-persist"), help: "TEST MODE (needs PMU_ALLOW_TEST_MODES=1): keep region bytes in process memory until PERSIST, so kill -9 loses unpersisted writes as a machine loss would.")
    var testVolatileUntilPersist = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (debug adds a line per request with its connection and request ids).")
    var logLevel = "info"

    @Option(name: .customLong("log-format"), help: "text (swift-log's standard lines) or json (one JSON object a line: time, level, label, message, then metadata such as connection and request).")
    var logFormat = "text"

    @Option(name: .customLong("metrics-listen"), help: "Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (default: not served). Unauthenticated: bind it to loopback or a monitoring network.")
    var metricsListen: String?
    @OptionGroup(title: "Forming striped checkpoints for primaries") var forming: FormingOptions

    public init() {}

    public func validate() throws {
        _ = try Endpoint(parsing: listen)
        _ = try ByteSize.parse(maxRegionSize)
        _ = try ByteSize.parse(reserveFree)
        _ = try ByteSize.parse(streamedWriteMin)
        if let rdmaShadowMemory { _ = try ByteSize.parse(rdmaShadowMemory) }
        if let rdmaPoll { _ = try RDMAPolling(parsing: rdmaPoll) }
        _ = try TransportChoice(parsing: transport)
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json, not \(logFormat)") }
        if let metricsListen {
            let metrics = try Endpoint(parsing: metricsListen)
            // Port 0 (pick a free port) on both is fine: they get different ports.
            let data = try Endpoint(parsing: listen)
            guard metrics.port == 0 || metrics != data else {
                throw ValidationError("--metrics-listen \(metricsListen) is the data port (--listen); give metrics their own port")
            }
        }
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
                // The verbs rule (ARCHITECTURE "Write mirroring"): a one-sided RDMA WRITE lands in
                // region memory without this server's CPU, so it cannot be mirrored before it is
                // acknowledged; a mirrored server offers no verbs at all rather than weaken
                // "acknowledged means in two servers".
                throw ValidationError("--partner needs --transport tcp: a mirrored server does not serve RDMA verbs, whose one-sided writes bypass it and could not be mirrored before they are acknowledged (verbs clients with --transport auto fall back to TCP)")
            }
            guard try Endpoint(parsing: partner) != (try Endpoint(parsing: listen)) else {
                throw ValidationError("--partner \(partner) is this server's own --listen address; a partner must be another server")
            }
        }
        if (mirrorClient != nil || partnerClient != nil) && transport != "tcp" {
            throw ValidationError("--mirror-client/--partner-client need --transport tcp: the owner mirrors into this server over TCP, and a taken-over portion is served over TCP (a mirrored portion never serves RDMA verbs)")
        }
        if testVolatileUntilPersist && getenv("PMU_ALLOW_TEST_MODES").map({ String(cString: $0) }) != "1" {
            throw ValidationError("--test-volatile-until-persist is a fault-injection test mode that loses acknowledged writes on a crash; it is refused unless PMU_ALLOW_TEST_MODES=1")
        }
        if let takeoverListen { _ = try Endpoint(parsing: takeoverListen) }
        _ = try ByteSize.parse(mirrorLogMax)
        _ = try ByteSize.parse(partnerMaxUnpersisted)
        if let role {
            guard FailoverRole(rawValue: role) != nil else { throw ValidationError("--role must be primary or monitor") }
            _ = try makeFailover()
        }
        guard (100...600_000).contains(partnerTimeoutMilliseconds) else { throw ValidationError("--partner-timeout-ms must be 100...600000") }
        guard PartnerDownPolicy(rawValue: partnerDown ?? "durable") != nil else { throw ValidationError("--partner-down must be durable or refuse") }
        try journalConfiguration().validate()
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
        let streamedMin = try ByteSize.parse(streamedWriteMin)
        guard streamedMin <= UInt64(Limits.maxIOBytes) else {
            throw ValidationError("--streamed-write-min \(streamedWriteMin) is larger than one WRITE may be (\(Limits.maxIOBytes) bytes); use 0 to turn streaming off")
        }
        configuration.minStreamedWritePayload = streamedMin == 0 ? nil : Int(streamedMin)
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
                partnerDown: PartnerDownPolicy(rawValue: partnerDown ?? (role == nil ? "durable" : "refuse")) ?? .durable,
                partnerTimeout: .milliseconds(partnerTimeoutMilliseconds))
        }
        pair.partnerTimeout = .milliseconds(partnerTimeoutMilliseconds)
        pair.mirrorClient = mirrorClient ?? partnerClient
        pair.mirrorLog.maxBytes = try ByteSize.parse(mirrorLogMax)
        pair.mirrorLog.sync = LogSyncPolicy(rawValue: mirrorSync) ?? .dataSync
        pair.partnerPortion = partnerPortion
        pair.fenceCommand = fenceCommand
        pair.takeoverListen = try takeoverListen.map { try Endpoint(parsing: $0) }
        if let replicaFrom {
            // A monitor copies into --partner-portion; a primary, once it rebooted as the monitor of
            // the new primary, into its own data directory (docs/ARCHITECTURE.md "Failover").
            guard let clientId = mirrorClient ?? partnerClient, let secretFile = partnerSecretFile ?? heartbeatSecretFile, partnerPortion != nil || role == "primary" else {
                throw ValidationError("--replica-from needs --mirror-client (the pair's client id), --partner-secret-file or --heartbeat-secret-file (its secret) and, on a monitor, --partner-portion (this server's directory for the copy)")
            }
            guard partnerPortion != dataDirectory else {
                throw ValidationError("--partner-portion \(partnerPortion ?? "") is --data-dir: the replica of the primary's portion needs a directory of its own")
            }
            let secret = try SecretsTable.parseClientSecret(try SecretsFile.readText(secretFile, what: "--partner-secret-file"), source: secretFile)
            pair.replicaFrom = try Endpoint(parsing: replicaFrom)
            pair.replicaClient = clientId
            pair.replicaSecret = secret
            pair.replicaIntervalMilliseconds = heartbeatIntervalMilliseconds
            if let replicaIntervalMilliseconds {
                guard replicaIntervalMilliseconds >= 10 else { throw ValidationError("--replica-interval \(replicaIntervalMilliseconds) is below 10 ms") }
                pair.replicaPassIntervalMilliseconds = replicaIntervalMilliseconds
            }
            if let takeoverPartner {
                pair.takeoverPartner = PartnerConfiguration(
                    endpoint: try Endpoint(parsing: takeoverPartner), clientId: clientId, secret: secret, maxUnpersistedBytes: try ByteSize.parse(partnerMaxUnpersisted),
                    partnerDown: .durable, partnerTimeout: .milliseconds(partnerTimeoutMilliseconds))
            }
            pair.monitorListen = try monitorListen.map { try Endpoint(parsing: $0) }
        }
        configuration.pair = pair
        configuration.failover = try makeFailover()
        configuration.metricsListen = try metricsListen.map { try Endpoint(parsing: $0) }
        configuration.forming = try forming.settings()
        configuration.journal = try journalConfiguration()
        return configuration
    }

    /// The failover options, nil without --role.
    func makeFailover() throws -> FailoverConfiguration? {
        guard let role, let failoverRole = FailoverRole(rawValue: role) else { return nil }
        guard let memberId, let heartbeatListen, let peerHeartbeat else {
            throw ValidationError("--role needs --member-id, --heartbeat-listen and --peer-heartbeat")
        }
        guard let secretFile = heartbeatSecretFile ?? partnerSecretFile else {
            throw ValidationError("--role needs --heartbeat-secret-file (or --partner-secret-file): heartbeats are authenticated")
        }
        let secret = try SecretsTable.parseClientSecret(try SecretsFile.readText(secretFile, what: "--heartbeat-secret-file"), source: secretFile)
        var failover = FailoverConfiguration(
            role: failoverRole, memberId: memberId, heartbeatListen: try Endpoint(parsing: heartbeatListen),
            peerHeartbeat: try Endpoint(parsing: peerHeartbeat), secret: secret)
        failover.intervalMilliseconds = heartbeatIntervalMilliseconds
        failover.missLimit = heartbeatMisses
        failover.service = serviceAddress.map { AddressHook(address: $0, interface: serviceInterface, command: addressHook) }
        failover.etcd = try etcd.map { try EtcdClient.parse(url: $0) }
        failover.etcdPrefix = etcdPrefix
        failover.leaseTTLSeconds = leaseTTLSeconds
        failover.leaseMarginMilliseconds = leaseMarginMilliseconds
        failover.sharedNothing = replicaFrom != nil
        try failover.validate()
        if failoverRole == .monitor, mirrorClient ?? partnerClient == nil || partnerPortion == nil || fenceCommand == nil || takeoverListen == nil {
            throw ValidationError("--role monitor takes over through the pair: it needs --mirror-client (or --partner-client), --partner-portion, --fence-command and --takeover-listen (the service address's HOST:PORT)")
        }
        if failoverRole == .primary, partner == nil {
            throw ValidationError("--role primary needs --partner (the monitor's HOST:PORT): a takeover replays the monitor's mirror log, so every acknowledged write must be in it")
        }
        return failover
    }

    func journalConfiguration() throws -> JournalConfiguration {
        var journal = JournalConfiguration()
        let maxPersist = try ByteSize.parse(journalMaxPersist)
        guard maxPersist <= UInt64(Limits.maxIOBytes) else {
            throw ValidationError("--journal-max-persist \(journalMaxPersist) is larger than one request may be (\(Limits.maxIOBytes) bytes)")
        }
        journal.maxPersistBytes = Int(maxPersist)
        journal.log.maxBytes = try ByteSize.parse(journalMax)
        return journal
    }

    /// Named `execute`, not `run`: see main.swift.
    public func execute() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = LogFormat(rawValue: logFormat) ?? .text
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
        }
        let logger = Logger(label: "pmu-server")
        let configuration = try makeConfiguration()
        // Only with --metrics-listen: otherwise swift-metrics stays on its no-op backend.
        let registry = configuration.metricsListen.map { _ in MetricsBackend.bootstrap() }
        let service = PMUServerService(configuration: configuration, logger: logger, metricsRegistry: registry)
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
