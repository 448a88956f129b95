import PMUCore
import PMUVerbs

/// `--transport`: which transport a server or client uses. `auto` picks verbs when this machine
/// has an RDMA device with an active port, else TCP.
public enum TransportChoice: String, Sendable, CaseIterable, CustomStringConvertible {
    case tcp
    case rdma
    case auto

    public var description: String { rawValue }

    public init(parsing text: String) throws(PMUError) {
        guard let choice = TransportChoice(rawValue: text) else {
            throw PMUError(.invalidArgument, "unknown transport \"\(text)\"; use tcp, rdma or auto")
        }
        self = choice
    }

    /// What `auto` resolves to here, with the reason (for the one log line saying which).
    /// `rdma` with no usable device throws RDMA_ERROR naming what is missing.
    public func resolve() throws(PMUError) -> (useRDMA: Bool, reason: String) {
        switch self {
        case .tcp:
            return (false, "tcp (asked for)")
        case .rdma, .auto:
            let found = DeviceList.firstActive()
            if let device = found.device { return (true, "rdma (\(device) port 1 active)") }
            if self == .auto { return (false, "tcp (\(found.reason))") }
            throw PMUError(.rdmaError, "--transport rdma: \(found.reason). Load a driver or create a soft-RoCE device (modprobe rdma_rxe; rdma link add rxe0 type rxe netdev IFACE), bring its interface up, or use --transport tcp or auto")
        }
    }
}
