import NIOCore
import PMUCore

/// A checkpoint set's identity and policy, plus its commit marker: the newest sequence whose every
/// subsegment was durable on its server. Kept as the checkpoint payload of each server's
/// `<name>.commit` region (overwrite mode), rewritten after every complete checkpoint.
public struct SetDescriptor: Sendable, Equatable {
    static let magic: UInt64 = 0x3154_4553_4355_4D50 // "PMUCSET1"
    static let version: UInt16 = 1

    public var setID: SetID
    public var redundancy: Redundancy
    public var maxSubsegmentBytes: Int
    /// The stripe's servers, by cluster-map name, in placement order.
    public var servers: [String]
    /// Newest complete sequence (0: none yet).
    public var committed: UInt64

    public init(setID: SetID, redundancy: Redundancy, maxSubsegmentBytes: Int, servers: [String], committed: UInt64) {
        self.setID = setID
        self.redundancy = redundancy
        self.maxSubsegmentBytes = maxSubsegmentBytes
        self.servers = servers
        self.committed = committed
    }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic, endianness: .little)
        buffer.writeInteger(Self.version, endianness: .little)
        buffer.writeBytes(setID.bytes)
        buffer.writeInteger(UInt8(redundancy.k))
        buffer.writeInteger(UInt8(redundancy.m))
        buffer.writeInteger(UInt8(redundancy.copies))
        buffer.writeInteger(UInt32(maxSubsegmentBytes), endianness: .little)
        buffer.writeInteger(committed, endianness: .little)
        buffer.writeInteger(UInt8(servers.count))
        for name in servers { buffer.writeShortString(name) }
        buffer.writeInteger(CRC32C.checksum(buffer.readableBytesView), endianness: .little)
        return buffer
    }

    public static func decode(_ bytes: ByteBuffer) -> SetDescriptor? {
        guard bytes.readableBytes > 4 else { return nil }
        let body = bytes.readableBytes - 4
        guard CRC32C.checksum(bytes.readableBytesView.prefix(body)) == bytes.getInteger(at: bytes.readerIndex + body, endianness: .little, as: UInt32.self) else { return nil }
        var buffer = bytes.getSlice(at: bytes.readerIndex, length: body)!
        guard buffer.readLE(UInt64.self) == magic, buffer.readLE(UInt16.self) == version,
            let id = buffer.readBytes(length: 16), let k = buffer.readInteger(as: UInt8.self),
            let m = buffer.readInteger(as: UInt8.self), let copies = buffer.readInteger(as: UInt8.self),
            let maxSub = buffer.readLE(UInt32.self), let committed = buffer.readLE(UInt64.self),
            let count = buffer.readInteger(as: UInt8.self)
        else { return nil }
        var servers: [String] = []
        for _ in 0..<count {
            guard let name = buffer.readShortString() else { return nil }
            servers.append(name)
        }
        let redundancy = Redundancy(k: Int(k), m: Int(m), copies: Int(copies))
        // Checksummed bytes can still be hostile: the subsegment size must be one plan accepts, the
        // servers distinct, and the commit marker must leave room for a next sequence.
        guard buffer.readableBytes == 0, (try? redundancy.validate(serverCount: servers.count)) != nil,
            maxSub >= UInt32(StripeGeometry.alignment), maxSub % UInt32(StripeGeometry.alignment) == 0, Int(maxSub) <= Limits.maxIOBytes,
            Set(servers).count == servers.count, committed < UInt64.max
        else { return nil }
        return SetDescriptor(setID: SetID(bytes: id), redundancy: redundancy, maxSubsegmentBytes: Int(maxSub), servers: servers, committed: committed)
    }
}
