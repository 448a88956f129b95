#if canImport(Glibc)
import Glibc
#endif
import CVerbs
import Verbs

public struct ServerOptions: Sendable {
    public var address = "10.11.12.1"
    public var port: UInt16 = 7471
    public var filePath = ""
    public var sizeBytes = 64 << 20
    /// Written (empty) once the server listens, so that a script knows when to start the client.
    public var readyFile: String?
    public var acceptTimeout: Duration = .seconds(120)
    public init() {}
}

/// The server side of the probe: maps a region file, registers it, accepts one client, sends it
/// the region descriptor, then serves its control messages (verify, deregister).
public enum Server {
    static func say(_ text: String) { Output.line("server: \(text)") }

    public static func run(_ options: ServerOptions) throws(VerbsError) {
        precondition(options.sizeBytes >= TestPlan.minimumRegionBytes, "region too small for the test plan")
        let clock = ContinuousClock()
        let channel = try EventChannel()
        let listener = try ConnectionID(channel: channel)
        try listener.bind(address: options.address, port: options.port)
        // Bound to an address of an RDMA interface, the ID knows its device: register the region
        // before any client comes (as PMU would), on that device's PD.
        guard let context = listener.context else {
            throw VerbsError(.noDevice, operation: "rdma_bind_addr",
                             message: "\(options.address) is bound but has no RDMA device",
                             hint: DeviceListHint.text)
        }
        let port = try context.requireActivePort(listener.pointer.pointee.port_num)
        var gids: [String] = []
        for index in 0..<min(port.gidTableLength, 4) {
            if let gid = try? context.gid(port: port.portNumber, index: index),
               gid != "0000:0000:0000:0000:0000:0000:0000:0000" {
                gids.append("[\(index)] \(gid)")
            }
        }
        say("device \(context.name) port \(port.portNumber) \(port.stateName), MTU \(port.activeMTUBytes), "
            + "GIDs \(gids.joined(separator: " "))")

        let file = try MappedFile(path: options.filePath, sizeBytes: options.sizeBytes)
        let protectionDomain = try ProtectionDomain(context: context)
        let registerStart = clock.now
        let region = try MemoryRegion(protectionDomain: protectionDomain, address: file.address,
                                      lengthBytes: file.sizeBytes, access: .region)
        say("registered \(options.filePath) (\(file.filesystemName), \(file.sizeBytes >> 20) MiB, MAP_SHARED) "
            + "addr \(file.address) rkey 0x\(String(region.rkey, radix: 16)) in "
            + "\(Measure.format(Measure.microseconds(clock.now - registerStart) / 1000)) ms")

        try listener.listen()
        say("listening on \(options.address):\(options.port)")
        if let ready = options.readyFile {
            let fd = open(ready, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            if fd >= 0 { close(fd) }
        }

        let request = try channel.expect(RDMA_CM_EVENT_CONNECT_REQUEST, timeout: options.acceptTimeout,
                                         while: "waiting for a client")
        let connection = ConnectionID(adopting: request.id, channel: channel)
        // Control messages: one buffer to send from, one to receive into.
        let control = try ControlBuffers(protectionDomain: protectionDomain)
        let sendQueue = try CompletionQueue(context: context, capacity: 16)
        let receiveQueue = try CompletionQueue(context: context, capacity: 16)
        let queuePair = try QueuePair(connection: connection, protectionDomain: protectionDomain,
                                      sendQueue: sendQueue, receiveQueue: receiveQueue)
        try control.postReceive(on: queuePair)
        var parameters = ConnectionParameters()
        let maxReads = try context.maxReadsInFlight()
        parameters.responderResources = UInt8(clamping: min(maxReads, 16))
        try connection.accept(parameters, timeout: .seconds(30))
        say("connected, QP \(queuePair.number), responder resources \(parameters.responderResources)")

        let descriptor = RegionDescriptor(address: UInt64(UInt(bitPattern: file.address)),
                                          lengthBytes: UInt64(file.sizeBytes), rkey: region.rkey)
        try control.send(descriptor.encoded(), on: queuePair)
        say("sent region descriptor {addr \(file.address), rkey 0x\(String(region.rkey, radix: 16)), "
            + "length \(file.sizeBytes)}")

        // Bounded: the client sends two requests (verify, deregister); allow a few more.
        for _ in 0..<8 {
            let message = try control.receive(on: queuePair, timeout: .seconds(120))
            switch message.opcode {
            case .verify:
                let result = try verify(file: file)
                try control.postReceive(on: queuePair)
                try control.send(result.encoded(), on: queuePair)
            case .deregister:
                try control.postReceive(on: queuePair)
                var reply = ControlMessage(.deregistered)
                do {
                    try region.deregister()
                    say("ibv_dereg_mr done: rkey 0x\(String(region.rkey, radix: 16)) is now invalid")
                } catch {
                    say("ibv_dereg_mr FAILED: \(error)")
                    reply.status = UInt32(clamping: error.errnoCode ?? 1)
                }
                try control.send(reply.encoded(), on: queuePair)
                try watchUntilDisconnected(queuePair: queuePair, channel: channel)
                withExtendedLifetime((listener, file)) {}
                return
            default:
                say("unexpected control message \(message)")
            }
        }
    }

    /// msync, then check every planned write and the zero guard bytes around it in the file.
    static func verify(file: MappedFile) throws(VerbsError) -> ControlMessage {
        try file.sync()
        for write in TestPlan.writes(regionBytes: file.sizeBytes) {
            let start = max(write.offset - TestPlan.guardBytes, 0)
            let end = min(write.offset + write.lengthBytes + TestPlan.guardBytes, file.sizeBytes)
            let bytes = try file.readFile(offset: start, count: end - start)
            for index in 0..<bytes.count {
                let offset = start + index
                let inside = offset >= write.offset && offset < write.offset + write.lengthBytes
                let expected = inside ? TestPlan.patternByte(offset: offset, seed: write.seed) : 0
                if bytes[index] != expected {
                    say("verify: \(write.name): byte at \(offset) is \(bytes[index]), expected \(expected)")
                    return ControlMessage(.verifyResult, status: 1, value: UInt64(offset))
                }
            }
            say("verify: \(write.name): file matches (pread after msync)")
        }
        return ControlMessage(.verifyResult)
    }

    /// After deregistration: report what happens to this side's QP when the client writes with
    /// the stale rkey, until the client disconnects (at most 60 s).
    static func watchUntilDisconnected(queuePair: QueuePair, channel: EventChannel) throws(VerbsError) {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start.advanced(by: .seconds(60))
        func at() -> String { "+\(Measure.format(Measure.microseconds(clock.now - start) / 1000)) ms" }
        var lastState = try queuePair.stateName()
        say("watching QP \(queuePair.number): state \(lastState)")
        var checks = 0
        while clock.now < deadline {
            checks += 1
            while let wc = try queuePair.receiveQueue.pollOne() {
                say("\(at()) receive completion: \(wc.statusName) (\(wc.statusText))")
            }
            let state = (try? queuePair.stateName()) ?? "?"
            if state != lastState {
                say("\(at()) QP state \(lastState) -> \(state)")
                lastState = state
            }
            do {
                let event = try channel.next(timeout: .milliseconds(5))
                say("\(at()) event \(event.name) (status \(event.status)); QP state was \(lastState) through "
                    + "\(checks) checks, now \((try? queuePair.stateName()) ?? "?")")
                if event.type == RDMA_CM_EVENT_DISCONNECTED { return }
            } catch where error.kind == .timeout {
                continue
            }
        }
        say("no DISCONNECTED within 60 s")
    }
}

enum DeviceListHint {
    static let text = "is the address on an interface with an RDMA (rxe/RoCE) device? `rdma link show`"
}

/// Two small registered buffers for control messages on one QP.
final class ControlBuffers {
    static let slotBytes = 64
    let memory: UnsafeMutableRawPointer
    let region: MemoryRegion
    private var nextID: UInt64 = 1

    init(protectionDomain: ProtectionDomain) throws(VerbsError) {
        memory = UnsafeMutableRawPointer.allocate(byteCount: 2 * Self.slotBytes, alignment: 64)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * Self.slotBytes)
        do {
            region = try MemoryRegion(protectionDomain: protectionDomain, address: memory,
                                      lengthBytes: 2 * Self.slotBytes, access: .localWrite)
        } catch {
            memory.deallocate()
            throw error
        }
    }

    deinit {
        try? region.deregister()
        memory.deallocate()
    }

    /// Receive slot at offset slotBytes.
    func postReceive(on queuePair: QueuePair) throws(VerbsError) {
        try queuePair.postReceive(local: region, localOffset: Self.slotBytes, lengthBytes: Self.slotBytes,
                                  workRequestID: 0)
    }

    /// Sends `bytes` from the send slot and waits for the send's completion.
    func send(_ bytes: [UInt8], on queuePair: QueuePair) throws(VerbsError) {
        precondition(bytes.count <= Self.slotBytes)
        bytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        nextID += 1
        try queuePair.postSend(local: region, lengthBytes: bytes.count, workRequestID: nextID)
        _ = try queuePair.sendQueue.waitSuccess(timeout: .seconds(60), what: "SEND")
    }

    /// Waits for the next received message (raw bytes).
    func receiveBytes(on queuePair: QueuePair, timeout: Duration) throws(VerbsError) -> [UInt8] {
        let wc = try queuePair.receiveQueue.waitSuccess(timeout: timeout, what: "RECV")
        let slot = UnsafeRawBufferPointer(start: memory + Self.slotBytes, count: Int(wc.byteLength))
        return Array(slot)
    }

    func receive(on queuePair: QueuePair, timeout: Duration) throws(VerbsError) -> ControlMessage {
        let bytes = try receiveBytes(on: queuePair, timeout: timeout)
        guard let message = ControlMessage(decoding: bytes) else {
            throw VerbsError(.connection, operation: "RECV", message: "malformed control message (\(bytes.count) bytes)")
        }
        return message
    }
}
