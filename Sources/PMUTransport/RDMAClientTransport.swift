import CVerbs
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PMUCore
import PMUVerbs

/// The RDMA verbs transport's client side: control frames as SEND/RECV (at most
/// `RDMALimits.credits` requests outstanding, so the server always has a receive posted), and
/// region data by one-sided RDMA WRITE / READ through registered bounce buffers.
///
/// A completion thread waits on the completion channel and the connection-manager channel; it
/// matches replies to requests by id, data operations by work-request id, and fails everything
/// when the connection ends. An error completion (e.g. IBV_WC_REM_ACCESS_ERR for a revoked rkey)
/// moves the queue pair to error: the operation that caused it gets REMOTE_ACCESS, every other
/// waiter CONNECTION_CLOSED, and the transport is unusable afterwards.
public final class RDMAClientTransport: ClientTransport, OneSidedTransport, @unchecked Sendable {
    /// The control channel (the same as a server connection's); its extra part is the
    /// registered bounce buffers one-sided transfers go through.
    typealias Channel = VerbsChannel<RegisteredSlots>

    typealias ReplyWaiter = CheckedContinuation<Result<Response, PMUError>, Never>

    /// One-sided operations awaiting their completions. They need no deadline of ours: a
    /// reliable-connected QP completes every work request or fails it after its ACK timeout
    /// and retries (RDMALimits.ackTimeoutExponent), which fails the whole connection.
    struct Waiting {
        var dataOperations: [Int: CheckedContinuation<Result<Void, PMUError>, Never>] = [:]
        /// Posted, nobody waiting yet (`writeThenSend` posts the SEND before it waits).
        var unawaited: Set<Int> = []
        /// Completions of unawaited operations, until their waiter comes.
        var finished: [Int: Result<Void, PMUError>] = [:]
        var nextOperation = 1
        var failure: PMUError?
    }

    public let endpoint: Endpoint
    public let maxTransferBytes: Int
    /// e.g. "rxe0 port 1", for the log line saying which transport a client uses.
    public let deviceDescription: String
    private let eventChannel: EventChannel
    private let channel: Channel
    private let waiting = NIOLockedValueBox(Waiting())
    /// Set by the completion thread when the connection manager reports the server hung up.
    private let disconnected = NIOLockedValueBox<PMUError?>(nil)
    /// Control requests awaiting replies: ids, deadlines, cancellation (shared with TCP).
    private let replies: RequestTable<ReplyWaiter>
    private let sendSlots: AsyncSlots
    private let credits: AsyncSlots
    private let bounceSlots: AsyncSlots
    private let closing = ManagedAtomicFlag()
    private let polling: RDMAPolling
    /// Tasks that prefer it run on the completion thread (`PMUClient.taskExecutor`).
    private let executor: CompletionThreadExecutor
    /// The completion thread, set once by `connect`; `close` joins it.
    private let thread = NIOLockedValueBox<JoinableThread?>(nil)

    private init(endpoint: Endpoint, channel: Channel, bounce: RegisteredSlots, eventChannel: EventChannel, deviceDescription: String, limits: RequestLimits, polling: RDMAPolling, executor: CompletionThreadExecutor) {
        self.polling = polling
        self.executor = executor
        self.endpoint = endpoint
        self.maxTransferBytes = bounce.slotBytes
        self.deviceDescription = deviceDescription
        self.eventChannel = eventChannel
        self.channel = channel
        self.sendSlots = AsyncSlots(count: channel.sendSlotCount)
        self.credits = AsyncSlots(count: RDMALimits.credits)
        self.replies = RequestTable(limits: RequestLimits(
            requestTimeout: limits.requestTimeout, maxPendingRequests: min(limits.maxPendingRequests, RDMALimits.credits)))
        self.bounceSlots = AsyncSlots(count: bounce.count)
    }

    /// Resolves, connects and starts the completion thread. `bounceBuffers` × `bounceBytes` is
    /// the registered memory one-sided transfers go through (the client library's chunks in
    /// flight × chunk size).
    public static func connect(
        to endpoint: Endpoint, bounceBuffers: Int, bounceBytes: Int, connectTimeout: Duration = .seconds(10), limits: RequestLimits = .default,
        polling: RDMAPolling = .default
    ) async throws(PMUError) -> RDMAClientTransport {
        try limits.validate()
        // rdma_cm calls block: keep them off the cooperative pool.
        let result: Result<RDMAClientTransport, PMUError> = await withCheckedContinuation { continuation in
            let thread = Thread {
                do throws(PMUError) {
                    continuation.resume(returning: .success(try connectBlocking(endpoint, bounceBuffers, bounceBytes, connectTimeout, limits, polling)))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            thread.start()
        }
        let transport = try result.get()
        do throws(PMUError) {
            let thread = try JoinableThread(name: "pmu-rdma-client-cq") { transport.completionLoop() }
            transport.thread.withLockedValue { $0 = thread }
        } catch {
            transport.fail(error)
            transport.channel.release()
            transport.executor.stop()
            throw error
        }
        return transport
    }

    private static func connectBlocking(_ endpoint: Endpoint, _ bounceBuffers: Int, _ bounceBytes: Int, _ timeout: Duration, _ limits: RequestLimits, _ polling: RDMAPolling) throws(PMUError) -> RDMAClientTransport {
        guard (1...65535).contains(endpoint.port) else { throw PMUError(.invalidArgument, "port \(endpoint.port) out of range") }
        do throws(VerbsError) {
            let eventChannel = try EventChannel()
            let connection = try ConnectionID(channel: eventChannel)
            try connection.resolve(address: endpoint.host, port: UInt16(endpoint.port), timeout: timeout)
            guard let context = connection.context else {
                throw VerbsError(.noDevice, operation: "rdma_resolve_addr", message: "\(endpoint.host) resolved to no RDMA device")
            }
            let port = try context.requireActivePort(connection.pointer.pointee.port_num)
            let protectionDomain = try ProtectionDomain(context: context)
            let credits = RDMALimits.credits
            let bounce = try RegisteredSlots(protectionDomain: protectionDomain, count: bounceBuffers, slotBytes: bounceBytes)
            // Sends: one per credit. Receives (replies): one per credit, plus room for a
            // connection-level error (id 0).
            let channel = try Channel(connection: connection, context: context, protectionDomain: protectionDomain, shape: .init(
                completionQueueEntries: credits * 3 + bounceBuffers + 8, sendRequests: credits + bounceBuffers + 4, receiveRequests: credits + 4,
                receiveSlots: (credits + 4, RDMALimits.replySlotBytes), sendSlots: (credits, RDMALimits.requestSlotBytes)),
                extra: bounce)
            let executor: CompletionThreadExecutor
            do {
                executor = try CompletionThreadExecutor()
            } catch {
                throw VerbsError(.connection, operation: "pipe", message: error.message)
            }
            var parameters = ConnectionParameters()
            parameters.initiatorDepth = UInt8(clamping: max(1, min(try context.maxReadsInFlight(), 16)))
            parameters.responderResources = 0
            try? connection.setAckTimeout(exponent: RDMALimits.ackTimeoutExponent)
            try connection.connect(parameters, timeout: timeout)
            return RDMAClientTransport(endpoint: endpoint, channel: channel, bounce: bounce, eventChannel: eventChannel, deviceDescription: "\(context.name) port \(port.portNumber)", limits: limits, polling: polling,
                                       executor: executor)
        } catch {
            throw PMUError(error.kind == .memoryRegistration ? .rdmaError : .connectionClosed,
                           "cannot connect to pmu-server at \(endpoint) over RDMA (is it running with --transport rdma, listening on that address?): \(error)")
        }
    }

    public var oneSided: (any OneSidedTransport)? { self }
    /// The completion thread: a task preferring it continues where its completion was polled.
    public var taskExecutor: (any TaskExecutor)? { executor }
    public var transportDescription: String { "rdma (\(deviceDescription))" }

    // MARK: control

    public func send(_ request: Request) async throws -> Response {
        try await call(request)
    }

    private func call(_ request: Request) async throws(PMUError) -> Response {
        // The table's wait is the cancellable one, bounded by the credits; a credit comes back
        // when the server's reply arrives (even for a cancelled request), so the server never
        // holds more than `credits` requests of ours and always has a receive posted.
        let id = try await replies.reserve("\(request.opcode)")
        do {
            try await credits.acquire()
        } catch {
            _ = replies.cancel(id)
            throw error
        }
        let slot: Int
        do {
            slot = try await sendSlots.acquire()
        } catch {
            _ = replies.cancel(id)
            credits.release(0)
            throw error
        }
        let result: Result<Response, PMUError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                guard replies.attach(id, continuation) else {
                    sendSlots.release(slot)
                    credits.release(0)
                    return continuation.resume(returning: .failure(replies.failure ?? RequestTable<ReplyWaiter>.cancelled("\(request.opcode)")))
                }
                var buffer = ByteBuffer()
                FrameCodec.encode(Frame(requestId: id, message: request), into: &buffer)
                guard buffer.readableBytes <= RDMALimits.requestSlotBytes else {
                    let error = PMUError(.requestTooLarge, "a \(request.opcode) frame of \(buffer.readableBytes) bytes does not fit a verbs request slot (\(RDMALimits.requestSlotBytes) bytes)")
                    replies.cancel(id)?.resume(returning: .failure(error))
                    sendSlots.release(slot)
                    credits.release(0)
                    return
                }
                if let posted = channel.send(buffer, fromSlot: slot) { fail(PMUError(.connectionClosed, "cannot send to pmu-server over RDMA: \(posted)")) }
            }
        } onCancel: {
            replies.cancel(id)?.resume(returning: .failure(RequestTable<ReplyWaiter>.cancelled("\(request.opcode)")))
        }
        return try result.get()
    }

    // MARK: one-sided

    public func write(_ remote: RemoteAccess, offset: UInt64, _ bytes: ByteBuffer) async throws(PMUError) {
        precondition(bytes.readableBytes <= maxTransferBytes, "one-sided transfer larger than a bounce buffer")
        guard bytes.readableBytes > 0 else { return }
        let slot = try await bounceSlots.acquire()
        defer { bounceSlots.release(slot) }
        try await awaitData(try postWrite(remote, offset: offset, bytes, slot: slot))
    }

    public func read(_ remote: RemoteAccess, offset: UInt64, length: Int) async throws(PMUError) -> ByteBuffer {
        precondition(length <= maxTransferBytes, "one-sided transfer larger than a bounce buffer")
        guard length > 0 else { return ByteBuffer() }
        let slot = try await bounceSlots.acquire()
        defer { bounceSlots.release(slot) }
        try await dataOperation("RDMA READ of \(length) bytes at offset \(offset)") { (parts, id) throws(VerbsError) in
            try parts.queuePair.postRead(local: parts.extra.region, localOffset: parts.extra.offset(slot),
                                             lengthBytes: length, remoteAddress: remote.address &+ offset,
                                             rkey: remote.rkey, workRequestID: id)
        }
        // The connection can fail between the completion and this copy (another operation's
        // error tears it down): that is an error, never an empty or short result.
        let copied = try? channel.withParts { parts in ByteBuffer(bytes: UnsafeRawBufferPointer(start: parts.extra.pointer(slot), count: length)) }
        guard let bytes = copied ?? nil else {
            throw PMUError(.connectionClosed, "the verbs connection closed after an RDMA READ of \(length) bytes completed, before its data was copied out")
        }
        return bytes
    }

    /// Writes `bytes`, then sends `request` right behind the WRITE on the same reliable-connected
    /// queue pair without waiting for the WRITE's completion: RC delivers a SEND posted after an
    /// RDMA WRITE only once the WRITE's data is placed, so a PERSIST sent this way covers it. One
    /// round trip for a durable write. The WRITE's own failure (REMOTE_ACCESS) is reported before
    /// the request's (whose SEND is then flushed with the dead queue pair).
    public func writeThenSend(_ remote: RemoteAccess, offset: UInt64, _ bytes: ByteBuffer, then request: Request) async throws(PMUError) -> Response {
        precondition(bytes.readableBytes <= maxTransferBytes, "one-sided transfer larger than a bounce buffer")
        let slot = try await bounceSlots.acquire()
        defer { bounceSlots.release(slot) }
        let operation = try postWrite(remote, offset: offset, bytes, slot: slot)
        let reply: Result<Response, PMUError>
        do {
            reply = .success(try await call(request))
        } catch {
            reply = .failure(error)
        }
        // The bounce slot stays ours until the WRITE has completed (the NIC reads it until then).
        try await awaitData(operation)
        return try reply.get()
    }

    /// Copies `bytes` into bounce slot `slot` and posts a signaled RDMA WRITE of them.
    private func postWrite(_ remote: RemoteAccess, offset: UInt64, _ bytes: ByteBuffer, slot: Int) throws(PMUError) -> Int {
        try postData("RDMA WRITE of \(bytes.readableBytes) bytes at offset \(offset)") { (parts, id) throws(VerbsError) in
            bytes.withUnsafeReadableBytes { parts.extra.pointer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            try parts.queuePair.postWrite(local: parts.extra.region, localOffset: parts.extra.offset(slot),
                                              lengthBytes: bytes.readableBytes, remoteAddress: remote.address &+ offset,
                                              rkey: remote.rkey, workRequestID: id)
        }
    }

    /// Posts one signaled data work request and waits for its completion.
    private func dataOperation(_ what: String, _ post: (Channel.Parts, UInt64) throws(VerbsError) -> Void) async throws(PMUError) {
        try await awaitData(try postData(what, post))
    }

    /// Posts one signaled data work request; its completion is awaited with `awaitData`.
    private func postData(_ what: String, _ post: (Channel.Parts, UInt64) throws(VerbsError) -> Void) throws(PMUError) -> Int {
        let operation: Int? = waiting.withLockedValue { waiting in
            guard waiting.failure == nil else { return nil }
            defer { waiting.nextOperation += 1 }
            waiting.unawaited.insert(waiting.nextOperation)
            return waiting.nextOperation
        }
        guard let operation else { throw currentFailure }
        let posted: VerbsError?
        do throws(VerbsError) {
            let done: Void? = try channel.withParts { parts throws(VerbsError) in try post(parts, WorkRequestKind.data.id(operation)) }
            posted = done == nil ? VerbsError(.connection, operation: what, message: "the connection is closed") : nil
        } catch {
            posted = error
        }
        if let posted {
            fail(PMUError(.connectionClosed, "cannot post \(what): \(posted)"))
            throw currentFailure
        }
        return operation
    }

    private func awaitData(_ operation: Int) async throws(PMUError) {
        let result: Result<Void, PMUError> = await withCheckedContinuation { continuation in
            let early: Result<Void, PMUError>? = waiting.withLockedValue { waiting in
                waiting.unawaited.remove(operation)
                if let finished = waiting.finished.removeValue(forKey: operation) { return finished }
                if let failure = waiting.failure { return .failure(failure) }
                waiting.dataOperations[operation] = continuation
                return nil
            }
            if let early { continuation.resume(returning: early) }
        }
        try result.get()
    }

    /// A data operation's completion: to its waiter, or kept until it comes.
    private func finishData(_ operation: Int, _ result: Result<Void, PMUError>) {
        let waiter = waiting.withLockedValue { waiting -> CheckedContinuation<Result<Void, PMUError>, Never>? in
            if let waiter = waiting.dataOperations.removeValue(forKey: operation) { return waiter }
            if waiting.unawaited.remove(operation) != nil { waiting.finished[operation] = result }
            return nil
        }
        waiter?.resume(returning: result)
    }

    // MARK: completions

    private func completionLoop() {
        var nextSweep = NIODeadline.now()
        CompletionPump(polling: polling).run(.init(
            stopped: { [closing] in closing.isSet },
            tick: { [self] in
                if let hungUp = disconnected.withLockedValue({ $0 }) { fail(hungUp) }
                // Deadlines are checked here, at least every 200 ms (the sleep below), not per request.
                if let interval = replies.limits.sweepInterval, NIODeadline.now() >= nextSweep {
                    nextSweep = .now() + TimeAmount(interval)
                    if let what = replies.expired() { fail(replies.timedOut(what)) }
                }
            },
            jobs: executor,
            poll: channel.poll,
            arm: channel.arm,
            sleep: { [self, completionChannel = channel.completionChannel] milliseconds in
                let ready = waitReadable([completionChannel.fileDescriptor, eventChannel.pointer.pointee.fd, executor.wakeDescriptor],
                                         timeoutMilliseconds: milliseconds)
                executor.awake(signalled: ready[2])
                if ready[0] { try? completionChannel.consumeEvent() }
                if ready[1], let event = try? eventChannel.next(timeout: .zero) {
                    switch event.type {
                    case RDMA_CM_EVENT_DISCONNECTED, RDMA_CM_EVENT_DEVICE_REMOVAL, RDMA_CM_EVENT_TIMEWAIT_EXIT:
                        // Failed at the next round's tick, after the drain that follows this
                        // sleep: a refused access completed just before the server hung up is
                        // the cause callers must hear, not the hang-up.
                        disconnected.withLockedValue { $0 = $0 ?? PMUError(.connectionClosed, "pmu-server closed the RDMA connection (\(event.name))") }
                    default:
                        break
                    }
                }
            },
            handle: { [self] completion in handle(completion) },
            failed: { [self] error in fail(PMUError(.connectionClosed, "RDMA completion queue failed: \(error)")) }))
        channel.release()
        executor.stop()
    }

    private func handle(_ completion: WorkCompletion) {
        let (kind, index) = WorkRequestKind.split(completion.workRequestID)
        guard completion.isSuccess else {
            let text = "\(completion.statusName): \(completion.statusText)"
            // The first error breaks the queue pair and every work request behind it is flushed.
            // The cause is what every waiter and later call is told: a fenced writer with two
            // writes in flight must hear FENCED from both, not CONNECTION_CLOSED from the one
            // whose request happened to be flushed (or to be awaited first).
            let cause: PMUError
            if completion.status == IBV_WC_WR_FLUSH_ERR, let earlier = waiting.withLockedValue({ $0.failure }) {
                cause = earlier
            } else if completion.status == IBV_WC_REM_ACCESS_ERR {
                cause = PMUError(.remoteAccess, "pmu-server refused a one-sided access (\(text)): the handle was closed, its region deleted, its writer fenced by a newer one, or the key belongs to another connection; this connection is closed, reconnect to continue")
            } else if kind == .data {
                cause = PMUError(.rdmaError, "a one-sided operation completed with \(text) (vendor error \(completion.vendorError)); the connection is closed")
            } else {
                cause = PMUError(.connectionClosed, "the RDMA connection to pmu-server failed (\(text))")
            }
            if kind == .data { finishData(index, .failure(cause)) }
            fail(cause)
            return
        }
        switch CompletedWork(completion) {
        case .received(let slot, let byteCount): received(slot: slot, byteCount: byteCount)
        case .sent(let slot): sendSlots.release(slot)
        case .data(let operation): finishData(operation, .success(()))
        case nil: break
        }
    }

    private func received(slot: Int, byteCount: Int) {
        guard var bytes = channel.takeReceived(slot, byteCount: byteCount) else { return }
        let frame: Frame<Response>
        do {
            guard let decoded = try FrameCodec.decode(Response.self, from: &bytes, maxFrameBytes: RDMALimits.replySlotBytes) else {
                return fail(PMUError(.protocolViolation, "pmu-server sent a truncated frame over RDMA"))
            }
            frame = decoded
        } catch {
            return fail(error.error)
        }
        // Every reply to a request (id != 0) frees the server receive it used: its credit comes
        // back even when the request was cancelled and nobody waits for it any more.
        if frame.requestId != 0 { credits.release(0) }
        if let waiter = replies.complete(frame.requestId) {
            waiter.resume(returning: .success(frame.message))
        } else if frame.requestId == 0, case .error(let error) = frame.message {
            // About the connection (TOO_MANY_CLIENTS, authentication timeout): every waiter gets it.
            fail(PMUError(error.code, "server closed the connection: \(error.message)"))
        }
    }

    private var currentFailure: PMUError {
        waiting.withLockedValue { $0.failure } ?? PMUError(.connectionClosed, "the RDMA connection to pmu-server is closed")
    }

    /// Fails every waiter and every later call with `error` (the first failure wins), and ends
    /// the connection.
    private func fail(_ error: PMUError) {
        let operations = waiting.withLockedValue { waiting in
            if waiting.failure == nil { waiting.failure = error }
            defer { waiting.dataOperations.removeAll(); waiting.unawaited.removeAll() }
            return Array(waiting.dataOperations.values)
        }
        // One-sided operations hear the cause (a refused access is what makes a checkpoint
        // writer's write FENCED); requests hear that the connection is closed, which is what a
        // caller retries or reconnects on, with the cause in the message.
        let failure = currentFailure
        let closed = failure.code == .connectionClosed
            ? failure : PMUError(.connectionClosed, "the RDMA connection to pmu-server is closed (\(failure.message))")
        for waiter in replies.failAll(closed) { waiter.resume(returning: .failure(closed)) }
        for waiter in operations { waiter.resume(returning: .failure(failure)) }
        credits.fail(closed)
        sendSlots.fail(closed)
        bounceSlots.fail(failure)
        if closing.setOnce() {
            channel.disconnect()
            // Noticed now rather than at the end of the pump's 200 ms sleep.
            executor.signal()
        }
    }

    /// Ends the connection and joins the completion thread (which releases the verbs objects
    /// before it ends), for at most `closeDeadline`; a thread still running then is detached.
    /// Safe from a task running on `taskExecutor`: the join waits by sleeping, and once the
    /// thread has ended such a task resumes on the executor's fallback event loop.
    public func close() async {
        fail(PMUError(.connectionClosed, "the RDMA connection to pmu-server was closed by this client"))
        guard let thread = thread.withLockedValue({ $0 }) else { return }
        if await !thread.join(until: .now.advanced(by: Self.closeDeadline)) { thread.detach() }
    }

    static let closeDeadline: Duration = .seconds(10)
}
