import NIOCore
import PMUCore

/// The outcome of the newest scrub pass over a set, kept as the checkpoint payload of each
/// server's `<name>.scrub` region (overwrite mode) so `pmuctl cluster status` can show it from
/// whichever servers are left. docs/CLUSTER.md section 6a.
public struct ScrubRecord: Sendable, Equatable {
    static let magic: UInt64 = 0x3142_5243_5355_4D50 // "PMUSCRB1"
    static let version: UInt16 = 1
    /// Encoded length: magic, version, set id, ten u64 counters and times, CRC32C.
    public static let encodedBytes = 8 + 2 + 16 + 10 * 8 + 4

    public var setID: SetID
    /// When the pass started and finished, ns since the Unix epoch (CLOCK_REALTIME).
    public var startedNanoseconds: UInt64
    public var finishedNanoseconds: UInt64
    /// Passes over this set recorded so far, this one included.
    public var passes: UInt64
    /// Pieces (one server's share of one complete checkpoint) whose every subsegment was read.
    public var piecesChecked: UInt64
    public var subsegmentsChecked: UInt64
    public var bytesRead: UInt64
    /// Subsegments that failed their CRC32C; each was either repaired or left unrepaired.
    public var damaged: UInt64
    public var repaired: UInt64
    public var unrepaired: UInt64
    /// Newest complete checkpoint the pass covered (0: the set had none).
    public var newestSequence: UInt64

    public init(setID: SetID, startedNanoseconds: UInt64, finishedNanoseconds: UInt64, passes: UInt64, piecesChecked: UInt64, subsegmentsChecked: UInt64, bytesRead: UInt64, damaged: UInt64, repaired: UInt64, unrepaired: UInt64, newestSequence: UInt64) {
        self.setID = setID
        self.startedNanoseconds = startedNanoseconds
        self.finishedNanoseconds = finishedNanoseconds
        self.passes = passes
        self.piecesChecked = piecesChecked
        self.subsegmentsChecked = subsegmentsChecked
        self.bytesRead = bytesRead
        self.damaged = damaged
        self.repaired = repaired
        self.unrepaired = unrepaired
        self.newestSequence = newestSequence
    }

    var counters: [UInt64] {
        [startedNanoseconds, finishedNanoseconds, passes, piecesChecked, subsegmentsChecked, bytesRead, damaged, repaired, unrepaired, newestSequence]
    }

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic, endianness: .little)
        buffer.writeInteger(Self.version, endianness: .little)
        buffer.writeBytes(setID.bytes)
        for value in counters { buffer.writeInteger(value, endianness: .little) }
        buffer.writeInteger(CRC32C.checksum(buffer.readableBytesView), endianness: .little)
        return buffer
    }

    /// nil for anything but an intact record of a possible pass: exact length, CRC, magic and
    /// version, finished not before started, damaged = repaired + unrepaired (without overflow),
    /// no more damaged than checked subsegments and no more pieces than subsegments.
    public static func decode(_ bytes: ByteBuffer) -> ScrubRecord? {
        guard bytes.readableBytes == encodedBytes else { return nil }
        let body = encodedBytes - 4
        guard CRC32C.checksum(bytes.readableBytesView.prefix(body)) == bytes.getInteger(at: bytes.readerIndex + body, endianness: .little, as: UInt32.self) else { return nil }
        var buffer = bytes.getSlice(at: bytes.readerIndex, length: body)!
        guard buffer.readLE(UInt64.self) == magic, buffer.readLE(UInt16.self) == version, let id = buffer.readBytes(length: 16) else { return nil }
        var values: [UInt64] = []
        for _ in 0..<10 {
            guard let value = buffer.readLE(UInt64.self) else { return nil }
            values.append(value)
        }
        let record = ScrubRecord(
            setID: SetID(bytes: id), startedNanoseconds: values[0], finishedNanoseconds: values[1], passes: values[2], piecesChecked: values[3],
            subsegmentsChecked: values[4], bytesRead: values[5], damaged: values[6], repaired: values[7], unrepaired: values[8], newestSequence: values[9])
        let (sum, overflow) = record.repaired.addingReportingOverflow(record.unrepaired)
        guard !overflow, sum == record.damaged, record.finishedNanoseconds >= record.startedNanoseconds, record.passes >= 1,
            record.damaged <= record.subsegmentsChecked, record.piecesChecked <= record.subsegmentsChecked
        else { return nil }
        return record
    }
}

/// Bounds a scrubber's read rate: after `bytes` read in `elapsed` nanoseconds, how long to wait
/// before reading more so the average stays at or below `bytesPerSecond`. Pure, so it is tested
/// without clocks; the scrubber sleeps what it says.
public struct ScrubPacing: Sendable {
    public let bytesPerSecond: UInt64

    public init(bytesPerSecond: UInt64) throws(PMUError) {
        guard bytesPerSecond >= 4096 else {
            throw PMUError(.invalidArgument, "scrub rate must be at least 4096 bytes/s, got \(bytesPerSecond)")
        }
        self.bytesPerSecond = bytesPerSecond
    }

    /// Nanoseconds to wait (0 when behind the allowed rate). Saturates instead of overflowing.
    public func delayNanoseconds(afterBytes bytes: UInt64, elapsedNanoseconds elapsed: UInt64) -> UInt64 {
        // Time the bytes are allowed to take: bytes / rate seconds, computed without overflow.
        let seconds = bytes / bytesPerSecond
        let rest = bytes % bytesPerSecond
        let (whole, o1) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let fraction = UInt64((Double(rest) / Double(bytesPerSecond)) * 1e9)
        let (allowed, o2) = whole.addingReportingOverflow(fraction)
        if o1 || o2 { return UInt64.max }
        return allowed > elapsed ? allowed - elapsed : 0
    }
}
