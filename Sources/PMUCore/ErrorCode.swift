/// Every failure PMU reports, on the wire and in the client library, carries one of these codes.
///
/// The raw values are part of the wire protocol (docs/WIRE_PROTOCOL.md): never renumber, only add.
public enum PMUErrorCode: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case malformedFrame = 1
    case frameTooLarge = 2
    case unsupportedVersion = 3
    case notAuthenticated = 4
    case authenticationFailed = 5
    case unknownRegion = 6
    case regionExists = 7
    case invalidName = 8
    case invalidSize = 9
    case noSpace = 10
    case outOfBounds = 11
    case invalidKey = 12
    case permissionDenied = 13
    case accessDenied = 14
    case tooManyClients = 15
    case tooManyHandles = 16
    case tooManyRegions = 17
    case ioError = 18
    case internalError = 19
    case fenced = 20
    case shuttingDown = 21
    case protocolViolation = 22
    case requestTooLarge = 23
    case invalidArgument = 24
    case connectionClosed = 25
    case regionFull = 26
    case checkpointTooLarge = 27
    case notCheckpointRegion = 28
    case unknownSequence = 29
    case damaged = 30
    /// A one-sided RDMA operation completed with a remote access error: the key was closed,
    /// its region deleted, its writer fenced, or it belongs to another connection. The verbs
    /// connection is dead afterwards (both queue pairs in error).
    case remoteAccess = 31
    /// The RDMA verbs layer failed: no device, port not active, memory registration refused
    /// (locked-memory limit), a work completion in error. The message names the call and a fix.
    case rdmaError = 32
    /// An append-only log (a partner's mirror log) reached its byte bound: nothing was appended.
    /// The writer retries after the log is trimmed (for a mirror log: after a PERSIST on the owner).
    case logFull = 36
    // 40...: raised by the client library's cluster layer, never sent by a server.
    /// Too many servers or subsegments lost: a striped or mirrored checkpoint cannot be reassembled.
    case unrecoverable = 40
    /// A server of the cluster map could not be reached or used (the message names it).
    case serverUnavailable = 41
    // Raised by the client library's transports, never sent by a server.
    /// No reply within `ClientConfiguration.requestTimeout` (or no connection within
    /// `connectTimeout`): the outcome is unknown and the connection is closed.
    case timedOut = 42
    /// The calling task was cancelled while its request was pending; the connection stays usable.
    case cancelled = 43
    /// A live-snapshot call named a region that is not a snapshot target (or not formatted as one).
    case notSnapshotRegion = 48
    // 49-51: a checkpoint writer resuming after a failover (docs/ARCHITECTURE.md section 12a).
    /// OPEN_RESUME found the region's writer epoch older than the resuming writer's: this server
    /// does not hold the catalog the writer wrote through (another store, or an update was lost).
    /// Sent by a server; the client library also raises it when the region holds checkpoints the
    /// writer never wrote. The writer stops; open a new primary once the state is understood.
    case resumeRefused = 49
    /// A resuming checkpoint writer's last acknowledged checkpoint is not in the region on the
    /// server it reconnected to: an acknowledged checkpoint was lost. Raised by the client
    /// library, never sent by a server. The writer stops and does not write over the evidence.
    case checkpointLost = 50
    // 52-57: failover (issue 13).
    /// This server is not the pair's serving primary (a monitor, or a primary fenced by a newer
    /// owner at the authority): write to the service address, which the serving primary holds.
    case notPrimary = 52
    /// The primary's member lease at the authority is about to lapse (etcd unreachable from it):
    /// writes are refused until it is renewed, so that a monitor may take over without a split brain.
    case leaseLapsed = 53
    // 54-57: the failover replica (issue 13).
    /// A monitor's copy of the primary's portion is not complete (the first full copy has not
    /// finished since the primary attached): it does not take over, since serving would lose
    /// what it has not copied.
    case replicaNotReady = 54
    // 58-60: verbs (issue 17).
    /// Opening a region would take the server's shmem shadows (region memory registered for RDMA
    /// on a disk filesystem) past `--rdma-shadow-memory`: nothing was mapped, the region is intact.
    case shadowMemoryFull = 58
    // 61-63: server-side forming of striped checkpoints (docs/CLUSTER.md section 7b).
    /// A FORM_BEGIN asked a pmu-server to hold more checkpoint bytes than its `--max-forming-bytes`
    /// allows (in all, or beside the formings already in progress): nothing was kept.
    case formingLimit = 61
    /// This pmu-server does not form checkpoints for primaries (no `--cluster-map`), or the
    /// connection has no upload in progress for FORM_DATA / FORM_COMMIT.
    case formingUnavailable = 62

    /// A stable, grep-able name for logs and pmuctl's one-line errors.
    public var description: String {
        switch self {
        case .malformedFrame: "MALFORMED_FRAME"
        case .frameTooLarge: "FRAME_TOO_LARGE"
        case .unsupportedVersion: "UNSUPPORTED_VERSION"
        case .notAuthenticated: "NOT_AUTHENTICATED"
        case .authenticationFailed: "AUTHENTICATION_FAILED"
        case .unknownRegion: "UNKNOWN_REGION"
        case .regionExists: "REGION_EXISTS"
        case .invalidName: "INVALID_NAME"
        case .invalidSize: "INVALID_SIZE"
        case .noSpace: "NO_SPACE"
        case .outOfBounds: "OUT_OF_BOUNDS"
        case .invalidKey: "INVALID_KEY"
        case .permissionDenied: "PERMISSION_DENIED"
        case .accessDenied: "ACCESS_DENIED"
        case .tooManyClients: "TOO_MANY_CLIENTS"
        case .tooManyHandles: "TOO_MANY_HANDLES"
        case .tooManyRegions: "TOO_MANY_REGIONS"
        case .ioError: "IO_ERROR"
        case .internalError: "INTERNAL_ERROR"
        case .fenced: "FENCED"
        case .shuttingDown: "SHUTTING_DOWN"
        case .protocolViolation: "PROTOCOL_VIOLATION"
        case .requestTooLarge: "REQUEST_TOO_LARGE"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .connectionClosed: "CONNECTION_CLOSED"
        case .regionFull: "REGION_FULL"
        case .checkpointTooLarge: "CHECKPOINT_TOO_LARGE"
        case .notCheckpointRegion: "NOT_CHECKPOINT_REGION"
        case .unknownSequence: "UNKNOWN_SEQUENCE"
        case .damaged: "DAMAGED"
        case .remoteAccess: "REMOTE_ACCESS"
        case .rdmaError: "RDMA_ERROR"
        case .logFull: "LOG_FULL"
        case .unrecoverable: "UNRECOVERABLE"
        case .serverUnavailable: "SERVER_UNAVAILABLE"
        case .timedOut: "TIMED_OUT"
        case .cancelled: "CANCELLED"
        case .notSnapshotRegion: "NOT_SNAPSHOT_REGION"
        case .resumeRefused: "RESUME_REFUSED"
        case .checkpointLost: "CHECKPOINT_LOST"
        case .notPrimary: "NOT_PRIMARY"
        case .leaseLapsed: "LEASE_LAPSED"
        case .replicaNotReady: "REPLICA_NOT_READY"
        case .formingLimit: "FORMING_LIMIT"
        case .formingUnavailable: "FORMING_UNAVAILABLE"
        case .shadowMemoryFull: "SHADOW_MEMORY_FULL"
        }
    }
}

/// An error with a code a program can branch on and a message a person can act on.
public struct PMUError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: PMUErrorCode
    public var message: String

    public init(_ code: PMUErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code) (\(code.rawValue)): \(message)" }
}
