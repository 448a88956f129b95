import Foundation
import NIOCore
import NIOPosix
import PMUClient
import PMUCore
import PMUFailover
import PMUTransport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A failover pair on 127.0.0.1 with a real etcd: the primary mirrors to the monitor, which
/// heartbeats it every 100 ms and takes over after 3 misses at the same address (the takeover
/// listener is the primary's --listen; the address hook only records, since 127.0.0.1 does not
/// move: the namespace test in scripts/test-failover-netns.sh moves a real address).
final class FailoverPair: @unchecked Sendable {
    let scratch = Scratch()
    let etcd: EtcdProcess
    let servicePort = freePort()
    let primaryHeartbeat = freePort()
    let monitorHeartbeat = freePort()
    let secretsPath: String
    let pairSecretPath: String
    var monitor: ServerProcess!
    var primary: ServerProcess!

    var primaryDirectory: String { scratch.path + "/primary" }
    var monitorDirectory: String { scratch.path + "/monitor" }
    var hookLog: String { scratch.path + "/address-hook.log" }
    var service: Endpoint { Endpoint(host: "127.0.0.1", port: servicePort) }

    /// The shared-nothing replica: the monitor copies the primary's portion into its own
    /// directory (`--replica-from`), never opens the primary's, and listens on a fixed port so
    /// that the primary finds it again after a restart.
    let replica: Bool
    let monitorPort = freePort()
    var replicaDirectory: String { monitorDirectory + "-replica" }
    var primaryPidFile: String { scratch.path + "/primary.pid" }
    var monitorPidFile: String { scratch.path + "/monitor.pid" }
    /// Where the primary listens once it rebooted as the new primary's monitor.
    let rebootedMonitorPort = freePort()

    /// Where the monitor copies from (default: the service address, where the primary serves).
    let replicaSource: Endpoint?

    /// The monitor's `--replica-interval` (nil: the default, the heartbeat interval).
    let replicaIntervalMilliseconds: Int?

    init(etcd: EtcdProcess, replica: Bool = false, replicaSource: Endpoint? = nil, replicaIntervalMilliseconds: Int? = nil) throws {
        self.etcd = etcd
        self.replica = replica
        self.replicaSource = replicaSource
        self.replicaIntervalMilliseconds = replicaIntervalMilliseconds
        secretsPath = scratch.path + "/secrets"
        pairSecretPath = scratch.path + "/pair.secret"
        var secrets = testSecrets
        secrets["pair"] = pairSecret
        try writeSecretsFile(secretsPath, secrets)
        FileManager.default.createFile(atPath: pairSecretPath, contents: Data((pairSecret + "\n").utf8), attributes: [.posixPermissions: 0o600])
        try startMonitor()
        try startPrimary()
    }

    func common(_ id: String, listen: Int, peer: Int) -> [String] {
        ["--member-id", id, "--heartbeat-listen", "127.0.0.1:\(listen)", "--peer-heartbeat", "127.0.0.1:\(peer)",
         "--heartbeat-interval", "100", "--heartbeat-misses", "3", "--heartbeat-secret-file", pairSecretPath,
         "--service-address", "127.0.0.1/8", "--service-interface", "lo",
         "--address-hook", "echo \"$PMU_ADDRESS_ACTION $PMU_ADDRESS\" >> '\(hookLog)'",
         "--etcd", etcd.url, "--etcd-prefix", "/pmu/test", "--lease-ttl", "2", "--lease-margin", "500"]
    }

    func startMonitor() throws {
        if replica {
            // The fence (the STONITH of one machine) checks the primary's pid, recorded by the test.
            let fence = "pid=$(cat '\(primaryPidFile)'); ! kill -0 \"$pid\" 2>/dev/null"
            monitor = try ServerProcess(
                dataDirectory: monitorDirectory, secretsPath: secretsPath,
                extraArguments: ["--role", "monitor", "--listen", "127.0.0.1:\(monitorPort)", "--mirror-client", "pair", "--replica-from", "\(replicaSource ?? service)",
                                 "--partner-portion", replicaDirectory, "--fence-command", fence, "--takeover-listen", "\(service)",
                                 "--takeover-partner", "127.0.0.1:\(rebootedMonitorPort)"]
                    + (replicaIntervalMilliseconds.map { ["--replica-interval", "\($0)"] } ?? [])
                    + common("mon", listen: monitorHeartbeat, peer: primaryHeartbeat))
            try "\(monitor.process.processIdentifier)\n".write(toFile: monitorPidFile, atomically: true, encoding: .utf8)
            return
        }
        // The fence succeeds only once the primary's pid (in its LOCK) is gone.
        let fence = #"pid=$(cat "$PMU_PORTION_DIR/LOCK"); ! kill -0 "$pid" 2>/dev/null"#
        monitor = try ServerProcess(
            dataDirectory: monitorDirectory, secretsPath: secretsPath,
            extraArguments: ["--role", "monitor", "--mirror-client", "pair", "--partner-portion", primaryDirectory, "--fence-command", fence,
                             "--takeover-listen", "\(service)", "--metrics-listen", "127.0.0.1:0"] + common("mon", listen: monitorHeartbeat, peer: primaryHeartbeat))
    }

    func startPrimary() throws {
        primary = try ServerProcess(
            dataDirectory: primaryDirectory, secretsPath: secretsPath,
            extraArguments: ["--role", "primary", "--listen", "\(service)"] + TestPair.pairArguments(monitor.endpoint, pairSecretPath) + rebootArguments
                + common("pri", listen: primaryHeartbeat, peer: monitorHeartbeat))
        try "\(primary.process.processIdentifier)\n".write(toFile: primaryPidFile, atomically: true, encoding: .utf8)
    }

    /// With the replica, a rebooted primary resynchronises as the new primary's monitor and can
    /// take over again: it listens at its own port, copies from the service address, and mirrors
    /// what it later takes over to the monitor's port.
    var rebootArguments: [String] {
        guard replica else { return [] }
        let fence = "pid=$(cat '\(monitorPidFile)'); ! kill -0 \"$pid\" 2>/dev/null"
        return ["--replica-from", "\(replicaSource ?? service)", "--monitor-listen", "127.0.0.1:\(rebootedMonitorPort)",
                "--takeover-partner", "127.0.0.1:\(monitorPort)", "--fence-command", fence, "--takeover-listen", "\(service)"]
    }

    /// The whole PAIR_STATUS object.
    func pairStatus(_ server: ServerProcess) async throws -> [String: Any] {
        let client = try await server.client()
        defer { Task { await client.disconnect() } }
        return try #require(try JSONSerialization.jsonObject(with: Data(try await client.pairStatus().utf8)) as? [String: Any])
    }

    func failoverStatus(_ server: ServerProcess) async throws -> [String: Any] {
        let client = try await server.client()
        defer { Task { await client.disconnect() } }
        let json = try await client.pairStatus()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try #require(object["failover"] as? [String: Any], "no failover in \(json)")
    }

    /// Polled until `predicate` holds (bounded: 100 x 100 ms).
    func waitFor(_ server: ServerProcess, _ what: String, _ predicate: ([String: Any]) -> Bool) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        for _ in 0..<100 {
            if let status = try? await failoverStatus(server) {
                last = status
                if predicate(status) { return status }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("\(what) never held; last status: \(last)")
        return last
    }
}

@Suite(.serialized) struct FailoverTests {
    static let slots = 512
    static let slotBytes = 4096

    static func record(_ index: Int) -> [UInt8] { pattern(offset: UInt64(index) * 4096, count: slotBytes, seed: 0xFA11) }

    /// Heartbeats, roles and the authority before any failure: the primary was granted the
    /// portion at etcd (epoch = the owner key's revision), the monitor sees it alive.
    @Test func pairComesUpWithRolesHeartbeatsAndAnEpoch() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        let primary = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        #expect(primary["role"] as? String == "primary")
        #expect((primary["epoch"] as? Int ?? 0) > 0)
        #expect(primary["acknowledgingWrites"] as? Bool == true)
        let monitor = try await pair.waitFor(pair.monitor, "monitor sees the primary alive") {
            $0["peerState"] as? String == "alive" && ($0["pongsReceived"] as? Int ?? 0) >= 3
        }
        #expect(monitor["role"] as? String == "monitor" && monitor["serving"] as? Bool == false)
        #expect(monitor["heartbeatRoundTripMicroseconds"] != nil)
        // Its heartbeat is on /metrics too (the monitor was started with --metrics-listen).
        let admin = try await pair.monitor.client()
        let info = try JSONSerialization.jsonObject(with: Data(try await admin.serverInfo().utf8)) as? [String: Any] ?? [:]
        await admin.disconnect()
        let metricsAddress = try #require((info["transport"] as? [String: Any])?["metricsListening"] as? String)
        let scrape = String(decoding: try curl("http://\(metricsAddress)/metrics").body, as: UTF8.self)
        #expect(scrape.contains(#"pmu_heartbeat_state{state="alive"} 1"#), "\(scrape.prefix(2000))")
        #expect(scrape.contains(#"pmu_heartbeat_state{state="dead"} 0"#))
        #expect(scrape.contains("pmu_failover_serving 0"))
        #expect(scrape.contains("# HELP pmu_heartbeat_round_trip_seconds "))
        // The monitor serves no writes of its own while it is monitor.
        // Nor creates any (the gate covers every request that changes what it holds).
        let client = try await pair.monitor.client()
        #expect(await code { _ = try await client.createRegion("x", sizeBytes: 4096) } == .notPrimary)
        await client.disconnect()
        // The address hook: removed by the monitor at its start, added by the primary at its grant.
        let hook = (try? String(contentsOfFile: pair.hookLog, encoding: .utf8)) ?? ""
        #expect(hook == "del 127.0.0.1/8\nadd 127.0.0.1/8\n")
    }

    /// kill -9 of the primary while a client writes through the reconnecting client at the
    /// service address: the monitor takes over (claim at etcd, fence, replay, address, listen)
    /// and every acknowledged write is there afterwards.
    @Test func killedPrimaryMonitorServesAtTheSameAddressWithEveryAcknowledgedWrite() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        let before = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        var configuration = pair.primary.configuration()
        configuration.requestTimeout = .seconds(5)
        let client = ReconnectingClient(configuration)
        try await client.create("journal", sizeBytes: UInt64(Self.slots * Self.slotBytes))
        var acknowledged: [Int] = []
        var killedAt: ContinuousClock.Instant?
        var firstAfterKill: Duration?
        let started = ContinuousClock.now
        for index in 0..<Self.slots where ContinuousClock.now - started < .seconds(40) {
            if index == 100 {
                pair.primary.kill9()
                killedAt = .now
            }
            do {
                try await client.write("journal", at: UInt64(index * Self.slotBytes), Self.record(index))
                acknowledged.append(index)
                if let killedAt, firstAfterKill == nil { firstAfterKill = ContinuousClock.now - killedAt }
            } catch {
                Issue.record("write \(index) failed after retries: \(error)")
                break
            }
            if index >= 200 && firstAfterKill != nil { break }
        }
        let outage = try #require(firstAfterKill, "no write was acknowledged after the kill")
        print("failover: kill -9 to first acknowledged write at the service address: \(outage)")
        #expect(outage < .seconds(10)) // generous bound; the bench measures it
        #expect(await client.reconnects >= 1)
        // Every acknowledged write, byte for byte, from the new primary.
        for index in acknowledged {
            let bytes = try await client.read("journal", at: UInt64(index * Self.slotBytes), length: Self.slotBytes)
            #expect(Array(buffer: bytes) == Self.record(index), "acknowledged write \(index) lost or torn")
        }
        await client.disconnect()
        let after = try await pair.waitFor(pair.monitor, "monitor is primary") { $0["serving"] as? Bool == true }
        #expect(after["role"] as? String == "primary")
        let event = try #require(after["lastFailover"] as? [String: Any])
        #expect(event["error"] == nil, "\(event)")
        #expect((after["epoch"] as? Int ?? 0) > (before["epoch"] as? Int ?? 0))
        let hook = (try? String(contentsOfFile: pair.hookLog, encoding: .utf8)) ?? ""
        #expect(hook == "del 127.0.0.1/8\nadd 127.0.0.1/8\nadd 127.0.0.1/8\n") // monitor's start, primary's grant, monitor's takeover
        print("failover status after takeover: \(event)")
        // pmuctl cluster members: the authority names the monitor owner at the new epoch, its member
        // key says primary; the killed primary's key goes with its lease (bounded wait: TTL 2 s).
        var members: [String: Any] = [:]
        for _ in 0..<60 {
            let listed = try run(binDirectory + "/pmuctl", ["cluster", "members", "--json", "--etcd", etcd.url, "--etcd-prefix", "/pmu/test"])
            #expect(listed.status == 0, "\(listed.stderr)")
            members = (try? JSONSerialization.jsonObject(with: listed.stdout) as? [String: Any]) ?? [:]
            if (members["members"] as? [[String: Any]])?.count == 1 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(members["owner"] as? String == "mon", "\(members)")
        #expect(members["epoch"] as? Int == after["epoch"] as? Int)
        let listed = try #require(members["members"] as? [[String: Any]], "\(members)")
        #expect(listed.count == 1 && listed.first?["id"] as? String == "mon" && listed.first?["role"] as? String == "primary" && listed.first?["owner"] as? Bool == true, "\(listed)")
    }

    /// With etcd stopped no takeover happens: the monitor declares the primary dead but cannot
    /// win at the authority, so it never serves; the killed primary's address stays unserved
    /// rather than served by a server the authority did not grant.
    @Test func etcdStoppedNoTakeover() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        _ = try await pair.waitFor(pair.primary, "primary serving") { $0["serving"] as? Bool == true }
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        etcd.stop()
        // With etcd gone the primary stops acknowledging writes once its lease could lapse (2 s - 0.5 s).
        let primaryGate = try await pair.waitFor(pair.primary, "primary refuses writes") { $0["acknowledgingWrites"] as? Bool == false }
        #expect(primaryGate["serving"] as? Bool == true)
        let client = try await pair.primary.client()
        #expect(await code { _ = try await client.createRegion("late", sizeBytes: 4096) } == .leaseLapsed)
        await client.disconnect()
        pair.primary.kill9()
        let monitor = try await pair.waitFor(pair.monitor, "monitor declared the primary dead") { $0["peerState"] as? String == "dead" }
        #expect(monitor["serving"] as? Bool == false)
        // Still not serving 3 s later (the authority loop retries for lease TTL + 2 s, then re-arms).
        try await Task.sleep(for: .seconds(3))
        let later = try await pair.failoverStatus(pair.monitor)
        #expect(later["serving"] as? Bool == false)
        #expect(later["role"] as? String == "monitor")
        // Nor did it ever listen at the service address. (Not checked by connecting there: the
        // killed primary's port is free for any server another test starts meanwhile, seen once.)
        let log = try String(contentsOfFile: pair.monitor.logPath, encoding: .utf8)
        #expect(!log.contains("took over as primary") && !log.contains("serving as primary"), "\(log.suffix(2000))")
    }

    /// A restarted primary whose monitor took over signals the monitor address, is answered by
    /// the serving new primary, and comes up as monitor without touching its old portion.
    @Test func rebootedPrimaryBecomesMonitor() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        pair.primary.kill9()
        _ = try await pair.waitFor(pair.monitor, "monitor took over") { $0["serving"] as? Bool == true }
        // The supervisor restarts it with the same command line.
        try pair.startPrimary()
        let log = try String(contentsOfFile: pair.primary.logPath, encoding: .utf8)
        #expect(log.contains("restarted as the monitor"), "\(log.suffix(2000))")
        // The new primary still serves the portion at the service address.
        let client = try await PMUClient.connect(pair.monitor.configuration()._with(endpoint: pair.service))
        _ = try await client.list()
        await client.disconnect()
    }

    /// A restarted primary whose monitor is gone too becomes primary only with the authority's
    /// grant: refused while the last owner's (the monitor's) lease lives, granted once it lapsed,
    /// with a newer epoch, serving what the monitor had acknowledged.
    @Test func rebootWithTheMonitorGoneNeedsTheAuthoritysGrant() async throws {
        let etcd = try await EtcdProcess()
        let pair = try FailoverPair(etcd: etcd)
        _ = try await pair.waitFor(pair.monitor, "monitor sees the primary") { $0["peerState"] as? String == "alive" }
        pair.primary.kill9()
        let taken = try await pair.waitFor(pair.monitor, "monitor took over") { $0["serving"] as? Bool == true }
        let client = ReconnectingClient(pair.primary.configuration())
        try await client.create("after", sizeBytes: 4096)
        try await client.write("after", at: 0, Array("written on the monitor".utf8))
        await client.disconnect()
        pair.monitor.kill9()
        // Its lease (2 s) is still alive: refused, with the reason.
        #expect(throws: (any Error).self) { try pair.startPrimary() }
        #expect(pair.primary.log.contains("NOT_PRIMARY"), "\(pair.primary.log.suffix(1500))")
        let authority = Authority(etcd: EtcdClient(endpoint: etcd.endpoint, group: MultiThreadedEventLoopGroup.singleton), prefix: "/pmu/test", memberId: "probe")
        var lapsed = false
        for _ in 0..<60 where !lapsed {
            try await Task.sleep(for: .milliseconds(100))
            lapsed = try await !authority.memberPresent("mon")
        }
        #expect(lapsed)
        try pair.startPrimary()
        let granted = try await pair.waitFor(pair.primary, "primary granted") { $0["serving"] as? Bool == true }
        #expect((granted["epoch"] as? Int ?? 0) > (taken["epoch"] as? Int ?? 0))
        let check = ReconnectingClient(pair.primary.configuration())
        try await check.open("after", rights: .read)
        #expect(Array(buffer: try await check.read("after", at: 0, length: 22)) == Array("written on the monitor".utf8))
        await check.disconnect()
    }

    /// The authority's compare-and-set: of two claims against one revision only one wins, and
    /// the winner's revision is the new epoch; member keys vanish with their lease.
    @Test func authorityCompareAndSetAndLeases() async throws {
        let etcd = try await EtcdProcess()
        let group = MultiThreadedEventLoopGroup.singleton
        let a = Authority(etcd: EtcdClient(endpoint: etcd.endpoint, group: group), prefix: "/pmu/cas", memberId: "a")
        let b = Authority(etcd: EtcdClient(endpoint: etcd.endpoint, group: group), prefix: "/pmu/cas", memberId: "b")
        #expect(try await a.owner() == OwnerView(record: nil, modRevision: 0))
        let first = try #require(try await a.claim(previous: nil, expectedRevision: 0))
        #expect(try await b.claim(previous: nil, expectedRevision: 0) == nil) // lost: the key exists now
        let view = try await b.owner()
        #expect(view == OwnerView(record: OwnerRecord(owner: "a", generation: 1), modRevision: first))
        async let x = a.claim(previous: view.record, expectedRevision: first)
        async let y = b.claim(previous: view.record, expectedRevision: first)
        let (rx, ry) = try await (x, y)
        #expect((rx == nil) != (ry == nil), "exactly one racing claim wins: \(String(describing: rx)) \(String(describing: ry))")
        #expect(try await a.owner().modRevision == (rx ?? ry))
        let lease = try await a.register(Authority.Member(id: "a", role: "primary", heartbeat: "x", service: nil), ttlSeconds: 1)
        #expect(try await b.memberPresent("a"))
        #expect(try await a.etcd.keepAlive(lease: lease) >= 1)
        // TTL 1 s (honoured with a 500 ms election timeout): gone within a bounded wait.
        var gone = false
        for _ in 0..<50 where !gone {
            try await Task.sleep(for: .milliseconds(100))
            gone = try await !b.memberPresent("a")
        }
        #expect(gone)
        #expect(try await a.etcd.keepAlive(lease: lease) == 0)
        // etcd stopped: a clear SERVER_UNAVAILABLE-coded error within the client's deadline.
        etcd.stop()
        #expect(await code { _ = try await a.owner() } == .serverUnavailable)
    }
}

extension ClientConfiguration {
    func _with(endpoint: Endpoint) -> ClientConfiguration {
        var copy = self
        copy.endpoint = endpoint
        return copy
    }
}
