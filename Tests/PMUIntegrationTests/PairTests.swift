import Foundation
import NIOCore
import PMUClient
import PMUCore
import PMULog
import Testing

/// A TCP socket bound to 127.0.0.1 on an ephemeral port, and that port.
func boundLoopbackSocket() -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A free TCP port on 127.0.0.1 (bound, read, closed; the tests that use it start right after).
func freePort() -> Int {
    let (fd, port) = boundLoopbackSocket()
    close(fd)
    return port
}

let pairSecret = "pair-secret-0123456789abcdef"

/// Two real pmu-server processes on 127.0.0.1: `partner` keeps the mirror log of `owner`'s
/// portion; the owner mirrors every WRITE to it. One direction is enough for these tests.
final class TestPair: @unchecked Sendable {
    let scratch = Scratch()
    let secretsPath: String
    let pairSecretPath: String
    let takeoverPort = freePort()
    var partner: ServerProcess!
    var owner: ServerProcess!

    var ownerDirectory: String { scratch.path + "/owner" }
    var partnerDirectory: String { scratch.path + "/partner" }

    /// `fence`: the partner's fence command. The default succeeds only once the owner's pid
    /// (in its LOCK file) is gone: a takeover while the owner runs is refused.
    init(ownerArguments: [String] = [], partnerArguments: [String] = [], fixedPartnerPort: Bool = false, fence: String = #"pid=$(cat "$PMU_PORTION_DIR/LOCK"); ! kill -0 "$pid" 2>/dev/null"#) throws {
        secretsPath = scratch.path + "/secrets"
        pairSecretPath = scratch.path + "/pair.secret"
        var secrets = testSecrets
        secrets["pair"] = pairSecret
        try writeSecretsFile(secretsPath, secrets)
        FileManager.default.createFile(atPath: pairSecretPath, contents: Data((pairSecret + "\n").utf8), attributes: [.posixPermissions: 0o600])
        partner = try ServerProcess(
            dataDirectory: partnerDirectory, secretsPath: secretsPath,
            extraArguments: ["--mirror-client", "pair", "--partner-portion", ownerDirectory, "--fence-command", fence,
                             "--takeover-listen", "127.0.0.1:\(takeoverPort)"] + (fixedPartnerPort ? ["--listen", "127.0.0.1:\(freePort())"] : []) + partnerArguments)
        owner = try ServerProcess(dataDirectory: ownerDirectory, secretsPath: secretsPath, extraArguments: Self.pairArguments(partner.endpoint, pairSecretPath) + ownerArguments)
    }

    static func pairArguments(_ partner: Endpoint, _ pairSecretPath: String) -> [String] {
        ["--partner", "\(partner)", "--partner-client", "pair", "--partner-secret-file", pairSecretPath]
    }

    var takeoverEndpoint: Endpoint { Endpoint(host: "127.0.0.1", port: takeoverPort) }

    func status(_ server: ServerProcess) async throws -> [String: Any] {
        let client = try await server.client()
        defer { Task { await client.disconnect() } }
        let json = try await client.pairStatus()
        return try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    /// The owner's mirror channel, polled until `predicate` holds (bounded).
    func waitForOwner(_ predicate: ([String: Any]) -> Bool) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<200 {
            last = try await status(owner)["mirroringTo"] as? [String: Any] ?? [:]
            if predicate(last) { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("owner's mirror channel never reached the expected state; last: \(last)")
        return last
    }

    /// The partner's view of the owner's mirror log, polled until `predicate` holds (bounded).
    func waitForLog(_ predicate: ([String: Any]) -> Bool) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<100 {
            let logs = try await status(partner)["mirrorLogs"] as? [[String: Any]] ?? []
            if let log = logs.first {
                last = log
                if predicate(log) { return log }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("mirror log never reached the expected state; last: \(last)")
        return last
    }
}

func pattern(_ seed: Int, _ count: Int = 4096) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ (seed &* 7919) ^ (seed >> 8)) }
}

@Suite(.serialized) struct PairTests {
    /// A WRITE on the owner is acknowledged once the partner's log holds it; the log holds exactly
    /// the acknowledged bytes; PERSIST trims it.
    @Test func mirroredWritesReachThePartnersLogAndPersistTrimsIt() async throws {
        let pair = try TestPair()
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("mirrored", sizeBytes: 1 << 20)
        for index in 0..<8 {
            try await client.write(handle, at: UInt64(index) * 4096, pattern(index))
        }
        // Acknowledged means in the partner's log already. The CREATE took mirror sequence 1
        // (a catalog record); with no write unpersisted then, the owner trims it once answered,
        // a trim that may still be on its way: polled.
        let log = try await pair.waitForLog { $0["liveRecords"] as? Int == 8 }
        #expect(log["liveRecords"] as? Int == 8)
        #expect(log["mirroring"] as? Bool == true)
        let owner = try await pair.status(pair.owner)
        let mirroring = try #require(owner["mirroringTo"] as? [String: Any])
        #expect(mirroring["connected"] as? Bool == true)
        #expect(mirroring["unpersistedWrites"] as? Int == 8)

        // A PERSIST of the first half trims nothing yet that a later write still needs... the
        // trim point is the oldest unpersisted write, so persisting pages 4-7 trims nothing.
        try await client.persist(handle, offset: 4 * 4096, length: 4 * 4096)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await pair.waitForLog { _ in true }["liveRecords"] as? Int == 8)
        try await client.persist(handle, offset: 0, length: 4 * 4096)
        let trimmed = try await pair.waitForLog { $0["liveRecords"] as? Int == 0 }
        #expect(trimmed["trimmedThrough"] as? Int == 9) // the create's record and the 8 writes
        #expect(trimmed["segments"] as? Int == 0) // every record trimmed: the segment went
        // Three more writes, not persisted: the log holds exactly them, byte for byte.
        for index in 20..<23 {
            try await client.write(handle, at: UInt64(index) * 4096 + 7, pattern(index, 1000))
        }
        await client.disconnect()
        pair.owner.terminate()
        pair.partner.terminate()
        let portion = try String(contentsOfFile: pair.ownerDirectory + "/portion-id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let reopened = try AppendLog(path: pair.partnerDirectory + "/mirror/" + portion)
        var records: [LogRecord] = []
        try reopened.replay { records.append($0) }
        #expect(records.map(\.origin) == [10, 11, 12])
        #expect(records.allSatisfy { $0.kind == LogRecordFormat.kindWrite })
        #expect(records.map(\.offset) == (20..<23).map { UInt64($0) * 4096 + 7 })
        #expect(records.map(\.payload) == (20..<23).map { pattern($0, 1000) })
        #expect(records.allSatisfy { $0.regionId == handle.grant.regionId })
    }

    @Test func unpersistedBoundRefusesWritesUntilPersist() async throws {
        let pair = try TestPair(ownerArguments: ["--partner-max-unpersisted", "16KiB"])
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("bounded", sizeBytes: 1 << 20)
        for index in 0..<4 { try await client.write(handle, at: UInt64(index) * 4096, pattern(index)) }
        do {
            try await client.write(handle, at: 4 * 4096, pattern(4))
            Issue.record("a write beyond --partner-max-unpersisted was acknowledged")
        } catch {
            #expect(error.code == .logFull, "\(error)")
            #expect(error.message.contains("PERSIST"), "\(error)")
        }
        // Refused before it touched the region.
        #expect(Array(try await client.read(handle, at: 4 * 4096, length: 4096).readableBytesView) == [UInt8](repeating: 0, count: 4096))
        try await client.persist(handle)
        try await client.write(handle, at: 4 * 4096, pattern(4))
        await client.disconnect()
    }

    /// A dead mirror channel: a partner that stops answering but leaves its connections open
    /// (SIGSTOP: as when its machine or network is gone) is declared dead by the owner's
    /// heartbeat within --partner-timeout-ms, and --partner-down applies (here durable: writes
    /// go on, each msync'd here). The pair heals when the partner answers again. The partner in
    /// turn reports a silent owner, and a gone one once its channels close.
    @Test func deadMirrorChannelIsDetectedOnBothSides() async throws {
        let pair = try TestPair(ownerArguments: ["--partner-timeout-ms", "600"], partnerArguments: ["--partner-timeout-ms", "600"])
        let partnerPid = pair.partner.process.processIdentifier
        let ownerPid = pair.owner.process.processIdentifier
        defer {
            // A stopped process would never see the SIGTERM of the clean-up.
            kill(partnerPid, SIGCONT)
            kill(ownerPid, SIGCONT)
        }
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("watched", sizeBytes: 1 << 20)
        try await client.write(handle, at: 0, pattern(1))
        let healthy = try await pair.waitForOwner { ($0["lastHeartbeatMilliseconds"] as? Int ?? 0) > 0 }
        #expect(healthy["connected"] as? Bool == true)
        #expect((healthy["channels"] as? Int ?? 0) >= 1)

        kill(partnerPid, SIGSTOP)
        let down = try await pair.waitForOwner { $0["connected"] as? Bool == false }
        #expect("\(down["lastError"] ?? "")".contains("heartbeat"), "\(down)")
        // Degraded: the write is acknowledged, made durable here first.
        try await client.write(handle, at: 4096, pattern(2))
        let degraded = try #require(try await pair.status(pair.owner)["mirroringTo"] as? [String: Any])
        #expect((degraded["degradedWrites"] as? Int ?? 0) >= 1)
        #expect(degraded["degradedSinceMilliseconds"] as? Int != nil)
        kill(partnerPid, SIGCONT)
        _ = try await pair.waitForOwner { $0["connected"] as? Bool == true }

        // The partner's side: a silent owner, then a gone one.
        #expect(try await pair.waitForLog { $0["owner"] as? String == "mirroring" }["owner"] as? String == "mirroring")
        kill(ownerPid, SIGSTOP)
        let silent = try await pair.waitForLog { $0["owner"] as? String == "silent" }
        #expect(silent["owner"] as? String == "silent", "\(silent)")
        kill(ownerPid, SIGCONT)
        await client.disconnect()
        pair.owner.kill9()
        let gone = try await pair.waitForLog { $0["owner"] as? String == "gone" }
        #expect(gone["ownerGoneSinceMilliseconds"] as? Int != nil, "\(gone)")
    }

    @Test func partnerWithWrongCredentialsFailsTheStart() throws {
        let pair = try TestPair()
        let wrong = pair.scratch.path + "/wrong.secret"
        FileManager.default.createFile(atPath: wrong, contents: Data("not-the-secret\n".utf8), attributes: [.posixPermissions: 0o600])
        do {
            _ = try ServerProcess(
                dataDirectory: pair.scratch.path + "/third", secretsPath: pair.secretsPath,
                extraArguments: ["--partner", "\(pair.partner.endpoint)", "--partner-client", "pair", "--partner-secret-file", wrong])
            Issue.record("a server with a wrong partner secret started")
        } catch {
            #expect("\(error)".contains("refused --partner-client 'pair'"), "\(error)")
            #expect("\(error)".contains("AUTHENTICATION_FAILED"), "\(error)")
        }
    }

    /// A second server presenting the same portion (a copied data directory) while the first
    /// mirrors it is refused at start: nothing is mirrored (or later served) twice.
    @Test func twoServersClaimingOnePortionAreRefused() throws {
        let pair = try TestPair()
        let clone = pair.scratch.path + "/clone"
        try FileManager.default.createDirectory(atPath: clone, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: pair.ownerDirectory + "/portion-id", toPath: clone + "/portion-id")
        do {
            _ = try ServerProcess(dataDirectory: clone, secretsPath: pair.secretsPath, extraArguments: TestPair.pairArguments(pair.partner.endpoint, pair.pairSecretPath))
            Issue.record("a second server claiming a mirrored portion started")
        } catch {
            #expect("\(error)".contains("two servers claim the same portion"), "\(error)")
        }
    }

    /// MIRROR messages are for the pair's mirror client only, and only after MIRROR_OPEN.
    @Test func mirrorMessagesAreRefusedToOthersAndBeforeOpen() async throws {
        let pair = try TestPair()
        let admin = try await pair.partner.client()
        let append = MirrorAppend(sequence: 1, regionId: 1, epoch: 0, offset: 0, data: ByteBuffer(bytes: [1, 2, 3]))
        do {
            try await admin.mirrorAppend(append)
            Issue.record("an admin that is not the mirror client appended to a mirror log")
        } catch {
            #expect(error.code == .accessDenied, "\(error)")
        }
        await admin.disconnect()
        var configuration = pair.partner.configuration("admin")
        configuration.clientId = "pair"
        configuration.secret = Array(pairSecret.utf8)
        let mirror = try await PMUClient.connect(configuration)
        do {
            try await mirror.mirrorAppend(append)
            Issue.record("MIRROR_APPEND before MIRROR_OPEN was accepted")
        } catch {
            #expect(error.code == .fenced, "\(error)")
        }
        do {
            _ = try await mirror.mirrorOpen(portion: "not-a-portion", instance: Array(repeating: 0, count: 16))
            Issue.record("MIRROR_OPEN of a malformed portion id was accepted")
        } catch {
            #expect(error.code == .invalidArgument, "\(error)")
        }
        await mirror.disconnect()
    }

    /// The verbs rule: neither server of a pair serves RDMA verbs (one-sided writes would be
    /// acknowledged without being mirrored); each refuses to start, saying why, before it
    /// touches a device or its data directory.
    @Test func pairedServersRefuseVerbs() throws {
        let scratch = Scratch()
        for (role, extra) in [("--partner", ["--partner", "127.0.0.1:\(freePort())", "--partner-client", "pair", "--partner-secret-file", scratch.path + "/pair.secret"]),
                              ("--mirror-client", ["--mirror-client", "pair"])] {
            for transport in ["rdma", "auto"] {
                let result = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/verbs", "--listen", "127.0.0.1:\(freePort())", "--transport", transport] + extra, timeoutSeconds: 60)
                #expect(result.status != 0, "\(role) with --transport \(transport) started")
                #expect(result.stderr.contains("need") && result.stderr.contains("--transport tcp"), "\(role) \(transport): \(result.stderr)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/verbs"))
    }

    @Test func partnerThatIsItselfFailsTheStart() throws {
        let scratch = Scratch()
        var secrets = testSecrets
        secrets["pair"] = pairSecret
        try writeSecretsFile(scratch.path + "/secrets", secrets)
        FileManager.default.createFile(atPath: scratch.path + "/pair.secret", contents: Data(pairSecret.utf8), attributes: [.posixPermissions: 0o600])
        let port = freePort()
        // Listening on every address and given 127.0.0.1 as partner: the same server, by another name.
        let arguments = ["--data-dir", scratch.path + "/self", "--listen", "0.0.0.0:\(port)", "--secrets", scratch.path + "/secrets",
                         "--partner", "127.0.0.1:\(port)", "--partner-client", "pair", "--partner-secret-file", scratch.path + "/pair.secret"]
        let result = try run(binDirectory + "/pmu-server", arguments, timeoutSeconds: 60)
        #expect(result.status != 0)
        #expect(result.stderr.contains("given itself as --partner"), "\(result.stderr)")
        // And the plain spelling is refused before anything starts.
        let same = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/self2", "--listen", "127.0.0.1:\(port)", "--partner", "127.0.0.1:\(port)",
                                                          "--partner-client", "pair", "--partner-secret-file", scratch.path + "/pair.secret"], timeoutSeconds: 60)
        #expect(same.status != 0)
        #expect(same.stderr.contains("own --listen address"), "\(same.stderr)")
    }
}
