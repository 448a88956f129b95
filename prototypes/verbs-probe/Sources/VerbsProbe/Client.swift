#if canImport(Glibc)
import Glibc
#endif
import CVerbs
import Verbs

public struct ClientOptions: Sendable {
    public var address = "10.11.12.1"
    public var port: UInt16 = 7471
    public var latencyOperations = 1000
    public var bandwidthDuration: Duration = .seconds(2)
    public var bandwidthMessageBytes = 64 << 10
    public var bandwidthDepth = 16
    public init() {}
}

/// The client side of the probe. Returns true when every check passed.
public enum Client {
    static func say(_ text: String) { Output.line("client: \(text)") }

    /// Local buffer layout: [0, 2 MiB) source of writes, [2 MiB, 4 MiB) destination of reads.
    static let localBytes = 4 << 20
    static let readBackOffset = 2 << 20

    public static func run(_ options: ClientOptions) throws(VerbsError) -> Bool {
        let clock = ContinuousClock()
        let connectStart = clock.now
        let channel = try EventChannel()
        let connection = try ConnectionID(channel: channel)
        try connection.resolve(address: options.address, port: options.port, timeout: .seconds(10))
        guard let context = connection.context else {
            throw VerbsError(.noDevice, operation: "rdma_resolve_addr",
                             message: "\(options.address) resolved without an RDMA device",
                             hint: DeviceListHint.text)
        }
        try context.requireActivePort(connection.pointer.pointee.port_num)
        let protectionDomain = try ProtectionDomain(context: context)
        let local = UnsafeMutableRawPointer.allocate(byteCount: localBytes, alignment: 4096)
        defer { local.deallocate() }
        local.initializeMemory(as: UInt8.self, repeating: 0, count: localBytes)
        let localRegion = try MemoryRegion(protectionDomain: protectionDomain, address: local,
                                           lengthBytes: localBytes, access: .localWrite)
        defer { try? localRegion.deregister() }
        let control = try ControlBuffers(protectionDomain: protectionDomain)
        let sendQueue = try CompletionQueue(context: context, capacity: 128)
        let receiveQueue = try CompletionQueue(context: context, capacity: 16)
        let queuePair = try QueuePair(connection: connection, protectionDomain: protectionDomain,
                                      sendQueue: sendQueue, receiveQueue: receiveQueue)
        // The descriptor comes as a SEND right after the connection is up: receive posted first.
        try control.postReceive(on: queuePair)
        var parameters = ConnectionParameters()
        let maxReads = try context.maxReadsInFlight()
        parameters.initiatorDepth = UInt8(clamping: min(maxReads, 16))
        try connection.connect(parameters, timeout: .seconds(30))
        let bytes = try control.receiveBytes(on: queuePair, timeout: .seconds(30))
        guard let remote = RegionDescriptor(decoding: bytes) else {
            throw VerbsError(.connection, operation: "RECV", message: "malformed region descriptor (\(bytes.count) bytes)")
        }
        try control.postReceive(on: queuePair)  // for the server's replies later on
        say("connected in \(Measure.format(Measure.microseconds(clock.now - connectStart) / 1000)) ms "
            + "(device \(context.name), QP \(queuePair.number), initiator depth \(parameters.initiatorDepth), "
            + "max inline \(queuePair.inlineDataBytes) B); region addr 0x\(String(remote.address, radix: 16)) "
            + "rkey 0x\(String(remote.rkey, radix: 16)) length \(remote.lengthBytes)")
        guard remote.lengthBytes >= UInt64(TestPlan.minimumRegionBytes) else {
            throw VerbsError(.connection, operation: "descriptor",
                             message: "region of \(remote.lengthBytes) bytes is too small for the test plan")
        }
        let regionBytes = Int(remote.lengthBytes)
        var ok = true

        // 1. Planned writes, each read back with RDMA READ and compared byte for byte.
        let source = UnsafeMutableRawBufferPointer(start: local, count: readBackOffset)
        let readBack = UnsafeMutableRawBufferPointer(start: local + readBackOffset, count: readBackOffset)
        var requestID: UInt64 = 100
        for write in TestPlan.writes(regionBytes: regionBytes) {
            TestPlan.fill(UnsafeMutableRawBufferPointer(rebasing: source[0..<write.lengthBytes]),
                          regionOffset: write.offset, seed: write.seed)
            memset(readBack.baseAddress!, 0, write.lengthBytes)
            let remoteAddress = remote.address + UInt64(write.offset)
            let start = clock.now
            requestID += 1
            try queuePair.postWrite(local: localRegion, lengthBytes: write.lengthBytes,
                                    remoteAddress: remoteAddress, rkey: remote.rkey, workRequestID: requestID)
            _ = try sendQueue.waitSuccess(timeout: .seconds(30), what: "RDMA WRITE (\(write.name))")
            let written = clock.now
            requestID += 1
            try queuePair.postRead(local: localRegion, localOffset: readBackOffset, lengthBytes: write.lengthBytes,
                                   remoteAddress: remoteAddress, rkey: remote.rkey, workRequestID: requestID)
            _ = try sendQueue.waitSuccess(timeout: .seconds(30), what: "RDMA READ (\(write.name))")
            let read = clock.now
            let mismatch = TestPlan.firstMismatch(
                UnsafeRawBufferPointer(rebasing: readBack[0..<write.lengthBytes]),
                regionOffset: write.offset, seed: write.seed)
            let timing = "write \(Measure.format(Measure.microseconds(written - start))) us, "
                + "read \(Measure.format(Measure.microseconds(read - written))) us"
            if let index = mismatch {
                ok = false
                say("FAIL \(write.name): READ back differs at region offset \(write.offset + index) (\(timing))")
            } else {
                say("ok   \(write.name) (region offset \(write.offset)): RDMA WRITE then READ match (\(timing))")
            }
        }

        // 2. Latency of small signaled writes.
        try latency(queuePair: queuePair, local: localRegion, remote: remote, options: options, inline: false)
        if queuePair.inlineDataBytes >= 8 {
            try latency(queuePair: queuePair, local: localRegion, remote: remote, options: options, inline: true)
        }

        // 3. Bandwidth of 64 KiB writes.
        try bandwidth(queuePair: queuePair, local: localRegion, remote: remote, options: options)

        // 4. The server checks the file itself.
        try control.send(ControlMessage(.verify, value: UInt64(TestPlan.writes(regionBytes: regionBytes).count)).encoded(),
                         on: queuePair)
        let verdict = try control.receive(on: queuePair, timeout: .seconds(120))
        try control.postReceive(on: queuePair)
        if verdict.opcode == .verifyResult && verdict.status == 0 {
            say("ok   server: file contents match after msync")
        } else {
            ok = false
            say("FAIL server: file differs at offset \(verdict.value)")
        }

        // 5. Deregistration: the old rkey must stop working.
        try control.send(ControlMessage(.deregister).encoded(), on: queuePair)
        let deregistered = try control.receive(on: queuePair, timeout: .seconds(60))
        guard deregistered.opcode == .deregistered, deregistered.status == 0 else {
            say("FAIL server could not deregister (errno \(deregistered.status))")
            return false
        }
        say("server deregistered the region; RDMA WRITE with the old rkey 0x\(String(remote.rkey, radix: 16)):")
        let staleStart = clock.now
        try queuePair.postWrite(local: localRegion, lengthBytes: 8, remoteAddress: remote.address,
                                rkey: remote.rkey, workRequestID: 900)
        let stale = try sendQueue.waitOne(timeout: .seconds(120))
        let staleMs = Measure.format(Measure.microseconds(clock.now - staleStart) / 1000)
        if stale.isSuccess {
            ok = false
            say("FAIL the write with the stale rkey SUCCEEDED (\(staleMs) ms)")
        } else {
            say("ok   stale-rkey write completed with \(stale.statusName) \"\(stale.statusText)\" "
                + "vendor_err \(stale.vendorError) after \(staleMs) ms; QP now \((try? queuePair.stateName()) ?? "?")")
        }
        // What a further request on the now broken QP gives.
        do {
            try queuePair.postWrite(local: localRegion, lengthBytes: 8, remoteAddress: remote.address,
                                    rkey: remote.rkey, workRequestID: 901)
            let next = try sendQueue.waitOne(timeout: .seconds(30))
            say("     next write after that: \(next.statusName) \"\(next.statusText)\"")
        } catch {
            say("     next write after that: \(error)")
        }

        // Give the server a moment to look at its own QP after the failed access before the
        // disconnect moves both QPs to ERR anyway.
        usleep(300_000)
        try connection.disconnect()
        let event = try channel.next(timeout: .seconds(10))
        say("disconnect: \(event.name)")
        withExtendedLifetime((queuePair, control)) {}
        return ok
    }

    static func latency(queuePair: QueuePair, local: MemoryRegion, remote: RegionDescriptor,
                        options: ClientOptions, inline: Bool) throws(VerbsError) {
        let clock = ContinuousClock()
        let remoteAddress = remote.address + UInt64(TestPlan.latencyScratchOffset)
        let warmup = 50
        var samples: [Double] = []
        samples.reserveCapacity(options.latencyOperations)
        for index in 0..<(warmup + options.latencyOperations) {
            local.address.storeBytes(of: UInt64(index), as: UInt64.self)
            let start = clock.now
            try queuePair.postWrite(local: local, lengthBytes: 8, remoteAddress: remoteAddress,
                                    rkey: remote.rkey, workRequestID: UInt64(index), inline: inline)
            _ = try queuePair.sendQueue.waitSuccess(timeout: .seconds(30), what: "RDMA WRITE 8 B")
            if index >= warmup { samples.append(Measure.microseconds(clock.now - start)) }
        }
        samples.sort()
        let mean = samples.reduce(0, +) / Double(samples.count)
        say("latency 8 B RDMA WRITE\(inline ? " (inline)" : ""), signaled, post+poll, \(samples.count) ops: "
            + "p50 \(Measure.format(Measure.percentile(samples, 50))) us, "
            + "p99 \(Measure.format(Measure.percentile(samples, 99))) us, "
            + "min \(Measure.format(samples.first!)) us, max \(Measure.format(samples.last!)) us, "
            + "mean \(Measure.format(mean)) us")
    }

    static func bandwidth(queuePair: QueuePair, local: MemoryRegion, remote: RegionDescriptor,
                          options: ClientOptions) throws(VerbsError) {
        let clock = ContinuousClock()
        let size = options.bandwidthMessageBytes
        let depth = options.bandwidthDepth
        precondition(size <= local.lengthBytes && depth <= 64 && depth >= 1)
        let base = remote.address + UInt64(TestPlan.bandwidthScratchOffset)
        var posted = 0
        var completed = 0
        let start = clock.now
        let deadline = start.advanced(by: options.bandwidthDuration)
        let giveUp = deadline.advanced(by: .seconds(60))
        while true {
            let now = clock.now
            if now < deadline {
                while posted - completed < depth {
                    try queuePair.postWrite(local: local, lengthBytes: size,
                                            remoteAddress: base + UInt64((posted % depth) * size),
                                            rkey: remote.rkey, workRequestID: UInt64(posted))
                    posted += 1
                }
            } else if completed == posted {
                break
            }
            if now > giveUp {
                throw VerbsError(.timeout, operation: "bandwidth", message: "\(posted - completed) writes never completed")
            }
            while let wc = try queuePair.sendQueue.pollOne() {
                guard wc.isSuccess else {
                    throw VerbsError(.workCompletion, operation: "RDMA WRITE 64 KiB",
                                     message: "completed with \(wc.statusName): \(wc.statusText)")
                }
                completed += 1
            }
        }
        let elapsed = Measure.seconds(clock.now - start)
        let bytes = Double(completed * size)
        say("bandwidth \(size >> 10) KiB RDMA WRITE, \(depth) in flight, \(Measure.format(elapsed, decimals: 2)) s: "
            + "\(completed) writes, \(Measure.format(bytes / elapsed / 1e6)) MB/s "
            + "(\(Measure.format(bytes / elapsed / 1_048_576)) MiB/s, \(Int(Double(completed) / elapsed)) writes/s)")
    }
}
