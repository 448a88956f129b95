import NIOCore

/// How a region's bytes are meant to be used. The server stores it and reports it; the layout of a
/// checkpoint region lives in the region's own bytes (docs/DATA_FILES.md) and is the client's.
public enum RegionKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case raw = 0
    case checkpointOverwrite = 1
    case checkpointAppend = 2
    /// A live-snapshot target (PMUSnapshot, docs/DATA_FILES.md): fenced by writer epoch like checkpoints.
    case snapshot = 3

    public var description: String {
        switch self {
        case .raw: "raw"
        case .checkpointOverwrite: "checkpoint-overwrite"
        case .checkpointAppend: "checkpoint-append"
        case .snapshot: "snapshot"
        }
    }
}

/// CREATE's arguments. Access lists name client ids; "*" means every authenticated client.
/// The creator always gets read and write and becomes the owner.
public struct CreateRegion: Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    public var kind: RegionKind
    public var readers: [String]
    public var writers: [String]

    public init(name: String, sizeBytes: UInt64, kind: RegionKind = .raw, readers: [String] = [], writers: [String] = []) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.kind = kind
        self.readers = readers
        self.writers = writers
    }
}

/// What the server answers to CREATE and OPEN: a key for this connection and the region's shape.
public struct RegionGrant: Sendable, Equatable {
    public var key: AccessKey
    public var regionId: UInt64
    public var sizeBytes: UInt64
    public var rights: Rights
    public var kind: RegionKind
    /// Writer epoch the grant was issued under (0 for read-only grants).
    public var epoch: UInt64

    public init(key: AccessKey, regionId: UInt64, sizeBytes: UInt64, rights: Rights, kind: RegionKind, epoch: UInt64) {
        self.key = key
        self.regionId = regionId
        self.sizeBytes = sizeBytes
        self.rights = rights
        self.kind = kind
        self.epoch = epoch
    }
}

/// What a client of the RDMA verbs transport needs to read and write a granted region with
/// one-sided operations: the registered memory's start and its remote key. Valid only on the
/// connection that received it, until CLOSE, DELETE, disconnect, or (read-write handles of
/// checkpoint regions) a newer writer's takeover.
public struct RemoteAccess: Sendable, Equatable, Hashable {
    /// Remote virtual address of region offset 0.
    public var address: UInt64
    public var rkey: UInt32

    public init(address: UInt64, rkey: UInt32) {
        self.address = address
        self.rkey = rkey
    }
}

/// A region as LIST and STAT describe it.
public struct RegionInfo: Sendable, Equatable {
    public var id: UInt64
    public var name: String
    public var sizeBytes: UInt64
    public var kind: RegionKind
    public var createdAtMilliseconds: UInt64
    /// Bumped on every metadata change (access list, writer epoch).
    public var generation: UInt64
    /// Epoch of the most recent writer (0 until a client opens the region for writing).
    public var writerEpoch: UInt64
    public var owner: String
    public var readers: [String]
    public var writers: [String]
    /// Grants currently held on the region, across all connections.
    public var openHandles: UInt32

    public init(
        id: UInt64, name: String, sizeBytes: UInt64, kind: RegionKind, createdAtMilliseconds: UInt64,
        generation: UInt64, writerEpoch: UInt64, owner: String, readers: [String], writers: [String],
        openHandles: UInt32
    ) {
        self.id = id
        self.name = name
        self.sizeBytes = sizeBytes
        self.kind = kind
        self.createdAtMilliseconds = createdAtMilliseconds
        self.generation = generation
        self.writerEpoch = writerEpoch
        self.owner = owner
        self.readers = readers
        self.writers = writers
        self.openHandles = openHandles
    }
}

/// Requests a client sends. Every one travels in a frame carrying a request id (docs/WIRE_PROTOCOL.md).
public enum Request: Sendable, Equatable {
    case hello(clientId: String, clientNonce: [UInt8])
    case authenticate(proof: [UInt8])
    case create(CreateRegion)
    case open(name: String, rights: Rights)
    /// OPEN_RESUME: take the writer role back after a reconnect, only if the region's writer epoch
    /// is still `epoch` (no other writer opened it since); the grant carries `epoch` + 1, which
    /// fences this writer's own older handles. FENCED if the epoch is newer, RESUME_REFUSED if it
    /// is older (not the store the writer wrote to). docs/ARCHITECTURE.md section 12a.
    /// `token` (optional, `Limits.resumeTokenBytes` random bytes, the same on every retry of one
    /// resume) makes the resume idempotent: when its reply was lost, the retry finds the epoch at
    /// `epoch` + 1 raised by this very resume (same token, same client, remembered by the server
    /// process) and is granted again at `epoch` + 1 instead of being told FENCED.
    case openResume(name: String, epoch: UInt64, token: [UInt8]?)
    case write(key: AccessKey, offset: UInt64, data: ByteBuffer)
    case read(key: AccessKey, offset: UInt64, length: UInt32)
    /// length 0 means "to the end of the region".
    case persist(key: AccessKey, offset: UInt64, length: UInt64)
    case close(key: AccessKey)
    case delete(name: String)
    /// Names sorted bytewise; the reply holds names strictly after `after`, at most `limit`.
    /// `wantsCursor` (bit 31 of the limit field on the wire) asks for the reply's `next_after`
    /// cursor, without which a page that examined only invisible names could not be stepped past.
    case list(after: String, limit: UInt32, wantsCursor: Bool)
    case stat(name: String)
    // Server to server and pair administration (docs/WIRE_PROTOCOL.md, section "Mirroring").
    /// An owner starts mirroring its portion (a stable id) to this server; `instance` is the
    /// owner process's random id, so a server configured as its own partner is told so.
    case mirrorOpen(portion: String, instance: [UInt8])
    /// One acknowledged-to-be write, to keep in the partner's mirror log for the portion.
    case mirrorAppend(MirrorAppend)
    /// Every mirrored write with a sequence up to `through` is durable on the owner.
    case mirrorTrim(through: UInt64)
    /// A catalog change (CREATE, DELETE, a writer-epoch raise) the owner committed, under the
    /// owner's mirror sequence, to keep in the partner's mirror log in order with the writes.
    case mirrorCatalog(sequence: UInt64, entry: CatalogEntry)
    /// DATA reply holding a JSON object (pmuctl pair status --json).
    case pairStatus
    /// Take over the partner's portion now: fence, replay, persist, serve. DATA reply with JSON.
    case pairTakeover
    /// Give the taken-over portion back to its recovered owner: stop serving it, persist it,
    /// release it, clear the takeover. DATA reply with JSON.
    case pairGiveback
    /// A monitor copying the primary's portion (issue 13's shared-nothing replica): the catalog,
    /// every region with its id and metadata and no access filter, names strictly after `after`,
    /// at most `limit`. LIST reply. Only the pair's client may ask.
    case replicaCatalog(after: String, limit: UInt32)
    /// The replica copy's bytes: `length` bytes of region `regionId` at `offset`. DATA reply.
    case replicaRead(regionId: UInt64, offset: UInt64, length: UInt32)
    /// The server's INFO (pmuctl stats): DATA reply holding a JSON object. Admins only.
    case serverInfo
    // Server-side forming of a striped checkpoint (docs/WIRE_PROTOCOL.md, "Forming").
    /// Start an upload of one whole checkpoint of set `set` to this server (replaces the
    /// connection's unfinished one): `length` payload bytes whose CRC32C is `crc`.
    case formBegin(set: String, length: UInt64, crc: UInt32)
    /// The next bytes of the upload; `offset` must be the number of bytes sent so far.
    case formData(offset: UInt64, data: ByteBuffer)
    /// Form the pieces, store them on every server of the set, commit; DATA reply (16 bytes:
    /// sequence, piece bytes written) once the checkpoint is complete on every server.
    case formCommit
    /// Online rebuild through the forming server, the set's long-running primary there: empty
    /// server `server` rejoins set `set` and gets its missing pieces while checkpoints go on.
    /// DATA reply holding a JSON object (the rebuild report).
    case formRebuild(set: String, server: String)

    public var opcode: Opcode {
        switch self {
        case .hello: .hello
        case .authenticate: .authenticate
        case .create: .create
        case .open: .open
        case .openResume: .openResume
        case .write: .write
        case .read: .read
        case .persist: .persist
        case .close: .close
        case .delete: .delete
        case .list: .list
        case .stat: .stat
        case .mirrorOpen: .mirrorOpen
        case .mirrorAppend: .mirrorAppend
        case .mirrorTrim: .mirrorTrim
        case .mirrorCatalog: .mirrorCatalog
        case .pairStatus: .pairStatus
        case .pairTakeover: .pairTakeover
        case .pairGiveback: .pairGiveback
        case .replicaCatalog: .replicaCatalog
        case .replicaRead: .replicaRead
        case .serverInfo: .serverInfo
        case .formBegin: .formBegin
        case .formData: .formData
        case .formCommit: .formCommit
        case .formRebuild: .formRebuild
        }
    }
}

/// MIRROR_APPEND's fields: a write the owner applied to region `regionId` of its portion.
public struct MirrorAppend: Sendable, Equatable {
    /// The owner's mirror sequence: writes to overlapping bytes are ordered by it at replay.
    public var sequence: UInt64
    public var regionId: UInt64
    public var epoch: UInt64
    public var offset: UInt64
    public var data: ByteBuffer

    public init(sequence: UInt64, regionId: UInt64, epoch: UInt64, offset: UInt64, data: ByteBuffer) {
        self.sequence = sequence
        self.regionId = regionId
        self.epoch = epoch
        self.offset = offset
        self.data = data
    }
}

/// Replies the server sends, each in a frame carrying the request's id.
public enum Response: Sendable, Equatable {
    case ok
    case challenge(serverNonce: [UInt8])
    case authenticated(serverProof: [UInt8])
    case grant(RegionGrant)
    /// GRANT_RDMA: a grant plus the region's remote access, sent instead of GRANT on verbs
    /// connections only (TCP stays byte-identical).
    case remoteGrant(RegionGrant, RemoteAccess)
    case data(ByteBuffer)
    case info(RegionInfo)
    /// `cursor`: the last name the server examined, to send as the next `after` (present when the
    /// request asked for it).
    case list(entries: [RegionInfo], more: Bool, cursor: String?)
    case error(PMUError)

    public var opcode: Opcode {
        switch self {
        case .ok: .ok
        case .challenge: .challenge
        case .authenticated: .authenticated
        case .grant: .grant
        case .remoteGrant: .remoteGrant
        case .data: .data
        case .info: .info
        case .list: .listReply
        case .error: .error
        }
    }
}

/// Opcodes: requests below 0x80, replies from 0x80. Part of the wire protocol; never renumber.
public enum Opcode: UInt8, Sendable {
    case hello = 0x01
    case authenticate = 0x02
    case create = 0x10
    case open = 0x11
    case write = 0x12
    case read = 0x13
    case persist = 0x14
    case close = 0x15
    case delete = 0x16
    case list = 0x17
    case stat = 0x18
    case mirrorOpen = 0x20
    case mirrorAppend = 0x21
    case mirrorTrim = 0x22
    case pairStatus = 0x23
    case pairTakeover = 0x24
    case pairGiveback = 0x25
    case openResume = 0x26
    case replicaCatalog = 0x28
    case replicaRead = 0x29
    case mirrorCatalog = 0x2A
    case serverInfo = 0x30
    case formBegin = 0x34
    case formData = 0x35
    case formCommit = 0x36
    case formRebuild = 0x37

    case ok = 0x80
    case challenge = 0x81
    case authenticated = 0x82
    case grant = 0x83
    case data = 0x84
    case info = 0x85
    case listReply = 0x86
    case remoteGrant = 0x87
    case error = 0xFF
}
