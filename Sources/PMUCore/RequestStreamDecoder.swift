import NIOCore

/// What the server's TCP decoder hands on: whole request frames, or a large WRITE in pieces as
/// its payload arrives.
///
/// Why pieces: a frame larger than one socket read is otherwise gathered in NIO's cumulation
/// buffer (each later read copied onto the first, which grows by reallocation) and then copied
/// once more into the region. Delivered in pieces, each read's bytes are copied once, straight into
/// the region's mapping, and the read buffer is released for reuse (docs/BENCHMARKS.md, issue 15).
public enum InboundRequest: Sendable, Equatable {
    case frame(Frame<Request>)
    /// A WRITE frame's header and fixed fields (`FrameCodec.streamedWriteHead`); exactly `length`
    /// (at least 1) payload bytes follow as `writePayload`s, the last one marked `last`.
    case writeHead(requestId: UInt64, key: AccessKey, offset: UInt64, length: Int)
    /// The next bytes of the payload begun by the last `writeHead`: a slice of one socket read.
    /// After the `last` one, the next bytes are a new frame.
    case writePayload(ByteBuffer, last: Bool)
}

extension FrameCodec {
    /// Header, request id, key and offset: the bytes of a WRITE frame before its payload.
    public static let writeHeadBytes = FrameHeader.bytes + 16 + 8

    /// The head of a WRITE frame at the front of `buffer` whose payload is at least `minPayload`
    /// bytes, once those 40 bytes are there; nil for any other frame (or too few bytes yet), which
    /// then decodes whole as before. Throws what `decode` would throw from a bad header (too
    /// large, wrong version), so limits apply identically on both paths. Consumes nothing.
    public static func streamedWriteHead(
        _ buffer: ByteBuffer, minPayload: Int, maxFrameBytes: Int, tooLargeHint: String
    ) throws(FrameDecodingError) -> (requestId: UInt64, key: AccessKey, offset: UInt64, length: Int)? {
        guard let length = try checkHeader(buffer, maxFrameBytes: maxFrameBytes, tooLargeHint: tooLargeHint),
            buffer.readableBytes >= writeHeadBytes
        else { return nil }
        let at = buffer.readerIndex
        // `length` is at most maxFrameBytes (checked above), so this cannot overflow.
        let payload = Int(length) + 4 - writeHeadBytes
        guard buffer.getInteger(at: at + 5, as: UInt8.self) == Opcode.write.rawValue,
            buffer.getInteger(at: at + 6, endianness: .little, as: UInt16.self) == 0,  // else decode refuses it
            payload >= minPayload
        else { return nil }
        let requestId = buffer.getInteger(at: at + 8, endianness: .little, as: UInt64.self)!
        let key = AccessKey(
            high: buffer.getInteger(at: at + 16, endianness: .little, as: UInt64.self)!,
            low: buffer.getInteger(at: at + 24, endianness: .little, as: UInt64.self)!)
        let offset = buffer.getInteger(at: at + 32, endianness: .little, as: UInt64.self)!
        return (requestId, key, offset, payload)
    }
}

/// The server's TCP request decoder: `FrameDecoder<Request>` except that WRITE frames with at
/// least `minStreamedPayload` bytes of payload come out as `writeHead` and `writePayload`s
/// (slices of the socket reads, never gathered). While inside a payload it consumes every
/// byte it is given, so NIO keeps no cumulation and hands over each read buffer as it is.
public struct RequestStreamDecoder: ByteToMessageDecoder {
    public typealias InboundOut = InboundRequest
    /// Smaller WRITEs usually arrive in one read and decode whole, without a copy, as a slice.
    public static let minStreamedPayload = 64 << 10
    public let limit: FrameSizeLimit
    private let minPayload: Int
    /// Payload bytes of the current streamed WRITE not yet handed on; 0 between frames.
    private var payloadLeft = 0

    public init(limit: FrameSizeLimit, minStreamedPayload: Int = RequestStreamDecoder.minStreamedPayload) {
        precondition(minStreamedPayload >= 1)
        self.limit = limit
        self.minPayload = minStreamedPayload
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let event = try next(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(event))
        return .continue
    }

    /// The next event from the front of `buffer`, consuming its bytes; nil when more are needed.
    /// Pure (no channel), so tests can drive it with any split of the stream.
    public mutating func next(from buffer: inout ByteBuffer) throws(FrameDecodingError) -> InboundRequest? {
        if payloadLeft > 0 {
            let take = min(payloadLeft, buffer.readableBytes)
            guard take > 0 else { return nil }
            payloadLeft -= take
            return .writePayload(buffer.readSlice(length: take)!, last: payloadLeft == 0)
        }
        if let head = try FrameCodec.streamedWriteHead(buffer, minPayload: minPayload, maxFrameBytes: limit.maxFrameBytes, tooLargeHint: limit.tooLargeHint) {
            buffer.moveReaderIndex(forwardBy: FrameCodec.writeHeadBytes)
            payloadLeft = head.length
            return .writeHead(requestId: head.requestId, key: head.key, offset: head.offset, length: head.length)
        }
        return try FrameCodec.decode(Request.self, from: &buffer, maxFrameBytes: limit.maxFrameBytes, tooLargeHint: limit.tooLargeHint).map { .frame($0) }
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A peer that closes mid-frame or mid-payload leaves it incomplete: the pieces already
        // handed on stay handed on, no `last` one follows (so no reply), and the rest is dropped.
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
