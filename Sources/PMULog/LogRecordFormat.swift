import PMUCore

/// One record of an append-only PMU log: a write of `payload` at `offset` of region `regionId`
/// under writer epoch `epoch` (docs/DATA_FILES.md, "The append-only log").
///
/// Two numbers order records, for two different reasons:
/// - `sequence` is the log's own: assigned by `AppendLog`, contiguous from the first record ever
///   appended, so a scan can tell a missing or replayed-out-of-place record from a valid one.
/// - `origin` is the writer's ordering key: the owner's mirror sequence in a partner's mirror
///   log, or the journal's own sequence. Trimming and replay go by it, because records of
///   concurrent writers may reach a log slightly out of the writer's order.
public struct LogRecord: Sendable, Equatable {
    public var kind: UInt16
    public var sequence: UInt64
    public var origin: UInt64
    public var regionId: UInt64
    public var epoch: UInt64
    public var offset: UInt64
    public var payload: [UInt8]

    public init(kind: UInt16 = LogRecordFormat.kindWrite, sequence: UInt64, origin: UInt64, regionId: UInt64, epoch: UInt64, offset: UInt64, payload: [UInt8]) {
        self.kind = kind
        self.sequence = sequence
        self.origin = origin
        self.regionId = regionId
        self.epoch = epoch
        self.offset = offset
        self.payload = payload
    }
}

/// The record format, pure (no I/O). Little-endian, 56-byte header then the payload:
///
///     0  u32 magic "PMUL" (0x4C554D50)
///     4  u16 version (1: kind 1 only; 2: kind 1 or 2)
///     6  u16 kind (1 = write; 2 = catalog change)
///     8  u64 sequence (the log's)
///     16 u64 origin (the writer's ordering key)
///     24 u64 region id
///     32 u64 writer epoch
///     40 u64 offset in the region
///     48 u32 payload length
///     52 u32 crc32c(header bytes 0..<52, then the payload)
///
/// The checksum covers the header as well as the payload, so a flipped length, offset or region
/// id is caught, not only a flipped data byte.
///
/// Kind 2 (a catalog change of a mirrored owner: CREATE, DELETE, a writer-epoch raise, docs/
/// DATA_FILES.md) is written as version 2, so that a build that knows only writes refuses the
/// record as damage instead of replaying its payload as bytes of a region. Writes stay version 1,
/// byte for byte what earlier builds wrote and read. A catalog record's payload is one catalog
/// record (CatalogFormat), its region id the region's, offset 0.
public enum LogRecordFormat {
    public static let magic: UInt32 = 0x4C55_4D50
    /// The version of write records (unchanged since the first format).
    public static let version: UInt16 = 1
    /// The version that introduced kind 2; it may carry either kind.
    public static let versionCatalog: UInt16 = 2
    public static let kindWrite: UInt16 = 1
    public static let kindCatalog: UInt16 = 2

    /// The version a record of `kind` is written with: the oldest that can carry it.
    public static func version(forKind kind: UInt16) -> UInt16 { kind == kindWrite ? version : versionCatalog }
    public static let headerBytes = 56
    /// Payloads above this are refused by the encoder's callers and read as damage by the decoder:
    /// a garbage length can never make a reader allocate more than one WRITE's worth.
    public static let defaultMaxPayloadBytes = Limits.maxIOBytes

    public static func encodedBytes(payloadBytes: Int) -> Int { headerBytes + payloadBytes }

    /// The encoded record. `payload.count` must fit a u32 (callers bound it far lower).
    public static func encode(_ record: LogRecord) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerBytes + record.payload.count)
        appendHeader(record, payloadBytes: record.payload.count, into: &out)
        let crc = record.payload.withUnsafeBytes { payload in
            out.withUnsafeBytes { CRC32C.checksum(payload, continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<52]))) }
        }
        put(crc, into: &out)
        out.append(contentsOf: record.payload)
        return out
    }

    private static func appendHeader(_ record: LogRecord, payloadBytes: Int, into out: inout [UInt8]) {
        precondition(payloadBytes <= Int(UInt32.max), "log payload larger than a u32")
        precondition(record.kind == kindWrite || record.kind == kindCatalog, "log record kind \(record.kind) is not one this build writes")
        put(magic, into: &out)
        put(version(forKind: record.kind), into: &out)
        put(record.kind, into: &out)
        put(record.sequence, into: &out)
        put(record.origin, into: &out)
        put(record.regionId, into: &out)
        put(record.epoch, into: &out)
        put(record.offset, into: &out)
        put(UInt32(payloadBytes), into: &out)
    }

    private static func put<T: FixedWidthInteger>(_ value: T, into out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }

    /// What `decode` found at the start of the bytes it was given.
    public enum Decoded: Sendable, Equatable {
        /// A whole, valid record and the bytes it occupies.
        case record(LogRecord, bytes: Int)
        /// No record starts here: the bytes are empty or a header's worth of zeros (the unwritten,
        /// preallocated rest of a segment).
        case end
    }

    /// Decodes the record at the start of `bytes`, every byte of which may be hostile. Throws
    /// DAMAGED naming what is wrong (torn, bad magic, version, length, checksum, arithmetic).
    /// Never traps and never allocates more than `maxPayloadBytes`. The fuzzing entry point.
    public static func decode(_ bytes: UnsafeRawBufferPointer, maxPayloadBytes: Int = defaultMaxPayloadBytes) throws(PMUError) -> Decoded {
        if bytes.isEmpty { return .end }
        guard bytes.count >= headerBytes else {
            if bytes.allSatisfy({ $0 == 0 }) { return .end }
            throw PMUError(.damaged, "log record torn: \(bytes.count) bytes left, a header needs \(headerBytes)")
        }
        let header = UnsafeRawBufferPointer(rebasing: bytes[0..<headerBytes])
        if header.allSatisfy({ $0 == 0 }) { return .end }
        let foundMagic = read(UInt32.self, header, 0)
        guard foundMagic == magic else {
            throw PMUError(.damaged, "log record has bad magic 0x\(String(foundMagic, radix: 16)) (expected 0x\(String(magic, radix: 16)))")
        }
        let foundVersion = read(UInt16.self, header, 4)
        guard foundVersion == version || foundVersion == versionCatalog else {
            throw PMUError(.damaged, "log record has version \(foundVersion); this build reads versions \(version) and \(versionCatalog)")
        }
        let foundKind = read(UInt16.self, header, 6)
        guard foundKind == kindWrite || (foundKind == kindCatalog && foundVersion == versionCatalog) else {
            throw PMUError(.damaged, "log record of version \(foundVersion) has kind \(foundKind); version \(version) carries kind \(kindWrite) (write), version \(versionCatalog) kinds \(kindWrite) and \(kindCatalog) (catalog change)")
        }
        let length = read(UInt32.self, header, 48)
        guard Int(length) <= maxPayloadBytes else {
            throw PMUError(.damaged, "log record claims a payload of \(length) bytes; the limit is \(maxPayloadBytes)")
        }
        let offset = read(UInt64.self, header, 40)
        guard !offset.addingReportingOverflow(UInt64(length)).overflow else {
            throw PMUError(.damaged, "log record's offset \(offset) plus length \(length) overflows")
        }
        let (total, overflow) = headerBytes.addingReportingOverflow(Int(length))
        guard !overflow, total <= bytes.count else {
            throw PMUError(.damaged, "log record torn: its payload of \(length) bytes runs past the end (\(bytes.count - headerBytes) bytes left)")
        }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[headerBytes..<total])
        let expected = read(UInt32.self, header, 52)
        let actual = CRC32C.checksum(payload, continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: header[0..<52])))
        guard actual == expected else {
            throw PMUError(.damaged, "log record checksum mismatch (stored 0x\(String(expected, radix: 16)), computed 0x\(String(actual, radix: 16)))")
        }
        let record = LogRecord(
            kind: foundKind, sequence: read(UInt64.self, header, 8), origin: read(UInt64.self, header, 16),
            regionId: read(UInt64.self, header, 24), epoch: read(UInt64.self, header, 32), offset: offset, payload: Array(payload))
        return .record(record, bytes: total)
    }

    public static func decode(_ bytes: [UInt8], maxPayloadBytes: Int = defaultMaxPayloadBytes) throws(PMUError) -> Decoded {
        let result: Result<Decoded, PMUError> = bytes.withUnsafeBytes { raw in
            do throws(PMUError) { return .success(try decode(raw, maxPayloadBytes: maxPayloadBytes)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private static func read<T: FixedWidthInteger>(_: T.Type, _ bytes: UnsafeRawBufferPointer, _ at: Int) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: T.self))
    }

    /// How a scan of a run of records ended.
    public enum Stop: Sendable, Equatable {
        /// At the end of the bytes, or at zeros (unwritten space).
        case clean
        /// At a record that is damaged with nothing valid after it: what a crash during an
        /// append leaves. The bytes from `atOffset` on can be discarded.
        case torn(atOffset: Int, reason: String)
        /// At a damaged record followed by a valid one, or a record out of sequence: corruption,
        /// not a crash. The reader must not silently drop what follows.
        case corrupt(atOffset: Int, reason: String)
    }

    public struct Scan: Sendable, Equatable {
        public var records: [LogRecord]
        /// Bytes from the start that hold whole, valid records.
        public var validBytes: Int
        public var stop: Stop
    }

    /// Every valid record from the start of `bytes`, stopping at the first torn or corrupt one.
    /// `firstSequence`, when given, is the sequence the first record must carry; each following
    /// record must carry the next.
    public static func scan(_ bytes: UnsafeRawBufferPointer, firstSequence: UInt64? = nil, maxPayloadBytes: Int = defaultMaxPayloadBytes) -> Scan {
        var records: [LogRecord] = []
        var offset = 0
        var expected = firstSequence
        while offset < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            do throws(PMUError) {
                switch try decode(rest, maxPayloadBytes: maxPayloadBytes) {
                case .end:
                    // Unwritten space must be zeros to the end; anything else is damage.
                    if let garbage = rest.firstIndex(where: { $0 != 0 }) {
                        let reason = "non-zero bytes at \(offset + garbage) after the last record"
                        return Scan(records: records, validBytes: offset, stop: laterRecordExists(bytes, after: offset, maxPayloadBytes) ? .corrupt(atOffset: offset, reason: reason) : .torn(atOffset: offset, reason: reason))
                    }
                    return Scan(records: records, validBytes: offset, stop: .clean)
                case .record(let record, let length):
                    if let expected, record.sequence != expected {
                        return Scan(records: records, validBytes: offset, stop: .corrupt(atOffset: offset, reason: "record has sequence \(record.sequence), expected \(expected)"))
                    }
                    let (next, overflow) = record.sequence.addingReportingOverflow(1)
                    if overflow {
                        return Scan(records: records, validBytes: offset, stop: .corrupt(atOffset: offset, reason: "record sequence \(record.sequence) cannot be followed"))
                    }
                    expected = next
                    records.append(record)
                    offset += length
                }
            } catch {
                let stop: Stop = laterRecordExists(bytes, after: offset, maxPayloadBytes)
                    ? .corrupt(atOffset: offset, reason: error.message) : .torn(atOffset: offset, reason: error.message)
                return Scan(records: records, validBytes: offset, stop: stop)
            }
        }
        return Scan(records: records, validBytes: offset, stop: .clean)
    }

    public static func scan(_ bytes: [UInt8], firstSequence: UInt64? = nil, maxPayloadBytes: Int = defaultMaxPayloadBytes) -> Scan {
        bytes.withUnsafeBytes { scan($0, firstSequence: firstSequence, maxPayloadBytes: maxPayloadBytes) }
    }

    /// Whether a valid record starts anywhere after `offset`: tells corruption (valid data would
    /// be lost) from a torn tail. Only offsets whose first four bytes are the magic are decoded.
    private static func laterRecordExists(_ bytes: UnsafeRawBufferPointer, after offset: Int, _ maxPayloadBytes: Int) -> Bool {
        var probe = offset + 1
        while probe + headerBytes <= bytes.count {
            if read(UInt32.self, bytes, probe) == magic,
                case .record? = try? decode(UnsafeRawBufferPointer(rebasing: bytes[probe...]), maxPayloadBytes: maxPayloadBytes) {
                return true
            }
            probe += 1
        }
        return false
    }
}
