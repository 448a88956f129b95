import NIOCore
import PMUCore

/// What a pmu-server answered once it formed a checkpoint of a striped set for this primary.
public struct FormedCheckpoint: Sendable, Equatable {
    /// The checkpoint's cluster sequence, complete on every server of the set.
    public var sequence: UInt64
    /// Bytes of all the pieces the forming server wrote (its own included): A × payload plus headers.
    public var pieceBytes: UInt64
    /// Bytes of payload this primary sent (once, to the forming server).
    public var payloadBytes: UInt64
}

/// Server-side forming (docs/CLUSTER.md section 7b; docs/WIRE_PROTOCOL.md, "Forming").
extension PMUClient {
    /// Sends the whole checkpoint to this server (FORM_BEGIN, FORM_DATA in order, FORM_COMMIT),
    /// which forms the pieces of striped set `set`, stores them on every server of the set and
    /// commits. Returns once the checkpoint is complete; any error means it is not (the previous
    /// complete checkpoint stays the newest). FORM_COMMIT waits for the whole forming: give the
    /// connection a `requestTimeout` long enough for it.
    public func formCheckpoint(set: String, payload: ByteBuffer) async throws(PMUError) -> FormedCheckpoint {
        let length = UInt64(payload.readableBytes)
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        guard case .ok = try await call(.formBegin(set: set, length: length, crc: crc)) else {
            throw PMUError(.protocolViolation, "unexpected reply to FORM_BEGIN")
        }
        var offset = 0
        while offset < payload.readableBytes {
            let count = min(Limits.maxIOBytes, payload.readableBytes - offset)
            let chunk = payload.getSlice(at: payload.readerIndex + offset, length: count)!
            guard case .ok = try await call(.formData(offset: UInt64(offset), data: chunk)) else {
                throw PMUError(.protocolViolation, "unexpected reply to FORM_DATA")
            }
            offset += count
        }
        guard case .data(var reply) = try await call(.formCommit),
            let sequence = reply.readInteger(endianness: .little, as: UInt64.self),
            let pieceBytes = reply.readInteger(endianness: .little, as: UInt64.self), reply.readableBytes == 0
        else {
            throw PMUError(.protocolViolation, "FORM_COMMIT reply is not DATA of 16 bytes (the server runs an older pmu-server?)")
        }
        return FormedCheckpoint(sequence: sequence, pieceBytes: pieceBytes, payloadBytes: length)
    }

    /// FORM_REBUILD: has this server (which forms set `set`'s checkpoints) rejoin empty server
    /// `server` to the set and backfill its pieces while checkpoints go on. Returns the rebuild
    /// report as a JSON object once the backfill is done.
    public func formRebuild(set: String, server: String) async throws(PMUError) -> String {
        guard case .data(let data) = try await call(.formRebuild(set: set, server: server)) else {
            throw PMUError(.protocolViolation, "unexpected reply to FORM_REBUILD")
        }
        return String(decoding: data.readableBytesView, as: UTF8.self)
    }
}
