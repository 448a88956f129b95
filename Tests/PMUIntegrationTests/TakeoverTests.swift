import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

/// Takeover of a failed owner's portion by its partner, with the owner's machine loss simulated
/// by `--test-volatile-until-persist` (region pages in process memory until PERSIST).
@Suite(.serialized) struct TakeoverTests {
    static let regionBytes = 2 << 20
    static let inFlightBase = 1 << 20

    func adminSecretFile(_ pair: TestPair) -> String {
        let path = pair.scratch.path + "/admin.secret"
        _ = FileManager.default.createFile(atPath: path, contents: Data(testSecrets["admin"]!.utf8), attributes: [.posixPermissions: 0o600])
        return path
    }

    func pmuctl(_ pair: TestPair, _ server: Endpoint, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let result = try run(binDirectory + "/pmuctl", arguments + ["--server", "\(server)", "--client", "admin", "--secret-file", adminSecretFile(pair)])
        return (result.status, String(decoding: result.stdout, as: UTF8.self), result.stderr)
    }

    @Test func ownerMachineLostPartnerTakesOverWithEveryAcknowledgedWrite() async throws {
        setenv("PMU_ALLOW_TEST_MODES", "1", 1)
        let pair = try TestPair(ownerArguments: ["--test-volatile-until-persist"])
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("precious", sizeBytes: UInt64(Self.regionBytes))
        var expected = [UInt8](repeating: 0, count: Self.regionBytes)
        func apply(_ bytes: [UInt8], at offset: Int) { expected.replaceSubrange(offset..<(offset + bytes.count), with: bytes) }

        // 1. Persisted writes: durable in the owner's file, trimmed from the partner's log.
        for index in 0..<16 {
            try await client.write(handle, at: UInt64(index * 4096), pattern(index))
            apply(pattern(index), at: index * 4096)
        }
        try await client.persist(handle, offset: 0, length: 16 * 4096)
        // 2. Acknowledged, never persisted; overlapping one another, so replay order matters.
        for index in 0..<64 {
            let offset = 16 * 4096 + (index % 40) * 4096 + (index % 3) * 100
            let bytes = pattern(1000 + index, 3000)
            try await client.write(handle, at: UInt64(offset), bytes)
            apply(bytes, at: offset)
        }
        // ... and from 8 concurrent connections, on disjoint pages.
        let configuration = pair.owner.configuration()
        let concurrent = try await withThrowingTaskGroup(of: [(Int, [UInt8])].self) { group in
            for writer in 0..<8 {
                group.addTask {
                    let other = try await PMUClient.connect(configuration)
                    let mine = try await other.openRegion("precious", rights: .readWrite)
                    var done: [(Int, [UInt8])] = []
                    for step in 0..<10 {
                        let offset = 64 * 4096 + (writer * 10 + step) * 4096
                        let bytes = pattern(5000 + writer * 100 + step)
                        try await other.write(mine, at: UInt64(offset), bytes)
                        done.append((offset, bytes))
                    }
                    await other.disconnect()
                    return done
                }
            }
            var all: [(Int, [UInt8])] = []
            for try await part in group { all += part }
            return all
        }
        for (offset, bytes) in concurrent { apply(bytes, at: offset) }

        // 3. Writes in flight when the owner's machine goes: 32 at once, the kill right behind them.
        let acknowledgedInFlight = LockedSet()
        let inFlight = Task {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<32 {
                    group.addTask {
                        if (try? await client.write(handle, at: UInt64(Self.inFlightBase + index * 8192), pattern(9000 + index, 8192))) != nil {
                            acknowledgedInFlight.insert(index)
                        }
                    }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(2))
        pair.owner.kill9()
        await inFlight.value
        await client.disconnect()

        // The double did lose what was not persisted: the owner's file has the persisted pages
        // and zeros where the acknowledged-only writes went. Only the partner's log has them now.
        let file = pair.ownerDirectory + "/regions/" + String(format: "%016llx", handle.grant.regionId) + ".region"
        let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        #expect(firstDifference(onDisk, expected, 0..<(16 * 4096)) == nil, "a persisted write is not in the owner's file")
        #expect(onDisk[(16 * 4096)..<Self.inFlightBase].allSatisfy { $0 == 0 }, "acknowledged-only writes reached the file: the machine-loss double is not losing them")

        // 4. Nothing serves the portion before the takeover finished.
        do {
            var early = pair.owner.configuration()
            early.endpoint = pair.takeoverEndpoint
            early.connectTimeout = .seconds(2)
            _ = try await PMUClient.connect(early)
            Issue.record("the owner's portion was served before the takeover")
        } catch {
            #expect(error.code == .connectionClosed || error.code == .timedOut, "\(error)")
        }

        // 5. Take over (pmuctl against the partner).
        let takeover = try pmuctl(pair, pair.partner.endpoint, ["pair", "takeover", "--json"])
        #expect(takeover.status == 0, "\(takeover.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(takeover.stdout.utf8)) as? [String: Any])
        #expect((report["replayedRecords"] as? Int ?? 0) >= 64 + 80)
        #expect(report["serving"] as? String == "\(pair.takeoverEndpoint)")
        // The 8 OPENs for writing were mirrored as catalog records after the last trim; on shared
        // storage the portion's own catalog, durable before each OPEN was answered, stands as it
        // is and they are skipped (the CREATE's record was trimmed by the first PERSIST).
        #expect(report["catalogRecordsSkipped"] as? Int == 8 && report["catalogRecordsApplied"] as? Int == 0, "\(report)")

        // 6. Every acknowledged write is there, byte for byte; each write in flight is all or nothing.
        var survivor = pair.owner.configuration()
        survivor.endpoint = pair.takeoverEndpoint
        let after = try await PMUClient.connect(survivor)
        let taken = try await after.openRegion("precious", rights: .readWrite)
        // Epochs: 1 at the CREATE, 8 OPENs, this one: none rolled back by a skipped record.
        #expect(taken.epoch == 10, "\(taken)")
        let bytes = Array(try await after.read(taken, at: 0, length: Self.regionBytes).readableBytesView)
        #expect(firstDifference(bytes, expected, 0..<Self.inFlightBase) == nil, "an acknowledged write is missing or wrong after takeover")
        let acked = acknowledgedInFlight.values
        for index in 0..<32 {
            let range = (Self.inFlightBase + index * 8192)..<(Self.inFlightBase + (index + 1) * 8192)
            let got = Array(bytes[range])
            let whole = got == pattern(9000 + index, 8192)
            let absent = got.allSatisfy { $0 == 0 }
            #expect(whole || absent, "in-flight write \(index) is torn after takeover (first byte differing from it at \(firstDifference(got, pattern(9000 + index, 8192), 0..<8192) ?? -1))")
            if acked.contains(index) { #expect(whole, "in-flight write \(index) was acknowledged but is missing") }
        }
        // The taken-over portion accepts new writes and persists them.
        try await after.write(taken, at: 0, pattern(77))
        try await after.persist(taken, offset: 0, length: 4096)
        await after.disconnect()

        let status = try await pair.status(pair.partner)
        let logs = status["mirrorLogs"] as? [[String: Any]] ?? []
        #expect(logs.first?["takenOver"] as? Bool == true)
        #expect(logs.first?["liveRecords"] as? Int == 0)

        // 7. The stale owner restarted on its portion is refused: the partner serves it now.
        do {
            try pair.owner.start()
            Issue.record("the stale owner started on a portion its partner took over")
        } catch {
            #expect("\(error)".contains("in use by another pmu-server"), "\(error)")
        }
    }

    /// Partner down: the owner goes on degraded (each write durable here before its ack); the
    /// partner returns and the owner resyncs (persists, trims the log, so no older record can
    /// clobber a degraded write at replay); then the owner's machine is lost. Nothing is lost.
    @Test func degradedWhilePartnerDownThenResyncThenOwnerLost() async throws {
        setenv("PMU_ALLOW_TEST_MODES", "1", 1)
        let pair = try TestPair(ownerArguments: ["--test-volatile-until-persist"], fixedPartnerPort: true)
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("degraded", sizeBytes: 1 << 20)
        try await client.write(handle, at: 0, pattern(1)) // mirrored, in the partner's log only
        pair.partner.kill9()
        try await client.write(handle, at: 0, pattern(2)) // degraded: same bytes, durable here
        try await client.write(handle, at: 8192, pattern(3))
        let down = try await pair.waitForOwner { $0["connected"] as? Bool == false }
        #expect((down["degradedWrites"] as? Int ?? 0) >= 2, "\(down)")
        #expect(down["degradedSinceMilliseconds"] != nil)
        // Durable before acknowledged: the degraded writes are in the owner's file already.
        let file = pair.ownerDirectory + "/regions/" + String(format: "%016llx", handle.grant.regionId) + ".region"
        let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        #expect(firstDifference(onDisk, pattern(2), 0..<4096) == nil)

        try pair.partner.start() // same port: the owner reconnects and resyncs
        _ = try await pair.waitForOwner { $0["connected"] as? Bool == true }
        try await client.write(handle, at: 4096, pattern(4)) // mirrored again
        pair.owner.kill9()
        await client.disconnect()

        let takeover = try pmuctl(pair, pair.partner.endpoint, ["pair", "takeover", "--json"])
        #expect(takeover.status == 0, "\(takeover.stderr)")
        var survivor = pair.owner.configuration()
        survivor.endpoint = pair.takeoverEndpoint
        let after = try await PMUClient.connect(survivor)
        let taken = try await after.openRegion("degraded")
        let bytes = Array(try await after.read(taken, at: 0, length: 3 * 4096).readableBytesView)
        #expect(firstDifference(bytes, pattern(2), 0..<4096) == nil, "the degraded write was overwritten by an older mirrored one at replay")
        #expect(firstDifference(Array(bytes[4096...]), pattern(4), 0..<4096) == nil, "the write mirrored after the resync is missing")
        #expect(firstDifference(Array(bytes[8192...]), pattern(3), 0..<4096) == nil, "a degraded write is missing")
        // The taken-over portion has no partner: its writes are durable before they are acknowledged.
        let writable = try await after.openRegion("degraded", rights: .readWrite)
        try await after.write(writable, at: 12288, pattern(5))
        await after.disconnect()
        let portionFile = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        #expect(firstDifference(Array(portionFile[12288...]), pattern(5), 0..<4096) == nil)
    }

    /// `--partner-down refuse`: no degraded mode; writes fail clearly while the partner is away.
    @Test func partnerDownRefusePolicyRefusesWrites() async throws {
        let pair = try TestPair(ownerArguments: ["--partner-down", "refuse"])
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("r", sizeBytes: 1 << 20)
        pair.partner.kill9()
        // The write in flight when the channel breaks, and every one after it, is refused.
        for index in 0..<3 {
            do {
                try await client.write(handle, at: UInt64(index) * 4096, pattern(index))
                Issue.record("a write was acknowledged with the partner down and --partner-down refuse")
            } catch {
                #expect(error.code == .serverUnavailable || error.code == .connectionClosed, "\(error)")
            }
        }
        await client.disconnect()
    }

    /// The fence command must succeed: with the owner alive it fails, nothing is served, and the
    /// owner's mirror is superseded (its writes are refused, never acknowledged unmirrored).
    @Test func takeoverIsRefusedWhileTheFenceFails() async throws {
        let pair = try TestPair()
        let client = try await pair.owner.client()
        let handle = try await client.createRegion("r", sizeBytes: 1 << 20)
        try await client.write(handle, at: 0, pattern(1))
        let takeover = try pmuctl(pair, pair.partner.endpoint, ["pair", "takeover"])
        #expect(takeover.status != 0)
        #expect(takeover.stderr.contains("FENCED"), "\(takeover.stderr)")
        #expect(takeover.stderr.contains("fence command"), "\(takeover.stderr)")
        do {
            try await client.write(handle, at: 4096, pattern(2))
            Issue.record("a write was acknowledged after its partner superseded the owner")
        } catch {
            #expect(error.code == .fenced, "\(error)")
        }
        await client.disconnect()
        let status = try pmuctl(pair, pair.partner.endpoint, ["pair", "status"])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("TAKEN OVER"), "\(status.stdout)")
    }
}

final class LockedSet: @unchecked Sendable {
    private let lock = NSLock()
    private var set: Set<Int> = []
    func insert(_ value: Int) { lock.withLock { _ = set.insert(value) } }
    var values: Set<Int> { lock.withLock { set } }
}

/// The first offset in `range` where the two differ (nil: equal there). Compact in a failure
/// message, unlike comparing megabyte arrays.
func firstDifference(_ a: [UInt8], _ b: [UInt8], _ range: Range<Int>) -> Int? {
    guard a.count >= range.upperBound, b.count >= range.upperBound else { return range.lowerBound }
    return range.first { a[$0] != b[$0] }
}
