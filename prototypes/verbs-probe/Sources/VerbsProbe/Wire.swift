// What the probe's two sides tell each other over SEND/RECV, with fixed little-endian field
// widths (the habit of librpma's descriptors), plus the test plan both sides know.

/// Where the server's registered region is: sent by the server right after the connection is up.
/// Layout (32 bytes, little-endian): magic u32 | version u16 | reserved u16 | address u64 |
/// length u64 | rkey u32 | reserved u32.
public struct RegionDescriptor: Equatable, Sendable {
    public static let sizeBytes = 32
    public static let magic: UInt32 = 0x5655_4D50  // "PMUV" read as little-endian bytes
    public static let version: UInt16 = 1

    public var address: UInt64
    public var lengthBytes: UInt64
    public var rkey: UInt32

    public init(address: UInt64, lengthBytes: UInt64, rkey: UInt32) {
        self.address = address
        self.lengthBytes = lengthBytes
        self.rkey = rkey
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.sizeBytes)
        bytes.appendLittleEndian(Self.magic)
        bytes.appendLittleEndian(Self.version)
        bytes.appendLittleEndian(UInt16(0))
        bytes.appendLittleEndian(address)
        bytes.appendLittleEndian(lengthBytes)
        bytes.appendLittleEndian(rkey)
        bytes.appendLittleEndian(UInt32(0))
        assert(bytes.count == Self.sizeBytes)
        return bytes
    }

    /// nil unless `bytes` is exactly one descriptor of this version.
    public init?(decoding bytes: some Collection<UInt8>) {
        let b = Array(bytes)
        guard b.count == Self.sizeBytes,
              b.readLittleEndian(UInt32.self, at: 0) == Self.magic,
              b.readLittleEndian(UInt16.self, at: 4) == Self.version else { return nil }
        address = b.readLittleEndian(UInt64.self, at: 8)
        lengthBytes = b.readLittleEndian(UInt64.self, at: 16)
        rkey = b.readLittleEndian(UInt32.self, at: 24)
    }
}

/// A control message (16 bytes, little-endian): opcode u32 | status u32 | value u64.
public struct ControlMessage: Equatable, Sendable {
    public static let sizeBytes = 16

    public enum Opcode: UInt32, Sendable {
        /// client → server: msync the file and check the test plan's ranges in it.
        case verify = 1
        /// server → client: status 0 = every byte as expected; else value = first bad offset.
        case verifyResult = 2
        /// client → server: deregister the region now.
        case deregister = 3
        /// server → client: done (status = errno if ibv_dereg_mr failed).
        case deregistered = 4
    }

    public var opcode: Opcode
    public var status: UInt32
    public var value: UInt64

    public init(_ opcode: Opcode, status: UInt32 = 0, value: UInt64 = 0) {
        self.opcode = opcode
        self.status = status
        self.value = value
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLittleEndian(opcode.rawValue)
        bytes.appendLittleEndian(status)
        bytes.appendLittleEndian(value)
        return bytes
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        let b = Array(bytes)
        guard b.count == Self.sizeBytes,
              let opcode = Opcode(rawValue: b.readLittleEndian(UInt32.self, at: 0)) else { return nil }
        self.opcode = opcode
        status = b.readLittleEndian(UInt32.self, at: 4)
        value = b.readLittleEndian(UInt64.self, at: 8)
    }
}

/// The RDMA WRITEs the client makes and the server checks in the file afterwards.
public struct PlannedWrite: Sendable {
    public let name: String
    public let offset: Int
    public let lengthBytes: Int
    public let seed: UInt64
}

public enum TestPlan {
    public static let pageBytes = 4096
    public static let mebibyte = 1 << 20
    /// Smallest region the plan fits in (scratch areas for the measurements included).
    public static let minimumRegionBytes = 32 * mebibyte
    /// Where the latency test writes its 8-byte values (not verified).
    public static let latencyScratchOffset = 8 * mebibyte
    /// Where the bandwidth test writes (depth × 64 KiB, not verified).
    public static let bandwidthScratchOffset = 16 * mebibyte
    /// Bytes on each side of a planned write that must still be zero.
    public static let guardBytes = 64

    public static func writes(regionBytes: Int) -> [PlannedWrite] {
        [
            PlannedWrite(name: "8 B at offset 0", offset: 0, lengthBytes: 8, seed: 1),
            PlannedWrite(name: "300 B across the 4 KiB page boundary", offset: 2 * pageBytes - 150,
                         lengthBytes: 300, seed: 2),
            PlannedWrite(name: "1 MiB across the 2 MiB boundary", offset: 2 * mebibyte - 2048,
                         lengthBytes: mebibyte, seed: 3),
            PlannedWrite(name: "64 B at the end of the region", offset: regionBytes - 64,
                         lengthBytes: 64, seed: 4),
        ]
    }

    /// The byte that a planned write with `seed` puts at region offset `offset`: depends on the
    /// offset, so a write landing at the wrong place does not match.
    @inline(__always)
    public static func patternByte(offset: Int, seed: UInt64) -> UInt8 {
        UInt8(truncatingIfNeeded: (UInt64(offset) &* 0x9E37_79B9_7F4A_7C15 &+ seed &* 0xD6E8_FEB8_6659_FD93) >> 56)
    }

    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, regionOffset: Int, seed: UInt64) {
        for index in 0..<buffer.count {
            buffer[index] = patternByte(offset: regionOffset + index, seed: seed)
        }
    }

    /// Index of the first byte that differs from the pattern, or nil.
    public static func firstMismatch(_ buffer: UnsafeRawBufferPointer, regionOffset: Int,
                                     seed: UInt64) -> Int? {
        for index in 0..<buffer.count where buffer[index] != patternByte(offset: regionOffset + index, seed: seed) {
            return index
        }
        return nil
    }
}

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    func readLittleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value = T.zero
        for index in 0..<MemoryLayout<T>.size {
            value |= T(self[offset + index]) << (8 * index)
        }
        return value
    }
}
