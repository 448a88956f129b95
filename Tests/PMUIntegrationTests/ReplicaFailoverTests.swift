import Foundation
import PMUClient
import PMUCore
import Testing

/// The shared-nothing replica (issue 13 item 2) with real processes and a real etcd: the monitor
/// copies the primary's portion into its own directory, the mirrored writes keep it current,
/// and at kill -9 of the primary it serves its copy at the service address, with the primary's
/// data directory deleted to show nothing is shared.
@Suite(.serialized) struct ReplicaFailoverTests {
    static let slotBytes = 4096
    static func record(_ index: Int, _ seed: UInt64) -> [UInt8] { pattern(offset: UInt64(index) * 4096, count: slotBytes, seed: seed) }

    func replicaStatus(_ pair: FailoverPair) async throws -> [String: Any] {
        (try await pair.pairStatus(pair.monitor))["replica"] as? [String: Any] ?? [:]
    }

    /// Polled (bounded: 150 x 100 ms) until the monitor's replica has completed a full copy.
    func waitReady(_ pair: FailoverPair, afterFullCopies previous: UInt64? = nil) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<150 {
            if let status = try? await replicaStatus(pair) {
                last = status
                let at = (status["lastFullCopy"] as? [String: Any])?["atMilliseconds"] as? UInt64
                if status["ready"] as? Bool == true, previous == nil || (at ?? 0) > previous! { return status }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("the replica never became ready; last status: \(last)")
        return last
    }

    /// A replica pair with a real etcd, both servers up, and a reconnecting client at the service address.
    func startedPair() async throws -> (EtcdProcess, FailoverPair, ReconnectingClient) {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd, replica: true)
        _ = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        var configuration = pair.primary.configuration()
        configuration.requestTimeout = .seconds(5)
        return (etcd, pair, ReconnectingClient(configuration))
    }

    /// A monitor that (re)joins a running primary copies its regions (names, sizes, kinds,
    /// writer epochs) before it counts as takeover-ready, discards what the primary no longer
    /// has, and after kill -9 of the primary serves every acknowledged write byte for byte from
    /// its own copy, the primary's directory gone.
    @Test func monitorJoiningARunningPrimaryCopiesItThenServesItsCopyAfterKill9() async throws {
        let (etcd, pair, client) = try await startedPair()
        defer { withExtendedLifetime(etcd) {} }
        // Phase A, before the monitor restarts: persisted (so trimmed from the mirror log, in the
        // replica only by its copy or by a record applied at the trim) and unpersisted writes.
        let slots = 64
        try await client.create("journal", sizeBytes: UInt64(3 * slots * Self.slotBytes))
        try await client.create("doomed", sizeBytes: 4096)
        try await client.write("doomed", at: 0, Array("the primary deletes this region while its monitor is down".utf8))
        for index in 0..<slots { try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index, 0xA)) }
        try await client.persist("journal")
        let before = try await waitReady(pair)
        let copiedAt = (before["lastFullCopy"] as? [String: Any])?["atMilliseconds"] as? UInt64 ?? 0
        // The monitor reboots (kill -9, same data directory). Meanwhile the primary refuses
        // writes and catalog changes (--partner-down refuse under --role: a monitor behind a
        // partition could take over without them): a DELETE is refused SERVER_UNAVAILABLE once
        // the primary saw its mirror channel close, and the region stays.
        pair.monitor.kill9()
        let admin = try await PMUClient.connect(pair.primary.configuration())
        var refused: PMUError?
        for _ in 0..<100 {
            let mirroring = (try? await pair.pairStatus(pair.primary))?["mirroringTo"] as? [String: Any]
            if mirroring?["connected"] as? Bool == false {
                do throws(PMUError) { try await admin.delete("doomed") } catch { refused = error }
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(refused?.code == .serverUnavailable, "\(String(describing: refused))")
        #expect(try await admin.list().map(\.name).contains("doomed"))
        try pair.startMonitor()
        // Ready with a copy made after the restart, so over the primary's new mirror channel (a
        // status read before the primary reconnected could say ready from the old copy: seen
        // once under load, the DELETE then refused SERVER_UNAVAILABLE).
        _ = try await waitReady(pair, afterFullCopies: copiedAt)
        // Mirrored again: the delete is in the monitor's log before it is acknowledged.
        try await admin.delete("doomed")
        await admin.disconnect()
        let ready = try await waitReady(pair)
        let copy = try #require(ready["lastFullCopy"] as? [String: Any])
        #expect(copy["full"] as? Bool == true)
        #expect((copy["bytesCopied"] as? Int ?? 0) >= 3 * slots * Self.slotBytes, "\(copy)")
        print("replica full copy after the monitor's restart: \(copy)")
        // Phase B, with the replica current: mirrored writes, some persisted (applied to the
        // replica as the primary trims them), the rest left in the mirror log.
        for index in slots..<(2 * slots) { try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index, 0xB)) }
        try await client.persist("journal")
        for index in (2 * slots)..<(3 * slots) { try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index, 0xC)) }
        // Overwrite a few phase A slots: the newest bytes must win.
        for index in 0..<4 { try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index, 0xD)) }
        // kill -9, and the primary's directory is removed: the monitor can only serve its copy.
        pair.primary.kill9()
        try FileManager.default.removeItem(atPath: pair.primaryDirectory)
        let after = try await pair.waitFor(pair.monitor, "monitor took over") { $0["serving"] as? Bool == true }
        let event = try #require(after["lastFailover"] as? [String: Any])
        #expect(event["error"] == nil, "\(event)")
        for index in 0..<(3 * slots) {
            let seed: UInt64 = index < 4 ? 0xD : index < slots ? 0xA : index < 2 * slots ? 0xB : 0xC
            let bytes = try await client.read("journal", at: UInt64(index * Self.slotBytes), length: Self.slotBytes)
            let intact = Array(buffer: bytes) == Self.record(index, seed)
            #expect(intact, "acknowledged write \(index) lost or torn after the takeover")
        }
        await client.disconnect()
        // The giveback rule: the region the primary deleted is gone from the copy; the rest
        // kept its metadata.
        let served = try await PMUClient.connect(pair.monitor.configuration()._with(endpoint: pair.service))
        let names = try await served.list().map(\.name)
        #expect(names == ["journal"], "\(names)")
        let journal = try #require(try await served.list().first)
        #expect(journal.sizeBytes == UInt64(3 * slots * Self.slotBytes) && journal.kind == .raw && journal.owner == "admin")
        await served.disconnect()
    }

    /// Catalog changes are mirror-log records (issue 13): a CREATE, the writes into the new
    /// region, a DELETE and a writer-epoch raise, each acknowledged by the primary, then kill -9
    /// right away, with no copy pass possible in between (--replica-interval of 10 minutes; the
    /// regions touched were copied once, before): the monitor serves the created region with
    /// every acknowledged byte, the deleted one stays deleted, the raised epoch holds, and the
    /// primary's directory is gone. Without the catalog records the replica would lack "fresh",
    /// still hold "doomed", and have the old epoch of "kept" (checked by mutation: disabling
    /// them fails this test).
    @Test func acknowledgedCreateDeleteAndEpochRaiseSurviveKill9BeforeAnyCopyPass() async throws {
        let etcd = try await EtcdProcess()
        defer { withExtendedLifetime(etcd) {} }
        let pair = try FailoverPair(etcd: etcd, replica: true, replicaIntervalMilliseconds: 600_000)
        _ = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        var configuration = pair.primary.configuration()
        configuration.requestTimeout = .seconds(5)
        let client = ReconnectingClient(configuration)
        // Regions the replica gets by its full copy: the monitor restarts after they exist, and
        // its copy of the new attachment has them.
        try await client.create("doomed", sizeBytes: 8192)
        try await client.write("doomed", at: 0, Array("acknowledged, then deleted: must stay deleted".utf8))
        try await client.create("kept", sizeBytes: 8192)
        try await client.persist("doomed")
        pair.monitor.kill9()
        try pair.startMonitor()
        let ready = try await waitReady(pair)
        #expect((ready["lastFullCopy"] as? [String: Any])?["regions"] as? Int == 2, "\(ready)")
        let passes = ready["passes"] as? Int ?? 0
        // After the copy: create and write (half persisted, so trimmed and applied to the
        // replica at the trim; half left in the mirror log), delete, raise an epoch.
        let slots = 32
        try await client.create("fresh", sizeBytes: UInt64(slots * Self.slotBytes))
        for index in 0..<(slots / 2) { try await client.write("fresh", at: UInt64(index * Self.slotBytes), Self.record(index, 0xF)) }
        try await client.persist("fresh")
        for index in (slots / 2)..<slots { try await client.write("fresh", at: UInt64(index * Self.slotBytes), Self.record(index, 0xF)) }
        let admin = try await PMUClient.connect(pair.primary.configuration())
        try await admin.delete("doomed")
        let raised = try await admin.openRegion("kept", rights: .readWrite)
        let primaryKept = try await admin.stat("kept")
        #expect(primaryKept.writerEpoch == raised.epoch && raised.epoch >= 2)
        await admin.disconnect()
        // No pass ran since the copy: what the replica has now came through the mirror log.
        #expect(try await replicaStatus(pair)["passes"] as? Int == passes)
        pair.primary.kill9()
        try FileManager.default.removeItem(atPath: pair.primaryDirectory)
        let after = try await pair.waitFor(pair.monitor, "monitor took over") { $0["serving"] as? Bool == true }
        #expect((after["lastFailover"] as? [String: Any])?["error"] == nil, "\(after)")
        let served = try await PMUClient.connect(pair.monitor.configuration()._with(endpoint: pair.service))
        let regions = try await served.list()
        #expect(regions.map(\.name) == ["fresh", "kept"], "an acknowledged CREATE lost or an acknowledged DELETE undone: \(regions.map(\.name))")
        if regions.contains(where: { $0.name == "fresh" }) {
            let fresh = try await served.openRegion("fresh")
            for index in 0..<slots {
                let bytes = try await served.read(fresh, at: UInt64(index * Self.slotBytes), length: Self.slotBytes)
                #expect(Array(buffer: bytes) == Self.record(index, 0xF), "acknowledged write \(index) into the created region lost after the takeover")
            }
        }
        let kept = try await served.stat("kept")
        #expect(kept.writerEpoch == primaryKept.writerEpoch, "the acknowledged epoch raise of 'kept' was lost: \(kept.writerEpoch), primary had \(primaryKept.writerEpoch)")
        await served.disconnect()
        await client.disconnect()
        let mirroring = (try? await replicaStatus(pair)) ?? [:]
        print("takeover after catalog records: \(after["lastFailover"] ?? ""), replica \(mirroring)")
    }

    /// A primary with no region yet: the first full copy is of nothing, and completes (the
    /// replica is ready), so a takeover right after the pair starts is not refused.
    @Test func emptyPortionsReplicaIsReady() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd, replica: true)
        let ready = try await waitReady(pair)
        #expect((ready["lastFullCopy"] as? [String: Any])?["regions"] as? Int == 0, "\(ready)")
    }

    /// Without a complete copy the monitor does not take over, and says what it would lose:
    /// here its copy source is a port nothing listens on, so the first copy never completes.
    @Test func monitorWithoutACompleteCopyRefusesToTakeOver() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd, replica: true, replicaSource: Endpoint(host: "127.0.0.1", port: freePort()))
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        let replica = try await replicaStatus(pair)
        #expect(replica["ready"] as? Bool == false)
        #expect((replica["notReadyReason"] as? String)?.contains("no complete copy") == true, "\(replica)")
        pair.primary.kill9()
        let refused = try await pair.waitFor(pair.monitor, "takeover refused") {
            (($0["lastFailover"] as? [String: Any])?["error"] as? String)?.contains("REPLICA_NOT_READY") == true
        }
        #expect(refused["serving"] as? Bool == false)
        #expect(refused["role"] as? String == "monitor")
        print("refused takeover: \(refused["lastFailover"] ?? "")")
    }

    /// Issue 13 item 4 with the replica: kill -9 of the primary, the monitor takes over; the old
    /// primary, restarted with the same command line, comes back as the new primary's monitor and
    /// resynchronises its data directory from it; kill -9 of the new primary, and the first one
    /// takes over again, with every acknowledged write of the three phases byte for byte; then the
    /// first monitor restarts, resyncs and takes over a third time (one pair, three failovers).
    @Test func rebootedPrimaryResyncsAndTakesOverAgain() async throws {
        let (etcd, pair, client) = try await startedPair()
        defer { withExtendedLifetime(etcd) {} }
        let slots = 48
        try await client.create("journal", sizeBytes: UInt64(3 * slots * Self.slotBytes))
        func write(_ range: Range<Int>, _ seed: UInt64) async throws {
            for index in range { try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index, seed)) }
        }
        // Phase 1 on the first primary, half persisted.
        try await write(0..<(slots / 2), 0x1)
        try await client.persist("journal")
        try await write((slots / 2)..<slots, 0x1)
        _ = try await waitReady(pair)
        pair.primary.kill9()
        let first = try await pair.waitFor(pair.monitor, "monitor took over") { $0["serving"] as? Bool == true }
        // Phase 2 on the new primary, alone: durable there before each OK.
        try await write(slots..<(2 * slots), 0x2)
        // The old primary restarts with its command line: answered by the serving new primary, it
        // becomes its monitor at --monitor-listen and copies the portion into its data directory.
        try pair.startPrimary()
        #expect(pair.primary.log.contains("restarted as the monitor"), "\(pair.primary.log.suffix(2000))")
        var resynced: [String: Any] = [:]
        for _ in 0..<200 {
            if let status = try? await pair.pairStatus(pair.primary), let replica = status["replica"] as? [String: Any], replica["ready"] as? Bool == true {
                resynced = replica
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let copy = try #require(resynced["lastFullCopy"] as? [String: Any], "the rebooted primary never resynchronised: \(resynced)")
        print("rebooted primary's resync: \(copy)")
        // Phase 3 on the new primary, mirrored to the rebooted one; some slots of phase 1 rewritten.
        try await write((2 * slots)..<(3 * slots), 0x3)
        try await write(0..<4, 0x4)
        pair.monitor.kill9()
        let second = try await pair.waitFor(pair.primary, "the first primary took over again") { $0["serving"] as? Bool == true }
        let event = try #require(second["lastFailover"] as? [String: Any])
        #expect(event["error"] == nil, "\(event)")
        #expect((second["epoch"] as? Int ?? 0) > (first["epoch"] as? Int ?? 0))
        func verify(_ failover: String, rewritten: Int, _ latest: UInt64) async throws {
            for index in 0..<(3 * slots) {
                let seed: UInt64 = index < rewritten ? latest : index < slots ? 0x1 : index < 2 * slots ? 0x2 : 0x3
                let bytes = try await client.read("journal", at: UInt64(index * Self.slotBytes), length: Self.slotBytes)
                let intact = Array(buffer: bytes) == Self.record(index, seed)
                #expect(intact, "acknowledged write \(index) lost or torn after the \(failover) failover")
            }
        }
        try await verify("second", rewritten: 4, 0x4)
        // A third round on the same pair: the first monitor restarts with its command line, drops
        // the takeover mark of the first failover, resynchronises from the current primary, and
        // takes over when that one is killed.
        try pair.startMonitor()
        _ = try await waitReady(pair)
        try await write(0..<8, 0x5)
        pair.primary.kill9()
        let third = try await pair.waitFor(pair.monitor, "the first monitor took over again") { $0["serving"] as? Bool == true }
        #expect((third["lastFailover"] as? [String: Any])?["error"] == nil, "\(third)")
        #expect((third["epoch"] as? Int ?? 0) > (second["epoch"] as? Int ?? 0))
        try await verify("third", rewritten: 8, 0x5)
        await client.disconnect()
    }
}
