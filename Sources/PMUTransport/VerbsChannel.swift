import CVerbs
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUVerbs

/// The control half of one verbs connection, the same at both ends: an RC queue pair whose sends
/// and receives complete on one completion queue with its completion channel, `receives`
/// pre-posted slots for the peer's SENDs (each reposted as soon as its frame is copied out, so
/// the peer's credit is good again by the time our reply reaches it), `sends` slots for ours,
/// and the poll and re-arm that CompletionPump drives. The client transport and every server
/// connection hold one. `Extra` is what only one end keeps with them under the same lock: the
/// client's bounce buffers, the server's protection domain for region registrations.
///
/// Every post, poll and re-arm takes the channel's lock and `release` drops the verbs objects
/// under it, so nothing is posted on, or polled from, a destroyed queue pair. Dropping them in
/// one assignment releases them in the order the kernel needs (QP before the MRs, CQ and ID it
/// uses; MRs and QP before their PD; CQ before its channel): each wrapper holds references to
/// what it depends on, so each deinit runs after its dependents'.
final class VerbsChannel<Extra>: @unchecked Sendable {
    struct Parts {
        var queuePair: QueuePair
        var completionQueue: CompletionQueue
        var receives: RegisteredSlots
        var sends: RegisteredSlots
        var connection: ConnectionID
        var extra: Extra
    }

    /// Sizes of one end's queues and slots.
    struct Shape {
        var completionQueueEntries: Int
        var sendRequests: Int
        var receiveRequests: Int
        var receiveSlots: (count: Int, bytes: Int)
        var sendSlots: (count: Int, bytes: Int)
    }

    let completionChannel: CompletionChannel
    private let parts: NIOLockedValueBox<Parts?>
    let sendSlotCount: Int

    /// Creates the queues and slots on `protectionDomain`, posts every receive slot and arms the
    /// completion queue. Not connected yet: the caller accepts or connects `connection`.
    init(connection: ConnectionID, context: Context, protectionDomain: ProtectionDomain, shape: Shape, extra: Extra) throws(VerbsError) {
        let channel = try CompletionChannel(context: context)
        let completionQueue = try CompletionQueue(context: context, capacity: Int32(shape.completionQueueEntries), channel: channel)
        var capacity = QueuePairCapacity()
        capacity.sendRequests = UInt32(shape.sendRequests)
        capacity.receiveRequests = UInt32(shape.receiveRequests)
        let queuePair = try QueuePair(connection: connection, protectionDomain: protectionDomain,
                                      sendQueue: completionQueue, receiveQueue: completionQueue, capacity: capacity)
        let receives = try RegisteredSlots(protectionDomain: protectionDomain, count: shape.receiveSlots.count, slotBytes: shape.receiveSlots.bytes)
        let sends = try RegisteredSlots(protectionDomain: protectionDomain, count: shape.sendSlots.count, slotBytes: shape.sendSlots.bytes)
        try receives.postAllReceives(on: queuePair)
        try completionQueue.requestNotification()
        completionChannel = channel
        sendSlotCount = shape.sendSlots.count
        parts = NIOLockedValueBox(Parts(queuePair: queuePair, completionQueue: completionQueue, receives: receives,
                                        sends: sends, connection: connection, extra: extra))
    }

    /// Runs `body` on the parts under the lock; nil once released.
    func withParts<T>(_ body: (Parts) throws(VerbsError) -> T) throws(VerbsError) -> T? {
        try parts.withVerbsLock { (parts: inout Parts?) throws(VerbsError) -> T? in
            guard let parts else { return nil }
            return try body(parts)
        }
    }

    /// Copies `frame` into send slot `slot` and posts it as a SEND. The error says why it was
    /// not posted (a verbs failure, or the channel released).
    func send(_ frame: ByteBuffer, fromSlot slot: Int) -> VerbsError? {
        do throws(VerbsError) {
            let posted: Void? = try withParts { parts throws(VerbsError) in try parts.sends.send(frame, fromSlot: slot, on: parts.queuePair) }
            return posted == nil ? VerbsError(.connection, operation: "SEND", message: "the connection is closed") : nil
        } catch {
            return error
        }
    }

    /// The frame the peer sent into receive slot `slot`, copied out, the slot posted again at
    /// once; nil once released.
    func takeReceived(_ slot: Int, byteCount: Int) -> ByteBuffer? {
        parts.withLockedValue { $0.map { $0.receives.takeReceived(slot, byteCount: byteCount, repostingOn: $0.queuePair) } }
    }

    /// CompletionPump's poll: 0 once released.
    func poll(into entries: UnsafeMutablePointer<ibv_wc>, capacity: Int) throws(VerbsError) -> Int {
        try withParts { parts throws(VerbsError) in try parts.completionQueue.poll(into: entries, capacity: capacity) } ?? 0
    }

    /// CompletionPump's re-arm of the completion channel's notification.
    func arm() throws(VerbsError) {
        _ = try withParts { parts throws(VerbsError) in try parts.completionQueue.requestNotification() }
    }

    /// rdma_disconnect: the queue pair goes to error and the peer hears DISCONNECTED.
    func disconnect() {
        parts.withLockedValue { parts in try? parts?.connection.disconnect() }
    }

    /// Drops every verbs object of the channel (see the type's comment for the order).
    func release() {
        parts.withLockedValue { $0 = nil }
    }
}
