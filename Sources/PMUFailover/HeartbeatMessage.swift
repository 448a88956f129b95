import Crypto
import Foundation

/// The heartbeat datagram (docs/WIRE_PROTOCOL.md section 15). UDP, not the TCP protocol: a
/// heartbeat must never wait behind a connection's queued multi-MiB requests, and a lost one
/// must simply count as a miss. Fixed 64 bytes, little-endian:
///
///     0  magic "PMHB"        4  version (1)       5  kind (1 ping, 2 pong)   6  role (1 primary, 2 monitor)
///     7  flags (bit 0: serving)  8  sequence u64  16  epoch u64 (the sender's fencing revision)
///     24 sender id (16 bytes, UTF-8, zero padded)  40 sent-at nanoseconds u64 (echoed in a pong)
///     48 HMAC-SHA256(pair secret, bytes 0..<48), first 16 bytes
///
/// The tag keeps a stray or forged packet from keeping a dead primary "alive" or from making a
/// booting primary believe a monitor answered. Replays only ever delay a takeover by the time a
/// replayed pong matches an outstanding sequence (sequences are never reused while running).
public struct HeartbeatMessage: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case ping = 1, pong = 2 }

    public var kind: Kind
    public var role: FailoverRole
    public var serving: Bool
    public var sequence: UInt64
    public var epoch: UInt64
    public var senderId: String
    public var sentAtNanoseconds: UInt64

    public static let size = 64
    public static let maxSenderIdBytes = 16
    static let magic: [UInt8] = Array("PMHB".utf8)
    static let version: UInt8 = 1

    public init(kind: Kind, role: FailoverRole, serving: Bool, sequence: UInt64, epoch: UInt64, senderId: String, sentAtNanoseconds: UInt64) {
        self.kind = kind
        self.role = role
        self.serving = serving
        self.sequence = sequence
        self.epoch = epoch
        self.senderId = senderId
        self.sentAtNanoseconds = sentAtNanoseconds
    }

    public func encode(secret: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.replaceSubrange(0..<4, with: Self.magic)
        bytes[4] = Self.version
        bytes[5] = kind.rawValue
        bytes[6] = role.wireValue
        bytes[7] = serving ? 1 : 0
        Self.put(sequence, into: &bytes, at: 8)
        Self.put(epoch, into: &bytes, at: 16)
        let id = Array(senderId.utf8.prefix(Self.maxSenderIdBytes))
        bytes.replaceSubrange(24..<(24 + id.count), with: id)
        Self.put(sentAtNanoseconds, into: &bytes, at: 40)
        bytes.replaceSubrange(48..<64, with: Self.tag(bytes[0..<48], secret: secret))
        return bytes
    }

    public enum DecodeError: Error, Equatable {
        case wrongSize(Int), badMagic, unsupportedVersion(UInt8), badKind(UInt8), badRole(UInt8), badTag, badSenderId
    }

    /// Every field checked; the tag is compared in constant time before any field is trusted.
    public static func decode(_ bytes: [UInt8], secret: [UInt8]) throws(DecodeError) -> HeartbeatMessage {
        guard bytes.count == size else { throw .wrongSize(bytes.count) }
        guard Array(bytes[0..<4]) == magic else { throw .badMagic }
        guard bytes[4] == version else { throw .unsupportedVersion(bytes[4]) }
        let expected = tag(bytes[0..<48], secret: secret)
        var difference: UInt8 = 0
        for index in 0..<16 { difference |= expected[index] ^ bytes[48 + index] }
        guard difference == 0 else { throw .badTag }
        guard let kind = Kind(rawValue: bytes[5]) else { throw .badKind(bytes[5]) }
        guard let role = FailoverRole(wireValue: bytes[6]) else { throw .badRole(bytes[6]) }
        let idBytes = bytes[24..<40].prefix { $0 != 0 }
        guard let senderId = String(validating: idBytes, as: UTF8.self) else { throw .badSenderId }
        return HeartbeatMessage(
            kind: kind, role: role, serving: bytes[7] & 1 != 0, sequence: get(bytes, at: 8), epoch: get(bytes, at: 16),
            senderId: senderId, sentAtNanoseconds: get(bytes, at: 40))
    }

    /// The 16-byte tag of bytes 0..<48 (public for the fuzz target, which re-tags mutated datagrams).
    public static func tag(_ body: ArraySlice<UInt8>, secret: [UInt8]) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        hmac.update(data: Array("pmu-heartbeat-v1".utf8))
        hmac.update(data: Array(body))
        return Array(Array(hmac.finalize()).prefix(16))
    }

    static func put(_ value: UInt64, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<8 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }

    static func get(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<8 { value |= UInt64(bytes[offset + index]) << (8 * UInt64(index)) }
        return value
    }
}
