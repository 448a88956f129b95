import NIOCore
import NIOEmbedded
import PMUTesting
import Testing

@testable import PMUCore

/// The server's TCP decoder without sockets: large WRITEs come out as a head and pieces, every
/// other frame whole, for any split of the byte stream into reads.
@Suite struct RequestStreamDecoderTests {
    /// What a stream decodes to, with each streamed WRITE's pieces joined.
    enum Decoded: Equatable {
        case frame(Frame<Request>)
        case streamed(id: UInt64, key: AccessKey, offset: UInt64, payload: [UInt8])
    }

    static let minPayload = 4096

    static func frames(_ generator: inout SeededGenerator) -> [Frame<Request>] {
        func bytes(_ count: Int) -> ByteBuffer {
            ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
        }
        return [
            Frame(requestId: 1, message: .write(key: sampleKey, offset: 3, data: bytes(100))),  // small: whole
            Frame(requestId: 2, message: .write(key: sampleKey, offset: 1 << 20, data: bytes(200_000))),
            Frame(requestId: 3, message: .persist(key: sampleKey, offset: 0, length: 0)),
            Frame(requestId: 4, message: .write(key: sampleKey, offset: .max, data: bytes(minPayload))),  // exactly the minimum
            Frame(requestId: 5, message: .write(key: sampleKey, offset: 7, data: bytes(minPayload - 1))),  // one short: whole
            Frame(requestId: 6, message: .write(key: sampleKey, offset: 9, data: bytes(70_001))),
            Frame(requestId: 7, message: .write(key: sampleKey, offset: 11, data: bytes(65_536))),  // two streamed back to back
            Frame(requestId: 8, message: .close(key: sampleKey)),
        ]
    }

    static func expected(_ frames: [Frame<Request>]) -> [Decoded] {
        frames.map { frame in
            if case .write(let key, let offset, let data) = frame.message, data.readableBytes >= minPayload {
                return .streamed(id: frame.requestId, key: key, offset: offset, payload: Array(data.readableBytesView))
            }
            return .frame(frame)
        }
    }

    /// Feeds `stream` in reads of the given sizes as ByteToMessageHandler would (what a call
    /// leaves unconsumed is kept and the next read appended), checking the event order.
    static func decode(_ stream: [UInt8], reads: [Int], minPayload: Int = minPayload) throws -> (decoded: [Decoded], pieces: Int, largestPiece: Int) {
        var decoder = RequestStreamDecoder(limit: FrameSizeLimit(maxFrameBytes: Limits.maxFrameBytes, tooLargeHint: ""), minStreamedPayload: minPayload)
        var decoded: [Decoded] = []
        var open: (id: UInt64, key: AccessKey, offset: UInt64, length: Int, payload: [UInt8])?
        var pending = ByteBuffer()
        var at = 0
        var pieces = 0
        var largest = 0
        for size in reads {
            pending.writeBytes(stream[at..<(at + size)])
            at += size
            while let event = try decoder.next(from: &pending) {
                switch event {
                case .frame(let frame):
                    #expect(open == nil, "a whole frame inside a streamed payload")
                    decoded.append(.frame(frame))
                case .writeHead(let id, let key, let offset, let length):
                    #expect(open == nil, "a WRITE head inside a streamed payload")
                    open = (id, key, offset, length, [])
                case .writePayload(let bytes, let last):
                    guard var current = open else {
                        Issue.record("a payload piece outside a streamed WRITE")
                        continue
                    }
                    #expect(bytes.readableBytes > 0 && bytes.readableBytes <= size, "a piece is never empty nor more than one read")
                    pieces += 1
                    largest = max(largest, bytes.readableBytes)
                    current.payload += Array(bytes.readableBytesView)
                    #expect(last == (current.payload.count == current.length))
                    if last {
                        decoded.append(.streamed(id: current.id, key: current.key, offset: current.offset, payload: current.payload))
                        open = nil
                    } else {
                        open = current
                    }
                }
            }
        }
        #expect(at == stream.count && open == nil && pending.readableBytes == 0)
        return (decoded, pieces, largest)
    }

    static func encode(_ frames: [Frame<Request>]) -> [UInt8] {
        var buffer = ByteBuffer()
        for frame in frames { FrameCodec.encode(frame, into: &buffer) }
        return Array(buffer.readableBytesView)
    }

    @Test(arguments: [1, 2, 3])
    func anySplitGivesTheSameRequests(seed: UInt64) throws {
        var generator = SeededGenerator(seed: seed)
        let frames = Self.frames(&generator)
        let stream = Self.encode(frames)
        // Reads of 1 to 50,000 bytes, some of 1-40 so heads and headers are split too.
        var reads: [Int] = []
        var left = stream.count
        while left > 0 {
            let size = min(left, Bool.random(using: &generator) ? Int.random(in: 1...40, using: &generator) : Int.random(in: 1...50_000, using: &generator))
            reads.append(size)
            left -= size
        }
        let result = try Self.decode(stream, reads: reads)
        #expect(result.decoded == Self.expected(frames), "seed \(seed)")
        #expect(result.pieces > 10, "seed \(seed): the large payloads came in many pieces")
    }

    @Test func oneReadGivesOnePiecePerPayload() throws {
        var generator = SeededGenerator(seed: 9)
        let frames = Self.frames(&generator)
        let stream = Self.encode(frames)
        let result = try Self.decode(stream, reads: [stream.count])
        #expect(result.decoded == Self.expected(frames))
        #expect(result.pieces == 4)  // frames 2, 4, 6 and 7
        #expect(result.largestPiece == 200_000)
    }

    @Test func minimumAboveEveryPayloadDecodesEveryFrameWhole() throws {
        var generator = SeededGenerator(seed: 10)
        let frames = Self.frames(&generator)
        let stream = Self.encode(frames)
        let result = try Self.decode(stream, reads: [1000, stream.count - 1000], minPayload: .max)
        #expect(result.decoded == frames.map { .frame($0) })
    }

    /// The header's limits apply before anything is streamed: a WRITE over the connection's
    /// frame limit is refused from its 16-byte header with its request id, as FrameDecoder does.
    @Test func headerLimitsApplyAsOnTheWholeFramePath() throws {
        let large = Frame(requestId: 77, message: Request.write(key: sampleKey, offset: 0, data: ByteBuffer(bytes: Array(repeating: 1, count: 100_000))))
        var encoded = ByteBuffer()
        FrameCodec.encode(large, into: &encoded)
        var header = encoded.getSlice(at: 0, length: 16)!
        var decoder = RequestStreamDecoder(limit: FrameSizeLimit.handshake(), minStreamedPayload: 4096)
        #expect {
            _ = try decoder.next(from: &header)
        } throws: { error in
            guard let error = error as? FrameDecodingError else { return false }
            return error.error.code == .frameTooLarge && error.requestId == 77 && error.error.message.contains("authenticate first")
        }
        // A wrong version is refused from the header too, before the payload.
        var wrongVersion = encoded.getSlice(at: 0, length: 40)!
        wrongVersion.setInteger(UInt8(99), at: 4)
        var fresh = RequestStreamDecoder(limit: FrameSizeLimit(maxFrameBytes: Limits.maxFrameBytes, tooLargeHint: ""), minStreamedPayload: 4096)
        #expect {
            _ = try fresh.next(from: &wrongVersion)
        } throws: { error in
            (error as? FrameDecodingError)?.error.code == .unsupportedVersion
        }
    }

    /// Through NIO's ByteToMessageHandler: the payload's pieces are slices of the reads, so once
    /// a streamed WRITE is under way nothing is kept in the cumulation buffer.
    @Test func throughByteToMessageHandlerNothingIsGathered() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RequestStreamDecoder(
            limit: FrameSizeLimit(maxFrameBytes: Limits.maxFrameBytes, tooLargeHint: ""), minStreamedPayload: 4096)))
        var generator = SeededGenerator(seed: 11)
        let payload = (0..<300_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let stream = Self.encode([Frame(requestId: 5, message: .write(key: sampleKey, offset: 0, data: ByteBuffer(bytes: payload)))])
        var received: [UInt8] = []
        var at = 0
        var last = false
        for size in [41, 65_536, 100_000, 80_000, stream.count - 41 - 245_536] {
            try channel.writeInbound(ByteBuffer(bytes: stream[at..<(at + size)]))
            at += size
            while let event = try channel.readInbound(as: InboundRequest.self) {
                switch event {
                case .writeHead(let id, _, _, let length): #expect(id == 5 && length == payload.count)
                case .writePayload(let bytes, let isLast):
                    received += Array(bytes.readableBytesView)
                    last = isLast
                case .frame: Issue.record("the WRITE decoded whole")
                }
            }
            // Every byte of this read went out at once (the head's 40 bytes and the first one).
            #expect(received.count == at - FrameCodec.writeHeadBytes)
        }
        #expect(received == payload && last)
        _ = try channel.finish()
    }
}
