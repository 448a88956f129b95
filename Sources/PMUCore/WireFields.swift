import NIOCore

/// Field encodings shared by every message: little-endian fixed widths, strings as u16 length +
/// UTF-8, lists as u16 count + items. Reads throw MALFORMED_FRAME on short or invalid input so a
/// decoder never traps on what a peer sent.
extension ByteBuffer {
    @inlinable
    mutating func readLE<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(PMUError) -> T {
        guard let value = readInteger(endianness: .little, as: T.self) else {
            throw PMUError(.malformedFrame, "frame ends inside field '\(field)'")
        }
        return value
    }

    mutating func writeLE<T: FixedWidthInteger>(_ value: T) {
        writeInteger(value, endianness: .little)
    }

    mutating func readWireString(_ field: StaticString, maxBytes: Int) throws(PMUError) -> String {
        let count = Int(try readLE(UInt16.self, field))
        guard count <= maxBytes else {
            throw PMUError(.malformedFrame, "field '\(field)' is \(count) bytes; the limit is \(maxBytes)")
        }
        guard let bytes = readBytes(length: count) else {
            throw PMUError(.malformedFrame, "frame ends inside field '\(field)'")
        }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw PMUError(.malformedFrame, "field '\(field)' is not valid UTF-8")
        }
        return string
    }

    /// Writes a string. Names are never truncated (a shortened name would address another region):
    /// an over-long one goes out whole and the peer refuses it. Only free text (error messages,
    /// `truncating: true`) is cut, at a character boundary.
    mutating func writeWireString(_ string: String, maxBytes: Int, truncating: Bool = false) {
        var utf8 = Array(string.utf8.prefix(truncating ? maxBytes : Int(UInt16.max)))
        while !utf8.isEmpty, String(validating: utf8, as: UTF8.self) == nil { utf8.removeLast() }
        writeLE(UInt16(utf8.count))
        writeBytes(utf8)
    }

    mutating func readWireStrings(_ field: StaticString, maxCount: Int, maxBytes: Int) throws(PMUError) -> [String] {
        let count = Int(try readLE(UInt16.self, field))
        guard count <= maxCount else {
            throw PMUError(.malformedFrame, "list '\(field)' has \(count) entries; the limit is \(maxCount)")
        }
        var result: [String] = []
        result.reserveCapacity(count)
        for _ in 0..<count { result.append(try readWireString(field, maxBytes: maxBytes)) }
        return result
    }

    mutating func writeWireStrings(_ strings: [String], maxBytes: Int) {
        writeLE(UInt16(strings.count))
        for string in strings { writeWireString(string, maxBytes: maxBytes) }
    }

    mutating func readFixedBytes(_ count: Int, _ field: StaticString) throws(PMUError) -> [UInt8] {
        guard let bytes = readBytes(length: count) else {
            throw PMUError(.malformedFrame, "frame ends inside field '\(field)' (\(count) bytes expected)")
        }
        return bytes
    }

    mutating func readAccessKey() throws(PMUError) -> AccessKey {
        let high = try readLE(UInt64.self, "key")
        let low = try readLE(UInt64.self, "key")
        return AccessKey(high: high, low: low)
    }

    mutating func writeAccessKey(_ key: AccessKey) {
        writeLE(key.high)
        writeLE(key.low)
    }

    func expectEnd(_ opcode: Opcode) throws(PMUError) {
        guard readableBytes == 0 else {
            throw PMUError(.malformedFrame, "\(readableBytes) unexpected trailing bytes after \(opcode) body")
        }
    }
}
