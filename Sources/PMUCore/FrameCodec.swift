import NIOCore

/// A message that can travel in a PMU frame: requests one way, replies the other.
public protocol WireMessage: Sendable, Equatable {
    var opcode: Opcode { get }
    func encodeBody(into buffer: inout ByteBuffer)
    static func decodeBody(opcode: UInt8, body: inout ByteBuffer) throws(PMUError) -> Self
}

/// One frame: a request id and a message. Replies carry the id of the request they answer.
public struct Frame<Message: WireMessage>: Sendable, Equatable {
    public var requestId: UInt64
    public var message: Message

    public init(requestId: UInt64, message: Message) {
        self.requestId = requestId
        self.message = message
    }
}

/// The 16-byte frame header (docs/WIRE_PROTOCOL.md):
///
///     u32 length     bytes after this field: 12 + body
///     u8  version    Limits.protocolVersion
///     u8  opcode
///     u16 flags      0; reserved
///     u64 request_id
public enum FrameHeader {
    public static let bytes = 16
    /// Bytes counted by `length` that belong to the header.
    static let countedHeaderBytes: UInt32 = 12
}

/// Why a decoder gave up. It carries the request id when the header was readable, so the server can
/// answer the offending request before closing the connection.
public struct FrameDecodingError: Error, Sendable {
    public var error: PMUError
    public var requestId: UInt64?
}

public enum FrameCodec {
    /// Encodes a frame. The body is written after a placeholder length that is patched at the end,
    /// so the message's data is copied into the frame exactly once.
    public static func encode<M: WireMessage>(_ frame: Frame<M>, into buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        buffer.writeLE(UInt32(0))
        buffer.writeLE(Limits.protocolVersion)
        buffer.writeLE(frame.message.opcode.rawValue)
        buffer.writeLE(UInt16(0))
        buffer.writeLE(frame.requestId)
        frame.message.encodeBody(into: &buffer)
        let length = UInt32(buffer.writerIndex - start - 4)
        buffer.setInteger(length, at: start, endianness: .little)
    }

    /// Frame header only, for senders that write a large payload as a separate buffer (no copy).
    public static func encodeHeader(opcode: Opcode, requestId: UInt64, bodyBytes: Int, into buffer: inout ByteBuffer) {
        buffer.writeLE(UInt32(Int(FrameHeader.countedHeaderBytes) + bodyBytes))
        buffer.writeLE(Limits.protocolVersion)
        buffer.writeLE(opcode.rawValue)
        buffer.writeLE(UInt16(0))
        buffer.writeLE(requestId)
    }

    /// Decodes one frame from the front of `buffer` if a whole one is there.
    ///
    /// Returns nil when more bytes are needed. Throws as soon as the header shows the frame is bad
    /// (too large, wrong version) without waiting for its body: a peer cannot make us buffer it.
    /// `tooLargeHint` ends the FRAME_TOO_LARGE message: what the sender should do instead.
    public static func decode<M: WireMessage>(
        _: M.Type, from buffer: inout ByteBuffer, maxFrameBytes: Int = Limits.maxFrameBytes,
        tooLargeHint: String = "split large writes (the client library does)"
    ) throws(FrameDecodingError) -> Frame<M>? {
        guard let length = try checkHeader(buffer, maxFrameBytes: maxFrameBytes, tooLargeHint: tooLargeHint) else { return nil }
        guard buffer.readableBytes >= Int(length) + 4 else { return nil }
        var frame = buffer.readSlice(length: Int(length) + 4)!
        frame.moveReaderIndex(forwardBy: 4)
        let version = frame.readInteger(as: UInt8.self)!
        let opcode = frame.readInteger(as: UInt8.self)!
        let flags = frame.readInteger(endianness: .little, as: UInt16.self)!
        let requestId = frame.readInteger(endianness: .little, as: UInt64.self)!
        guard version == Limits.protocolVersion else {
            throw FrameDecodingError(
                error: PMUError(.unsupportedVersion, "frame version \(version); this peer speaks \(Limits.protocolVersion)"),
                requestId: requestId)
        }
        guard flags == 0 else {
            throw FrameDecodingError(error: PMUError(.malformedFrame, "reserved flags 0x\(String(flags, radix: 16)) are set"), requestId: requestId)
        }
        do {
            let message = try M.decodeBody(opcode: opcode, body: &frame)
            return Frame(requestId: requestId, message: message)
        } catch {
            throw FrameDecodingError(error: error, requestId: requestId)
        }
    }

    /// The checks a frame's header allows before its body arrives: returns the `length` field,
    /// or nil when not even that has arrived. Throws for a length shorter than the header, over
    /// `maxFrameBytes`, or (once its byte is there) a version this peer does not speak.
    static func checkHeader(_ buffer: ByteBuffer, maxFrameBytes: Int, tooLargeHint: String) throws(FrameDecodingError) -> UInt32? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
            return nil
        }
        guard length >= FrameHeader.countedHeaderBytes else {
            throw FrameDecodingError(error: PMUError(.malformedFrame, "frame length \(length) is shorter than the 12-byte header"), requestId: nil)
        }
        guard Int(length) + 4 <= maxFrameBytes else {
            let id = buffer.getInteger(at: buffer.readerIndex + 8, endianness: .little, as: UInt64.self)
            throw FrameDecodingError(
                error: PMUError(.frameTooLarge, "frame of \(Int(length) + 4) bytes exceeds the limit of \(maxFrameBytes) bytes; \(tooLargeHint)"),
                requestId: id)
        }
        if buffer.readableBytes >= 5, let version = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self), version != Limits.protocolVersion {
            // Refused from the header, before any body arrives.
            throw FrameDecodingError(
                error: PMUError(.unsupportedVersion, "frame version \(version); this peer speaks \(Limits.protocolVersion)"),
                requestId: buffer.getInteger(at: buffer.readerIndex + 8, endianness: .little, as: UInt64.self))
        }
        return length
    }
}

/// The largest frame a connection's decoder accepts right now, shared by the decoder and whoever
/// changes it. A server connection starts at `Limits.maxHandshakeFrameBytes` and its session
/// raises it to `Limits.maxFrameBytes` once AUTHENTICATE succeeds, so a peer without credentials
/// is refused from a frame's header alone and can never make the server buffer more than a
/// handshake. Unchecked Sendable: confined to the connection's event loop.
public final class FrameSizeLimit: @unchecked Sendable {
    public var maxFrameBytes: Int
    /// Ends the FRAME_TOO_LARGE message: what the sender should do instead.
    public var tooLargeHint: String

    public init(maxFrameBytes: Int, tooLargeHint: String) {
        self.maxFrameBytes = maxFrameBytes
        self.tooLargeHint = tooLargeHint
    }

    /// Before authentication: handshake frames only.
    public static func handshake() -> FrameSizeLimit {
        FrameSizeLimit(
            maxFrameBytes: Limits.maxHandshakeFrameBytes,
            tooLargeHint: "before authentication only handshake frames (HELLO, AUTHENTICATE) are accepted; authenticate first")
    }

    /// After authentication (and on the client): the protocol maximum.
    public func allowFullFrames() {
        maxFrameBytes = Limits.maxFrameBytes
        tooLargeHint = "split large writes (the client library does)"
    }
}

/// SwiftNIO decoder for frames of one direction. Server: `FrameDecoder<Request>`; client: `<Response>`.
public struct FrameDecoder<M: WireMessage>: ByteToMessageDecoder {
    public typealias InboundOut = Frame<M>
    /// Read before every frame, so a change applies from the next frame on.
    public let limit: FrameSizeLimit

    public init(maxFrameBytes: Int = Limits.maxFrameBytes) {
        self.limit = FrameSizeLimit(maxFrameBytes: maxFrameBytes, tooLargeHint: "split large writes (the client library does)")
    }

    public init(limit: FrameSizeLimit) {
        self.limit = limit
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try FrameCodec.decode(M.self, from: &buffer, maxFrameBytes: limit.maxFrameBytes, tooLargeHint: limit.tooLargeHint) else {
            return .needMoreData
        }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A peer that closes mid-frame leaves a partial frame behind: drop it; the connection is gone.
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
