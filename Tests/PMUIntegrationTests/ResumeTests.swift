import Foundation
import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCore
import PMUTransport
import Testing

/// A checkpoint writer that survives its server's failure (issue 12 item 3, issue 13 item 3;
/// ARCHITECTURE.md section 12a): real pair and failover processes, a real kill -9 mid stream, and
/// a reader afterwards that sees every acknowledged checkpoint and the next ones, in order. Pairs
/// serve TCP only (PairTests.pairedServersRefuseVerbs), so the VM's verbs run skips this suite.
@Suite(.serialized, .enabled(if: testTransport == .tcp, "pairs and failover serve TCP only (--transport tcp)"))
struct ResumeTests {
    static let payloadBytes = 8192

    /// The stream's i-th checkpoint: its index first, then bytes that differ per index.
    static func payload(_ index: Int) -> [UInt8] {
        var bytes = withUnsafeBytes(of: UInt64(index).littleEndian) { Array($0) }
        bytes += pattern(index, payloadBytes - 8)
        return bytes
    }

    static let options = CheckpointOptions(mode: .append, maxCheckpoints: 512)
    static let regionBytes: UInt64 = 8 << 20

    /// Checkpoints 1, 2, ... through `primary` until `stop` or `limit`; each acknowledged index
    /// and the sequence it got go into `acknowledged`. The loop ends at the first error (recorded).
    static func stream(_ primary: ResumingCheckpointPrimary, limit: Int, stop: LockedBox<Bool>, acknowledged: LockedBox<[(index: Int, sequence: UInt64)]>) -> Task<PMUError?, Never> {
        Task {
            for index in 1...limit where !stop.withLockedValue({ $0 }) {
                do throws(PMUError) {
                    let sequence = try await primary.checkpoint(payload(index))
                    acknowledged.withLockedValue { $0.append((index, sequence)) }
                } catch {
                    return error
                }
            }
            return nil
        }
    }

    /// Polls until `count` checkpoints are acknowledged (bounded: 300 x 100 ms).
    static func waitFor(_ count: Int, _ acknowledged: LockedBox<[(index: Int, sequence: UInt64)]>) async throws {
        for _ in 0..<300 where acknowledged.withLockedValue({ $0.count }) < count { try await Task.sleep(for: .milliseconds(100)) }
        #expect(acknowledged.withLockedValue { $0.count } >= count, "the checkpoint stream made no progress")
    }

    /// What a reader at `endpoint` sees: every checkpoint, checked against the stream.
    static func expectEveryCheckpointInOrder(at configuration: ClientConfiguration, acknowledged: [(index: Int, sequence: UInt64)]) async throws {
        let reader = try await PMUClient.connect(configuration)
        let backup = try await reader.openBackup("stream")
        let all = try await backup.all()
        try await backup.close()
        await reader.disconnect()
        // The stream's call i got sequence i: nothing lost, nothing written twice, no gap.
        for (index, sequence) in acknowledged { #expect(sequence == UInt64(index), "checkpoint call \(index) was acknowledged as sequence \(sequence)") }
        #expect(all.map(\.sequence) == Array(1...UInt64(all.count)), "sequences on the server: \(all.map(\.sequence))")
        // Every acknowledged one is there, and nothing else (every call that returned was acknowledged).
        #expect(all.count == acknowledged.count, "\(all.count) checkpoints for \(acknowledged.count) acknowledged")
        for checkpoint in all {
            let same = Array(buffer: checkpoint.payload) == payload(Int(checkpoint.sequence))
            #expect(same, "checkpoint \(checkpoint.sequence)'s payload is not the stream's (it starts with index \(checkpoint.payload.getInteger(at: checkpoint.payload.readerIndex, endianness: .little, as: UInt64.self) ?? 0))")
        }
    }

    /// Creates the stream's region on `server` and opens a resuming primary for it, connecting
    /// first to `first` (default: the server) and then to `endpoints`.
    static func writer(creatingOn server: ServerProcess, first: Endpoint? = nil, then endpoints: [Endpoint] = []) async throws -> (ReconnectingClient, ResumingCheckpointPrimary) {
        let admin = try await server.client()
        try await admin.createCheckpointRegion("stream", sizeBytes: regionBytes, options: options)
        await admin.disconnect()
        var configuration = server.configuration()
        configuration.endpoint = first ?? server.endpoint
        configuration.requestTimeout = .seconds(5)
        let connection = ReconnectingClient(configuration, endpoints: endpoints)
        return (connection, try await ResumingCheckpointPrimary.open("stream", through: connection))
    }

    /// kill -9 of the pair's owner, then the takeover on its partner.
    static func killOwnerAndTakeOver(_ pair: TestPair) async throws {
        pair.owner.kill9()
        let partner = try await pair.partner.client()
        _ = try await partner.pairTakeover()
        await partner.disconnect()
    }

    /// (a) A pair: the owner is killed -9 while a writer streams checkpoints; the partner takes
    /// over; the writer reconnects to the takeover endpoint, resumes with OPEN_RESUME, and goes
    /// on as the same primary. A reader at the partner sees every acknowledged checkpoint and the
    /// ones after, in order, byte for byte.
    @Test func writerCarriesOnThroughAPairTakeover() async throws {
        let pair = try TestPair()
        let (connection, primary) = try await Self.writer(creatingOn: pair.owner, then: [pair.takeoverEndpoint])
        let firstEpoch = await primary.epoch
        let stop = LockedBox(false)
        let acknowledged = LockedBox<[(index: Int, sequence: UInt64)]>([])
        let stream = Self.stream(primary, limit: 400, stop: stop, acknowledged: acknowledged)
        defer { stop.withLockedValue { $0 = true } }

        try await Self.waitFor(30, acknowledged)
        let atKill = acknowledged.withLockedValue { $0.count }
        try await Self.killOwnerAndTakeOver(pair) // mid stream: a checkpoint is in flight at almost any moment
        try await Self.waitFor(atKill + 30, acknowledged)
        stop.withLockedValue { $0 = true }
        let failure = await stream.value
        #expect(failure == nil, "the stream failed: \(String(describing: failure))")

        #expect(await primary.resumes >= 1)
        #expect(await primary.epoch > firstEpoch)
        #expect(await primary.stoppedBy == nil)
        #expect(await connection.endpoint == pair.takeoverEndpoint)
        await connection.disconnect()
        try await Self.expectEveryCheckpointInOrder(at: pair.owner.configuration()._with(endpoint: pair.takeoverEndpoint), acknowledged: acknowledged.withLockedValue { $0 })
    }

    /// (c) A writer fenced by a second writer during the outage does not resume: after the
    /// takeover another primary opens the region at the partner and checkpoints; the first
    /// writer's OPEN_RESUME is refused FENCED, it stops for good, and nothing of it lands.
    @Test func writerFencedDuringTheOutageDoesNotResume() async throws {
        let pair = try TestPair()
        let (connection, first) = try await Self.writer(creatingOn: pair.owner, then: [pair.takeoverEndpoint])
        for index in 1...3 { #expect(try await first.checkpoint(Self.payload(index)) == UInt64(index)) }

        try await Self.killOwnerAndTakeOver(pair)
        // The second writer: a plain primary at the partner, a newer epoch.
        let second = try await PMUClient.connect(pair.owner.configuration()._with(endpoint: pair.takeoverEndpoint))
        let other = try await second.openPrimary("stream")
        #expect(try await other.checkpoint(Self.payload(4)) == 4)

        let refused = await code { _ = try await first.checkpoint(Self.payload(99)) }
        #expect(refused == .fenced)
        #expect(await first.stoppedBy?.code == .fenced)
        #expect(await first.resumes == 0)
        // It stays stopped: no second try takes the role back.
        #expect(await code { _ = try await first.checkpoint(Self.payload(100)) } == .fenced)
        await connection.disconnect()
        // The second writer was not disturbed, and the first wrote nothing after it.
        #expect(try await other.checkpoint(Self.payload(5)) == 5)
        try await other.close()
        await second.disconnect()
        try await Self.expectEveryCheckpointInOrder(
            at: pair.owner.configuration()._with(endpoint: pair.takeoverEndpoint), acknowledged: (1...5).map { ($0, UInt64($0)) })
    }

    /// (b) A failover pair with real etcd: the primary is killed -9 mid stream; the monitor wins
    /// at etcd, fences, replays and serves at the same service address; the writer resumes there.
    @Test(.enabled(if: EtcdProcess.installed, "etcd is not installed: run scripts/install-deps.sh (Debian etcd-server)"))
    func writerCarriesOnThroughAHeartbeatFailover() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        _ = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        let (connection, primary) = try await Self.writer(creatingOn: pair.primary)
        let stop = LockedBox(false)
        let acknowledged = LockedBox<[(index: Int, sequence: UInt64)]>([])
        let stream = Self.stream(primary, limit: 400, stop: stop, acknowledged: acknowledged)
        defer { stop.withLockedValue { $0 = true } }

        try await Self.waitFor(30, acknowledged)
        pair.primary.kill9()
        let atKill = acknowledged.withLockedValue { $0.count }
        try await Self.waitFor(atKill + 30, acknowledged)
        stop.withLockedValue { $0 = true }
        let failure = await stream.value
        #expect(failure == nil, "the stream failed: \(String(describing: failure))")
        #expect(await primary.resumes >= 1)
        await connection.disconnect()
        let after = try await pair.waitFor(pair.monitor, "monitor is primary") { $0["serving"] as? Bool == true }
        #expect(after["role"] as? String == "primary")
        try await Self.expectEveryCheckpointInOrder(at: pair.primary.configuration(), acknowledged: acknowledged.withLockedValue { $0 })
    }

    /// The checkpoint in doubt at the failure, both ways, made deterministic by losing exactly one
    /// reply (ReplyCuttingProxy; a real server behind it, the writer reconnecting to it directly).
    /// A checkpoint is 4 replies here (payload WRITE + PERSIST, header WRITE + PERSIST).
    /// - cut at the payload's PERSIST reply: no header was written; the resume finds nothing newer
    ///   than the last acknowledged and writes the checkpoint again, with the same sequence;
    /// - cut at the header's PERSIST reply: the server committed it; the resume finds it, reads
    ///   its payload back, and reports it with its sequence, without writing it twice.
    @Test(arguments: [(1, false), (3, true)])
    func checkpointInDoubtIsRewrittenOrReported(repliesBeforeCut: Int, committed: Bool) async throws {
        let scratch = Scratch()
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: nil)
        let proxy = try ReplyCuttingProxy(to: server.endpoint)
        defer { proxy.stop() }
        let (connection, primary) = try await Self.writer(creatingOn: server, first: proxy.endpoint, then: [server.endpoint])
        let firstEpoch = await primary.epoch
        for index in 1...3 { #expect(try await primary.checkpoint(Self.payload(index)) == UInt64(index)) }

        proxy.cut(afterReplies: repliesBeforeCut)
        #expect(try await primary.checkpoint(Self.payload(4)) == 4)
        #expect(proxy.hasCut)
        #expect(await primary.resumes == 1)
        #expect(await primary.epoch == firstEpoch + 1)
        let settled = await primary.lastSettled
        #expect(settled?.sequence == 4 && settled?.committed == committed, "in doubt settled as \(String(describing: settled))")
        #expect(try await primary.checkpoint(Self.payload(5)) == 5)
        await connection.disconnect()
        try await Self.expectEveryCheckpointInOrder(at: server.configuration(), acknowledged: (1...5).map { ($0, UInt64($0)) })
    }

    /// A resume whose own reply is lost: the server raised the epoch and granted, the grant never
    /// arrived (the second proxy cuts exactly the OPEN_RESUME reply, after the handshake's two).
    /// The writer retries with the same token at the server directly and is granted again at the
    /// same raised epoch (ResumeEpochRule.grantAgain), not FENCED by its own first try; the stream
    /// goes on with nothing lost. Without the token this writer would stop FENCED.
    @Test func resumeWhoseReplyIsLostIsGrantedAgainNotFenced() async throws {
        let scratch = Scratch()
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: nil)
        let first = try ReplyCuttingProxy(to: server.endpoint)
        let second = try ReplyCuttingProxy(to: server.endpoint)
        defer {
            first.stop()
            second.stop()
        }
        let (connection, primary) = try await Self.writer(creatingOn: server, first: first.endpoint, then: [second.endpoint, server.endpoint])
        let firstEpoch = await primary.epoch
        for index in 1...3 { #expect(try await primary.checkpoint(Self.payload(index)) == UInt64(index)) }

        second.cut(afterReplies: 2) // CHALLENGE and AUTHENTICATED pass; the OPEN_RESUME grant is lost
        first.cut(afterReplies: 0) // checkpoint 4's first reply is lost: the writer resumes
        let fourth = await message { _ = try await primary.checkpoint(Self.payload(4)) }
        #expect(fourth.code == nil, "checkpoint 4 after a lost resume reply: \(fourth.text)")
        #expect(first.hasCut && second.hasCut)
        #expect(await primary.resumes == 1)
        // One raise, by the try whose reply was lost; the retry took no second one.
        #expect(await primary.epoch == firstEpoch + 1)
        #expect(try await primary.checkpoint(Self.payload(5)) == 5)
        await connection.disconnect()
        try await Self.expectEveryCheckpointInOrder(at: server.configuration(), acknowledged: (1...5).map { ($0, UInt64($0)) })
    }
}
