import PMUCore

/// How a checkpoint is protected across servers: groups of k data subsegments plus m parity
/// subsegments (m = 1: XOR parity as in RAID-5; m >= 2: Reed-Solomon), each subsegment stored on
/// `copies` different servers. Pure mirroring is k = 1, m = 0, copies = R.
public struct Redundancy: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    public static let maxData = 32
    public static let maxParity = 16
    public static let maxCopies = 8
    /// Servers a stripe may span (names are kept in every piece header).
    public static let maxServers = 64

    public var k: Int
    public var m: Int
    public var copies: Int

    public init(k: Int, m: Int, copies: Int = 1) {
        self.k = k
        self.m = m
        self.copies = copies
    }

    public static func mirror(_ copies: Int) -> Redundancy { Redundancy(k: 1, m: 0, copies: copies) }

    /// Subsegments per group (data + parity).
    public var groupWidth: Int { k + m }
    /// Servers one group touches: every copy of every subsegment on a different server.
    public var serversPerGroup: Int { (k + m) * copies }

    /// Servers any one group can lose and still be reassembled (copies of one subsegment must all
    /// go before it is missing; any m missing subsegments are rebuilt from parity).
    public var guaranteedLosses: Int { (m + 1) * copies - 1 }

    public var description: String {
        if k == 1 && m == 0 { return "mirror x\(copies)" }
        let base = m == 0 ? "k=\(k) (no parity)" : "k=\(k) m=\(m) (\(m == 1 ? "XOR" : "Reed-Solomon"))"
        return copies > 1 ? "\(base), each subsegment on \(copies) servers" : base
    }

    public func validate(serverCount: Int) throws(PMUError) {
        guard (1...Self.maxData).contains(k), (0...Self.maxParity).contains(m), (1...Self.maxCopies).contains(copies) else {
            throw PMUError(.invalidArgument, "redundancy k=\(k) m=\(m) copies=\(copies) out of range: k must be 1...\(Self.maxData), m 0...\(Self.maxParity), copies 1...\(Self.maxCopies)")
        }
        guard serverCount <= Self.maxServers else {
            throw PMUError(.invalidArgument, "a stripe spans at most \(Self.maxServers) servers; the map lists \(serverCount)")
        }
        guard serverCount >= serversPerGroup else {
            throw PMUError(.invalidArgument, "\(self) needs \(serversPerGroup) servers ((k + m) x copies, each on a different server); the cluster map lists \(serverCount)")
        }
    }
}
