/// An unguessable 128-bit capability naming one grant in the protection table.
///
/// Keys are drawn from the system CSPRNG (getrandom on Linux), so a client cannot forge or guess
/// another connection's key; the table still checks the connection a key was bound to.
public struct AccessKey: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> AccessKey {
        AccessKey(high: generator.next(), low: generator.next())
    }

    public static func random() -> AccessKey {
        var system = SystemRandomNumberGenerator()
        return random(using: &system)
    }

    public var description: String {
        let hex = String(high, radix: 16) + ":" + String(low, radix: 16)
        return "key(\(hex.prefix(6))…)" // never log a whole key
    }
}

/// What a grant allows. Write implies the holder may also persist.
public struct Rights: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let read = Rights(rawValue: 1)
    public static let write = Rights(rawValue: 2)
    public static let readWrite: Rights = [.read, .write]

    public var description: String {
        switch self {
        case .readWrite: "read-write"
        case .read: "read"
        case .write: "write"
        default: "none"
        }
    }
}
