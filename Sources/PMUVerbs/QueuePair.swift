import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// Sizes of a queue pair's queues.
public struct QueuePairCapacity: Sendable {
    public var sendRequests: UInt32 = 64
    public var receiveRequests: UInt32 = 16
    /// Bytes that IBV_SEND_INLINE may copy into the send queue entry (no lkey needed).
    public var inlineDataBytes: UInt32 = 64
    public init() {}
}

/// A reliable-connected queue pair created on an rdma_cm ID (rdma_create_qp / rdma_destroy_qp);
/// rdma_cm moves it through INIT, RTR and RTS while connecting.
public final class QueuePair {
    public let pointer: UnsafeMutablePointer<ibv_qp>
    public let connection: ConnectionID
    public let protectionDomain: ProtectionDomain
    public let sendQueue: CompletionQueue
    public let receiveQueue: CompletionQueue
    /// As granted by the provider (may exceed what was asked for).
    public let inlineDataBytes: UInt32

    public init(connection: ConnectionID, protectionDomain: ProtectionDomain,
                sendQueue: CompletionQueue, receiveQueue: CompletionQueue,
                capacity: QueuePairCapacity = QueuePairCapacity()) throws(VerbsError) {
        var attributes = ibv_qp_init_attr()
        attributes.send_cq = sendQueue.pointer
        attributes.recv_cq = receiveQueue.pointer
        attributes.qp_type = IBV_QPT_RC
        attributes.sq_sig_all = 0
        attributes.cap.max_send_wr = capacity.sendRequests
        attributes.cap.max_recv_wr = capacity.receiveRequests
        attributes.cap.max_send_sge = 1
        attributes.cap.max_recv_sge = 1
        attributes.cap.max_inline_data = capacity.inlineDataBytes
        if rdma_create_qp(connection.pointer, protectionDomain.pointer, &attributes) != 0 {
            let code = errno
            throw VerbsError.call("rdma_create_qp", errno: code,
                                  "cannot create an RC queue pair (\(capacity.sendRequests) send, "
                                      + "\(capacity.receiveRequests) receive requests)",
                                  hint: "the PD and CQs must be on the device the ID was bound/resolved to "
                                      + "(connection.context)")
        }
        guard let qp = connection.pointer.pointee.qp else {
            throw VerbsError(.call, operation: "rdma_create_qp", message: "returned no queue pair")
        }
        self.pointer = qp
        self.connection = connection
        self.protectionDomain = protectionDomain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.inlineDataBytes = attributes.cap.max_inline_data
    }

    deinit {
        rdma_destroy_qp(connection.pointer)
    }

    public var number: UInt32 { pointer.pointee.qp_num }

    // MARK: send queue

    /// One-sided RDMA WRITE of `lengthBytes` from `local` at `localOffset` to the peer's
    /// `remoteAddress` (in its MR with `rkey`). With `inline` (at most `inlineDataBytes`) the
    /// provider copies the bytes into the send queue at post time and the buffer is free at once.
    public func postWrite(local: MemoryRegion, localOffset: Int = 0, lengthBytes: Int,
                          remoteAddress: UInt64, rkey: UInt32, workRequestID: UInt64,
                          signaled: Bool = true, inline: Bool = false) throws(VerbsError) {
        try post(opcode: IBV_WR_RDMA_WRITE, local: local, localOffset: localOffset,
                 lengthBytes: lengthBytes, remoteAddress: remoteAddress, rkey: rkey,
                 workRequestID: workRequestID, signaled: signaled, inline: inline)
    }

    /// One-sided RDMA READ of `lengthBytes` from the peer into `local` at `localOffset`
    /// (`local` needs LOCAL_WRITE; the connection needs initiator depth/responder resources ≥ 1).
    public func postRead(local: MemoryRegion, localOffset: Int = 0, lengthBytes: Int,
                         remoteAddress: UInt64, rkey: UInt32, workRequestID: UInt64,
                         signaled: Bool = true) throws(VerbsError) {
        try post(opcode: IBV_WR_RDMA_READ, local: local, localOffset: localOffset,
                 lengthBytes: lengthBytes, remoteAddress: remoteAddress, rkey: rkey,
                 workRequestID: workRequestID, signaled: signaled, inline: false)
    }

    /// Two-sided SEND; the peer must have a receive posted (else RNR retries, then an error).
    public func postSend(local: MemoryRegion, localOffset: Int = 0, lengthBytes: Int,
                         workRequestID: UInt64, signaled: Bool = true) throws(VerbsError) {
        try post(opcode: IBV_WR_SEND, local: local, localOffset: localOffset,
                 lengthBytes: lengthBytes, remoteAddress: 0, rkey: 0,
                 workRequestID: workRequestID, signaled: signaled, inline: false)
    }

    private func post(opcode: ibv_wr_opcode, local: MemoryRegion, localOffset: Int,
                      lengthBytes: Int, remoteAddress: UInt64, rkey: UInt32,
                      workRequestID: UInt64, signaled: Bool, inline: Bool) throws(VerbsError) {
        precondition(localOffset >= 0 && lengthBytes >= 0
                     && localOffset + lengthBytes <= local.lengthBytes,
                     "work request outside its local memory region")
        var sge = ibv_sge()
        sge.addr = UInt64(UInt(bitPattern: local.address + localOffset))
        sge.length = UInt32(lengthBytes)
        sge.lkey = local.lkey
        var flags: UInt32 = 0
        if signaled { flags |= IBV_SEND_SIGNALED.rawValue }
        if inline { flags |= IBV_SEND_INLINE.rawValue }
        let rc = withUnsafeMutablePointer(to: &sge) { sgePointer -> Int32 in
            var wr = ibv_send_wr()
            wr.wr_id = workRequestID
            wr.sg_list = sgePointer
            wr.num_sge = 1
            wr.opcode = opcode
            wr.send_flags = flags
            wr.wr.rdma.remote_addr = remoteAddress
            wr.wr.rdma.rkey = rkey
            var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
            return CVerbs_ibv_post_send(pointer, &wr, &bad)
        }
        if rc != 0 {
            throw VerbsError.call("ibv_post_send", errno: rc,
                                  "cannot post \(QueuePair.opcodeName(opcode)) of \(lengthBytes) bytes",
                                  hint: rc == ENOMEM ? "the send queue is full: wait for completions "
                                      + "(signal at least every Nth request) before posting more"
                                      : rc == EINVAL ? "is the QP in RTS (connected, not in error)? "
                                      + "inline data must fit in max_inline_data" : nil)
        }
    }

    // MARK: receive queue

    /// Posts a receive buffer for one incoming SEND.
    public func postReceive(local: MemoryRegion, localOffset: Int = 0, lengthBytes: Int,
                            workRequestID: UInt64) throws(VerbsError) {
        precondition(localOffset >= 0 && localOffset + lengthBytes <= local.lengthBytes,
                     "receive buffer outside its local memory region")
        var sge = ibv_sge()
        sge.addr = UInt64(UInt(bitPattern: local.address + localOffset))
        sge.length = UInt32(lengthBytes)
        sge.lkey = local.lkey
        let rc = withUnsafeMutablePointer(to: &sge) { sgePointer -> Int32 in
            var wr = ibv_recv_wr()
            wr.wr_id = workRequestID
            wr.sg_list = sgePointer
            wr.num_sge = 1
            var bad: UnsafeMutablePointer<ibv_recv_wr>? = nil
            return CVerbs_ibv_post_recv(pointer, &wr, &bad)
        }
        if rc != 0 {
            throw VerbsError.call("ibv_post_recv", errno: rc, "cannot post a receive of \(lengthBytes) bytes")
        }
    }

    // MARK: state

    /// The QP's current state (ibv_query_qp), e.g. "RTS" or "ERR".
    public func stateName() throws(VerbsError) -> String {
        var attributes = ibv_qp_attr()
        var initAttributes = ibv_qp_init_attr()
        let rc = ibv_query_qp(pointer, &attributes, Int32(IBV_QP_STATE.rawValue), &initAttributes)
        if rc != 0 {
            throw VerbsError.call("ibv_query_qp", errno: rc > 0 ? rc : errno, "cannot query the QP state")
        }
        switch attributes.qp_state {
        case IBV_QPS_RESET: return "RESET"
        case IBV_QPS_INIT: return "INIT"
        case IBV_QPS_RTR: return "RTR"
        case IBV_QPS_RTS: return "RTS"
        case IBV_QPS_SQD: return "SQD"
        case IBV_QPS_SQE: return "SQE"
        case IBV_QPS_ERR: return "ERR"
        default: return "state \(attributes.qp_state.rawValue)"
        }
    }

    static func opcodeName(_ opcode: ibv_wr_opcode) -> String {
        switch opcode {
        case IBV_WR_RDMA_WRITE: return "RDMA WRITE"
        case IBV_WR_RDMA_READ: return "RDMA READ"
        case IBV_WR_SEND: return "SEND"
        default: return "opcode \(opcode.rawValue)"
        }
    }
}
