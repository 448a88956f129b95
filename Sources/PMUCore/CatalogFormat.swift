import NIOCore

/// A region's metadata as the catalog stores it (docs/DATA_FILES.md).
public struct RegionRecord: Sendable, Equatable {
    public var id: UInt64
    public var name: String
    public var sizeBytes: UInt64
    public var kind: RegionKind
    public var createdAtMilliseconds: UInt64
    public var generation: UInt64
    public var writerEpoch: UInt64
    public var owner: String
    public var readers: [String]
    public var writers: [String]

    public init(
        id: UInt64, name: String, sizeBytes: UInt64, kind: RegionKind, createdAtMilliseconds: UInt64,
        generation: UInt64 = 1, writerEpoch: UInt64 = 0, owner: String, readers: [String], writers: [String]
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
    }

    public func info(openHandles: Int) -> RegionInfo {
        RegionInfo(
            id: id, name: name, sizeBytes: sizeBytes, kind: kind, createdAtMilliseconds: createdAtMilliseconds,
            generation: generation, writerEpoch: writerEpoch, owner: owner, readers: readers, writers: writers,
            openHandles: UInt32(clamping: openHandles))
    }
}

/// One entry of the append-only catalog log.
public enum CatalogEntry: Sendable, Equatable {
    /// The region exists with this metadata (create, or any later change: same id replaces).
    case put(RegionRecord)
    /// The region with this id no longer exists.
    case delete(id: UInt64)
    /// Region ids below this were used once and are never handed out again (written by compaction,
    /// which drops delete entries).
    case nextId(UInt64)
}

/// The catalog's record framing:
///
///     u32 magic  "PMUC" (0x43554D50 little-endian)
///     u32 body_length
///     u32 crc32c(body)
///     body: u64 sequence | u8 kind | payload
///
/// A record takes effect only once it is whole and its checksum matches; the store appends one
/// record and fdatasyncs before it acts on it, so at most the last record can be torn by a crash.
public enum CatalogFormat {
    public static let magic: UInt32 = 0x4355_4D50
    public static let headerBytes = 12
    /// Far above any real record (names and lists are bounded), far below "read garbage as a length".
    public static let maxBodyBytes: UInt32 = 64 * 1024
    /// Sequences, region ids, generations and writer epochs above this are refused as damage.
    /// Each grows by one per operation, so no real catalog gets near it (2^62 operations), and the
    /// store's `+ 1` on a value read from the catalog can never overflow.
    public static let maxCounter: UInt64 = 1 << 62

    public static func encode(_ entry: CatalogEntry, sequence: UInt64) -> [UInt8] {
        var body = ByteBuffer()
        body.writeLE(sequence)
        switch entry {
        case .put(let record):
            body.writeLE(UInt8(1))
            body.writeLE(record.id)
            body.writeWireString(record.name, maxBytes: Limits.maxNameBytes)
            body.writeLE(record.sizeBytes)
            body.writeLE(record.kind.rawValue)
            body.writeLE(record.createdAtMilliseconds)
            body.writeLE(record.generation)
            body.writeLE(record.writerEpoch)
            body.writeWireString(record.owner, maxBytes: Limits.maxClientIdBytes)
            body.writeWireStrings(record.readers, maxBytes: Limits.maxClientIdBytes)
            body.writeWireStrings(record.writers, maxBytes: Limits.maxClientIdBytes)
        case .delete(let id):
            body.writeLE(UInt8(2))
            body.writeLE(id)
        case .nextId(let id):
            body.writeLE(UInt8(3))
            body.writeLE(id)
        }
        let bodyBytes = body.readableBytesView
        var out = ByteBuffer()
        out.writeLE(magic)
        out.writeLE(UInt32(bodyBytes.count))
        out.writeLE(CRC32C.checksum(bodyBytes))
        out.writeBytes(bodyBytes)
        return Array(out.readableBytesView)
    }

    public struct Scan: Sendable, Equatable {
        public var entries: [(sequence: UInt64, entry: CatalogEntry)]
        /// Bytes from the start that hold whole, valid records.
        public var validBytes: Int
        public var tail: Tail

        public static func == (a: Scan, b: Scan) -> Bool {
            a.validBytes == b.validBytes && a.tail == b.tail && a.entries.count == b.entries.count
                && zip(a.entries, b.entries).allSatisfy { $0.sequence == $1.sequence && $0.entry == $1.entry }
        }
    }

    public enum Tail: Sendable, Equatable {
        /// The log ends on a record boundary.
        case clean
        /// The bytes after `validBytes` are a partial or damaged last record: a crash mid-append.
        case torn(bytes: Int)
        /// A damaged record is followed by a valid one: not a crash artefact but corruption. The
        /// store refuses to start rather than drop committed metadata.
        case corrupt(atOffset: Int, reason: String)
    }

    public static func scan(_ bytes: [UInt8]) -> Scan {
        var entries: [(UInt64, CatalogEntry)] = []
        var offset = 0
        var lastSequence: UInt64 = 0
        while offset < bytes.count {
            switch record(in: bytes, at: offset) {
            case .success(let (sequence, entry, length)):
                if sequence <= lastSequence && !entries.isEmpty {
                    return Scan(entries: entries, validBytes: offset, tail: .corrupt(atOffset: offset, reason: "sequence \(sequence) does not follow \(lastSequence)"))
                }
                lastSequence = sequence
                entries.append((sequence, entry))
                offset += length
            case .failure(let reason):
                // Torn tail, unless some later offset still holds a valid record.
                var probe = offset + 1
                while probe + headerBytes <= bytes.count {
                    if case .success = record(in: bytes, at: probe) {
                        return Scan(entries: entries, validBytes: offset, tail: .corrupt(atOffset: offset, reason: reason))
                    }
                    probe += 1
                }
                return Scan(entries: entries, validBytes: offset, tail: .torn(bytes: bytes.count - offset))
            }
        }
        return Scan(entries: entries, validBytes: offset, tail: .clean)
    }

    /// Exactly one whole record, nothing after it (the payload of a mirror log's catalog record,
    /// and of MIRROR_CATALOG): every byte may be hostile. Throws DAMAGED naming what is wrong.
    public static func decodeOne(_ bytes: [UInt8]) throws(PMUError) -> (sequence: UInt64, entry: CatalogEntry) {
        switch record(in: bytes, at: 0) {
        case .success(let (sequence, entry, length)):
            guard length == bytes.count else {
                throw PMUError(.damaged, "catalog record of \(length) bytes is followed by \(bytes.count - length) more; one record was expected")
            }
            return (sequence, entry)
        case .failure(let reason):
            throw PMUError(.damaged, "catalog record: \(reason)")
        }
    }

    private enum RecordResult {
        case success((UInt64, CatalogEntry, Int))
        case failure(String)
    }

    private static func record(in bytes: [UInt8], at offset: Int) -> RecordResult {
        guard bytes.count - offset >= headerBytes else { return .failure("partial record header") }
        // Read straight from the array: after damage, scan probes every later offset with this,
        // and a buffer allocated per probe made that the cost of recovery (and of fuzzing).
        func le32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        let recordMagic = le32(offset)
        let length = le32(offset + 4)
        let crc = le32(offset + 8)
        guard recordMagic == magic else { return .failure("bad record magic") }
        guard length >= 9, length <= maxBodyBytes else { return .failure("implausible record length \(length)") }
        let end = offset + headerBytes + Int(length)
        guard end <= bytes.count else { return .failure("partial record body") }
        let bodySlice = bytes[(offset + headerBytes)..<end]
        guard CRC32C.checksum(bodySlice) == crc else { return .failure("record checksum mismatch") }
        var body = ByteBuffer(bytes: bodySlice)
        do {
            let sequence = try body.readLE(UInt64.self, "sequence")
            guard sequence <= maxCounter else { return .failure("implausible sequence \(sequence) (above \(maxCounter))") }
            let kind = try body.readLE(UInt8.self, "kind")
            let entry: CatalogEntry
            switch kind {
            case 1:
                let id = try body.readLE(UInt64.self, "id")
                let name = try body.readWireString("name", maxBytes: Limits.maxNameBytes)
                let size = try body.readLE(UInt64.self, "size")
                guard let regionKind = RegionKind(rawValue: try body.readLE(UInt8.self, "kind")) else {
                    return .failure("unknown region kind")
                }
                let created = try body.readLE(UInt64.self, "created")
                let generation = try body.readLE(UInt64.self, "generation")
                let epoch = try body.readLE(UInt64.self, "writer_epoch")
                let owner = try body.readWireString("owner", maxBytes: Limits.maxClientIdBytes)
                let readers = try body.readWireStrings("readers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
                let writers = try body.readWireStrings("writers", maxCount: Limits.maxAccessListEntries, maxBytes: Limits.maxClientIdBytes)
                for (field, value) in [("id", id), ("generation", generation), ("writer_epoch", epoch)] where value > maxCounter {
                    return .failure("implausible \(field) \(value) (above \(maxCounter))")
                }
                guard id > 0 else { return .failure("region id 0") }
                entry = .put(RegionRecord(
                    id: id, name: name, sizeBytes: size, kind: regionKind, createdAtMilliseconds: created,
                    generation: generation, writerEpoch: epoch, owner: owner, readers: readers, writers: writers))
            case 2:
                let id = try body.readLE(UInt64.self, "id")
                guard id <= maxCounter else { return .failure("implausible id \(id) (above \(maxCounter))") }
                entry = .delete(id: id)
            case 3:
                let id = try body.readLE(UInt64.self, "next_id")
                guard id <= maxCounter else { return .failure("implausible next_id \(id) (above \(maxCounter))") }
                entry = .nextId(id)
            default:
                return .failure("unknown record kind \(kind)")
            }
            guard body.readableBytes == 0 else { return .failure("trailing bytes in record") }
            return .success((sequence, entry, headerBytes + Int(length)))
        } catch {
            return .failure(error.message)
        }
    }
}

/// The catalog's meaning: the live regions after replaying entries in order. Pure, so recovery's
/// decisions are tested without files.
public struct CatalogState: Sendable, Equatable {
    public private(set) var regions: [UInt64: RegionRecord] = [:]
    public private(set) var idsByName: [String: UInt64] = [:]
    public private(set) var nextId: UInt64 = 1
    public private(set) var lastSequence: UInt64 = 0

    public init() {}

    public init(replaying entries: [(sequence: UInt64, entry: CatalogEntry)]) {
        for (sequence, entry) in entries { apply(entry, sequence: sequence) }
    }

    public mutating func apply(_ entry: CatalogEntry, sequence: UInt64) {
        lastSequence = max(lastSequence, sequence)
        switch entry {
        case .put(let record):
            if let previous = regions[record.id], previous.name != record.name { idsByName[previous.name] = nil }
            regions[record.id] = record
            idsByName[record.name] = record.id
            nextId = max(nextId, record.id + 1)
        case .delete(let id):
            if let previous = regions.removeValue(forKey: id) { idsByName[previous.name] = nil }
            nextId = max(nextId, id + 1)
        case .nextId(let id):
            nextId = max(nextId, id)
        }
    }

    /// After compaction rewrote the log as `count` records numbered 1...count, appends continue
    /// from there. Only the numbering changes: the regions and `nextId` (which a create may have
    /// raised while the compaction ran) stay.
    public mutating func restartSequences(at count: UInt64) {
        lastSequence = count
    }

    public func region(named name: String) -> RegionRecord? {
        idsByName[name].flatMap { regions[$0] }
    }

    /// Entries that rebuild this state from nothing, for compaction.
    public func snapshotEntries() -> [CatalogEntry] {
        [.nextId(nextId)] + regions.keys.sorted().map { .put(regions[$0]!) }
    }
}
