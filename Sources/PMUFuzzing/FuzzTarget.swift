import Dispatch
import NIOCore
import PMUCheckpoint
import PMUCore
import PMUFailover
import PMULog
import PMUStripe
import PMUTesting

/// One family of decoders of stored bytes, driven by arbitrary input (scripts/fuzz.sh runs each
/// under libFuzzer; the unit tests replay the committed corpus through the same code).
///
/// A target returns normally for any input: hostile bytes must produce a PMUError or nil, never a
/// trap. Where the code promises a property (a decoded value re-encodes to the same thing, a
/// committed checkpoint reads back), the target checks it with `precondition`, so breaking the
/// promise is a crash the fuzzer reports.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The checkpoint region: header, index, records, placement, reader, verifier, writer.
    case checkpoint
    /// Piece headers and set descriptors of striped checkpoints, and the stripe geometry in them.
    case stripe
    /// The server's catalog log: record framing, region records, replay.
    case catalog
    /// The append-only log (a partner's mirror log): record framing, scan, sequence order.
    case log
    /// The failover heartbeat datagram (UDP, HMAC-tagged): every field of a hostile packet.
    case heartbeat
    /// The server's TCP request decoder, whose large WRITEs come out in pieces (issue 15).
    case request

    public func run(_ bytes: [UInt8]) {
        switch self {
        case .checkpoint: CheckpointFuzz.run(bytes)
        case .stripe: StripeFuzz.run(bytes)
        case .catalog: CatalogFuzz.run(bytes)
        case .log: LogFuzz.run(bytes)
        case .heartbeat: HeartbeatFuzz.run(bytes)
        case .request: RequestStreamFuzz.run(bytes)
        }
    }
}

/// Random mutations almost never keep a CRC32C valid, so a fuzzer left alone would only ever test
/// the checksum comparison. Each target therefore takes a first "mode" byte: with the low bit clear
/// it recomputes the checksums in the input before decoding (so the fuzzer explores what comes after
/// them: the field checks and the arithmetic), with it set the bytes are decoded as they are.
func fixesChecksums(_ bytes: [UInt8]) -> Bool { bytes.first.map { $0 & 1 == 0 } ?? false }

extension Array where Element == UInt8 {
    func le32(at offset: Int) -> UInt32? {
        guard offset >= 0, offset + 4 <= count else { return nil }
        return UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16 | UInt32(self[offset + 3]) << 24
    }

    /// Writes CRC32C(self[range]) little-endian at `at`, if both fit.
    mutating func setCRC(of range: Range<Int>, at: Int) {
        guard range.lowerBound >= 0, range.upperBound <= count, at >= 0, at + 4 <= count else { return }
        let crc = CRC32C.checksum(self[range])
        for i in 0..<4 { self[at + i] = UInt8(truncatingIfNeeded: crc >> (8 * i)) }
    }
}

/// Runs async code to completion from a synchronous fuzzer callback.
func blocking(_ body: @escaping @Sendable () async -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task {
        await body()
        done.signal()
    }
    done.wait()
}

enum CheckpointFuzz {
    /// Input: mode byte | u32 size selector | 64 bytes placed at region offset 0 (the header) | the
    /// rest placed from offset 4096 on (the index, and the data area if the input is that long).
    static func region(_ input: [UInt8]) -> SimulatedRegion? {
        guard input.count >= 5 else { return nil }
        let bytes = Array(input.dropFirst())
        let selector = bytes.le32(at: 0)!
        // 12 KiB to 268 KiB, with an unaligned tail sometimes: small enough for many runs a second.
        let size = 4096 * (3 + Int(selector % 64)) + Int((selector / 64) % 4096)
        var image = [UInt8](repeating: 0, count: size)
        let header = bytes.dropFirst(4).prefix(64)
        image.replaceSubrange(0..<header.count, with: header)
        let rest = bytes.dropFirst(68).prefix(size - 4096)
        image.replaceSubrange(4096..<(4096 + rest.count), with: rest)
        if fixesChecksums(input) {
            image.setCRC(of: 0..<48, at: 48)
            // Every 64-byte entry of what was supplied that starts like a record ("PMCR").
            for entry in stride(from: 4096, to: 4096 + rest.count, by: 64) where image.le32(at: entry) == 0x5243_4D50 {
                image.setCRC(of: entry..<(entry + 52), at: entry + 52)
            }
        }
        return SimulatedRegion(recoveredFrom: image)
    }

    static func run(_ bytes: [UInt8]) {
        guard let io = region(bytes) else { return }
        blocking {
            if let reader = try? await CheckpointReader.open(io: io) {
                let records = (try? await reader.records()) ?? []
                _ = CheckpointIndex.usedBytes(records)
                _ = try? await reader.latest()
                _ = try? await reader.all()
                for record in records.prefix(8) { _ = try? await reader.checkpoint(sequence: record.sequence) }
                _ = try? await reader.waitForNewer(than: records.last?.sequence ?? 0, timeout: .zero)
            }
            _ = try? await CheckpointVerifier.verify(io: io)
            // The writer builds on whatever the index holds: placement, retention, sequences.
            let fallback = try? CheckpointGeometry.plan(mode: .append, regionBytes: io.sizeBytes, maxCheckpoints: 4)
            guard let writer = try? await CheckpointWriter.open(io: io, epoch: 2, format: fallback) else { return }
            for length in [5, 4097] {
                let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) })
                guard let sequence = try? await writer.checkpoint(payload) else { continue }
                // A committed checkpoint reads back exactly (the writer displaced whatever overlapped).
                let back = try? await CheckpointReader.open(io: io).checkpoint(sequence: sequence)
                precondition(back?.payload == payload, "checkpoint \(sequence) did not read back after it committed")
            }
        }
    }
}

enum StripeFuzz {
    /// Input: mode byte | bytes. Checksums are fixed as a piece header's when the bytes claim to be
    /// one (magic, version, length), else as a set descriptor's (the last four bytes).
    static func run(_ input: [UInt8]) {
        var bytes = Array(input.dropFirst())
        if fixesChecksums(input) {
            if let length = PieceHeader.claimedLength(ByteBuffer(bytes: bytes)), length >= 4, length <= bytes.count {
                bytes.setCRC(of: 0..<(length - 4), at: length - 4)
            } else if bytes.count > 4 {
                bytes.setCRC(of: 0..<(bytes.count - 4), at: bytes.count - 4)
            }
        }
        let buffer = ByteBuffer(bytes: bytes)
        _ = PieceHeader.claimedLength(buffer)
        if let header = PieceHeader.decode(buffer) {
            // What the cluster reader computes from a header it accepted.
            let geometry = header.geometry
            _ = header.pieceLength
            for (i, entry) in header.entries.enumerated() {
                _ = header.offset(ofEntry: i)
                if entry.id.index < geometry.k { _ = geometry.payloadRange(group: entry.id.group, index: entry.id.index) }
            }
            let available = Set(header.entries.map { StripeAssembler.Key(group: $0.id.group, index: $0.id.index) })
            _ = StripeAssembler.unrecoverableGroups(geometry, available: available)
            _ = header.serverName
            precondition(PieceHeader.decode(header.encode()) == header, "a decoded piece header does not survive re-encoding")
        }
        if let descriptor = SetDescriptor.decode(buffer) {
            _ = try? StripeGeometry.plan(payloadLength: 1 << 20, redundancy: descriptor.redundancy, serverCount: descriptor.servers.count, maxSubsegmentBytes: descriptor.maxSubsegmentBytes)
            precondition(SetDescriptor.decode(descriptor.encode()) == descriptor, "a decoded set descriptor does not survive re-encoding")
        }
    }
}

enum CatalogFuzz {
    /// Input: mode byte | catalog bytes. Fixing walks the records by their claimed lengths and
    /// recomputes each body's CRC32C.
    static func run(_ input: [UInt8]) {
        var bytes = Array(input.dropFirst())
        if fixesChecksums(input) {
            var offset = 0
            while let magic = bytes.le32(at: offset), magic == CatalogFormat.magic, let length = bytes.le32(at: offset + 4),
                length <= CatalogFormat.maxBodyBytes, offset + CatalogFormat.headerBytes + Int(length) <= bytes.count {
                let body = offset + CatalogFormat.headerBytes
                bytes.setCRC(of: body..<(body + Int(length)), at: offset + 8)
                offset = body + Int(length)
            }
        }
        let scan = CatalogFormat.scan(bytes)
        precondition(scan.validBytes <= bytes.count)
        let state = CatalogState(replaying: scan.entries)
        _ = state.snapshotEntries()
        for (sequence, entry) in scan.entries.prefix(16) {
            let again = CatalogFormat.scan(CatalogFormat.encode(entry, sequence: sequence))
            precondition(again.tail == .clean && again.entries.count == 1 && again.entries[0].entry == entry && again.entries[0].sequence == sequence,
                "a decoded catalog record does not survive re-encoding")
        }
    }
}

enum LogFuzz {
    /// Input: mode byte | log bytes. Fixing walks the records by their claimed payload lengths
    /// and recomputes each CRC32C (over header bytes 0..<52 and the payload, stored at 52).
    static func run(_ input: [UInt8]) {
        var bytes = Array(input.dropFirst())
        let header = LogRecordFormat.headerBytes
        if fixesChecksums(input) {
            var offset = 0
            while let magic = bytes.le32(at: offset), magic == LogRecordFormat.magic, let length = bytes.le32(at: offset + 48),
                Int(length) <= LogRecordFormat.defaultMaxPayloadBytes, offset + header + Int(length) <= bytes.count {
                let covered = Array(bytes[offset..<(offset + 52)]) + bytes[(offset + header)..<(offset + header + Int(length))]
                let crc = CRC32C.checksum(covered)
                for i in 0..<4 { bytes[offset + 52 + i] = UInt8(truncatingIfNeeded: crc >> (8 * i)) }
                offset += header + Int(length)
            }
        }
        _ = try? LogRecordFormat.decode(bytes)
        let scan = LogRecordFormat.scan(bytes)
        precondition(scan.validBytes <= bytes.count)
        for record in scan.records.prefix(16) {
            guard case .record(let again, let length)? = try? LogRecordFormat.decode(LogRecordFormat.encode(record)) else {
                preconditionFailure("a decoded log record does not decode after re-encoding")
            }
            precondition(again == record && length == header + record.payload.count, "a decoded log record does not survive re-encoding")
        }
        // The apply rule on what was decoded: catalog records' payloads (hostile catalog
        // records) are checked, never trusted; writes are bounded by the regions they name.
        if let replay = try? CatalogReplay.make(records: scan.records, catalog: []) {
            var sizes: [UInt64: UInt64] = [:]
            for step in replay.steps {
                switch step {
                case .create(let region), .update(let region): sizes[region.id] = region.sizeBytes
                case .remove(let region): sizes[region.id] = nil
                case .write(let record):
                    let size = sizes[record.regionId] ?? 0
                    precondition(record.offset <= size && UInt64(record.payload.count) <= size - record.offset, "the apply rule let a write past its region, or into one it does not hold")
                }
            }
        }
    }
}

enum HeartbeatFuzz {
    /// The pair secret the fuzzed datagrams are tagged with.
    static let secret = Array("pmu-fuzz-heartbeat-secret-0123456789".utf8)

    /// Input: mode byte | datagram. Fixing recomputes the tag (bytes 48..<64) over bytes 0..<48 when
    /// the datagram has the heartbeat's size, so the fuzzer reaches the field checks behind it.
    /// Property: a decoded message re-encodes to a datagram that decodes to the same message.
    static func run(_ input: [UInt8]) {
        var bytes = Array(input.dropFirst())
        if fixesChecksums(input), bytes.count == HeartbeatMessage.size {
            bytes.replaceSubrange(48..<64, with: HeartbeatMessage.tag(bytes[0..<48], secret: secret))
        }
        guard let message = try? HeartbeatMessage.decode(bytes, secret: secret) else { return }
        precondition(message.senderId.utf8.count <= HeartbeatMessage.maxSenderIdBytes, "a decoded sender id is longer than its field")
        let again = try? HeartbeatMessage.decode(message.encode(secret: secret), secret: secret)
        precondition(again == message, "a decoded heartbeat does not survive re-encoding")
        // Under another secret the same bytes are refused (the tag covers every field).
        precondition((try? HeartbeatMessage.decode(bytes, secret: Array("another-secret".utf8))) == nil, "a heartbeat decoded under the wrong secret")
    }
}

enum RequestStreamFuzz {
    /// Input: mode byte | split seed byte | a stream of request frames as a client would send it.
    /// The mode byte's high seven bits choose the streaming threshold (1...128 payload bytes, so
    /// small WRITEs stream too). Property: `RequestStreamDecoder`, fed the stream in seeded
    /// random pieces with the leftover kept as NIO's cumulation would, yields exactly the frames
    /// `FrameCodec.decode` yields from the whole stream (a streamed WRITE reassembled from its head
    /// and pieces), and stops with the same error where the whole-stream decode refuses a frame.
    static func run(_ input: [UInt8]) {
        guard input.count >= 2 else { return }
        let minPayload = Int(input[0] >> 1) + 1
        var seed = UInt32(input[1]) &* 2_654_435_761 | 1
        let stream = Array(input.dropFirst(2))

        var whole = ByteBuffer(bytes: stream)
        var expected: [Frame<Request>] = []
        var expectedError: PMUErrorCode?
        while true {
            do {
                guard let frame = try FrameCodec.decode(Request.self, from: &whole) else { break }
                expected.append(frame)
            } catch {
                expectedError = error.error.code
                break
            }
        }

        var decoder = RequestStreamDecoder(limit: FrameSizeLimit(maxFrameBytes: Limits.maxFrameBytes, tooLargeHint: "fuzz"), minStreamedPayload: minPayload)
        var cumulation = ByteBuffer()
        var got: [Frame<Request>] = []
        var gotError: PMUErrorCode?
        var open: (requestId: UInt64, key: AccessKey, offset: UInt64, length: Int, data: ByteBuffer)?
        var at = 0
        feeding: while at < stream.count {
            seed = seed &* 1_103_515_245 &+ 12_345
            let piece = min(stream.count - at, 1 + Int(seed >> 16) % 97)
            cumulation.writeBytes(stream[at..<(at + piece)])
            at += piece
            while true {
                let event: InboundRequest?
                do {
                    event = try decoder.next(from: &cumulation)
                } catch {
                    gotError = error.error.code
                    break feeding
                }
                guard let event else { break }
                switch event {
                case .frame(let frame):
                    precondition(open == nil, "a whole frame came out inside a streamed WRITE's payload")
                    got.append(frame)
                case .writeHead(let requestId, let key, let offset, let length):
                    precondition(open == nil && length >= minPayload, "a streamed WRITE began inside another, or below the threshold")
                    open = (requestId, key, offset, length, ByteBuffer())
                case .writePayload(var bytes, let last):
                    guard var write = open else { preconditionFailure("payload bytes without a WRITE head") }
                    write.data.writeBuffer(&bytes)
                    precondition(write.data.readableBytes <= write.length, "more payload than the WRITE announced")
                    if last {
                        precondition(write.data.readableBytes == write.length, "a WRITE's last piece came early")
                        got.append(Frame(requestId: write.requestId, message: .write(key: write.key, offset: write.offset, data: write.data)))
                        open = nil
                    } else {
                        open = write
                    }
                }
            }
        }
        precondition(got == expected, "the streamed decode yields other frames than the whole-stream decode")
        precondition(gotError == expectedError, "the streamed decode stops with \(String(describing: gotError)), the whole-stream decode with \(String(describing: expectedError))")
    }
}
