import PMUCore
import PMUTransport

/// `pmu-server --role` and its options (docs/ARCHITECTURE.md "Failover").
public struct FailoverConfiguration: Sendable {
    public var role: FailoverRole
    /// This server's name at the authority and in heartbeats (at most 16 bytes of UTF-8).
    public var memberId: String
    /// This server's UDP heartbeat address (for a monitor: the monitor address).
    public var heartbeatListen: Endpoint
    /// The other server's heartbeat address (for a monitor: the primary's; for a primary: the monitor address).
    public var peerHeartbeat: Endpoint
    public var intervalMilliseconds: Int64 = 1000
    public var missLimit = 3
    /// Heartbeats are tagged with HMAC-SHA256 under this (the pair's shared secret).
    public var secret: [UInt8]
    /// The service address to take (nil: clients are pointed elsewhere, e.g. the takeover listener).
    public var service: AddressHook?
    /// etcd's client port; nil runs the pair without an authority (the fence command alone guards a takeover).
    public var etcd: Endpoint?
    public var etcdPrefix = "/pmu/pair"
    /// The member lease's TTL. etcd rounds a TTL up to 1.5 x its election timeout (2 s with defaults).
    public var leaseTTLSeconds = 2
    /// A primary stops acknowledging writes this long before its lease could lapse.
    public var leaseMarginMilliseconds: Int64 = 500
    /// The servers share no storage (`--replica-from`): at boot only the last owner at the
    /// authority may become primary (BootDecision).
    public var sharedNothing = false

    public init(role: FailoverRole, memberId: String, heartbeatListen: Endpoint, peerHeartbeat: Endpoint, secret: [UInt8]) {
        self.role = role
        self.memberId = memberId
        self.heartbeatListen = heartbeatListen
        self.peerHeartbeat = peerHeartbeat
        self.secret = secret
    }

    public func validate() throws(PMUError) {
        guard !memberId.isEmpty, memberId.utf8.count <= HeartbeatMessage.maxSenderIdBytes, !memberId.contains("/") else {
            throw PMUError(.invalidArgument, "--member-id must be 1-\(HeartbeatMessage.maxSenderIdBytes) bytes without '/' (it is a key at the authority)")
        }
        guard (10...60_000).contains(intervalMilliseconds) else { throw PMUError(.invalidArgument, "--heartbeat-interval must be 10-60000 ms") }
        guard (1...100).contains(missLimit) else { throw PMUError(.invalidArgument, "--heartbeat-misses must be 1-100") }
        guard (1...3600).contains(leaseTTLSeconds) else { throw PMUError(.invalidArgument, "--lease-ttl must be 1-3600 s") }
        guard leaseMarginMilliseconds > 0, leaseMarginMilliseconds < Int64(leaseTTLSeconds) * 1000 else {
            throw PMUError(.invalidArgument, "--lease-margin must be positive and shorter than --lease-ttl")
        }
        guard heartbeatListen != peerHeartbeat else {
            throw PMUError(.invalidArgument, "--heartbeat-listen and --peer-heartbeat are the same address; the peer is another server")
        }
    }
}
