import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// The RDMA devices of this machine (ibv_get_device_list), by name.
public enum DeviceList {
    /// Names of the RDMA devices present, e.g. ["rxe0"]. Empty when there are none (or when the
    /// kernel has no RDMA support at all).
    public static func names() -> [String] {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else { return [] }
        defer { ibv_free_device_list(list) }
        var result: [String] = []
        for index in 0..<Int(count) {
            if let device = list[index], let name = ibv_get_device_name(device) {
                result.append(String(cString: name))
            }
        }
        return result
    }

    /// The first device with an ACTIVE port 1, as "name port 1", or nil with the reason there is
    /// none (what `--transport auto` logs when it picks TCP).
    public static func firstActive() -> (device: String?, reason: String) {
        let all = names()
        guard !all.isEmpty else { return (nil, "no RDMA device") }
        var states: [String] = []
        for name in all {
            guard let context = try? open(name: name) else { states.append("\(name): cannot open"); continue }
            guard let port = try? context.queryPort(1) else { states.append("\(name): cannot query port 1"); continue }
            if port.isActive { return (name, "\(name) port 1 active") }
            states.append("\(name) port 1 \(port.stateName)")
        }
        return (nil, "no RDMA device with an active port (" + states.joined(separator: ", ") + ")")
    }

    /// Opens the device called `name` (nil: the first one).
    public static func open(name: String?) throws(VerbsError) -> Context {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else {
            let code = errno
            throw VerbsError(.noDevice, operation: "ibv_get_device_list", errno: code,
                             message: "cannot list RDMA devices",
                             hint: noDeviceHint)
        }
        defer { ibv_free_device_list(list) }
        var found: [String] = []
        for index in 0..<Int(count) {
            guard let device = list[index], let cName = ibv_get_device_name(device) else { continue }
            let deviceName = String(cString: cName)
            found.append(deviceName)
            if name == nil || name == deviceName {
                guard let context = ibv_open_device(device) else {
                    let code = errno
                    throw VerbsError.call("ibv_open_device", errno: code,
                                          "cannot open RDMA device \(deviceName)",
                                          hint: "is /dev/infiniband/uverbs* readable and writable by this user? (ib_uverbs loaded?)")
                }
                return Context(owning: context, name: deviceName)
            }
        }
        if found.isEmpty {
            throw VerbsError(.noDevice, operation: "ibv_get_device_list",
                             message: "no RDMA device found" + (name.map { " (wanted \($0))" } ?? ""),
                             hint: noDeviceHint)
        }
        throw VerbsError(.deviceNotFound, operation: "ibv_get_device_list",
                         message: "no RDMA device named \(name ?? "?"); present: \(found.joined(separator: ", "))",
                         hint: "pick one of the devices present (ibv_devices lists them)")
    }

    static let noDeviceHint = """
        the kernel shows no RDMA device. For soft-RoCE: modprobe rdma_rxe ib_uverbs rdma_ucm, then \
        `rdma link add rxe0 type rxe netdev <ifname>` (this needs a kernel with CONFIG_INFINIBAND \
        and CONFIG_RDMA_RXE; PMU's tests use scripts/rdma-vm/run-in-vm.sh where the host has none)
        """
}

/// What ibv_query_port tells about one port.
public struct PortAttributes: Sendable {
    public let portNumber: UInt8
    public let state: ibv_port_state
    public let activeMTUBytes: Int
    public let maxMessageSizeBytes: UInt32
    public let gidTableLength: Int32
    public let linkLayer: UInt8

    public var isActive: Bool { state == IBV_PORT_ACTIVE }
    public var isEthernet: Bool { Int(linkLayer) == Int(IBV_LINK_LAYER_ETHERNET) }
    public var stateName: String { String(cString: ibv_port_state_str(state)) }
}

/// An open RDMA device (struct ibv_context). Either opened here and closed in deinit, or borrowed
/// from an rdma_cm ID (librdmacm opens the devices and owns those contexts).
public final class Context {
    public let pointer: UnsafeMutablePointer<ibv_context>
    public let name: String
    private let owned: Bool

    init(owning pointer: UnsafeMutablePointer<ibv_context>, name: String) {
        self.pointer = pointer
        self.name = name
        self.owned = true
    }

    /// Wraps a context that someone else (librdmacm) owns and closes.
    public init(borrowing pointer: UnsafeMutablePointer<ibv_context>) {
        self.pointer = pointer
        self.name = pointer.pointee.device.flatMap { ibv_get_device_name($0) }.map { String(cString: $0) } ?? "?"
        self.owned = false
    }

    deinit {
        if owned { _ = ibv_close_device(pointer) }
    }

    public func queryPort(_ portNumber: UInt8 = 1) throws(VerbsError) -> PortAttributes {
        var attributes = ibv_port_attr()
        let rc = CVerbs_ibv_query_port(pointer, portNumber, &attributes)
        if rc != 0 {
            // ibv_query_port returns an errno value (older providers: -1 and errno).
            let code = rc > 0 ? rc : errno
            throw VerbsError.call("ibv_query_port", errno: code,
                                  "cannot query port \(portNumber) of \(name)")
        }
        return PortAttributes(portNumber: portNumber, state: attributes.state,
                              activeMTUBytes: 128 << Int(attributes.active_mtu.rawValue),
                              maxMessageSizeBytes: attributes.max_msg_sz,
                              gidTableLength: attributes.gid_tbl_len,
                              linkLayer: attributes.link_layer)
    }

    /// Throws `.portNotActive` unless the port is PORT_ACTIVE.
    @discardableResult
    public func requireActivePort(_ portNumber: UInt8 = 1) throws(VerbsError) -> PortAttributes {
        let port = try queryPort(portNumber)
        guard port.isActive else {
            throw VerbsError(.portNotActive, operation: "ibv_query_port",
                             message: "port \(portNumber) of \(name) is \(port.stateName), not PORT_ACTIVE",
                             hint: "for RoCE/soft-RoCE the port follows its network interface: bring it up "
                                 + "(`ip link set <ifname> up`, with an IP address) and check "
                                 + "`rdma link show`; for InfiniBand a subnet manager (opensm) must run")
        }
        return port
    }

    /// The GID at `index` of `portNumber`, formatted as 8 groups of 4 hex digits.
    /// On RoCE the table has one entry per IP address and RoCE version; soft-RoCE on an IPv4
    /// interface typically has the IPv6 link-local v2 GID at 0 and the IPv4-mapped v2 GID at 1.
    public func gid(port portNumber: UInt8 = 1, index: Int32) throws(VerbsError) -> String {
        var gid = ibv_gid()
        if ibv_query_gid(pointer, portNumber, index, &gid) != 0 {
            let code = errno
            throw VerbsError.call("ibv_query_gid", errno: code,
                                  "cannot read GID \(index) of \(name) port \(portNumber)")
        }
        let bytes = withUnsafeBytes(of: gid.raw) { Array($0) }
        var groups: [String] = []
        for group in 0..<8 {
            let value = UInt16(bytes[2 * group]) << 8 | UInt16(bytes[2 * group + 1])
            let hex = String(value, radix: 16)
            groups.append(String(repeating: "0", count: 4 - hex.count) + hex)
        }
        return groups.joined(separator: ":")
    }

    /// max_qp_rd_atom: how many RDMA READs a QP may have outstanding as initiator/responder.
    public func maxReadsInFlight() throws(VerbsError) -> Int32 {
        var attributes = ibv_device_attr()
        let rc = ibv_query_device(pointer, &attributes)
        if rc != 0 {
            throw VerbsError.call("ibv_query_device", errno: rc > 0 ? rc : errno,
                                  "cannot query device \(name)")
        }
        return attributes.max_qp_rd_atom
    }
}
