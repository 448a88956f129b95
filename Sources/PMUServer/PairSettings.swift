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

    public init() {}

    public var receives: Bool { mirrorClient != nil }
}
