#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUVerbs

/// Sizes shared by both ends of a verbs connection. Control frames travel one per SEND into a
/// pre-posted receive slot, so each direction's frames must fit its slot.
public enum RDMALimits {
    /// Requests the client may have outstanding = receive slots the server posts per connection.
    /// The client never exceeds it, so the server never sees a SEND without a receive (no RNR).
    public static let credits = 16
    /// Largest request frame (control requests are small; WRITE/READ go one-sided).
    public static let requestSlotBytes = 16 * 1024
    /// Largest reply frame (LIST pages stay within half of it and set `more`). Registered
    /// memory per server connection: credits × request slot + (credits + 8) × reply slot ≈ 1.8 MiB.
    public static let replySlotBytes = 64 * 1024
    /// ACK timeout exponent: 4.096 µs × 2^19 ≈ 2.1 s, × 7 retries ≈ 15 s before a silent peer
    /// counts as gone. The default (~67 ms × 7) failed healthy connections of a loaded,
    /// emulated soft-RoCE VM; a dead peer is usually noticed sooner anyway, by rdma_cm's
    /// DISCONNECTED when its process exits.
    public static let ackTimeoutExponent: UInt8 = 19
}

/// wr_id layout: kind in the top byte, index or operation number below.
enum WorkRequestKind: UInt64 {
    case receive = 1
    case send = 2
    case data = 3

    func id(_ index: Int) -> UInt64 { rawValue << 56 | UInt64(index) }
    static func split(_ id: UInt64) -> (WorkRequestKind?, Int) {
        (WorkRequestKind(rawValue: id >> 56), Int(truncatingIfNeeded: id & 0x00FF_FFFF_FFFF_FFFF))
    }
}

/// What a successful work completion did, read from its wr_id.
enum CompletedWork {
    /// A peer's frame arrived in receive slot `slot`.
    case received(slot: Int, byteCount: Int)
    /// Send slot `slot` is free again.
    case sent(slot: Int)
    /// One-sided operation `operation` completed.
    case data(operation: Int)

    init?(_ completion: WorkCompletion) {
        let (kind, index) = WorkRequestKind.split(completion.workRequestID)
        switch kind {
        case .receive: self = .received(slot: index, byteCount: Int(completion.byteLength))
        case .send: self = .sent(slot: index)
        case .data: self = .data(operation: index)
        case nil: return nil
        }
    }
}

/// `count` fixed-size slots in one registered buffer (local access only).
final class RegisteredSlots: @unchecked Sendable {
    let memory: UnsafeMutableRawPointer
    let region: MemoryRegion
    let slotBytes: Int
    let count: Int

    init(protectionDomain: ProtectionDomain, count: Int, slotBytes: Int) throws(VerbsError) {
        memory = UnsafeMutableRawPointer.allocate(byteCount: count * slotBytes, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: count * slotBytes)
        do {
            region = try MemoryRegion(protectionDomain: protectionDomain, address: memory, lengthBytes: count * slotBytes, access: .localWrite)
        } catch {
            memory.deallocate()
            throw error
        }
        self.slotBytes = slotBytes
        self.count = count
    }

    deinit {
        // Deregister before freeing: the device must never write into freed memory.
        try? region.deregister()
        memory.deallocate()
    }

    func pointer(_ index: Int) -> UnsafeMutableRawPointer { memory + index * slotBytes }
    func offset(_ index: Int) -> Int { index * slotBytes }

    // What both halves of a verbs connection do with their control slots.

    /// Posts every slot as a receive (at connection set-up).
    func postAllReceives(on queuePair: QueuePair) throws(VerbsError) {
        for slot in 0..<count { try postReceive(slot, on: queuePair) }
    }

    /// Copies the frame received into `slot` out and posts the slot again at once: the peer's
    /// credit comes back with the reply, by which time the slot is posted again.
    func takeReceived(_ slot: Int, byteCount: Int, repostingOn queuePair: QueuePair) -> ByteBuffer {
        let bytes = ByteBuffer(bytes: UnsafeRawBufferPointer(start: pointer(slot), count: min(byteCount, slotBytes)))
        try? postReceive(slot, on: queuePair)
        return bytes
    }

    /// Copies `frame` (at most `slotBytes`) into `slot` and posts it as a SEND.
    func send(_ frame: ByteBuffer, fromSlot slot: Int, on queuePair: QueuePair) throws(VerbsError) {
        precondition(frame.readableBytes <= slotBytes, "frame larger than its send slot")
        frame.withUnsafeReadableBytes { pointer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        try queuePair.postSend(local: region, localOffset: offset(slot), lengthBytes: frame.readableBytes, workRequestID: WorkRequestKind.send.id(slot))
    }

    private func postReceive(_ slot: Int, on queuePair: QueuePair) throws(VerbsError) {
        try queuePair.postReceive(local: region, localOffset: offset(slot), lengthBytes: slotBytes, workRequestID: WorkRequestKind.receive.id(slot))
    }
}

/// Free slot indices, taken before a post and returned on its completion.
final class FreeList: @unchecked Sendable {
    private let free: NIOLockedValueBox<[Int]>
    init(count: Int) { free = NIOLockedValueBox(Array((0..<count).reversed())) }
    func take() -> Int? { free.withLockedValue { $0.popLast() } }
    func give(_ index: Int) { free.withLockedValue { $0.append(index) } }
}

extension PMUError {
    /// A verbs failure as the client or server reports it: the call, errno and hint are in the text.
    static func rdma(_ error: VerbsError, _ what: String) -> PMUError {
        PMUError(.rdmaError, "\(what): \(error)")
    }
}

extension NIOLockedValueBox {
    /// `withLockedValue` for a body that throws only VerbsError (its `rethrows` erases the type).
    func withVerbsLock<T>(_ body: (inout Value) throws(VerbsError) -> T) throws(VerbsError) -> T {
        try withLockedValue { value in Result { () throws(VerbsError) -> T in try body(&value) } }.get()
    }
}
