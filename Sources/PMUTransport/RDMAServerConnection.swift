import CVerbs
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUVerbs

/// One accepted verbs connection on the server: its own protection domain (so its rkeys work on
/// no other connection), one completion queue on a completion channel, an RC queue pair,
/// `credits` pre-posted receive slots for requests and a few more send slots for replies, and
/// one memory region per granted handle.
///
/// Threads: the transport's connection-manager thread creates it and reports disconnects; a
/// thread of its own waits for completions (requests in, replies sent, errors) and, when the
/// connection ends, releases every verbs object in order. Requests go to the session on its event
/// loop in arrival order. The queue pair, its slots and their posting are a VerbsChannel (the
/// same as the client's), whose lock keeps posts off a destroyed queue pair.
final class RDMAServerConnection: @unchecked Sendable {
    struct Registration {
        var region: MemoryRegion
        var regionId: UInt64
        var epoch: UInt64
        var writable: Bool
        var owner: AnyObject
    }

    let id: UInt64
    let idPointer: UnsafeMutablePointer<rdma_cm_id>
    let eventLoop: any EventLoop
    let remoteAddress: String
    /// The control channel; its extra part is the connection's protection domain (grants are
    /// registered in it).
    private let channel: VerbsChannel<ProtectionDomain>
    private let freeSends: FreeList
    /// Requests received and not yet answered. An honest client never has more than its credits
    /// out; one that does would queue unbounded work in its Session (receive slots are reposted
    /// at once), so it is disconnected.
    private let outstanding = NIOLockedValueBox(0)
    private let registrations = NIOLockedValueBox<[AccessKey: Registration]>([:])
    private let closing = ManagedAtomicFlag()
    private var logger: Logger
    /// Event-loop confined.
    private var handler: (any RequestHandler)?
    /// Who releases the verbs objects: the completion thread once started, else `shutdown`.
    /// Under a lock: `established` runs on the rdma_cm thread, `shutdown` and `completionThread`
    /// (read by `RDMAServerTransport.stop` to join it) on any thread.
    private enum Loop { case notStarted, running(JoinableThread), released }
    private let loop = NIOLockedValueBox(Loop.notStarted)
    private let polling: RDMAPolling
    private let onFinished: @Sendable (RDMAServerConnection) -> Void

    init(connection: ConnectionID, id: UInt64, eventLoop: any EventLoop, logger: Logger, polling: RDMAPolling,
         onFinished: @escaping @Sendable (RDMAServerConnection) -> Void) throws(VerbsError) {
        self.polling = polling
        guard let context = connection.context else {
            throw VerbsError(.noDevice, operation: "CONNECT_REQUEST", message: "the incoming connection has no RDMA device")
        }
        let protectionDomain = try ProtectionDomain(context: context)
        let credits = RDMALimits.credits
        // Receives: one per credit. Sends: one per credit, plus room for connection-level errors
        // (id 0) and replies whose SEND completion has not been polled yet when the next
        // request's reply goes out.
        channel = try VerbsChannel(connection: connection, context: context, protectionDomain: protectionDomain, shape: .init(
            completionQueueEntries: credits * 4 + 8, sendRequests: credits + 12, receiveRequests: credits,
            receiveSlots: (credits, RDMALimits.requestSlotBytes), sendSlots: (credits + 8, RDMALimits.replySlotBytes)),
            extra: protectionDomain)
        self.id = id
        self.idPointer = connection.pointer
        self.eventLoop = eventLoop
        self.freeSends = FreeList(count: channel.sendSlotCount)
        self.remoteAddress = RDMAServerConnection.peerAddress(connection.pointer)
        self.logger = logger
        self.logger[metadataKey: "connection"] = "\(id)"
        self.onFinished = onFinished
    }

    /// ESTABLISHED: create the session, then start taking completions (requests that arrived
    /// before this wait in the CQ, so the session sees them after it exists, in order).
    func established(makeHandler: @escaping @Sendable (ConnectionInfo) -> any RequestHandler) {
        let info = ConnectionInfo(id: id, remoteAddress: remoteAddress, eventLoop: eventLoop,
                                  replies: RDMAReplySink(connection: self), memory: RDMARegistrar(connection: self),
                                  maxReplyBytes: RDMALimits.replySlotBytes)
        eventLoop.execute { self.handler = makeHandler(info) }
        let failure = loop.withLockedValue { loop -> PMUError? in
            guard case .notStarted = loop, !closing.isSet else { return nil }
            do throws(PMUError) {
                // Started under the lock, so `completionThread` never sees `running` without it.
                loop = .running(try JoinableThread(name: "pmu-rdma-cq-\(id)") { [self] in completionLoop() })
                return nil
            } catch {
                return error
            }
        }
        if let failure { shutdown("no completion thread: \(failure.message)") }
    }

    /// The completion thread, once `established` started it (the transport's `stop` joins it).
    var completionThread: JoinableThread? {
        loop.withLockedValue { loop in
            if case .running(let thread) = loop { return thread }
            return nil
        }
    }

    /// Ends the connection once, from any thread: revokes every rkey now, moves the QP to error,
    /// tells the session. The completion thread then releases the verbs objects.
    func shutdown(_ reason: String) {
        guard closing.setOnce() else { return }
        logger.debug("verbs connection closing", metadata: ["reason": "\(reason)"])
        let all = registrations.withLockedValue { registrations -> [Registration] in
            defer { registrations.removeAll() }
            return Array(registrations.values)
        }
        for registration in all { try? registration.region.deregister() }
        channel.disconnect()
        eventLoop.execute {
            self.handler?.connectionClosed()
            self.handler = nil
        }
        // No completion thread (never established, or established lost the race): release here.
        let releaseHere = loop.withLockedValue { loop -> Bool in
            guard case .notStarted = loop else { return false }
            loop = .released
            return true
        }
        if releaseHere { release() }
    }

    var isClosing: Bool { closing.isSet }

    // MARK: completions

    private func completionLoop() {
        CompletionPump(polling: polling).run(.init(
            stopped: { [closing] in closing.isSet },
            poll: channel.poll,
            arm: channel.arm,
            sleep: { [completions = channel.completionChannel] milliseconds in
                if waitReadable([completions.fileDescriptor], timeoutMilliseconds: milliseconds)[0] { try? completions.consumeEvent() }
            },
            handle: { [self] completion in handle(completion) },
            failed: { [self] error in shutdown("completion queue: \(error)") }))
        release()
    }

    private func handle(_ completion: WorkCompletion) {
        guard completion.isSuccess else {
            // Flushes after our own shutdown are expected; anything else ends the connection. A
            // client that wrote with a bad rkey moved both QPs to error: this is how we see it.
            if !closing.isSet {
                logger.notice("verbs connection failed; closing it", metadata: [
                    "status": "\(completion.statusName)", "detail": "\(completion.statusText)"])
            }
            shutdown("work completion \(completion.statusName)")
            return
        }
        switch CompletedWork(completion) {
        case .received(let slot, let byteCount): received(slot: slot, byteCount: byteCount)
        case .sent(let slot): freeSends.give(slot)
        case .data, nil: break
        }
    }

    private func received(slot: Int, byteCount: Int) {
        // Copy out, then hand the slot straight back to the device (the client's credit returns
        // with our reply, by which time the slot is posted again).
        guard var bytes = channel.takeReceived(slot, byteCount: byteCount) else { return }
        let unanswered = outstanding.withLockedValue { count -> Int in
            count += 1
            return count
        }
        guard unanswered <= RDMALimits.credits else {
            return shutdown("the client sent \(unanswered) requests without waiting for replies; its credits are \(RDMALimits.credits)")
        }
        do {
            guard let frame = try FrameCodec.decode(Request.self, from: &bytes, maxFrameBytes: RDMALimits.requestSlotBytes),
                  bytes.readableBytes == 0 else {
                let error = PMUError(.malformedFrame, "a verbs SEND must hold exactly one whole frame")
                eventLoop.execute { self.handler?.malformedFrame(error, requestId: nil) }
                return
            }
            eventLoop.execute { self.handler?.handle(frame) }
        } catch {
            eventLoop.execute { self.handler?.malformedFrame(error.error, requestId: error.requestId) }
        }
    }

    // MARK: replies

    func send(_ response: Response, requestId: UInt64) {
        guard !closing.isSet else { return }
        outstanding.withLockedValue { $0 = max(0, $0 - 1) }
        var buffer = ByteBuffer()
        FrameCodec.encode(Frame(requestId: requestId, message: response), into: &buffer)
        if buffer.readableBytes > RDMALimits.replySlotBytes {
            let size = buffer.readableBytes
            buffer.clear()
            FrameCodec.encode(Frame(requestId: requestId, message: Response.error(PMUError(
                .requestTooLarge, "the reply of \(size) bytes does not fit a verbs reply slot (\(RDMALimits.replySlotBytes) bytes): for LIST ask for fewer entries; for READ use the one-sided path (the client library does) or read at most \(RDMALimits.replySlotBytes - 64) bytes per READ frame"))),
                into: &buffer)
        }
        guard let slot = freeSends.take() else {
            // Cannot happen while the client keeps to its credits: it is not, so it goes.
            return shutdown("no free send slot: the client exceeded its \(RDMALimits.credits) credits")
        }
        if let failed = channel.send(buffer, fromSlot: slot) { shutdown("posting a reply: \(failed)") }
    }

    // MARK: memory registrations

    func register(key: AccessKey, regionId: UInt64, epoch: UInt64, writable: Bool, memory: GrantedMemory) throws(PMUError) -> RemoteAccess {
        let registered: MemoryRegion??
        do throws(VerbsError) {
            registered = try channel.withParts { parts throws(VerbsError) -> MemoryRegion? in
                guard !closing.isSet else { return nil }
                // Read-only handles get a read-only MR: the device itself refuses their writes.
                let access: AccessFlags = writable ? .region : [.remoteRead]
                return try MemoryRegion(protectionDomain: parts.extra, address: memory.base, lengthBytes: memory.lengthBytes, access: access)
            }
        } catch {
            throw PMUError.rdma(error, "cannot register region \(regionId) (\(memory.lengthBytes) bytes) for remote access")
        }
        guard let region = registered ?? nil else { throw PMUError(.connectionClosed, "the verbs connection is closing") }
        registrations.withLockedValue {
            $0[key] = Registration(region: region, regionId: regionId, epoch: epoch, writable: writable, owner: memory.owner)
        }
        if closing.isSet { try? region.deregister() }
        return RemoteAccess(address: UInt64(UInt(bitPattern: memory.base)), rkey: region.rkey)
    }

    func invalidate(where match: (Registration) -> Bool) {
        let gone = registrations.withLockedValue { registrations -> [Registration] in
            let keys = registrations.filter { match($0.value) }.map(\.key)
            return keys.compactMap { registrations.removeValue(forKey: $0) }
        }
        for registration in gone { try? registration.region.deregister() }
    }

    func invalidate(key: AccessKey) {
        let gone = registrations.withLockedValue { $0.removeValue(forKey: key) }
        try? gone?.region.deregister()
    }

    // MARK: teardown

    /// Releases the verbs objects: the registrations, then the channel (VerbsChannel.release has
    /// the order). Runs once, on the completion thread (or in `shutdown` when the connection
    /// never got one).
    private func release() {
        onFinished(self)
        let all = registrations.withLockedValue { registrations -> [Registration] in
            defer { registrations.removeAll() }
            return Array(registrations.values)
        }
        for registration in all { try? registration.region.deregister() }
        channel.release()
    }

    static func peerAddress(_ id: UnsafeMutablePointer<rdma_cm_id>) -> String {
        var address = id.pointee.route.addr.dst_addr
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin -> String in
                var addr = sin.pointee.sin_addr
                var text = [CChar](repeating: 0, count: 64)
                guard inet_ntop(AF_INET, &addr, &text, 64) != nil else { return "?" }
                let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return "rdma://\(host):\(UInt16(bigEndian: sin.pointee.sin_port))"
            }
        }
    }
}

/// A flag set once, readable from any thread.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let value = NIOLockedValueBox(false)
    /// True for the one caller that set it.
    func setOnce() -> Bool { value.withLockedValue { if $0 { return false }; $0 = true; return true } }
    var isSet: Bool { value.withLockedValue { $0 } }
}

struct RDMAReplySink: ReplySink {
    let connection: RDMAServerConnection

    func send(_ response: Response, requestId: UInt64) { connection.send(response, requestId: requestId) }

    func sendAndClose(_ response: Response, requestId: UInt64) {
        connection.send(response, requestId: requestId)
        // Give the SEND time to land in the client's receive slot before the QP goes to error.
        let connection = self.connection
        connection.eventLoop.scheduleTask(in: .milliseconds(500)) { connection.shutdown("closed by the session") }
    }

    func close() { connection.shutdown("closed by the session") }
    /// Nothing to pause: the client never has more than `RDMALimits.credits` requests
    /// outstanding, which already bounds what the session can queue.
    func pauseReading() {}
    func resumeReading() {}
}

struct RDMARegistrar: MemoryRegistrar {
    let connection: RDMAServerConnection

    func register(key: AccessKey, regionId: UInt64, epoch: UInt64, writable: Bool, memory: GrantedMemory) throws(PMUError) -> RemoteAccess {
        try connection.register(key: key, regionId: regionId, epoch: epoch, writable: writable, memory: memory)
    }
    func invalidate(key: AccessKey) { connection.invalidate(key: key) }
    func invalidate(regionId: UInt64) { connection.invalidate { $0.regionId == regionId } }
    func fence(regionId: UInt64, below epoch: UInt64) {
        connection.invalidate { $0.regionId == regionId && $0.writable && $0.epoch < epoch }
    }
}
