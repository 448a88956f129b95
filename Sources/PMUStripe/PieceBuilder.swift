import NIOCore
import PMUCore

/// Cuts a payload into the pieces each server stores: data subsegments copied out, parity
/// computed with the erasure code, every subsegment's CRC32C in its piece's header.
public enum PieceBuilder {
    public struct Stamp: Sendable {
        public var setID: SetID
        public var sequence: UInt64
        public var previousComplete: UInt64
        public var timestampNanoseconds: UInt64
        public var servers: [String]

        public init(setID: SetID, sequence: UInt64, previousComplete: UInt64, timestampNanoseconds: UInt64, servers: [String]) {
            self.setID = setID
            self.sequence = sequence
            self.previousComplete = previousComplete
            self.timestampNanoseconds = timestampNanoseconds
            self.servers = servers
        }
    }

    /// Every group's m parity subsegments, back to back (group-major).
    public static func parity(of payload: ByteBuffer, geometry: StripeGeometry, code: ErasureCode) -> [UInt8] {
        let sub = geometry.subsegmentBytes
        let k = geometry.k, m = geometry.m
        guard m > 0, geometry.groups > 0 else { return [] }
        var parity = [UInt8](repeating: 0, count: geometry.groups * m * sub)
        // Scratch for the last group when it runs past the payload (zero-padded copy).
        let padded = UnsafeMutableRawBufferPointer.allocate(byteCount: k * sub, alignment: 64)
        defer { padded.deallocate() }
        payload.withUnsafeReadableBytes { base in
            parity.withUnsafeMutableBytes { out in
                for group in 0..<geometry.groups {
                    let start = group * k * sub
                    var sources: [UnsafeRawPointer] = []
                    if start + k * sub <= base.count {
                        sources = (0..<k).map { base.baseAddress! + start + $0 * sub }
                    } else {
                        // The last group runs past the payload: encode a zero-padded copy of it.
                        padded.initializeMemory(as: UInt8.self, repeating: 0)
                        let tail = base.count - start
                        if tail > 0 { padded.baseAddress!.copyMemory(from: base.baseAddress! + start, byteCount: tail) }
                        sources = (0..<k).map { UnsafeRawPointer(padded.baseAddress! + $0 * sub) }
                    }
                    let targets = (0..<m).map { out.baseAddress! + (group * m + $0) * sub }
                    code.encode(data: sources, parity: targets, length: sub)
                }
            }
        }
        return parity
    }

    /// The piece for each server of the stripe, indexed like `stamp.servers`.
    public static func pieces(of payload: ByteBuffer, geometry: StripeGeometry, stamp: Stamp) -> [ByteBuffer] {
        let code = ErasureCode(k: geometry.k, m: geometry.m)
        let parity = parity(of: payload, geometry: geometry, code: code)
        let payloadCRC = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        let sub = geometry.subsegmentBytes
        return (0..<geometry.serverCount).map { server in
            let ids = geometry.subsegments(onServer: server)
            var header = PieceHeader(
                setID: stamp.setID, sequence: stamp.sequence, previousComplete: stamp.previousComplete,
                timestampNanoseconds: stamp.timestampNanoseconds, payloadCRC: payloadCRC, geometry: geometry,
                servers: stamp.servers, serverIndex: server, entries: ids.map { PieceHeader.Entry(id: $0, crc: 0) })
            var piece = ByteBuffer()
            piece.reserveCapacity(header.pieceLength)
            piece.writeImmutableBuffer(header.encode())
            for (i, id) in ids.enumerated() {
                let before = piece.writerIndex
                if id.index < geometry.k {
                    let range = geometry.payloadRange(group: id.group, index: id.index)
                    if !range.isEmpty {
                        var slice = payload.getSlice(at: payload.readerIndex + Int(range.lowerBound), length: range.count)!
                        piece.writeBuffer(&slice)
                    }
                    piece.writeRepeatingByte(0, count: sub - range.count)
                } else {
                    let start = (id.group * geometry.m + id.index - geometry.k) * sub
                    _ = parity.withUnsafeBytes { piece.writeBytes(UnsafeRawBufferPointer(rebasing: $0[start..<(start + sub)])) }
                }
                header.entries[i].crc = piece.withUnsafeReadableBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[before..<(before + sub)])) }
            }
            // Same length as the placeholder: only the CRC fields changed.
            piece.setBuffer(header.encode(), at: 0)
            return piece
        }
    }
}
