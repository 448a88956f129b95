import NIOCore

// Little-endian field helpers for the piece header and set descriptor codecs: decoding returns
// nil on any short or malformed field instead of trapping, because these bytes come from disk.
extension ByteBuffer {
    mutating func writeShortString(_ s: String) {
        let bytes = Array(s.utf8.prefix(255))
        writeInteger(UInt8(bytes.count))
        writeBytes(bytes)
    }

    mutating func readShortString() -> String? {
        guard let count = readInteger(as: UInt8.self), let bytes = readBytes(length: Int(count)) else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    mutating func readLE<T: FixedWidthInteger>(_: T.Type = T.self) -> T? {
        readInteger(endianness: .little, as: T.self)
    }
}

/// 16 random bytes naming one checkpoint set, so pieces of an unrelated set that happens to have
/// the same region name (a server reused for another cluster) are never mixed in.
public struct SetID: Sendable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    public static func random() -> SetID {
        var generator = SystemRandomNumberGenerator()
        return SetID(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }

    public var description: String { bytes.map { String($0, radix: 16).leftPadded(2) }.joined() }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}
