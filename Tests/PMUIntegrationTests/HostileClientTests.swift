import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Hostile clients against a real pmu-server (issue 10, defects 1-4): bounded reply memory,
/// handshake-sized frames before authentication, fair admission, and running out of descriptors.
/// Attackers speak raw TCP; server memory, CPU and descriptors come from /proc. Every load loop is
/// bounded in count and time, and a legitimate client's request is timed during each attack.
/// Serialized: each attack loads the machine, and the others' figures would measure that.
@Suite(.serialized, .enabled(if: testTransport == .tcp, "raw TCP attackers")) struct HostileClientTests {
    let scratch = Scratch()

    func startServer(_ extra: [String] = [], launcher: [String] = []) throws -> ServerProcess {
        try writeSecretsFile(scratch.path + "/secrets")
        return try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: scratch.path + "/secrets", extraArguments: extra, launcher: launcher)
    }

    /// A legitimate connect + LIST during an attack: completes, within a generous 30 s. Run apart
    /// and polled, so a server that never answers fails the test instead of hanging it.
    func timedLegitimateRequest(_ server: ServerProcess, _ clientId: String = "alice") async throws -> Duration {
        let started = ContinuousClock.now
        let outcome = Outcome()
        let configuration = server.configuration(clientId)
        Task {
            do {
                let client = try await PMUClient.connect(configuration)
                _ = try await client.list()
                await client.disconnect()
                outcome.set(nil)
            } catch {
                outcome.set("\(error)")
            }
        }
        while outcome.value == nil, ContinuousClock.now - started < .seconds(30) {
            try await Task.sleep(for: .milliseconds(20))
        }
        let elapsed = ContinuousClock.now - started
        switch outcome.value {
        case .some(.some(let error)): Issue.record("the legitimate request failed: \(error)")
        case .some(.none): break
        case .none: Issue.record("the legitimate request did not complete within 30 s")
        }
        return elapsed
    }

    /// Defect 1: 256 pipelined 8 MiB READs never read would be 2 GiB of replies; the server holds
    /// at most the bound plus one reply, and serves them all once the client reads.
    @Test func unreadRepliesStayWithinTheirBoundAndResumeWhenRead() async throws {
        let boundBytes = 16 << 20
        let server = try startServer(["--max-unsent-replies", "16MiB"])
        let pid = server.process.processIdentifier
        let owner = try await server.client("alice")
        let region = try await owner.createRegion("big", sizeBytes: UInt64(Limits.maxIOBytes), readers: ["bob"])
        try await owner.write(region, at: 0, pattern(offset: 0, count: Limits.maxIOBytes, seed: 10))
        let before = try #require(ProcessProbe.statusKiB(pid, "VmHWM"))

        let attacker = try RawConnection(server.endpoint)
        #expect(attacker.authenticate(clientId: "bob", secret: Array(testSecrets["bob"]!.utf8)))
        attacker.send(Request.open(name: "big", rights: .read), id: 3)
        guard case .grant(let grant)? = attacker.readFrame()?.message else { Issue.record("no grant"); return }
        let reads = 256
        var burst = ByteBuffer()
        for index in 0..<reads {
            FrameCodec.encode(Frame(requestId: UInt64(100 + index), message: Request.read(key: grant.key, offset: 0, length: UInt32(Limits.maxIOBytes))), into: &burst)
        }
        attacker.send(Array(burst.readableBytesView))
        try await Task.sleep(for: .seconds(3)) // the server runs until it stalls on the bound

        let stalled = try #require(ProcessProbe.statusKiB(pid, "VmHWM"))
        let growthBytes = (stalled - before) * 1024
        let elapsed = try await timedLegitimateRequest(server)
        print("reply bound \(boundBytes >> 20) MiB: \(reads) unread 8 MiB READs grew VmHWM by \(growthBytes >> 20) MiB; a LIST by another client took \(elapsed)")
        // Bound + one 8 MiB reply + the READ's copy, with room for the allocator; unbounded was 2 GiB.
        #expect(growthBytes < 4 * (boundBytes + Limits.maxIOBytes))

        // The client reads: every reply arrives, in order, complete.
        let frames = attacker.readFrames(reads)
        #expect(frames.count == reads)
        let expected = pattern(offset: 0, count: 64, seed: 10)
        for (index, frame) in frames.enumerated() {
            #expect(frame.requestId == UInt64(100 + index))
            guard case .data(let data) = frame.message, data.readableBytes == Limits.maxIOBytes else {
                Issue.record("reply \(index) is not 8 MiB of data: \(frame.message)"); break
            }
            #expect(Array(data.readableBytesView.prefix(64)) == expected)
        }
        let drained = try #require(ProcessProbe.statusKiB(pid, "VmHWM"))
        print("after reading all \(reads) replies VmHWM had grown by \((drained - before) >> 10) MiB")
        #expect((drained - before) * 1024 < 4 * (boundBytes + Limits.maxIOBytes))
        await owner.disconnect()
    }

    /// Defect 2: before authentication a frame over the handshake limit is refused from its header
    /// (with the offending request's id), so 32 connections each sending all but the last byte of
    /// an 8 MiB frame (256 MiB if buffered) leave the server's memory as it was.
    @Test func beforeAuthenticationOnlyHandshakeFramesAreAccepted() async throws {
        let server = try startServer()
        let pid = server.process.processIdentifier
        var refused = 0
        for attempt in 0..<100 {
            let raw = try RawConnection(server.endpoint)
            // A maximum-size WRITE announced, its first 4 KiB sent, the rest never.
            raw.send(maximumWriteHeader(requestId: UInt64(attempt + 1)) + [UInt8](repeating: 0, count: 4096))
            let (frames, closed) = raw.readUntilClosed()
            if closed, case .error(let error)? = frames.first?.message, error.code == .frameTooLarge,
               error.message.contains("before authentication"), frames.first?.requestId == UInt64(attempt + 1) {
                refused += 1
            }
        }
        #expect(refused == 100)
        let before = try #require(ProcessProbe.statusKiB(pid, "VmHWM"))
        let control = LoadControl()
        let endpoint = server.endpoint
        let senders = 32
        for _ in 0..<senders {
            Thread {
                defer { control.finish(); control.add() }
                guard let raw = try? RawConnection(endpoint) else { return }
                var timeout = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(raw.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                raw.send(maximumWriteHeader(requestId: 1))
                let chunk = [UInt8](repeating: 0xAB, count: 64 * 1024)
                var sent = 16
                while sent < Limits.maxFrameBytes - 1 {
                    let n = chunk.withUnsafeBytes { Glibc.send(raw.fd, $0.baseAddress!, min($0.count, Limits.maxFrameBytes - 1 - sent), Int32(MSG_NOSIGNAL)) }
                    if n <= 0 { break }
                    sent += n
                }
            }.start()
        }
        for _ in 0..<600 where control.total < senders { try await Task.sleep(for: .milliseconds(50)) }
        #expect(control.total == senders)
        // A HELLO padded past the limit is refused the same way.
        let padded = try RawConnection(server.endpoint)
        var hello = ByteBuffer()
        FrameCodec.encode(Frame(requestId: 1, message: Request.hello(clientId: "alice", clientNonce: Authentication.randomNonce())), into: &hello)
        hello.writeBytes([UInt8](repeating: 0, count: Limits.maxHandshakeFrameBytes))
        hello.setInteger(UInt32(hello.readableBytes - 4), at: 0, endianness: .little)
        padded.send(Array(hello.readableBytesView))
        if case .error(let error)? = padded.readUntilClosed().frames.first?.message {
            #expect(error.code == .frameTooLarge)
        } else {
            Issue.record("an oversized HELLO was not refused")
        }
        let after = try #require(ProcessProbe.statusKiB(pid, "VmHWM"))
        print("\(senders) unauthenticated connections sending 8 MiB frames grew VmHWM by \((after - before) >> 10) MiB")
        #expect((after - before) * 1024 < 4 * Limits.maxFrameBytes) // 32 frames held would be 32 × 8 MiB
        // After authentication, full-size frames: a 4 MiB write round trip.
        let client = try await server.client("alice")
        let region = try await client.createRegion("r", sizeBytes: 4 << 20)
        let bytes = pattern(offset: 0, count: 4 << 20, seed: 2)
        try await client.write(region, at: 0, bytes)
        #expect(Array(try await client.read(region, at: 0, length: bytes.count).readableBytesView) == bytes)
        await client.disconnect()
    }

    /// Defect 3: connections opened as fast as the machine allows, never authenticating, cannot
    /// keep a client out: they have their own budget and the silent ones are displaced first.
    @Test func aLegitimateClientGetsInDuringAFloodOfUnauthenticatedConnections() async throws {
        let server = try startServer(["--max-clients", "32"])
        let control = LoadControl()
        let endpoint = server.endpoint
        let flood = Thread {
            var held: [RawConnection] = []
            let deadline = Date().addingTimeInterval(60)
            while !control.isStopped, control.total < 50_000, Date() < deadline {
                if let connection = try? RawConnection(endpoint) {
                    held.append(connection)
                    control.add()
                }
                if held.count > 300 { held.removeFirst() }
            }
            held.removeAll()
            control.finish()
        }
        flood.start()
        defer { control.stop() }
        for _ in 0..<200 where control.total < 500 { try await Task.sleep(for: .milliseconds(50)) }
        #expect(control.total >= 500)
        var slowest = Duration.zero
        for _ in 0..<10 {
            slowest = max(slowest, try await timedLegitimateRequest(server))
        }
        control.stop()
        for _ in 0..<300 where !control.isFinished { try await Task.sleep(for: .milliseconds(100)) }
        #expect(control.isFinished)
        print("unauthenticated flood of \(control.total) connections: 10 of 10 legitimate connect+LIST, slowest \(slowest)")
        #expect(server.log.contains("connection displaced"))
        _ = try await timedLegitimateRequest(server)
    }

    /// Defect 3: one authenticated client cannot take every slot (per-client cap), and idle
    /// connections give their slots back (idle timeout) while active ones keep theirs.
    @Test func oneClientCannotHoldEverySlotAndIdleConnectionsGiveThemBack() async throws {
        let server = try startServer(["--max-clients", "4", "--max-connections-per-client", "3", "--idle-timeout", "3"])
        var bobs: [PMUClient] = []
        for _ in 0..<3 { bobs.append(try await server.client("bob")) }
        do {
            _ = try await server.client("bob")
            Issue.record("a fourth connection of bob was admitted over --max-connections-per-client 3")
        } catch let error as PMUError {
            #expect(error.code == .tooManyClients)
            #expect(error.message.contains("--max-connections-per-client"))
        }
        let alice = try await server.client("alice") // another client gets in beside bob's
        #expect(await code { _ = try await server.client("admin") } == .tooManyClients) // 4 of 4 slots
        // Bob goes idle; alice keeps working (a LIST every 200 ms). Bob's slots come back after
        // the idle timeout.
        let control = LoadControl()
        let active = Task {
            while !control.isStopped {
                _ = try await alice.list()
                control.add()
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        let started = ContinuousClock.now
        var admin: PMUClient?
        while admin == nil, ContinuousClock.now - started < .seconds(30) {
            admin = try? await server.client("admin")
            if admin == nil { try await Task.sleep(for: .milliseconds(250)) }
        }
        let waited = ContinuousClock.now - started
        print("idle timeout 3 s: a client refused while all slots were held got in after \(waited)")
        #expect(admin != nil)
        #expect(waited >= .seconds(1)) // not before bob had been idle
        try await Task.sleep(for: .seconds(1)) // every bob connection has now been idle over 3 s
        control.stop()
        try await active.value // alice, active all along, was served throughout
        #expect(control.total >= 5)
        for bob in bobs { #expect(await code { _ = try await bob.list() } != nil) }
        #expect(server.log.contains("idle timeout; closing connection"))
        await admin?.disconnect()
        await alice.disconnect()
    }

    /// Defect 4: started under a low open-file limit the server raises its soft limit to the hard
    /// limit, lowers --max-clients to what fits and says so; more connections than fit neither
    /// spin it nor lock clients out; when descriptors do run out (the limit lowered under it),
    /// accepts back off with a log line instead of spinning, and resume once connections go away.
    @Test func underALowOpenFileLimitTheServerFitsItsLimitsBacksOffAndRecovers() async throws {
        let server = try startServer([], launcher: ["/usr/bin/prlimit", "--nofile=200:300", "--"])
        let pid = server.process.processIdentifier
        #expect(ProcessProbe.softFileLimit(pid) == 300)
        #expect(server.log.contains("open-file limit raised to the hard limit"))
        #expect(server.log.contains("Lowered to --max-clients"))

        var flood: [RawConnection] = []
        for _ in 0..<400 { flood.append(try RawConnection(server.endpoint)) } // more than 300 descriptors
        try await Task.sleep(for: .seconds(1))
        #expect(ProcessProbe.openDescriptors(pid) < 300)
        let cpuHeld = try await cpuSeconds(pid, over: .seconds(3))
        let during = try await timedLegitimateRequest(server)
        print("400 idle connections under a 300-descriptor limit: server used \(cpuHeld) CPU s in 3 s; a legitimate connect+LIST took \(during)")
        #expect(cpuHeld < 1.0)

        // Out of descriptors: accept fails with EMFILE while connections wait in the backlog.
        let inUse = ProcessProbe.openDescriptors(pid)
        let lowered = try run("/usr/bin/prlimit", ["--pid", "\(pid)", "--nofile=\(inUse):300"])
        #expect(lowered.status == 0, "\(lowered.stderr)")
        for _ in 0..<50 { flood.append(try RawConnection(server.endpoint)) }
        for _ in 0..<100 where !server.log.contains("accept failed; pausing accepts") { try await Task.sleep(for: .milliseconds(100)) }
        #expect(server.log.contains("accept failed; pausing accepts"))
        #expect(server.log.contains("EMFILE"))
        let cpuStarved = try await cpuSeconds(pid, over: .seconds(3))
        // With a spin, accept would fail thousands of times a second (the log counts them).
        let failures = server.log.split(separator: "\n").compactMap { line in
            line.range(of: "failedSinceLastWarning=").map { Int(line[$0.upperBound...].prefix { $0.isNumber }) ?? -1 }
        }
        print("out of descriptors with 50 connections waiting: server used \(cpuStarved) CPU s in 3 s; accept failures per warning: \(failures)")
        #expect(cpuStarved < 1.0, "accept failures per warning: \(failures)")
        #expect(failures.allSatisfy { $0 < 1000 }, "accept failures per warning: \(failures)")

        flood.removeAll() // the connections go away; their descriptors come back
        let after = try await timedLegitimateRequest(server)
        print("after the connections went away a legitimate connect+LIST took \(after)")
    }

    private func cpuSeconds(_ pid: Int32, over window: Duration) async throws -> Double {
        let start = try #require(ProcessProbe.cpuSeconds(pid))
        try await Task.sleep(for: window)
        return try #require(ProcessProbe.cpuSeconds(pid)) - start
    }
}

/// The 16-byte header of a WRITE frame of the maximum size (8 MiB + 4 KiB), body not included.
func maximumWriteHeader(requestId: UInt64) -> [UInt8] {
    var header = ByteBuffer()
    header.writeInteger(UInt32(Limits.maxFrameBytes - 4), endianness: .little)
    header.writeInteger(Limits.protocolVersion)
    header.writeInteger(Opcode.write.rawValue)
    header.writeInteger(UInt16(0))
    header.writeInteger(requestId, endianness: .little)
    return Array(header.readableBytesView)
}

/// The result of work run apart: nil until it ends, then nil-or-error text.
final class Outcome: @unchecked Sendable {
    private let lock = NSLock()
    private var result: String??
    var value: String?? { lock.withLock { result } }
    func set(_ error: String?) { lock.withLock { result = .some(error) } }
}
