import PMUCore

/// One subsegment copy of a striped checkpoint: group g, index j (0..<k data, k..<k+m parity), copy c.
public struct SubsegmentID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var group: Int
    public var index: Int
    public var copy: Int

    public init(group: Int, index: Int, copy: Int) {
        self.group = group
        self.index = index
        self.copy = copy
    }

    public static func < (a: SubsegmentID, b: SubsegmentID) -> Bool {
        (a.group, a.index, a.copy) < (b.group, b.index, b.copy)
    }

    public var description: String { "g\(group).\(index)" + (copy > 0 ? "c\(copy)" : "") }
}

/// Where every byte of one striped checkpoint lives. Pure arithmetic, shared by the writer, the
/// reader and rebuild, and stored (as its inputs) in every piece header.
///
/// The payload is cut into groups of k subsegments of `subsegmentBytes` (the last group is
/// zero-padded); each group gets m parity subsegments. Copy c of subsegment j of group g goes to
/// server (j + c(k+m) + g) mod n: the servers of one group are all different, and parity moves
/// to the next server from group to group (RAID-5 style rotation), so no server is the parity hot spot.
public struct StripeGeometry: Sendable, Equatable {
    /// Subsegments are a multiple of this (ISA-L's vector code is happiest on 64-byte multiples).
    public static let alignment = 64

    public var redundancy: Redundancy
    public var serverCount: Int
    public var payloadLength: UInt64
    public var subsegmentBytes: Int
    public var groups: Int

    public init(redundancy: Redundancy, serverCount: Int, payloadLength: UInt64, subsegmentBytes: Int, groups: Int) {
        self.redundancy = redundancy
        self.serverCount = serverCount
        self.payloadLength = payloadLength
        self.subsegmentBytes = subsegmentBytes
        self.groups = groups
    }

    /// Plans a checkpoint: subsegments as large as `maxSubsegmentBytes` allows, but no larger than
    /// one k-th of the payload, so a small checkpoint is not padded to k x max bytes.
    public static func plan(payloadLength: UInt64, redundancy: Redundancy, serverCount: Int, maxSubsegmentBytes: Int) throws(PMUError) -> StripeGeometry {
        try redundancy.validate(serverCount: serverCount)
        guard maxSubsegmentBytes >= alignment, maxSubsegmentBytes % alignment == 0, maxSubsegmentBytes <= Limits.maxIOBytes else {
            throw PMUError(.invalidArgument, "subsegment size must be a multiple of \(alignment) bytes from \(alignment) to \(Limits.maxIOBytes); got \(maxSubsegmentBytes)")
        }
        let k = UInt64(redundancy.k)
        let perData = (payloadLength + k - 1) / k
        let subsegment = Int(min(UInt64(maxSubsegmentBytes), max(UInt64(alignment), (perData + UInt64(alignment) - 1) / UInt64(alignment) * UInt64(alignment))))
        let groupBytes = UInt64(subsegment) * k
        let groups = Int((payloadLength + groupBytes - 1) / groupBytes)
        return StripeGeometry(redundancy: redundancy, serverCount: serverCount, payloadLength: payloadLength, subsegmentBytes: subsegment, groups: groups)
    }

    public var k: Int { redundancy.k }
    public var m: Int { redundancy.m }

    public func server(of id: SubsegmentID) -> Int {
        (id.index + id.copy * redundancy.groupWidth + id.group) % serverCount
    }

    /// Every subsegment copy of group g.
    public func copies(inGroup group: Int) -> [SubsegmentID] {
        var ids: [SubsegmentID] = []
        for copy in 0..<redundancy.copies {
            for index in 0..<redundancy.groupWidth { ids.append(SubsegmentID(group: group, index: index, copy: copy)) }
        }
        return ids
    }

    /// The subsegment copies server s holds, in the order its piece stores them.
    public func subsegments(onServer server: Int) -> [SubsegmentID] {
        var ids: [SubsegmentID] = []
        for group in 0..<groups {
            for id in copies(inGroup: group) where self.server(of: id) == server { ids.append(id) }
        }
        return ids
    }

    /// Payload bytes data subsegment (g, j) carries; shorter than a subsegment (or empty) in the
    /// last group, where the rest is zero padding.
    public func payloadRange(group: Int, index: Int) -> Range<UInt64> {
        precondition(index < k)
        let start = (UInt64(group) * UInt64(k) + UInt64(index)) * UInt64(subsegmentBytes)
        let lower = min(start, payloadLength)
        return lower..<min(start + UInt64(subsegmentBytes), payloadLength)
    }

    /// Bytes on the wire (and on disk) per payload byte: (k + m) x copies / k, padding aside.
    public var amplification: Double { Double(redundancy.serversPerGroup) / Double(k) }
}
