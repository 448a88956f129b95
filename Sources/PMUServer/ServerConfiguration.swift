import NIOCore
import PMUCore
import PMUFailover
import PMUStore
import PMUTransport

public struct ServerConfiguration: Sendable {
    /// Region files and the catalog. Created (last component only) if missing.
    public var dataDirectory: String = "pmu-data"
    public var listen: Endpoint = .default
    /// nil: DATA_DIR/secrets, created with a random admin secret on first start.
    public var secretsPath: String?
    /// Clients that may open, list and delete every region.
    public var adminClients: Set<String> = ["admin"]
    /// Authenticated connections served at once; one more is refused with TOO_MANY_CLIENTS at
    /// AUTHENTICATE. Lowered at start when the open-file limit cannot hold it (DescriptorBudget).
    public var maxClients: Int = 1024
    /// Connections accepted and not yet authenticated, a budget of their own; when it is full the
    /// one authenticating longest is closed to make room (AdmissionTable).
    public var maxAuthenticating: Int = 64
    /// Authenticated connections of one client id, so one client cannot hold every slot.
    public var maxConnectionsPerClient: Int = 256
    /// An authenticated connection with no request (and no reply drained) for this long is
    /// closed; nil: never.
    public var idleTimeout: TimeAmount? = .seconds(3600)
    /// TCP: a connection's replies not yet written to its socket. Over it, the connection's
    /// requests wait (none executes) until the replies drain below half of it.
    public var maxUnsentReplyBytes: Int = 16 * 1024 * 1024
    /// TCP: WRITE payloads of at least this many bytes are copied into the region piece by piece
    /// as they arrive, not gathered whole first (`--streamed-write-min`); nil: always gathered.
    public var minStreamedWritePayload: Int? = RequestStreamDecoder.minStreamedPayload
    public var maxHandlesPerConnection: Int = 4096
    public var store = StoreConfiguration()
    /// Threads that run PERSIST's msync off the event loops (`--persist-threads`). Concurrent syncs
    /// let ext4 batch journal commits (a C probe here: 64 threads msyncing 4 KiB each into their own
    /// files reached 22k ops/s, 16 threads 11k), but raising this from 8 to 64 did not change PMU's
    /// 16/64-client figures in a run on a loaded machine: the limit is elsewhere (to profile).
    public var blockingThreads: Int = 8
    /// A connection must finish HELLO/AUTHENTICATE within this, or it is closed (it holds a client slot).
    public var authenticationTimeout: TimeAmount = .seconds(10)
    /// Written with the bound address once the server accepts connections (for scripts and tests).
    public var readyFile: String?
    /// `--transport`: tcp, rdma (verbs) or auto (rdma when a device with an active port exists).
    public var transport: TransportChoice = .tcp
    /// `--rdma-poll`: how each verbs connection's completion thread waits (event, adaptive, busy).
    public var rdmaPolling: RDMAPolling = .default
    /// Write mirroring to a partner and takeover (`--partner`, `--mirror-client`, ...).
    public var pair = PairSettings()
    /// Every WRITE is made durable (msync of its range) before it is acknowledged: how a server
    /// serves a taken-over portion, whose partner is gone, keeping the one-machine-loss promise.
    public var durableWrites = false
    /// `--role` and the heartbeat, authority and address options (issue 13); nil: no failover.
    public var failover: FailoverConfiguration?
    /// Asked as each WRITE, PERSIST, CREATE, DELETE and FORM_* arrives (set from the failover
    /// controller): a refusal (NOT_PRIMARY, LEASE_LAPSED) answers it without touching anything. Carried into a taken-over
    /// portion's configuration, so the portion a monitor serves after a takeover is gated too.
    public var writeGate: (@Sendable () -> PMUError?)?
    /// The failover controller's status, shown by `pmuctl pair status` under "failover".
    public var failoverStatus: (@Sendable () -> FailoverController.Status)?
    /// `--metrics-listen`: where /metrics is served over HTTP for Prometheus; nil (the default): not served.
    public var metricsListen: Endpoint?
    /// Forming striped checkpoints for primaries (`--cluster-map`, `--max-forming-bytes`).
    public var forming = FormingSettings()
    /// Group commit for small PERSISTs (`--journal-max-persist`, `--journal-max`; WriteJournal).
    /// Not used on a paired owner (its mirror trims rely on region msyncs) nor for verbs sessions.
    public var journal = JournalConfiguration()

    public init() {}

    public var resolvedSecretsPath: String { secretsPath ?? dataDirectory + "/secrets" }

    var admissionLimits: AdmissionTable.Limits {
        AdmissionTable.Limits(maxClients: maxClients, maxAuthenticating: maxAuthenticating, maxConnectionsPerClient: maxConnectionsPerClient)
    }
}
