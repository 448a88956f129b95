import NIOCore
import PMUCore

/// What one server holds of one striped checkpoint: this header, then its subsegments back to back
/// (each `subsegmentBytes` long, in `entries` order), starting at `bodyOffset`.
///
/// The header carries everything reassembly needs besides the cluster map's addresses: the set,
/// sequence, the stripe geometry, the ordered server names of the stripe, a CRC32C of every
/// subsegment it stores, and the CRC32C of the whole payload (checked after reassembly, so a
/// reassembled checkpoint is never wrong). Layout in docs/CLUSTER.md.
public struct PieceHeader: Sendable, Equatable {
    static let magic: UInt64 = 0x3150_5254_5355_4D50 // "PMUSTRP1"
    static let version: UInt16 = 1
    /// Read this much first; a header longer than that is read again whole.
    public static let probeBytes = 4096

    public struct Entry: Sendable, Equatable {
        public var id: SubsegmentID
        public var crc: UInt32

        public init(id: SubsegmentID, crc: UInt32) {
            self.id = id
            self.crc = crc
        }
    }

    public var setID: SetID
    public var sequence: UInt64
    /// The newest sequence known complete when this one was written: complete checkpoints form a
    /// chain from the newest commit marker backwards (an attempt that failed is not on it).
    public var previousComplete: UInt64
    public var timestampNanoseconds: UInt64
    public var payloadCRC: UInt32
    public var geometry: StripeGeometry
    public var servers: [String]
    public var serverIndex: Int
    public var entries: [Entry]

    public init(setID: SetID, sequence: UInt64, previousComplete: UInt64, timestampNanoseconds: UInt64, payloadCRC: UInt32, geometry: StripeGeometry, servers: [String], serverIndex: Int, entries: [Entry]) {
        self.setID = setID
        self.sequence = sequence
        self.previousComplete = previousComplete
        self.timestampNanoseconds = timestampNanoseconds
        self.payloadCRC = payloadCRC
        self.geometry = geometry
        self.servers = servers
        self.serverIndex = serverIndex
        self.entries = entries
    }

    public var serverName: String { servers[serverIndex] }

    /// Where the subsegments start: after the header, on a 64-byte boundary.
    public var bodyOffset: Int { (encodedLength + 63) / 64 * 64 }

    public var encodedLength: Int {
        8 + 2 + 4 + 16 + 8 * 5 + 4 + 5 + 8 + servers.reduce(0) { $0 + 1 + min(255, $1.utf8.count) } + 4 + entries.count * 10 + 4
    }

    /// Offset of entry i's bytes within the piece.
    public func offset(ofEntry i: Int) -> Int { bodyOffset + i * geometry.subsegmentBytes }

    public var pieceLength: Int { bodyOffset + entries.count * geometry.subsegmentBytes }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(bodyOffset)
        buffer.writeInteger(Self.magic, endianness: .little)
        buffer.writeInteger(Self.version, endianness: .little)
        buffer.writeInteger(UInt32(encodedLength), endianness: .little)
        buffer.writeBytes(setID.bytes)
        buffer.writeInteger(sequence, endianness: .little)
        buffer.writeInteger(previousComplete, endianness: .little)
        buffer.writeInteger(timestampNanoseconds, endianness: .little)
        buffer.writeInteger(geometry.payloadLength, endianness: .little)
        buffer.writeInteger(UInt64(geometry.groups), endianness: .little)
        buffer.writeInteger(payloadCRC, endianness: .little)
        buffer.writeInteger(UInt8(geometry.k))
        buffer.writeInteger(UInt8(geometry.m))
        buffer.writeInteger(UInt8(geometry.redundancy.copies))
        buffer.writeInteger(UInt8(servers.count))
        buffer.writeInteger(UInt8(serverIndex))
        buffer.writeInteger(UInt64(geometry.subsegmentBytes), endianness: .little)
        for name in servers { buffer.writeShortString(name) }
        buffer.writeInteger(UInt32(entries.count), endianness: .little)
        for entry in entries {
            buffer.writeInteger(UInt32(entry.id.group), endianness: .little)
            buffer.writeInteger(UInt8(entry.id.index))
            buffer.writeInteger(UInt8(entry.id.copy))
            buffer.writeInteger(entry.crc, endianness: .little)
        }
        buffer.writeInteger(CRC32C.checksum(buffer.readableBytesView), endianness: .little)
        assert(buffer.readableBytes == encodedLength)
        buffer.writeRepeatingByte(0, count: bodyOffset - encodedLength)
        return buffer
    }

    /// Groups a payload of `payloadLength` bytes has (StripeGeometry.plan); without overflow.
    static func expectedGroups(payloadLength: UInt64, groupBytes: UInt64) -> UInt64 {
        payloadLength / groupBytes + (payloadLength % groupBytes == 0 ? 0 : 1)
    }

    /// The header length a piece claims, from its first 14 bytes; nil if they are not a piece's.
    public static func claimedLength(_ bytes: ByteBuffer) -> Int? {
        var buffer = bytes
        guard buffer.readLE(UInt64.self) == magic, buffer.readLE(UInt16.self) == version, let length = buffer.readLE(UInt32.self) else { return nil }
        return Int(length)
    }

    /// nil when the bytes are not an intact header of this format, or describe an impossible stripe.
    public static func decode(_ bytes: ByteBuffer) -> PieceHeader? {
        guard let length = claimedLength(bytes), length >= 30, bytes.readableBytes >= length else { return nil }
        let stored = bytes.getInteger(at: bytes.readerIndex + length - 4, endianness: .little, as: UInt32.self)
        guard CRC32C.checksum(bytes.readableBytesView.prefix(length - 4)) == stored else { return nil }
        var buffer = bytes.getSlice(at: bytes.readerIndex + 14, length: length - 18)!
        guard let id = buffer.readBytes(length: 16),
            let sequence = buffer.readLE(UInt64.self), let previous = buffer.readLE(UInt64.self),
            let timestamp = buffer.readLE(UInt64.self), let payloadLength = buffer.readLE(UInt64.self),
            let groups = buffer.readLE(UInt64.self), let payloadCRC = buffer.readLE(UInt32.self),
            let k = buffer.readInteger(as: UInt8.self), let m = buffer.readInteger(as: UInt8.self),
            let copies = buffer.readInteger(as: UInt8.self), let serverCount = buffer.readInteger(as: UInt8.self),
            let serverIndex = buffer.readInteger(as: UInt8.self), let subsegment = buffer.readLE(UInt64.self)
        else { return nil }
        var servers: [String] = []
        for _ in 0..<serverCount {
            guard let name = buffer.readShortString() else { return nil }
            servers.append(name)
        }
        guard let count = buffer.readLE(UInt32.self), Int(count) * 10 == buffer.readableBytes else { return nil }
        var entries: [Entry] = []
        entries.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let group = buffer.readLE(UInt32.self), let index = buffer.readInteger(as: UInt8.self),
                let copy = buffer.readInteger(as: UInt8.self), let crc = buffer.readLE(UInt32.self)
            else { return nil }
            entries.append(Entry(id: SubsegmentID(group: Int(group), index: Int(index), copy: Int(copy)), crc: crc))
        }
        let redundancy = Redundancy(k: Int(k), m: Int(m), copies: Int(copies))
        // A checksummed header can still be from a buggy or hostile writer: refuse impossible shapes
        // here so the reader's arithmetic never traps and its loops stay bounded by the bytes read.
        guard (try? redundancy.validate(serverCount: Int(serverCount))) != nil, Int(serverIndex) < Int(serverCount),
            subsegment >= UInt64(StripeGeometry.alignment), subsegment % UInt64(StripeGeometry.alignment) == 0,
            subsegment <= UInt64(Limits.maxIOBytes),
            // Sequences: the writer's next one (highest + 1) must exist; the chain of complete
            // checkpoints only goes backwards.
            sequence > 0, sequence < UInt64.max, previous < sequence,
            groups == expectedGroups(payloadLength: payloadLength, groupBytes: UInt64(k) * subsegment),
            // Among any n consecutive groups a server holds (k + m) x copies subsegments, so a
            // header listing `count` entries cannot describe more than (count + 1) x n groups:
            // this bounds the work of listing what the server should hold.
            groups <= (UInt64(count) + 1) * UInt64(serverCount),
            Set(servers).count == servers.count
        else { return nil }
        let geometry = StripeGeometry(redundancy: redundancy, serverCount: Int(serverCount), payloadLength: payloadLength, subsegmentBytes: Int(subsegment), groups: Int(groups))
        // Exactly what the writer stores on this server, in its order (PieceBuilder).
        guard entries.map(\.id) == geometry.subsegments(onServer: Int(serverIndex)) else { return nil }
        return PieceHeader(
            setID: SetID(bytes: id), sequence: sequence, previousComplete: previous, timestampNanoseconds: timestamp,
            payloadCRC: payloadCRC, geometry: geometry, servers: servers, serverIndex: Int(serverIndex), entries: entries)
    }
}
