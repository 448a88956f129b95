import NIOCore
import PMUCheckpoint
import PMUCore
import PMUFailover
import PMULog
import PMUStripe

/// Small valid encodings of each format, the fuzzer's starting points. Generated from the
/// encoders, so `pmu-fuzz --write-seeds Fuzz/corpus` rewrites them after a format change and
/// `SeedCorpusTests` fails when the committed files drift from what the encoders produce.
public enum SeedCorpus {
    /// Each seed twice: with the mode byte that fixes checksums (0) and the one that does not (1);
    /// the encodings are valid, so both decode the same.
    public static func seeds(_ target: FuzzTarget) -> [(name: String, bytes: [UInt8])] {
        let encodings: [(name: String, bytes: [UInt8])]
        switch target {
        case .checkpoint: encodings = checkpoint()
        case .stripe: encodings = stripe()
        case .catalog: encodings = catalog()
        case .log: encodings = log()
        case .heartbeat: encodings = heartbeat()
        case .request: encodings = request()
        }
        return encodings.flatMap { [($0.name + "-fixed", [0] + $0.bytes), ($0.name + "-as-is", [1] + $0.bytes)] }
    }

    /// A region image in CheckpointFuzz's input form: selector, header, index from 4096.
    static func checkpointInput(selector: UInt32, geometry: CheckpointGeometry, records: [CheckpointRecord]) -> [UInt8] {
        var index = [UInt8](repeating: 0, count: Int(geometry.indexBytes))
        for record in records {
            let at = Int(geometry.entryOffset(sequence: record.sequence) - geometry.indexOffset)
            index.replaceSubrange(at..<(at + CheckpointRecord.encodedBytes), with: record.encode().readableBytesView)
        }
        var header = Array(geometry.encode().readableBytesView)
        header += [UInt8](repeating: 0, count: 64 - header.count)
        return withUnsafeBytes(of: selector.littleEndian, Array.init) + header + index
    }

    static func checkpoint() -> [(name: String, bytes: [UInt8])] {
        // Payloads are zeros (the input does not reach the data area): their CRC32C is that of zeros.
        func record(_ sequence: UInt64, at offset: UInt64, length: Int) -> CheckpointRecord {
            CheckpointRecord(
                sequence: sequence, epoch: 1, dataOffset: offset, payloadLength: UInt64(length), timestampNanoseconds: 1_700_000_000_000_000_000,
                payloadCRC: CRC32C.checksum([UInt8](repeating: 0, count: length)))
        }
        // selector 13: a region of 16 pages (65,536 bytes).
        let size: UInt64 = 4096 * 16
        let overwrite = try! CheckpointGeometry.plan(mode: .overwrite, regionBytes: size)
        let ring = try! CheckpointGeometry.plan(mode: .append, regionBytes: size, maxCheckpoints: 4, keepNewest: 2)
        let log = try! CheckpointGeometry.plan(mode: .append, regionBytes: size, maxCheckpoints: 8)
        return [
            ("overwrite-empty", checkpointInput(selector: 13, geometry: overwrite, records: [])),
            ("overwrite-two", checkpointInput(selector: 13, geometry: overwrite, records: [record(1, at: overwrite.slotBytes, length: 100), record(2, at: 0, length: 5000)])),
            ("ring-three", checkpointInput(selector: 13, geometry: ring, records: [record(5, at: 0, length: 4096), record(6, at: 4096, length: 1), record(7, at: 8192, length: 0)])),
            ("log-near-max", checkpointInput(selector: 13, geometry: log, records: [record(CheckpointRecord.maxSequence - 1, at: 0, length: 10)])),
        ]
    }

    static func stripe() -> [(name: String, bytes: [UInt8])] {
        let setID = SetID(bytes: Array(0..<16))
        var seeds: [(name: String, bytes: [UInt8])] = []
        for (name, redundancy, servers, length) in [("k2m1", Redundancy(k: 2, m: 1), 3, 300), ("mirror2", Redundancy.mirror(2), 2, 64), ("k3m2", Redundancy(k: 3, m: 2), 5, 1000)] {
            let geometry = try! StripeGeometry.plan(payloadLength: UInt64(length), redundancy: redundancy, serverCount: servers, maxSubsegmentBytes: 128)
            let names = (0..<servers).map { "server-\($0)" }
            let stamp = PieceBuilder.Stamp(setID: setID, sequence: 9, previousComplete: 8, timestampNanoseconds: 1, servers: names)
            let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0) })
            let piece = PieceBuilder.pieces(of: payload, geometry: geometry, stamp: stamp)[1]
            let header = PieceHeader.decode(piece)!
            seeds.append(("piece-\(name)", Array(header.encode().readableBytesView)))
            let descriptor = SetDescriptor(setID: setID, redundancy: redundancy, maxSubsegmentBytes: 128, servers: names, committed: 8)
            seeds.append(("descriptor-\(name)", Array(descriptor.encode().readableBytesView)))
        }
        return seeds
    }

    static func catalog() -> [(name: String, bytes: [UInt8])] {
        let record = RegionRecord(
            id: 7, name: "jobs.state", sizeBytes: 1 << 20, kind: .checkpointAppend, createdAtMilliseconds: 1_700_000_000_000,
            generation: 3, writerEpoch: 2, owner: "alice", readers: ["bob", "*"], writers: ["alice"])
        let log = CatalogFormat.encode(.nextId(1), sequence: 1) + CatalogFormat.encode(.put(record), sequence: 2)
            + CatalogFormat.encode(.put(RegionRecord(id: 8, name: "raw", sizeBytes: 4096, kind: .raw, createdAtMilliseconds: 1, owner: "admin", readers: [], writers: [])), sequence: 3)
            + CatalogFormat.encode(.delete(id: 8), sequence: 4)
        return [
            ("catalog-log", log),
            ("catalog-one-put", CatalogFormat.encode(.put(record), sequence: 1)),
            ("catalog-torn-tail", Array(log.dropLast(5))),
        ]
    }

    static func log() -> [(name: String, bytes: [UInt8])] {
        let records = (1...3).map { n in
            LogRecord(sequence: UInt64(n), origin: 42, regionId: 7, epoch: 2, offset: UInt64(n) * 4096, payload: (0..<(n * 24)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        }
        let log = records.flatMap(LogRecordFormat.encode)
        return [
            ("log-three", log),
            ("log-one", LogRecordFormat.encode(records[0])),
            ("log-torn-tail", Array(log.dropLast(5))),
            ("log-zero-tail", log + [UInt8](repeating: 0, count: 64)),
            ("log-catalog", catalogLog()),
        ]
    }

    /// A mirror log with catalog records (version 2): a create, writes into it, an epoch raise, a delete.
    static func catalogLog() -> [UInt8] {
        let region = RegionRecord(id: 7, name: "fresh", sizeBytes: 8192, kind: .raw, createdAtMilliseconds: 1, generation: 2, writerEpoch: 1, owner: "admin", readers: [], writers: ["w"])
        var raised = region
        raised.generation = 3
        raised.writerEpoch = 2
        let entries = [
            CatalogReplay.logEntry(.put(region), origin: 1),
            LogEntry(origin: 2, regionId: 7, epoch: 1, offset: 4096, payload: [UInt8](repeating: 0x5A, count: 40)),
            CatalogReplay.logEntry(.put(raised), origin: 3),
            LogEntry(origin: 4, regionId: 7, epoch: 2, offset: 0, payload: [1, 2, 3]),
            CatalogReplay.logEntry(.delete(id: 7), origin: 5),
        ]
        return entries.enumerated().flatMap { index, entry in
            LogRecordFormat.encode(LogRecord(kind: entry.kind, sequence: UInt64(index + 1), origin: entry.origin, regionId: entry.regionId, epoch: entry.epoch, offset: entry.offset, payload: entry.payload))
        }
    }

    /// Input form of RequestStreamFuzz (after the mode byte): split seed, then the frames.
    static func request() -> [(name: String, bytes: [UInt8])] {
        let key = AccessKey(high: 0x0102_0304_0506_0708, low: 0x1112_1314_1516_1718)
        var stream = ByteBuffer()
        let frames: [Frame<Request>] = [
            Frame(requestId: 1, message: .write(key: key, offset: 4096, data: ByteBuffer(bytes: [UInt8](repeating: 0xAB, count: 16)))),
            Frame(requestId: 2, message: .write(key: key, offset: 0, data: ByteBuffer(bytes: (0..<300).map { UInt8(truncatingIfNeeded: $0) }))),
            Frame(requestId: 3, message: .persist(key: key, offset: 0, length: 300)),
            Frame(requestId: 4, message: .read(key: key, offset: 0, length: 300)),
            Frame(requestId: 5, message: .mirrorCatalog(sequence: 9, entry: .put(RegionRecord(
                id: 3, name: "fresh", sizeBytes: 4096, kind: .raw, createdAtMilliseconds: 1, generation: 2, writerEpoch: 1, owner: "admin", readers: [], writers: [])))),
            Frame(requestId: 6, message: .mirrorCatalog(sequence: 10, entry: .delete(id: 3))),
        ]
        for frame in frames { FrameCodec.encode(frame, into: &stream) }
        let bytes = Array(stream.readableBytesView)
        return [
            ("request-mixed", [7] + bytes),
            ("request-torn", [200] + Array(bytes.dropLast(100))),
        ]
    }

    static func heartbeat() -> [(name: String, bytes: [UInt8])] {
        let secret = HeartbeatFuzz.secret
        let ping = HeartbeatMessage(kind: .ping, role: .monitor, serving: false, sequence: 7, epoch: 0, senderId: "mon", sentAtNanoseconds: 123_456_789)
        let pong = HeartbeatMessage(kind: .pong, role: .primary, serving: true, sequence: 7, epoch: 42, senderId: "pri-sixteen-byte", sentAtNanoseconds: 123_456_789)
        return [
            ("heartbeat-ping", ping.encode(secret: secret)),
            ("heartbeat-pong", pong.encode(secret: secret)),
            ("heartbeat-short", Array(ping.encode(secret: secret).prefix(40))),
        ]
    }
}
