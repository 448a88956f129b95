import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PMUCore
import PMUFailover
import PMUPair
import PMUStore
import PMUTransport

/// The server's pair role, the one object sessions talk to about mirroring: the owner's
/// `MirrorSender` (writes go through it), the partner's `MirrorReceiver` (mirror logs), and the
/// takeover, which serves the partner's portion on its own listener once it is replayed.
final class PairController: Sendable {
    let settings: PairSettings
    let portion: String
    let sender: MirrorSender?
    let receiver: MirrorReceiver?
    /// The monitor's own copy of the primary's portion (`--replica-from`).
    let replica: ReplicaController?
    private let configuration: ServerConfiguration
    private let logger: Logger
    private let served = NIOLockedValueBox<Served?>(nil)
    private let takingOver = NIOLockedValueBox(false)

    private struct Served: @unchecked Sendable {
        var report: TakeoverReport
        var transport: any ServerTransport
        var directory: DataDirectory
        var store: RegionStore
        var mirror: PairController?
    }

    struct Runtime: Sendable {
        var group: any EventLoopGroup
        var pool: NIOThreadPool
        var metadataPool: NIOThreadPool
        var secrets: SecretsTable
        var store: RegionStore
    }
    private let runtime: Runtime

    init(configuration: ServerConfiguration, runtime: Runtime, logger: Logger) throws(PMUError) {
        let settings = configuration.pair
        self.settings = settings
        self.configuration = configuration
        self.runtime = runtime
        self.logger = logger
        let portion = try PortionIdentity.load(dataDirectory: configuration.dataDirectory, create: true)
        self.portion = portion
        let instance = PortionIdentity.randomInstance()
        let store = runtime.store
        sender = settings.partner.map {
            MirrorSender(configuration: $0, portion: portion, instance: instance, logger: logger, group: runtime.group) { (regions: [UInt64]?) throws(PMUError) in
                _ = try Self.persist(store, regions: regions)
            }
        }
        receiver = try settings.receives
            ? MirrorReceiver(dataDirectory: configuration.dataDirectory, ownPortion: portion, instance: instance, logConfiguration: settings.mirrorLog, logger: logger,
                silentAfterMilliseconds: UInt64(settings.partnerTimeout.components.seconds) * 1000 + UInt64(settings.partnerTimeout.components.attoseconds / 1_000_000_000_000_000))
            : nil
        if let source = settings.replicaFrom, let receiver, let directory = settings.partnerPortion, let clientId = settings.replicaClient {
            replica = ReplicaController(
                settings: .init(source: source, clientId: clientId, secret: settings.replicaSecret, directory: directory, intervalMilliseconds: settings.replicaIntervalMilliseconds,
                                passIntervalMilliseconds: settings.replicaPassIntervalMilliseconds ?? settings.replicaIntervalMilliseconds),
                receiver: receiver, storeConfiguration: configuration.store, pool: runtime.metadataPool, logger: logger)
        } else {
            replica = nil
        }
        // A monitor whose copy it once served itself (it took the portion over, then restarted):
        // the portion is served elsewhere now, so its takeover mark, which fenced the old owner,
        // would refuse the new owner's mirror channel. The authority fences stale owners here.
        if replica != nil, let receiver, let directory = settings.partnerPortion,
            let served = try? PortionIdentity.load(dataDirectory: directory, create: false), receiver.isTakenOver(served)
        {
            try receiver.endTakeover(portion: served)
            logger.notice("this monitor once took its replica's portion over; it is the monitor again, mirroring from the current primary", metadata: ["portion": "\(served)"])
        }
    }

    /// msyncs whole regions (nil: every region); returns how many (a region deleted meanwhile is skipped).
    static func persist(_ store: RegionStore, regions: [UInt64]?) throws(PMUError) -> Int {
        var count = 0
        for id in regions ?? store.list(after: "", limit: Int.max).records.map(\.id) {
            guard let mapping = try? store.mapping(id: id) else { continue }
            try mapping.persist(offset: 0, length: mapping.sizeBytes)
            count += 1
        }
        return count
    }

    func start() async throws(PMUError) {
        try await sender?.start()
    }

    func stop() async {
        await replica?.stop()
        await sender?.stop()
        if let served = served.withLockedValue({ $0 }) {
            await served.transport.stop()
            await served.mirror?.stop()
        }
    }

    func mayMirror(_ clientId: String) -> Bool { receiver != nil && clientId == settings.mirrorClient }
    /// REPLICA_CATALOG and REPLICA_READ: the pair's client, which a monitor copies the portion as.
    func mayReplicate(_ clientId: String) -> Bool {
        guard let allowed = settings.replicaClient ?? settings.mirrorClient else { return false }
        return clientId == allowed
    }

    struct Status: Codable {
        var portion: String
        var dataDirectory: String
        var role: [String]
        var mirroringTo: MirrorSender.Status?
        var mirrorLogs: [MirrorReceiver.PortionStatus]
        var mirrorSync: String
        var takenOver: TakeoverReport?
        var failover: FailoverController.Status?
        var replica: ReplicaController.Status?
    }

    func statusJSON() -> String {
        var roles: [String] = []
        if sender != nil { roles.append("owner (mirrors its writes)") }
        if receiver != nil { roles.append("partner (keeps mirror logs)") }
        let takenOver = served.withLockedValue { $0?.report }
        if takenOver != nil { roles.append("serving a taken-over portion") }
        let status = Status(
            portion: portion, dataDirectory: configuration.dataDirectory, role: roles, mirroringTo: sender?.status,
            mirrorLogs: receiver?.status ?? [], mirrorSync: settings.mirrorLog.sync.rawValue, takenOver: takenOver,
            failover: configuration.failoverStatus?(), replica: replica?.status)
        return Self.json(status)
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// PAIR_TAKEOVER: fence, replay, persist, then listen for the portion's clients. The reply
    /// comes once the portion is being served.
    /// `beforeListen` (failover: take the service address) runs once the portion is durable.
    func takeover(beforeListen: (@Sendable () throws(PMUError) -> Void)? = nil) async throws(PMUError) -> String {
        guard let receiver else {
            throw PMUError(.invalidArgument, "this server keeps no mirror logs (start it with --mirror-client or --partner-client); nothing to take over")
        }
        guard let directory = settings.partnerPortion, let fence = settings.fenceCommand, let listen = settings.takeoverListen else {
            throw PMUError(.invalidArgument, "takeover needs --partner-portion (the partner's data directory), --fence-command and --takeover-listen on this server")
        }
        guard takingOver.withLockedValue({ busy in defer { busy = true }; return !busy }) else {
            throw PMUError(.invalidArgument, "a takeover already ran or is running on this server")
        }
        var done = false
        defer { if !done { takingOver.withLockedValue { $0 = false } } }
        let storeConfiguration = configuration.store
        let logger = self.logger
        // Blocking work (fence command, recovery, replay, msync) off the cooperative pool.
        // The shared-nothing replica: this server's own copy, handed over by its copy passes.
        let handed = try await replica?.handOver()
        let replicaStore = handed.map { (directory: $0.0, store: $0.1, replayAfter: $0.2) }
        let taken: (DataDirectory, RegionStore, TakeoverReport)
        do {
            taken = try await runtime.metadataPool.runIfActive {
                try Takeover.run(receiver: receiver, portionDirectory: directory, fenceCommand: fence, storeConfiguration: storeConfiguration, logger: logger, replica: replicaStore)
            }
        } catch {
            replica?.resume()
            throw (error as? PMUError) ?? PMUError(.internalError, "takeover failed: \(error)")
        }
        var (dataDirectory, store, report) = taken
        var portionConfiguration = configuration
        portionConfiguration.dataDirectory = directory
        portionConfiguration.listen = listen
        portionConfiguration.pair = PairSettings()
        // With --takeover-partner the portion mirrors to the other server once it answers (each
        // write durable here until then, --partner-down durable), so it can be taken over again.
        var mirror: PairController?
        if let partner = settings.takeoverPartner {
            portionConfiguration.pair.partner = partner
            portionConfiguration.pair.replicaClient = partner.clientId
            mirror = try PairController(
                configuration: portionConfiguration,
                runtime: Runtime(group: runtime.group, pool: runtime.pool, metadataPool: runtime.metadataPool, secrets: runtime.secrets, store: store), logger: logger)
        } else {
            portionConfiguration.durableWrites = true
        }
        let state = ServerState(store: store, secrets: runtime.secrets, configuration: portionConfiguration, pair: mirror)
        let transport = TCPServerTransport(endpoint: listen, group: runtime.group, logger: logger)
        let runtime = self.runtime
        try beforeListen?()
        let bound: Endpoint
        do {
            bound = try await transport.start { info in
                Session(info: info, state: state, pool: runtime.pool, metadataPool: runtime.metadataPool, logger: logger)
            }
        } catch {
            throw PMUError(.ioError, "replayed and persisted portion \(report.portion), but cannot listen on --takeover-listen \(listen): \(error)")
        }
        report.serving = "\(bound)"
        done = true
        served.withLockedValue { $0 = Served(report: report, transport: transport, directory: dataDirectory, store: store, mirror: mirror) }
        // Not awaited: the takeover is done once the portion is served, and a partner behind a
        // partition would hold it for the connect timeout (writes stay durable here meanwhile).
        if let mirror {
            Task {
                do throws(PMUError) {
                    try await mirror.start()
                } catch {
                    logger.error("the taken-over portion cannot mirror to --takeover-partner; its writes stay durable here first", metadata: ["error": "\(error)"])
                }
            }
        }
        logger.notice("serving taken-over portion", metadata: ["portion": "\(report.portion)", "address": "\(bound)"])
        return Self.json(report)
    }

    struct GivebackReport: Codable {
        var portion: String
        var portionDirectory: String
        var regionsPersisted: Int
        var milliseconds: UInt64
    }

    /// PAIR_GIVEBACK (ONTAP's giveback): the recovered owner is to serve its portion again.
    /// Stops the portion's listener and closes its connections (a write not answered by then
    /// was not acknowledged; every one answered was durable first), makes every region durable,
    /// releases the portion's LOCK and clears the takeover, so the owner may start on its
    /// portion, MIRROR_OPEN here and mirror again. Start the owner after this returns.
    func giveback() async throws(PMUError) -> String {
        guard let receiver else {
            throw PMUError(.invalidArgument, "this server keeps no mirror logs; it cannot have taken a portion over")
        }
        guard let taken = served.withLockedValue({ $0 }) else {
            throw PMUError(.invalidArgument, "this server serves no taken-over portion (pmuctl pair status shows what it serves); nothing to give back")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        await taken.transport.stop()
        await taken.mirror?.stop()
        // Requests already taken off those connections finish on their event loops first.
        for loop in runtime.group.makeIterator() { try? await loop.submit {}.get() }
        let store = taken.store
        let directory = taken.directory
        let portion = taken.report.portion
        let persisted: Int
        do {
            persisted = try await runtime.metadataPool.runIfActive { () throws -> Int in
                let count = try Self.persist(store, regions: nil)
                directory.releaseLock()
                try receiver.endTakeover(portion: portion)
                return count
            }
        } catch {
            throw PMUError((error as? PMUError)?.code ?? .internalError, "giveback of portion \(portion) stopped serving it but did not finish: \((error as? PMUError)?.message ?? "\(error)"); run pmuctl pair giveback again before starting its owner")
        }
        served.withLockedValue { $0 = nil }
        takingOver.withLockedValue { $0 = false }
        let report = GivebackReport(
            portion: portion, portionDirectory: directory.path, regionsPersisted: persisted,
            milliseconds: (DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)
        logger.notice("gave the taken-over portion back; its owner may start on it", metadata: ["portion": "\(portion)", "regions": "\(persisted)"])
        return Self.json(report)
    }
}

