import Foundation
import NIOCore
import PMUClient
import PMUCore
@testable import PMUTransport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The client library never hangs on a server that is alive but silent: connect and request
/// deadlines, task cancellation, a bound on pending requests. The silent server is a real
/// pmu-server stopped with SIGSTOP (its sockets stay open, the kernel keeps accepting and
/// buffering, nothing answers), or a listener that accepts and never reads.
@Suite(.serialized) struct ClientDeadlineTests {
    let scratch = Scratch()

    /// SIGSTOPs the server for the duration of `body`, continuing it whatever happens.
    func whileStopped<T>(_ server: ServerProcess, _ body: () async throws -> T) async throws -> T {
        let pid = server.process.processIdentifier
        kill(pid, SIGSTOP)
        defer { kill(pid, SIGCONT) }
        // SIGSTOP takes effect asynchronously: wait (bounded) until every thread shows state T.
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let states = tasks.compactMap { try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/stat", encoding: .utf8) }
                .map { $0[$0.index(after: $0.lastIndex(of: ")")!)...].split(separator: " ").first ?? "" }
            if !states.isEmpty, states.allSatisfy({ $0 == "T" || $0 == "t" }) { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        return try await body()
    }

    @Test func connectToASilentListenerTimesOut() async throws {
        // A listener that accepts (the kernel does, from its backlog) but never answers HELLO.
        let (listener, port) = boundLoopbackSocket()
        defer { close(listener) }
        #expect(listen(listener, 8) == 0)

        var configuration = ClientConfiguration(endpoint: Endpoint(host: "127.0.0.1", port: port), clientId: "admin", secret: Array("x".utf8))
        configuration.connectTimeout = .milliseconds(500)
        let started = ContinuousClock.now
        do {
            _ = try await PMUClient.connect(configuration)
            Issue.record("connect to a silent listener succeeded")
        } catch {
            #expect(error.code == .timedOut, "\(error)")
            #expect(error.message.contains("connectTimeout"), "\(error)")
        }
        // Generous: the point is that it ends, not how fast.
        #expect(ContinuousClock.now - started < .seconds(20))
    }

    @Test func requestToAStoppedServerTimesOutAndClosesTheConnection() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        defer { server.kill9() }
        var configuration = server.configuration()
        configuration.requestTimeout = .milliseconds(500)
        let client = try await PMUClient.connect(configuration)
        let region = try await client.createRegion("silent", sizeBytes: 1 << 20)
        let error = try await whileStopped(server) {
            await code { try await client.write(region, at: 0, [1, 2, 3]) }
        }
        #expect(error == .timedOut)
        // The connection is closed after a timeout: later calls fail at once rather than hang.
        #expect(await code { _ = try await client.stat("silent") } == .timedOut)
        // The server itself is fine once it runs again.
        let other = try await server.client()
        #expect(try await other.stat("silent").sizeBytes == 1 << 20)
        await other.disconnect()
        await client.disconnect()
    }

    @Test func cancellingATaskFailsItsRequestAndKeepsTheConnection() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        defer { server.kill9() }
        var configuration = server.configuration()
        configuration.requestTimeout = .seconds(60)
        let client = try await PMUClient.connect(configuration)
        let region = try await client.createRegion("cancel", sizeBytes: 1 << 20)
        try await client.write(region, at: 0, [7, 7, 7])
        try await whileStopped(server) {
            let task = Task { try await client.read(region, at: 0, length: 3) }
            try await Task.sleep(for: .milliseconds(200))
            task.cancel()
            let started = ContinuousClock.now
            let result = await task.result
            #expect(ContinuousClock.now - started < .seconds(10))
            switch result {
            case .success(let bytes): Issue.record("a read from a stopped server succeeded: \(Array(bytes.readableBytesView)) after \(ContinuousClock.now - started)")
            case .failure(let error): #expect((error as? PMUError)?.code == .cancelled, "\(error)")
            }
        }
        // Same connection, next request: the cancelled READ's late reply is dropped, not
        // mistaken for this one's.
        #expect(Array(try await client.read(region, at: 0, length: 3).readableBytesView) == [7, 7, 7])
        #expect(try await client.stat("cancel").sizeBytes == 1 << 20)
        await client.disconnect()
    }

    @Test func pendingRequestsAreBoundedAndAllComplete() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        defer { server.kill9() }
        var configuration = server.configuration()
        configuration.maxPendingRequests = 4
        configuration.requestTimeout = .seconds(60)
        let client = try await PMUClient.connect(configuration)
        _ = try await client.createRegion("bounded", sizeBytes: 1 << 20)
        let results = try await whileStopped(server) {
            let tasks = (0..<20).map { _ in Task { try await client.stat("bounded").sizeBytes } }
            try await Task.sleep(for: .milliseconds(300))
            return tasks
        }
        // Once the server runs again every waiting caller gets its turn and its answer.
        for task in results { #expect(try await task.value == 1 << 20) }
        await client.disconnect()
    }

    @Test func invalidLimitsAreRefused() async throws {
        var configuration = ClientConfiguration(clientId: "admin", secret: Array("x".utf8))
        configuration.maxPendingRequests = 0
        #expect(await code { _ = try await PMUClient.connect(configuration) } == .invalidArgument)
        configuration.maxPendingRequests = 8
        configuration.requestTimeout = .zero
        #expect(await code { _ = try await PMUClient.connect(configuration) } == .invalidArgument)
    }
}

/// The request table alone (no sockets): ids, the bound, FIFO hand-over, cancellation, deadlines.
@Suite struct RequestTableTests {
    typealias Table = RequestTable<Int>

    @Test func boundHandsPlacesOverInOrder() async throws {
        let table = Table(limits: RequestLimits(requestTimeout: nil, maxPendingRequests: 2))
        let a = try await table.reserve("a"), b = try await table.reserve("b")
        #expect(table.attach(a, 1) && table.attach(b, 2))
        let order = OrderLog()
        let third = Task { let id = try await table.reserve("c"); order.append("c"); return id }
        try await Task.sleep(for: .milliseconds(50))
        let fourth = Task { let id = try await table.reserve("d"); order.append("d"); return id }
        try await Task.sleep(for: .milliseconds(50))
        #expect(table.pendingCount == 2 && order.values.isEmpty)
        #expect(table.complete(a) == 1)
        _ = try await third.value
        #expect(table.complete(b) == 2)
        _ = try await fourth.value
        #expect(order.values == ["c", "d"])
        #expect(table.pendingCount == 2)
    }

    @Test func cancellationWhileWaitingAndLateReplies() async throws {
        let table = Table(limits: RequestLimits(requestTimeout: nil, maxPendingRequests: 1))
        let a = try await table.reserve("a")
        let waiting = Task { try await table.reserve("b") }
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        await #expect(throws: PMUError.self) { _ = try await waiting.value }
        #expect(table.attach(a, 9))
        #expect(table.cancel(a) == 9)
        #expect(table.complete(a) == nil, "a reply after cancellation is dropped")
        #expect(table.pendingCount == 0)
    }

    @Test func deadlinesAndFailure() async throws {
        let table = Table(limits: RequestLimits(requestTimeout: .milliseconds(20), maxPendingRequests: 1))
        let a = try await table.reserve("READ")
        #expect(table.attach(a, 5))
        #expect(table.expired() == nil)
        try await Task.sleep(for: .milliseconds(40))
        #expect(table.expired() == "READ")
        let queued = Task { try await table.reserve("STAT") }
        try await Task.sleep(for: .milliseconds(20))
        #expect(table.failAll(table.timedOut("READ")) == [5])
        let error = await #expect(throws: PMUError.self) { _ = try await queued.value }
        #expect(error?.code == .timedOut)
        await #expect(throws: PMUError.self) { _ = try await table.reserve("later") }
    }
}

/// Order in which tasks got through, for the FIFO check.
final class OrderLog: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ value: String) { lock.lock(); storage.append(value); lock.unlock() }
    var values: [String] { lock.lock(); defer { lock.unlock() }; return storage }
}
