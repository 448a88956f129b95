import NIOCore
import PMUCore

/// What checkpointing needs from a region: positional reads and writes and a persist barrier.
///
/// The client library implements it over a remote region (any transport); PMUTesting implements it
/// in memory with simulated crashes, torn and lost writes. The checkpoint code is the same for both.
public protocol RegionIO: Sendable {
    var sizeBytes: UInt64 { get }
    /// How error messages name the region, e.g. `region "jobs"`.
    var regionDescription: String { get }
    func read(at offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer
    func write(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError)
    /// When it returns, every write to [offset, offset+length) that returned before the call is durable.
    func persist(at offset: UInt64, length: UInt64) async throws(PMUError)
    /// Write, then persist exactly those bytes; implementations may overlap the two (one round trip).
    func writeDurably(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError)
}

extension RegionIO {
    public var regionDescription: String { "the region" }

    public func writeDurably(at offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        try await write(at: offset, bytes)
        if bytes.readableBytes > 0 { try await persist(at: offset, length: UInt64(bytes.readableBytes)) }
    }
}
