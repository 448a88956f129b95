import NIOCore
import PMUCore
import PMUStore

/// A large WRITE whose payload arrives in pieces (`RequestStreamDecoder`), and where its bytes go.
enum InboundWrite {
    /// Admitted (key, rights, bounds, fence, failover gate, all for the whole range): each piece
    /// is copied into the region as it arrives, through the region's file when `file` is there
    /// (no page fault and zero-fill per page: `RegionFileWriter`); `landed` bytes are there so far.
    case landing(id: UInt64, key: AccessKey, offset: UInt64, landed: UInt64, file: RegionFileWriter?)
    /// Refused before its first byte or stopped by a piece's check: the rest of the payload is
    /// read and dropped, and the error is the reply.
    case refused(id: UInt64, PMUError)
    /// Not executable as it arrives (earlier requests still queued or running, replies over their
    /// bound, not authenticated, or a mirrored or durable-write server, whose WRITE needs the
    /// whole payload): gathered whole (one copy, as the decoder's cumulation made before), then
    /// queued as an ordinary WRITE frame.
    case gathering(id: UInt64, key: AccessKey, offset: UInt64, data: ByteBuffer)
}

/// Streamed WRITEs, kept out of Session.swift. The guarantees of `execute`'s WRITE hold: every
/// check passes before any byte lands, the fence covers each piece's copy (a takeover cannot fall
/// between a check and the bytes it admitted), and OK is sent only once every byte has landed. A
/// connection that dies mid-payload leaves a prefix of the payload in the region, unanswered.
extension Session {
    func beginWrite(requestId: UInt64, key: AccessKey, offset: UInt64, length: Int) {
        precondition(inboundWrite == nil, "a streamed WRITE began inside another")
        lastActivity = info.eventLoop.now
        guard case .authenticated = phase, !busy, queue.isEmpty, info.replies.hasReplyRoom,
            !state.configuration.durableWrites, state.pair?.sender == nil
        else {
            // `length` is bounded by the connection's frame limit, checked from the header.
            inboundWrite = .gathering(id: requestId, key: key, offset: offset, data: ByteBufferAllocator().buffer(capacity: length))
            return
        }
        do throws(PMUError) {
            if let gate = state.configuration.writeGate, let refusal = gate() { throw refusal }
            let mapping = try state.admitWrite(key: key, connection: info.id, offset: offset, length: UInt64(length))
            inboundWrite = .landing(id: requestId, key: key, offset: offset, landed: 0, file: RegionFileWriter(mapping))
        } catch {
            inboundWrite = .refused(id: requestId, error)
        }
    }

    func writePayload(_ bytes: ByteBuffer, last: Bool) {
        guard let current = inboundWrite else { return }  // connection closed meanwhile
        if case .closed = phase {
            // Refused for good (idle timeout, displaced, a bad frame): nothing more lands or is answered.
            inboundWrite = nil
            return
        }
        lastActivity = info.eventLoop.now
        switch current {
        case .landing(let id, let key, let offset, let landed, let file):
            do throws(PMUError) {
                // `admitWrite` checked offset + length, so offset + landed cannot overflow.
                let at = offset + landed
                try state.write(key: key, connection: info.id, offset: at, data: bytes) { translation in
                    bytes.withUnsafeReadableBytes { piece in
                        // The key still names the region the file was opened for (keys are never reused).
                        if let file, file.mapping === translation.region.mapping {
                            file.write(piece, at: at)
                        } else {
                            translation.region.mapping.write(piece, at: at)
                        }
                    }
                }
                inboundWrite = .landing(id: id, key: key, offset: offset, landed: landed + UInt64(bytes.readableBytes), file: file)
            } catch {
                inboundWrite = .refused(id: id, error)
            }
        case .refused:
            break
        case .gathering(let id, let key, let offset, var data):
            inboundWrite = nil  // so `data` is uniquely referenced and grows in place
            var bytes = bytes
            data.writeBuffer(&bytes)
            inboundWrite = .gathering(id: id, key: key, offset: offset, data: data)
        }
        guard last, let finished = inboundWrite else { return }
        inboundWrite = nil
        switch finished {
        case .landing(let id, _, _, _, _):
            // Acknowledged only if the failover gate still allows it, as for a whole WRITE.
            if let gate = state.configuration.writeGate, let refusal = gate() {
                reply(id, .error(refusal))
            } else {
                reply(id, .ok)
            }
        case .refused(let id, let error):
            reply(id, .error(error))
        case .gathering(let id, let key, let offset, let data):
            handle(Frame(requestId: id, message: .write(key: key, offset: offset, data: data)))
        }
    }
}
