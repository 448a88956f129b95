import PMUCore
import PMULog
import PMUPair
import PMUTransport

/// The pair options of pmu-server (docs/ARCHITECTURE.md, "Write mirroring").
public struct PairSettings: Sendable {
    /// `--partner` and its credentials: mirror this server's writes there.
    public var partner: PartnerConfiguration?
    /// `--mirror-client`: the client id allowed to mirror a portion into this server (default:
    /// `--partner-client`, since both servers of a pair normally share one id).
    public var mirrorClient: String?
    /// The mirror logs this server keeps for its partner (`--mirror-log-max`, `--mirror-sync`).
    public var mirrorLog = AppendLogConfiguration(segmentBytes: 32 << 20, maxBytes: 256 << 20, sync: .dataSync)
    /// `--partner-portion`: the partner's data directory, opened at takeover.
    public var partnerPortion: String?
    /// `--fence-command`: must exit 0 before a takeover touches the partner's portion.
    public var fenceCommand: String?
    /// `--takeover-listen`: where the taken-over portion is served (the failed owner's address,
    /// so its clients reconnect to the same endpoint).
    public var takeoverListen: Endpoint?
    /// `--partner-timeout-ms`: how long a mirror channel may be silent before it counts as dead.
    public var partnerTimeout: Duration = .seconds(3)

    /// `--replica-from`: the shared-nothing replica. The monitor copies the primary's portion
    /// from this address (as the pair's client) into `partnerPortion`, its own directory, and
    /// serves that copy at takeover (docs/ARCHITECTURE.md "Failover").
    public var replicaFrom: Endpoint?
    public var replicaClient: String?
    public var replicaSecret: [UInt8] = []
    /// Between tries of a full copy (the heartbeat interval).
    public var replicaIntervalMilliseconds: Int64 = 1000
    /// `--replica-interval`: between the passes that follow a complete full copy (nil: the
    /// heartbeat interval). Catalog changes reach the replica as mirror-log records, so these
    /// passes are a check, not what keeps the copy current.
    public var replicaPassIntervalMilliseconds: Int64?
    /// `--takeover-partner`: where a taken-over portion mirrors its writes (the other server's
    /// monitor address), so that server can copy it and take it over in turn. nil: a taken-over
    /// portion has no partner and every write is durable before its OK.
    public var takeoverPartner: PartnerConfiguration?
    /// `--monitor-listen`: where a `--role primary` server that rebooted as the monitor of the
    /// new primary listens for the new primary's mirror channel (its --listen, the service
    /// address, is the new primary's now). nil: such a server only answers heartbeats.
    public var monitorListen: Endpoint?

    public init() {}

    public var receives: Bool { mirrorClient != nil }
}
