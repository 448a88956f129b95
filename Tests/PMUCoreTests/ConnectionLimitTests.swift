import NIOCore
import NIOEmbedded
import Testing

@testable import PMUCore

/// The server's connection limits without sockets: fair admission, the descriptor budget, and the
/// frame limit that stays handshake-sized until authentication (in an in-process NIO channel).
@Suite struct ConnectionLimitTests {
    let limits = AdmissionTable.Limits(maxClients: 3, maxAuthenticating: 2, maxConnectionsPerClient: 2)

    @Test func aFloodOfUnauthenticatedConnectionsDisplacesTheOldestAndFillsNoClientSlot() throws {
        var table = AdmissionTable(limits: limits)
        #expect(table.arrive(1) == nil)
        #expect(table.arrive(2) == nil)
        // Budget full: each newcomer displaces the one that has waited longest.
        #expect(table.arrive(3) == 1)
        #expect(table.arrive(4) == 2)
        #expect(table.authenticatingCount == 2)
        #expect(table.authenticatedCount == 0)
        // A displaced connection that then authenticates is refused...
        table.helloReceived(1)
        #expect(throws: PMUError.self) { try table.authenticate(1, clientId: "alice") }
        // ...while one that has sent HELLO outlasts 10,000 silent newcomers and gets in.
        table.helloReceived(4)
        for id in UInt64(100)..<10_100 { #expect(table.arrive(id) != 4) }
        try table.authenticate(4, clientId: "alice")
        #expect(table.authenticatedCount == 1)
        #expect(table.authenticatingCount == 1)
        // The silent flood never touches the client slot.
        for id in UInt64(20_000)..<20_100 { _ = table.arrive(id) }
        #expect(table.authenticatingCount == 2)
        #expect(table.authenticatedCount == 1)
        // When every connection has sent HELLO, the oldest of them goes.
        var challenged = AdmissionTable(limits: limits)
        for id in UInt64(1)...2 { _ = challenged.arrive(id); challenged.helloReceived(id) }
        #expect(challenged.arrive(3) == 1)
    }

    @Test func clientSlotsAndThePerClientCapAreEnforcedAndGivenBack() throws {
        var table = AdmissionTable(limits: limits)
        func handshake(_ id: UInt64) { _ = table.arrive(id); table.helloReceived(id) }
        handshake(1); try table.authenticate(1, clientId: "bob")
        handshake(2); try table.authenticate(2, clientId: "bob")
        handshake(3)
        do {
            try table.authenticate(3, clientId: "bob")
            Issue.record("a third bob connection was admitted")
        } catch {
            #expect(error.code == .tooManyClients)
            #expect(error.message.contains("--max-connections-per-client"))
        }
        try table.authenticate(3, clientId: "alice") // another client id still gets in
        handshake(4)
        do {
            try table.authenticate(4, clientId: "carol")
            Issue.record("a fourth client was admitted over --max-clients 3")
        } catch {
            #expect(error.code == .tooManyClients)
            #expect(error.message.contains("--max-clients"))
        }
        table.leave(4)
        table.leave(1)
        #expect(table.connections(of: "bob") == 1)
        handshake(5)
        try table.authenticate(5, clientId: "bob") // bob's slot came back
        table.leave(5); table.leave(2); table.leave(3)
        table.leave(99) // unknown: ignored
        #expect(table.authenticatedCount == 0)
        #expect(table.connections(of: "bob") == 0)
    }

    @Test func theDescriptorBudgetKeepsWhatFitsAndLowersWhatDoesNot() {
        let fits = DescriptorBudget.plan(softLimit: 20_000, inUse: 30, maxClients: 1024, maxAuthenticating: 64)
        #expect(fits == DescriptorBudget(maxClients: 1024, maxAuthenticating: 64, warning: nil))
        // systemd's default 1024 with the default limits: 1024 - 30 - 64 = 930 for connections.
        let lowered = DescriptorBudget.plan(softLimit: 1024, inUse: 30, maxClients: 1024, maxAuthenticating: 64)
        #expect(lowered.maxClients + lowered.maxAuthenticating == 930)
        #expect(lowered.maxAuthenticating == 54)
        #expect(lowered.warning?.contains("Lowered to --max-clients 876 and --max-authenticating 54") == true)
        // Nothing left: one of each, and the warning says so.
        let starved = DescriptorBudget.plan(softLimit: 50, inUse: 40, maxClients: 1024, maxAuthenticating: 64)
        #expect(starved.maxClients == 1 && starved.maxAuthenticating == 1)
        #expect(starved.warning?.contains("leaving 0") == true)
        #expect(DescriptorBudget.plan(softLimit: .max, inUse: .max, maxClients: .max, maxAuthenticating: .max).maxClients >= 1)
    }

    @Test func beforeAuthenticationAFrameOverTheHandshakeLimitIsRefusedFromItsHeader() throws {
        let limit = FrameSizeLimit.handshake()
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder<Request>(limit: limit)))
        defer { _ = try? channel.finish() }
        // HELLO and AUTHENTICATE fit.
        var hello = ByteBuffer()
        FrameCodec.encode(Frame(requestId: 1, message: Request.hello(clientId: String(repeating: "c", count: 64), clientNonce: Array(repeating: 1, count: 32))), into: &hello)
        #expect(hello.readableBytes <= Limits.maxHandshakeFrameBytes)
        try channel.writeInbound(hello)
        #expect(try channel.readInbound(as: Frame<Request>.self)?.requestId == 1)
        // A maximum-size frame announced by its first 8 bytes: refused, nothing more buffered.
        var header = ByteBuffer()
        header.writeInteger(UInt32(Limits.maxFrameBytes - 4), endianness: .little)
        header.writeInteger(UInt8(1)); header.writeInteger(UInt8(0x12)); header.writeInteger(UInt16(0))
        do {
            try channel.writeInbound(header)
            Issue.record("an 8 MiB frame was accepted before authentication")
        } catch let error as FrameDecodingError {
            #expect(error.error.code == .frameTooLarge)
            #expect(error.error.message.contains("before authentication"))
        }
    }

    @Test func afterAuthenticationFullSizeFramesAreAccepted() throws {
        let limit = FrameSizeLimit.handshake()
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder<Request>(limit: limit)))
        defer { _ = try? channel.finish() }
        limit.allowFullFrames()
        var write = ByteBuffer()
        FrameCodec.encode(Frame(requestId: 3, message: Request.write(key: AccessKey(high: 1, low: 2), offset: 0, data: ByteBuffer(repeating: 7, count: 1 << 20))), into: &write)
        try channel.writeInbound(write)
        guard case .write(_, _, let data)? = try channel.readInbound(as: Frame<Request>.self)?.message else {
            Issue.record("no WRITE decoded"); return
        }
        #expect(data.readableBytes == 1 << 20)
    }
}
