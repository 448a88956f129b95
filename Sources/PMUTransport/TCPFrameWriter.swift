import NIOCore
import PMUCore

/// Writes a frame to a channel. WRITE requests and DATA replies go out as a header buffer followed
/// by the payload buffer itself (gathered by writev), so bulk data is never copied into a frame.
enum TCPFrameWriter {
    /// The header and payload writes run as one event-loop task: from another thread, two separate
    /// channel writes could interleave with another sender's frame.
    static func write<M: WireMessage>(_ frame: Frame<M>, to channel: Channel, flush: Bool, promise: EventLoopPromise<Void>? = nil) {
        if channel.eventLoop.inEventLoop {
            writeOnLoop(frame, to: channel, flush: flush, promise: promise)
        } else {
            channel.eventLoop.execute { writeOnLoop(frame, to: channel, flush: flush, promise: promise) }
        }
    }

    private static func writeOnLoop<M: WireMessage>(_ frame: Frame<M>, to channel: Channel, flush: Bool, promise: EventLoopPromise<Void>?) {
        let allocator = channel.allocator
        if let (opcode, prefix, payload) = bulkParts(frame.message, allocator: allocator) {
            var header = allocator.buffer(capacity: FrameHeader.bytes + prefix.readableBytes)
            FrameCodec.encodeHeader(opcode: opcode, requestId: frame.requestId, bodyBytes: prefix.readableBytes + payload.readableBytes, into: &header)
            var prefix = prefix
            header.writeBuffer(&prefix)
            channel.write(header, promise: nil)
            if flush {
                channel.writeAndFlush(payload, promise: promise)
            } else {
                channel.write(payload, promise: promise)
            }
            return
        }
        var buffer = allocator.buffer(capacity: 128)
        FrameCodec.encode(frame, into: &buffer)
        if flush {
            channel.writeAndFlush(buffer, promise: promise)
        } else {
            channel.write(buffer, promise: promise)
        }
    }

    /// The fixed fields and the payload of a bulk message, or nil for small messages.
    private static func bulkParts(_ message: some WireMessage, allocator: ByteBufferAllocator) -> (Opcode, ByteBuffer, ByteBuffer)? {
        if let request = message as? Request, case .write(let key, let offset, let data) = request, data.readableBytes >= 4096 {
            var prefix = allocator.buffer(capacity: 24)
            prefix.writeInteger(key.high, endianness: .little)
            prefix.writeInteger(key.low, endianness: .little)
            prefix.writeInteger(offset, endianness: .little)
            return (.write, prefix, data)
        }
        if let response = message as? Response, case .data(let data) = response, data.readableBytes >= 4096 {
            return (.data, allocator.buffer(capacity: 0), data)
        }
        return nil
    }
}
