import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

/// Authentication and hostile input, through raw sockets where no real client would send it.
@Suite struct AuthAndFrameTests {
    let scratch = Scratch()

    func startServer(_ extra: [String] = []) throws -> ServerProcess {
        try writeSecretsFile(scratch.path + "/secrets")
        return try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: scratch.path + "/secrets", extraArguments: extra)
    }

    @Test func wrongSecretAndUnknownClientFailAlike() async throws {
        let server = try startServer()
        var bad = server.configuration("alice")
        bad.secret = Array("not-alices-secret-at-all".utf8)
        #expect(await code { _ = try await PMUClient.connect(bad) } == .authenticationFailed)
        var unknown = server.configuration("alice")
        unknown.clientId = "mallory"
        #expect(await code { _ = try await PMUClient.connect(unknown) } == .authenticationFailed)
        #expect(await code { _ = try await PMUClient.connect(server.configuration("alice")) } == nil)
        #expect(server.log.contains("authentication failed"))
        #expect(!server.log.contains(testSecrets["alice"]!))
    }

    @Test func unauthenticatedRequestsAreRefused() throws {
        let server = try startServer()
        let raw = try RawConnection(server.endpoint)
        raw.send(Request.list(after: "", limit: 10, wantsCursor: false), id: 7)
        let (frames, closed) = raw.readUntilClosed()
        #expect(closed)
        #expect(frames.count == 1)
        guard case .error(let error)? = frames.first?.message else { Issue.record("no error reply"); return }
        #expect(error.code == .notAuthenticated)
        #expect(frames.first?.requestId == 7)
    }

    @Test func proofReplayFromAnotherSessionFails() throws {
        let server = try startServer()
        // Session 1: a real handshake. Its proof is only good for its own server nonce.
        let first = try RawConnection(server.endpoint)
        let nonce = Authentication.randomNonce()
        first.send(Request.hello(clientId: "alice", clientNonce: nonce), id: 1)
        guard case .challenge(let serverNonce)? = first.readFrame()?.message else { Issue.record("no challenge"); return }
        let proof = Authentication.clientProof(secret: Array(testSecrets["alice"]!.utf8), clientId: "alice", clientNonce: nonce, serverNonce: serverNonce)
        // Session 2: replay the same hello and proof.
        let second = try RawConnection(server.endpoint)
        second.send(Request.hello(clientId: "alice", clientNonce: nonce), id: 1)
        _ = second.readFrame()
        second.send(Request.authenticate(proof: proof), id: 2)
        guard case .error(let error)? = second.readFrame()?.message else { Issue.record("replay accepted"); return }
        #expect(error.code == .authenticationFailed)
    }

    @Test func garbageTruncatedAndOversizedFramesCloseOnlyThatConnection() async throws {
        let server = try startServer()
        let bystander = try await server.client("bob")
        let handle = try await bystander.createRegion("still-here", sizeBytes: 4096)
        try await bystander.write(handle, at: 0, [1, 2, 3])

        // Oversized: refused from the header, with the request id, before any body arrives.
        let oversized = try RawConnection(server.endpoint)
        #expect(oversized.authenticate(clientId: "alice", secret: Array(testSecrets["alice"]!.utf8)))
        var header = ByteBuffer()
        FrameCodec.encodeHeader(opcode: .write, requestId: 99, bodyBytes: Limits.maxFrameBytes, into: &header)
        oversized.send(Array(header.readableBytesView))
        let (frames, closed) = oversized.readUntilClosed()
        #expect(closed)
        guard case .error(let error)? = frames.last?.message else { Issue.record("no error reply"); return }
        #expect(error.code == .frameTooLarge && frames.last?.requestId == 99)

        // Garbage: an error reply, then close.
        let garbage = try RawConnection(server.endpoint)
        garbage.send([0x10, 0, 0, 0] + Array(repeating: 0xEE, count: 16))
        let garbageReply = garbage.readUntilClosed()
        #expect(garbageReply.closed)
        if case .error(let error)? = garbageReply.frames.first?.message {
            #expect(error.code == .unsupportedVersion || error.code == .malformedFrame)
        } else {
            Issue.record("no error reply to garbage")
        }

        // Truncated: half a frame, then the client goes away mid-frame.
        for _ in 0..<20 {
            let truncated = try RawConnection(server.endpoint)
            var frame = ByteBuffer()
            FrameCodec.encode(Frame(requestId: 1, message: Request.hello(clientId: "alice", clientNonce: Authentication.randomNonce())), into: &frame)
            truncated.send(Array(frame.readableBytesView.prefix(frame.readableBytes / 2)))
        }

        // Random bytes on many connections.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let raw = try RawConnection(server.endpoint)
            raw.send((0..<Int.random(in: 1...200, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        }

        // The server is alive, other clients unaffected, data intact.
        #expect(Array(try await bystander.read(handle, at: 0, length: 3).readableBytesView) == [1, 2, 3])
        let fresh = try await server.client("alice")
        #expect(try await fresh.list().isEmpty) // alice sees none of bob's regions
        await fresh.disconnect()
        await bystander.disconnect()
    }

    @Test func clientKilledMidTransferLeavesServerServing() async throws {
        let server = try startServer()
        let bystander = try await server.client("bob")
        let handle = try await bystander.createRegion("r", sizeBytes: 1 << 20)
        let raw = try RawConnection(server.endpoint)
        #expect(raw.authenticate(clientId: "bob", secret: Array(testSecrets["bob"]!.utf8)))
        raw.send(Request.open(name: "r", rights: .readWrite), id: 3)
        guard case .grant(let grant)? = raw.readFrame()?.message else { Issue.record("no grant"); return }
        var frame = ByteBuffer()
        FrameCodec.encode(Frame(requestId: 4, message: Request.write(key: grant.key, offset: 0, data: ByteBuffer(bytes: Array(repeating: 7, count: 512 * 1024)))), into: &frame)
        raw.send(Array(frame.readableBytesView.prefix(300 * 1024))) // then vanish
        _ = consume raw
        // The dead connection's handle is gone once the server has seen the close, which it learns
        // asynchronously from the kernel (the bystander's requests can overtake it): wait up to 10 s.
        var handles = try await bystander.stat("r").openHandles
        for _ in 0..<100 where handles != 1 {
            try await Task.sleep(for: .milliseconds(100))
            handles = try await bystander.stat("r").openHandles
        }
        #expect(handles == 1)
        // The torn WRITE was never answered; a large one streams into the region as it arrives
        // (StreamedWriteTests), so at most a prefix of what was sent landed, nothing beyond.
        let region = Array(try await bystander.read(handle, at: 0, length: 512 * 1024).readableBytesView)
        let landed = region.firstIndex(of: 0) ?? region.count
        #expect(landed <= 300 * 1024 - FrameCodec.writeHeadBytes && region[landed...].allSatisfy { $0 == 0 })
        try await bystander.write(handle, at: 0, [5])
        #expect(Array(try await bystander.read(handle, at: 0, length: 1).readableBytesView) == [5])
        await bystander.disconnect()
    }

    @Test func clientLimitIsEnforced() async throws {
        let server = try startServer(["--max-clients", "2"])
        let a = try await server.client("alice")
        let b = try await server.client("bob")
        let refused = await code { _ = try await server.client("admin") }
        #expect(refused == .tooManyClients)
        await a.disconnect()
        try await Task.sleep(for: .milliseconds(200))
        let c = try await server.client("admin") // a slot is free again
        await c.disconnect()
        await b.disconnect()
    }

    @Test func handleLimitIsEnforced() async throws {
        let server = try startServer(["--max-handles", "3"])
        let client = try await server.client()
        _ = try await client.createRegion("h", sizeBytes: 1)
        for _ in 0..<2 { _ = try await client.openRegion("h") }
        #expect(await code { _ = try await client.openRegion("h") } == .tooManyHandles)
        await client.disconnect()
    }
}

extension AuthAndFrameTests {
    /// A name over the limit sent by a client that skips validation is refused by the server, not truncated.
    @Test func overlongNameOnTheWireIsRefused() throws {
        let server = try startServer()
        let raw = try RawConnection(server.endpoint)
        #expect(raw.authenticate(clientId: "alice", secret: Array(testSecrets["alice"]!.utf8)))
        raw.send(Request.create(CreateRegion(name: String(repeating: "n", count: 300), sizeBytes: 1)), id: 5)
        let (frames, _) = raw.readUntilClosed()
        guard case .error(let error)? = frames.last?.message else { Issue.record("accepted"); return }
        #expect(error.code == .malformedFrame)
        #expect(!FileManager.default.fileExists(atPath: server.dataDirectory + "/regions/0000000000000001.region"))
    }
}

extension AuthAndFrameTests {
    /// A connection that never authenticates is closed and gives back its client slot.
    @Test func silentConnectionsAreClosedAfterTheAuthenticationTimeout() async throws {
        let server = try startServer(["--auth-timeout", "1", "--max-clients", "1"])
        do {
            let silent = try RawConnection(server.endpoint)
            let (frames, closed) = silent.readUntilClosed()
            #expect(closed)
            if case .error(let error)? = frames.last?.message {
                #expect(error.code == .notAuthenticated)
            } else {
                Issue.record("no error reply before close")
            }
        } // the client closes its end too, and the server frees the slot
        try await Task.sleep(for: .milliseconds(300))
        // The slot is free again: a held slot would refuse with the client limit's code. The
        // handshake itself must finish inside the 1 s timeout, which a loaded machine running many
        // tests at once can miss (seen once), so a timed-out handshake is tried again.
        for attempt in 1...5 {
            do {
                let client = try await server.client("alice")
                await client.disconnect()
                return
            } catch let error as PMUError where error.code == .notAuthenticated && attempt < 5 {
                continue
            }
        }
    }
}
