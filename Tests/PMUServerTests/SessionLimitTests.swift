import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import PMUCore
import PMUStore
import PMUTransport
import Testing

@testable import PMUServer

/// The session's limits over an in-process transport: an embedded event loop (time advanced by
/// hand) and a reply sink that records what the session sends and says whether replies have room.
/// The store is real, in a scratch directory.
@Suite struct SessionLimitTests {
    /// What a session sent and asked of its connection.
    final class RecordingSink: ReplySink, @unchecked Sendable {
        private let lock = NIOLock()
        private var _sent: [(id: UInt64, response: Response, closes: Bool)] = []
        private var _room = true
        private var _fullFrames = false

        var sent: [(id: UInt64, response: Response, closes: Bool)] { lock.withLock { _sent } }
        var room: Bool {
            get { lock.withLock { _room } }
            set { lock.withLock { _room = newValue } }
        }
        var fullFrames: Bool { lock.withLock { _fullFrames } }

        func send(_ response: Response, requestId: UInt64) { lock.withLock { _sent.append((requestId, response, false)) } }
        func sendAndClose(_ response: Response, requestId: UInt64) { lock.withLock { _sent.append((requestId, response, true)) } }
        func sendAndCloseNow(_ response: Response, requestId: UInt64) { sendAndClose(response, requestId: requestId) }
        func close() {}
        func pauseReading() {}
        func resumeReading() {}
        var hasReplyRoom: Bool { room }
        func allowFullFrames() { lock.withLock { _fullFrames = true } }
    }

    /// A server's state over a real store, and sessions on one embedded loop.
    final class Harness {
        let directory: String
        let loop = EmbeddedEventLoop()
        let pool = NIOThreadPool(numberOfThreads: 1)
        let state: ServerState
        let secret = Array("alice-secret-0123456789".utf8)
        private var nextId: UInt64 = 1

        init(_ tune: (inout ServerConfiguration) -> Void = { _ in }) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("pmu-session-\(UUID().uuidString.prefix(8))").path
            var configuration = ServerConfiguration()
            configuration.dataDirectory = directory
            tune(&configuration)
            let logger = Logger(label: "test")
            let store = try RegionStore(directory: try DataDirectory(path: directory), logger: logger)
            state = ServerState(store: store, secrets: SecretsTable(secrets: ["alice": secret, "bob": secret]), configuration: configuration)
            pool.start()
        }

        deinit {
            try? pool.syncShutdownGracefully()
            try? FileManager.default.removeItem(atPath: directory)
        }

        func connect() -> (Session, RecordingSink) {
            let sink = RecordingSink()
            defer { nextId += 1 }
            let info = ConnectionInfo(id: nextId, remoteAddress: "in-process", eventLoop: loop, replies: sink)
            return (Session(info: info, state: state, pool: pool, metadataPool: pool, logger: Logger(label: "test")), sink)
        }

        /// HELLO and AUTHENTICATE with the right proof; returns the reply to AUTHENTICATE.
        @discardableResult
        func authenticate(_ session: Session, _ sink: RecordingSink, as clientId: String = "alice") -> Response? {
            let nonce = Authentication.randomNonce()
            session.handle(Frame(requestId: 1, message: .hello(clientId: clientId, clientNonce: nonce)))
            loop.run()
            guard case .challenge(let serverNonce)? = sink.sent.last?.response else { return nil }
            let proof = Authentication.clientProof(secret: secret, clientId: clientId, clientNonce: nonce, serverNonce: serverNonce)
            session.handle(Frame(requestId: 2, message: .authenticate(proof: proof)))
            loop.run()
            return sink.sent.last?.response
        }
    }

    @Test func noRequestExecutesWhileRepliesAreOverTheBoundAndAllRunInOrderOnceDrained() throws {
        let harness = try Harness()
        let (session, sink) = harness.connect()
        guard case .authenticated? = harness.authenticate(session, sink) else { Issue.record("not authenticated"); return }
        #expect(sink.fullFrames) // the transport was told to accept full-size frames
        let before = sink.sent.count
        sink.room = false
        for id in UInt64(10)..<20 { session.handle(Frame(requestId: id, message: .stat(name: "none-\(id)"))) }
        harness.loop.run()
        #expect(sink.sent.count == before) // decoded, queued, not executed
        sink.room = true
        session.repliesDrained()
        harness.loop.run()
        #expect(sink.sent.dropFirst(before).map(\.id) == Array(10..<20))
        for reply in sink.sent.dropFirst(before) {
            guard case .error(let error) = reply.response else { Issue.record("\(reply.response)"); continue }
            #expect(error.code == .unknownRegion)
        }
        session.connectionClosed()
    }

    @Test func authenticatedConnectionsArePerClientCappedAndTheSlotComesBackOnClose() throws {
        let harness = try Harness { $0.maxConnectionsPerClient = 1; $0.maxClients = 2 }
        let (first, firstSink) = harness.connect()
        guard case .authenticated? = harness.authenticate(first, firstSink) else { Issue.record("first refused"); return }
        let (second, secondSink) = harness.connect()
        guard case .error(let error)? = harness.authenticate(second, secondSink) else { Issue.record("second admitted"); return }
        #expect(error.code == .tooManyClients)
        #expect(secondSink.sent.last?.closes == true)
        #expect(secondSink.sent.last?.id == 2) // the reply to AUTHENTICATE
        #expect(!secondSink.fullFrames)
        second.connectionClosed()
        let (bob, bobSink) = harness.connect()
        guard case .authenticated? = harness.authenticate(bob, bobSink, as: "bob") else { Issue.record("bob refused"); return }
        first.connectionClosed()
        let (again, againSink) = harness.connect()
        guard case .authenticated? = harness.authenticate(again, againSink) else { Issue.record("alice's slot did not come back"); return }
        again.connectionClosed()
        bob.connectionClosed()
    }

    @Test func aSilentConnectionIsDisplacedBeforeOneThatSentHello() throws {
        let harness = try Harness { $0.maxAuthenticating = 2 }
        let (talker, talkerSink) = harness.connect()
        talker.handle(Frame(requestId: 1, message: .hello(clientId: "alice", clientNonce: Authentication.randomNonce())))
        harness.loop.run()
        let (silent, silentSink) = harness.connect()
        let (newcomer, newcomerSink) = harness.connect() // budget of 2 full: the silent one goes
        harness.loop.run()
        defer { withExtendedLifetime([talker, silent, newcomer]) {} } // the transport holds sessions
        guard case .error(let error)? = silentSink.sent.last?.response else { Issue.record("silent connection not displaced"); return }
        #expect(error.code == .tooManyClients)
        #expect(silentSink.sent.last?.id == 0 && silentSink.sent.last?.closes == true)
        #expect(talkerSink.sent.count == 1) // only its CHALLENGE
        #expect(newcomerSink.sent.isEmpty)
    }

    @Test func anIdleAuthenticatedConnectionIsClosedAndAnActiveOneIsNot() throws {
        let harness = try Harness { $0.idleTimeout = .seconds(10) }
        let (idle, idleSink) = harness.connect()
        harness.authenticate(idle, idleSink)
        let (active, activeSink) = harness.connect()
        harness.authenticate(active, activeSink, as: "bob")
        for step in 0..<6 { // 12 s in steps of 2 s; `active` sends a request at each
            harness.loop.advanceTime(by: .seconds(2))
            active.handle(Frame(requestId: UInt64(100 + step), message: .stat(name: "x")))
            harness.loop.run()
        }
        guard case .error(let error)? = idleSink.sent.last?.response else { Issue.record("idle connection not closed"); return }
        #expect(error.code == .connectionClosed)
        #expect(error.message.contains("--idle-timeout"))
        #expect(idleSink.sent.last?.closes == true)
        #expect(activeSink.sent.allSatisfy { !$0.closes })
        harness.loop.advanceTime(by: .seconds(11)) // now `active` goes quiet too
        #expect(activeSink.sent.last?.closes == true)
        withExtendedLifetime([idle, active]) {} // the transport holds sessions
    }
}
