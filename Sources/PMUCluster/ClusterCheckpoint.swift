import NIOCore
import PMUCore
import PMUStripe

/// A checkpoint reassembled from a cluster, with what it took.
public struct ClusterCheckpoint: Sendable {
    public var sequence: UInt64
    public var timestampNanoseconds: UInt64
    public var payload: ByteBuffer
    public var redundancy: Redundancy
    /// Stripe servers whose pieces were not used: unreachable, without the set, or without this
    /// checkpoint's piece, with why.
    public var unavailable: [String: String]
    /// Subsegments read back but failing their CRC32C, as "server:g<group>.<index>".
    public var damaged: [String]
    /// Subsegments recomputed from parity (or taken from another copy).
    public var rebuilt: Int
    /// Newer complete checkpoints that could not be reassembled (too much lost), newest first.
    public var skipped: [UInt64]

    public var isDegraded: Bool { !unavailable.isEmpty || !damaged.isEmpty || rebuilt > 0 }
}

/// One complete checkpoint of a set as listed without reading its data.
public struct ClusterCheckpointInfo: Sendable {
    public var sequence: UInt64
    public var timestampNanoseconds: UInt64
    public var sizeBytes: UInt64
    public var redundancy: Redundancy
    /// Stripe servers holding an intact piece header for it.
    public var holders: [String]
    /// Stripe servers without it (and why).
    public var lacking: [String: String]
    /// More server losses it survives (judged from piece headers; `verify` reads the data);
    /// nil: it cannot be reassembled now.
    public var survivesMoreLosses: Int?
}

/// What `verify` found for one checkpoint.
public struct ClusterVerification: Sendable {
    public var sequence: UInt64
    public var damaged: [String]
    public var lacking: [String: String]
    /// nil when it reassembled and matched its CRC32C; else why not.
    public var failure: PMUError?
}
