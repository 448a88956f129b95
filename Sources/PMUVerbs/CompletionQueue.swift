import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// One entry of a completion queue (struct ibv_wc), copied out.
public struct WorkCompletion: Sendable {
    public let workRequestID: UInt64
    public let status: ibv_wc_status
    public let opcode: ibv_wc_opcode
    public let byteLength: UInt32
    public let vendorError: UInt32
    public let queuePairNumber: UInt32

    public init(_ wc: ibv_wc) {
        workRequestID = wc.wr_id
        status = wc.status
        opcode = wc.opcode
        byteLength = wc.byte_len
        vendorError = wc.vendor_err
        queuePairNumber = wc.qp_num
    }

    public var isSuccess: Bool { status == IBV_WC_SUCCESS }
    /// e.g. "remote access error" (ibv_wc_status_str).
    public var statusText: String { String(cString: ibv_wc_status_str(status)) }
    /// e.g. "IBV_WC_REM_ACCESS_ERR (10)".
    public var statusName: String { WorkCompletion.name(of: status) }

    public static func name(of status: ibv_wc_status) -> String {
        let names: [UInt32: String] = [
            IBV_WC_SUCCESS.rawValue: "IBV_WC_SUCCESS",
            IBV_WC_LOC_LEN_ERR.rawValue: "IBV_WC_LOC_LEN_ERR",
            IBV_WC_LOC_QP_OP_ERR.rawValue: "IBV_WC_LOC_QP_OP_ERR",
            IBV_WC_LOC_PROT_ERR.rawValue: "IBV_WC_LOC_PROT_ERR",
            IBV_WC_WR_FLUSH_ERR.rawValue: "IBV_WC_WR_FLUSH_ERR",
            IBV_WC_REM_INV_REQ_ERR.rawValue: "IBV_WC_REM_INV_REQ_ERR",
            IBV_WC_REM_ACCESS_ERR.rawValue: "IBV_WC_REM_ACCESS_ERR",
            IBV_WC_REM_OP_ERR.rawValue: "IBV_WC_REM_OP_ERR",
            IBV_WC_RETRY_EXC_ERR.rawValue: "IBV_WC_RETRY_EXC_ERR",
            IBV_WC_RNR_RETRY_EXC_ERR.rawValue: "IBV_WC_RNR_RETRY_EXC_ERR",
            IBV_WC_FATAL_ERR.rawValue: "IBV_WC_FATAL_ERR",
            IBV_WC_GENERAL_ERR.rawValue: "IBV_WC_GENERAL_ERR",
        ]
        return "\(names[status.rawValue] ?? "ibv_wc_status") (\(status.rawValue))"
    }
}

/// A completion queue (ibv_create_cq / ibv_destroy_cq), polled by the caller.
public final class CompletionQueue {
    public let pointer: UnsafeMutablePointer<ibv_cq>
    public let context: Context
    public let capacity: Int32

    /// Kept so that the channel outlives the CQ (a CQ must be destroyed before its channel).
    public let channel: CompletionChannel?

    public init(context: Context, capacity: Int32, channel: CompletionChannel? = nil) throws(VerbsError) {
        guard let cq = ibv_create_cq(context.pointer, capacity, nil, channel?.pointer, 0) else {
            let code = errno
            throw VerbsError.call("ibv_create_cq", errno: code,
                                  "cannot create a completion queue of \(capacity) entries on \(context.name)")
        }
        self.pointer = cq
        self.context = context
        self.channel = channel
        self.capacity = cq.pointee.cqe
    }

    /// Asks for one event on the completion channel when the next completion arrives
    /// (ibv_req_notify_cq). Poll again after calling it: a completion that arrived before the
    /// request raises no event.
    public func requestNotification() throws(VerbsError) {
        let rc = CVerbs_ibv_req_notify_cq(pointer, 0)
        if rc != 0 { throw VerbsError.call("ibv_req_notify_cq", errno: rc, "cannot arm the completion queue") }
    }

    /// Up to `capacity` completions into `entries`, without waiting and without allocating;
    /// returns how many.
    public func poll(into entries: UnsafeMutablePointer<ibv_wc>, capacity: Int) throws(VerbsError) -> Int {
        let n = CVerbs_ibv_poll_cq(pointer, Int32(capacity), entries)
        if n < 0 { throw VerbsError.call("ibv_poll_cq", errno: -n, "polling the completion queue failed") }
        return Int(n)
    }

    /// Up to `max` completions, without waiting.
    public func poll(max: Int = 16) throws(VerbsError) -> [WorkCompletion] {
        var entries = [ibv_wc](repeating: ibv_wc(), count: max)
        let n = entries.withUnsafeMutableBufferPointer { CVerbs_ibv_poll_cq(pointer, Int32($0.count), $0.baseAddress!) }
        if n < 0 { throw VerbsError.call("ibv_poll_cq", errno: -n, "polling the completion queue failed") }
        return entries.prefix(Int(n)).map(WorkCompletion.init)
    }

    deinit {
        // EBUSY while a QP still uses it; QPs hold a reference to their CQs, so none does here.
        _ = ibv_destroy_cq(pointer)
    }

    /// At most one completion, without waiting.
    public func pollOne() throws(VerbsError) -> WorkCompletion? {
        var wc = ibv_wc()
        let n = CVerbs_ibv_poll_cq(pointer, 1, &wc)
        if n < 0 {
            throw VerbsError.call("ibv_poll_cq", errno: -n, "polling the completion queue failed")
        }
        return n == 0 ? nil : WorkCompletion(wc)
    }

    /// Busy-polls until one completion arrives or `timeout` has passed (then throws `.timeout`).
    /// Busy polling keeps latency lowest; a server with many idle connections would use a
    /// completion channel and ibv_req_notify_cq instead.
    public func waitOne(timeout: Duration) throws(VerbsError) -> WorkCompletion {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        var spins = 0
        while true {
            if let wc = try pollOne() { return wc }
            spins += 1
            // Check the clock only now and then: it costs more than a poll.
            if spins & 0x3ff == 0 && clock.now >= deadline {
                throw VerbsError(.timeout, operation: "ibv_poll_cq",
                                 message: "no completion within \(timeout)",
                                 hint: "is the peer still connected? a lost peer shows as "
                                     + "IBV_WC_RETRY_EXC_ERR only after the QP's retry timeout")
            }
        }
    }

    /// Like `waitOne`, but a completion in error throws `.workCompletion`.
    public func waitSuccess(timeout: Duration, what: String) throws(VerbsError) -> WorkCompletion {
        let wc = try waitOne(timeout: timeout)
        guard wc.isSuccess else {
            throw VerbsError(.workCompletion, operation: what,
                             message: "completed with \(wc.statusName): \(wc.statusText) "
                                 + "(vendor error \(wc.vendorError), wr_id \(wc.workRequestID))")
        }
        return wc
    }
}
