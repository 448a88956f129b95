import NIOCore
import NIOEmbedded
import NIOTestUtils
import PMUTesting
import Testing

@testable import PMUCore

/// One of every request and reply, with awkward values (empty, maximal, non-ASCII).
let sampleKey = AccessKey(high: 0x0123_4567_89AB_CDEF, low: 0xFEDC_BA98_7654_3210)
let sampleInfo = RegionInfo(
    id: 7, name: "ckpt-é", sizeBytes: 1 << 30, kind: .checkpointAppend, createdAtMilliseconds: 1_700_000_000_000,
    generation: 3, writerEpoch: 2, owner: "admin", readers: ["*"], writers: ["primary", "backup"], openHandles: 2)

let sampleRequests: [Request] = [
    .hello(clientId: "primary-1", clientNonce: Array(repeating: 7, count: 32)),
    .authenticate(proof: Array(0..<32)),
    .create(CreateRegion(name: "r", sizeBytes: 4096, kind: .raw, readers: [], writers: [])),
    .create(CreateRegion(name: String(repeating: "n", count: 255), sizeBytes: .max, kind: .checkpointOverwrite, readers: ["a", "b"], writers: ["*"])),
    .open(name: "region", rights: .read),
    .open(name: "region", rights: .readWrite),
    .openResume(name: "region", epoch: 0, token: nil),
    .openResume(name: String(repeating: "r", count: 255), epoch: .max, token: [UInt8](repeating: 0xA5, count: Limits.resumeTokenBytes)),
    .write(key: sampleKey, offset: 0, data: ByteBuffer()),
    .write(key: sampleKey, offset: .max, data: ByteBuffer(bytes: Array(repeating: 0xAB, count: 5000))),
    .read(key: sampleKey, offset: 12, length: .max),
    .persist(key: sampleKey, offset: 0, length: 0),
    .close(key: sampleKey),
    .delete(name: "gone"),
    .list(after: "", limit: 100, wantsCursor: false),
    .list(after: "b", limit: 1024, wantsCursor: true),
    .stat(name: "s"),
    .mirrorOpen(portion: "portion-é", instance: Array(repeating: 3, count: 16)),
    .mirrorAppend(MirrorAppend(sequence: 1, regionId: 2, epoch: 0, offset: 0, data: ByteBuffer())),
    .mirrorAppend(MirrorAppend(sequence: .max, regionId: .max, epoch: .max, offset: 100, data: ByteBuffer(bytes: Array(repeating: 0xCD, count: 5000)))),
    .mirrorTrim(through: .max),
    .mirrorCatalog(sequence: 7, entry: .put(RegionRecord(
        id: 3, name: "fresh", sizeBytes: 4096, kind: .checkpointAppend, createdAtMilliseconds: 1, generation: 2, writerEpoch: 1, owner: "o", readers: ["r"], writers: ["*"]))),
    .mirrorCatalog(sequence: .max, entry: .delete(id: 3)),
    .pairStatus,
    .pairTakeover,
    .pairGiveback,
    .serverInfo,
]

let sampleResponses: [Response] = [
    .ok,
    .challenge(serverNonce: Array(repeating: 1, count: 32)),
    .authenticated(serverProof: Array(repeating: 2, count: 32)),
    .grant(RegionGrant(key: sampleKey, regionId: 9, sizeBytes: 1 << 20, rights: .readWrite, kind: .raw, epoch: 4)),
    .remoteGrant(
        RegionGrant(key: sampleKey, regionId: 9, sizeBytes: 1 << 20, rights: .read, kind: .checkpointAppend, epoch: 0),
        RemoteAccess(address: 0x7F12_3456_7000, rkey: 0xDEAD_BEEF)),
    .data(ByteBuffer(bytes: [1, 2, 3])),
    .data(ByteBuffer(bytes: Array(repeating: 9, count: 10_000))),
    .info(sampleInfo),
    .list(entries: [sampleInfo, sampleInfo], more: true, cursor: nil),
    .list(entries: [], more: false, cursor: nil),
    .list(entries: [sampleInfo], more: true, cursor: "zz"),
    .list(entries: [], more: true, cursor: ""),
    .error(PMUError(.outOfBounds, "range is outside")),
]

func encoded<M: WireMessage>(_ frame: Frame<M>) -> ByteBuffer {
    var buffer = ByteBuffer()
    FrameCodec.encode(frame, into: &buffer)
    return buffer
}

@Suite struct FrameCodecTests {
    @Test func requestsRoundTripThroughDecoderVerifier() throws {
        let pairs = sampleRequests.enumerated().map { index, request in
            let frame = Frame(requestId: UInt64(index + 1), message: request)
            return (encoded(frame), [frame])
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder<Request>() }
    }

    @Test func responsesRoundTripThroughDecoderVerifier() throws {
        let pairs = sampleResponses.enumerated().map { index, response in
            let frame = Frame(requestId: UInt64.max - UInt64(index), message: response)
            return (encoded(frame), [frame])
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder<Response>() }
    }

    /// All frames back to back, cut into two pieces at every byte offset: the same frames come out.
    @Test func splitAtEveryByte() throws {
        var stream = ByteBuffer()
        let frames = sampleRequests.enumerated().map { Frame(requestId: UInt64($0.offset), message: $0.element) }
        for frame in frames { FrameCodec.encode(frame, into: &stream) }
        for cut in 0...stream.readableBytes {
            var pending = ByteBuffer()
            var decoded: [Frame<Request>] = []
            for piece in [stream.getSlice(at: 0, length: cut)!, stream.getSlice(at: cut, length: stream.readableBytes - cut)!] {
                var piece = piece
                pending.writeBuffer(&piece)
                while let frame = try FrameCodec.decode(Request.self, from: &pending) { decoded.append(frame) }
            }
            #expect(decoded == frames, "cut at \(cut)")
            #expect(pending.readableBytes == 0)
        }
    }

    @Test func oneByteAtATime() throws {
        var stream = ByteBuffer()
        let frames = sampleResponses.enumerated().map { Frame(requestId: UInt64($0.offset), message: $0.element) }
        for frame in frames { FrameCodec.encode(frame, into: &stream) }
        var pending = ByteBuffer()
        var decoded: [Frame<Response>] = []
        for byte in stream.readableBytesView {
            pending.writeInteger(byte)
            while let frame = try FrameCodec.decode(Response.self, from: &pending) { decoded.append(frame) }
        }
        #expect(decoded == frames)
    }

    @Test func oversizedFrameIsRefusedFromItsHeaderAlone() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(Limits.maxFrameBytes), endianness: .little) // + 4 > limit
        buffer.writeInteger(UInt8(1))
        buffer.writeInteger(Opcode.write.rawValue)
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(UInt64(42), endianness: .little)
        do {
            _ = try FrameCodec.decode(Request.self, from: &buffer)
            Issue.record("oversized frame was accepted")
        } catch {
            #expect(error.error.code == .frameTooLarge)
            #expect(error.requestId == 42)
        }
    }

    @Test(arguments: [
        ("length shorter than header", [5, 0, 0, 0, 1, 1, 0, 0, 0]),
        ("wrong version", [12, 0, 0, 0, 9, 0x17, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("unknown opcode", [12, 0, 0, 0, 1, 0x7E, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("reply opcode sent as request", [12, 0, 0, 0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("reserved flags set", [12, 0, 0, 0, 1, 0x17, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("truncated body", [14, 0, 0, 0, 1, 0x18, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0]),
        ("trailing bytes", [13, 0, 0, 0, 1, 0x15, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
    ] as [(String, [UInt8])])
    func malformedFramesThrowNotTrap(_ name: String, _ bytes: [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: FrameDecodingError.self, "\(name)") { _ = try FrameCodec.decode(Request.self, from: &buffer) }
    }

    @Test func invalidUTF8NameIsMalformed() {
        var body = ByteBuffer()
        body.writeInteger(UInt16(2), endianness: .little)
        body.writeBytes([0xC3, 0x28])
        var frame = Self.requestFrame(.stat, body)
        do {
            _ = try FrameCodec.decode(Request.self, from: &frame)
            Issue.record("accepted")
        } catch {
            #expect(error.error.code == .malformedFrame)
        }
    }

    /// A request frame of `opcode` around `body`, bytes as a hostile peer would send them.
    static func requestFrame(_ opcode: Opcode, _ body: ByteBuffer) -> ByteBuffer {
        var body = body
        var frame = ByteBuffer()
        FrameCodec.encodeHeader(opcode: opcode, requestId: 1, bodyBytes: body.readableBytes, into: &frame)
        frame.writeBuffer(&body)
        return frame
    }

    /// MIRROR_CATALOG's catalog record is hostile input: a damaged one, trailing bytes, a
    /// next-id entry, or one over the catalog's record limit is MALFORMED_FRAME with the reason.
    @Test func hostileMirrorCatalogIsMalformed() {
        let good = CatalogFormat.encode(.delete(id: 3), sequence: 1)
        var flipped = good
        flipped[flipped.count - 1] ^= 1
        let cases: [([UInt8], String)] = [
            (flipped, "record checksum mismatch"),
            (good + [0], "followed by 1 more"),
            (CatalogFormat.encode(.nextId(9), sequence: 1), "next-id entry"),
            ([UInt8](repeating: 0, count: CatalogFormat.headerBytes + Int(CatalogFormat.maxBodyBytes) + 1), "exceeds the catalog record limit"),
        ]
        for (payload, reason) in cases {
            var body = ByteBuffer()
            body.writeInteger(UInt64(5), endianness: .little)
            body.writeBytes(payload)
            var frame = Self.requestFrame(.mirrorCatalog, body)
            do {
                _ = try FrameCodec.decode(Request.self, from: &frame)
                Issue.record("accepted: \(reason)")
            } catch {
                #expect([.malformedFrame, .requestTooLarge].contains(error.error.code) && error.error.message.contains(reason), "\(error.error)")
            }
        }
    }

    /// Random bytes never crash the decoder: it returns frames, nil, or throws.
    @Test func garbageNeverTraps() {
        var generator = SeededGenerator(seed: 0xC0FFEE)
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...64, using: &generator)
            var buffer = ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
            if Bool.random(using: &generator), buffer.readableBytes >= 5 {
                buffer.setInteger(UInt8(1), at: 4) // valid version: reach the body decoders more often
            }
            _ = try? FrameCodec.decode(Request.self, from: &buffer)
            _ = try? FrameCodec.decode(Response.self, from: &buffer)
        }
    }

    @Test func decoderRejectsGarbageInAChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder<Request>()))
        #expect(throws: FrameDecodingError.self) {
            try channel.writeInbound(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]))
        }
        _ = try? channel.finish()
    }
}

