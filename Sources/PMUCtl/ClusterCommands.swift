import ArgumentParser
import Foundation
import NIOCore
import PMUCluster
import NIOPosix
import PMUCore
import PMUFailover
import PMUStripe

/// Where the cluster map is: --cluster, else $PMU_CLUSTER.
struct ClusterOptions: ParsableArguments {
    @Option(name: .customLong("cluster"), help: "Cluster map file (JSON; env PMU_CLUSTER): the checkpoint set is striped or mirrored across its servers.")
    var mapPath: String?

    var path: String? { mapPath ?? ProcessInfo.processInfo.environment["PMU_CLUSTER"] }

    func load() throws -> ClusterMap {
        guard let path else { throw PMUError(.invalidArgument, "no cluster map: pass --cluster FILE or set PMU_CLUSTER") }
        return try ClusterMap.load(path: path)
    }
}

/// Connects to every server of the map, runs `body`, disconnects.
func withCluster<T>(_ options: ClusterOptions, _ body: (Cluster) async throws -> T) async throws -> T {
    let cluster = await Cluster.connect(try options.load())
    do {
        let result = try await body(cluster)
        await cluster.disconnect()
        return result
    } catch {
        await cluster.disconnect()
        throw error
    }
}

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "Checkpoint sets striped with parity or mirrored across the servers of a cluster map.",
        discussion: "Checkpoints go in and out with `pmuctl checkpoint put|get|list|verify NAME --cluster MAP`.",
        subcommands: [Create.self, Status.self, Scrub.self, Rebuild.self, Delete.self, Members.self])

    /// The failover members at the authority (issue 13): etcd's member keys, each bound to its
    /// server's lease (a server whose lease lapsed is gone from the list), and the owner record.
    struct Members: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the failover servers registered at the authority (etcd) and which one owns the portion.")
        @Option(help: "The authority, etcd's client URL http://HOST:PORT (env PMU_ETCD).") var etcd: String?
        @Option(name: .customLong("etcd-prefix"), help: "The pair's key prefix (the servers' --etcd-prefix).") var etcdPrefix = "/pmu/pair"
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            guard let url = etcd ?? ProcessInfo.processInfo.environment["PMU_ETCD"] else {
                throw PMUError(.invalidArgument, "no authority: pass --etcd http://HOST:PORT or set PMU_ETCD")
            }
            let authority = Authority(etcd: EtcdClient(endpoint: try EtcdClient.parse(url: url), group: MultiThreadedEventLoopGroup.singleton), prefix: etcdPrefix, memberId: "pmuctl")
            let members = try await authority.members().sorted { $0.id < $1.id }
            let owner = try await authority.owner()
            let ownerId = owner.record?.owner
            if connection.json {
                print(Output.json([
                    "authority": url + etcdPrefix,
                    "owner": ownerId.map { $0 as Any } ?? NSNull(),
                    "epoch": owner.modRevision,
                    "generation": owner.record.map { Int($0.generation) } ?? 0,
                    "members": members.map { member -> [String: Any] in
                        ["id": member.id, "role": member.role, "heartbeat": member.heartbeat, "service": member.service.map { $0 as Any } ?? NSNull(),
                         "owner": member.id == ownerId]
                    },
                ] as [String: Any]))
                return
            }
            print("authority \(url)\(etcdPrefix): owner \(ownerId ?? "none"), epoch \(owner.modRevision)")
            if members.isEmpty { print("  no member registered (no server of the pair runs, or their leases lapsed)") }
            for member in members {
                let mark = member.id == ownerId ? " (owner)" : ""
                print("  \(member.id)\(mark): \(member.role), heartbeat \(member.heartbeat)\(member.service.map { ", service address \($0)" } ?? "")")
            }
            if let ownerId, !members.contains(where: { $0.id == ownerId }) {
                print("  the owner \(ownerId) has no live member key: its lease lapsed (down or cut off from etcd)")
            }
        }
    }

    struct Create: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Create a checkpoint set on every server of the map.")
        @Argument(help: "Set name (its regions on each server are NAME and NAME.commit).") var name: String
        @Option(help: "Data subsegments per group (default: the map's, else min(4, servers - 1)).") var k: Int?
        @Option(help: "Parity subsegments per group: 1 = XOR, 2+ = Reed-Solomon (default: the map's, else 1).") var m: Int?
        @Option(help: "Servers holding each subsegment; with --k 1 --m 0 this is plain mirroring (default 1).") var copies: Int?
        @Option(name: .customLong("max-checkpoint"), help: "Largest checkpoint, e.g. 64MiB; sizes each server's region.") var maxCheckpoint: String
        @Option(name: .customLong("keep-newest"), help: "Complete checkpoints kept (0: keep all up to --max-checkpoints).") var keepNewest: UInt32 = 2
        @Option(name: .customLong("max-checkpoints"), help: "With --keep-newest 0: how many checkpoints fit.") var maxCheckpoints: UInt32 = 64
        @Option(name: .customLong("subsegment"), help: "Largest subsegment, a multiple of 64 bytes (default: the map's, else 1MiB).") var subsegment: String?
        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var connection: ConnectionOptions // --json (a @Flag named json here would never be set)
        var json: Bool { connection.json }

        func execute() async throws {
            let map = try cluster.load()
            let defaults = map.defaultRedundancy
            let redundancy = Redundancy(k: k ?? defaults.k, m: m ?? defaults.m, copies: copies ?? defaults.copies)
            let sub = try subsegment.map { Int(try ByteSize.parse($0)) } ?? map.defaults.subsegmentBytes ?? (1 << 20)
            let options = CheckpointSetOptions(
                redundancy: redundancy, maxCheckpointBytes: try ByteSize.parse(maxCheckpoint), keepNewest: keepNewest,
                maxCheckpoints: maxCheckpoints, maxSubsegmentBytes: sub)
            let descriptor = try await withCluster(cluster) { try await $0.createCheckpointSet(name, options: options) }
            if json {
                print(Output.json(["set": name, "setId": descriptor.setID.description, "servers": descriptor.servers, "k": redundancy.k, "m": redundancy.m, "copies": redundancy.copies]))
            } else {
                print("set \(name): \(redundancy) on \(descriptor.servers.joined(separator: ", ")); survives any \(redundancy.guaranteedLosses) server loss(es)")
            }
        }
    }

    struct Status: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show each server and, per complete checkpoint, which servers hold it and how many more losses it survives.")
        @Argument(help: "Set name (default: every set found on the servers).") var name: String?
        @OptionGroup var cluster: ClusterOptions
        // --json is the root's connection option: a @Flag of the same name here would never be set.
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let json = connection.json
            let (statuses, unreachable, map) = try await withCluster(cluster) { cluster -> ([SetStatus], [String: PMUError], ClusterMap) in
                var names = name.map { [$0] } ?? []
                if name == nil { names = await cluster.setNames() }
                var statuses: [SetStatus] = []
                for name in names { statuses.append(try await cluster.status(set: name)) }
                return (statuses, cluster.unreachable, cluster.map)
            }
            if json {
                print(Output.json([
                    "servers": map.servers.map { ["name": $0.name, "address": $0.address, "reachable": unreachable[$0.name] == nil, "error": unreachable[$0.name]?.message ?? ""] as [String: Any] },
                    "sets": statuses.map { status in
                        [
                            "name": status.name, "redundancy": status.descriptor.redundancy.description,
                            "servers": status.descriptor.servers,
                            "checkpoints": status.checkpoints.map { info in
                                ["sequence": info.sequence, "sizeBytes": info.sizeBytes, "holders": info.holders, "lacking": info.lacking,
                                 "survivesMoreLosses": info.survivesMoreLosses ?? -1] as [String: Any]
                            },
                            "scrub": status.scrub.map(scrubJSON) ?? NSNull(),
                        ] as [String: Any]
                    },
                ]))
                return
            }
            print(Output.table(["SERVER", "ADDRESS", "STATE"], map.servers.map { server in
                [server.name, server.address, unreachable[server.name].map { "unreachable: \($0.code)" } ?? "up"]
            }))
            for status in statuses {
                print("\nset \(status.name): \(status.descriptor.redundancy) across \(status.descriptor.servers.count) servers")
                for (server, problem) in status.servers where problem != nil { print("  \(server): \(problem!)") }
                let rows = status.checkpoints.map { info in
                    [String(info.sequence), String(info.sizeBytes), Output.time(info.timestampNanoseconds / 1_000_000),
                     "\(info.holders.count)/\(status.descriptor.servers.count)",
                     info.lacking.keys.sorted().joined(separator: ",").ifEmpty("-"),
                     info.survivesMoreLosses.map(String.init) ?? "LOST"]
                }
                print(Output.table(["SEQUENCE", "BYTES", "TIME", "SERVERS", "MISSING ON", "SURVIVES MORE LOSSES"], rows))
                if let scrub = status.scrub {
                    print("last scrub: \(Output.time(scrub.finishedNanoseconds / 1_000_000)) (pass \(scrub.passes), up to checkpoint \(scrub.newestSequence)): \(scrub.piecesChecked) pieces checked (\(scrub.subsegmentsChecked) subsegments, \(ByteSize.format(scrub.bytesRead))), \(scrub.damaged) damaged, \(scrub.repaired) repaired, \(scrub.unrepaired) unrepaired")
                } else {
                    print("last scrub: never")
                }
            }
        }
    }

    struct Scrub: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-read every stored piece of a set, check each subsegment's CRC32C, repair damage from parity.",
            discussion: "One pass by default; --every SECONDS repeats (bounded by --passes). A repair takes the writer role on the damaged server's piece region, which fences a primary writing the set there: a running primary scrubs through ClusterPrimary.scrub instead. The outcome is stored in each server's NAME.scrub region and shown by `pmuctl cluster status`.")
        @Argument(help: "Set name.") var name: String
        @Option(help: "Average read rate bound, bytes per second (e.g. 32MiB, at least 4096).") var rate: String = "32MiB"
        @Option(help: "Repeat a pass every SECONDS (start to start).") var every: UInt64?
        @Option(help: "With --every: stop after this many passes (default: run until killed).") var passes: Int?
        @Flag(name: .customLong("no-repair"), help: "Only report damage.") var noRepair = false
        @Flag(name: .customLong("rebuild-empty"), help: "Before each pass, rebuild stripe servers that answer but hold none of the set's regions (wiped or replaced).") var rebuildEmpty = false
        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let (json, name) = (connection.json, name)
            let options = ScrubOptions(bytesPerSecond: try ByteSize.parse(rate), repair: !noRepair)
            if let passes, passes < 1 { throw PMUError(.invalidArgument, "--passes must be at least 1, got \(passes)") }
            if every == nil, passes != nil { throw PMUError(.invalidArgument, "--passes needs --every SECONDS") }
            let counts = ScrubCounts()
            let print: @Sendable (Result<ScrubReport, PMUError>) async -> Void = { result in
                switch result {
                case .success(let report):
                    counts.add(unrepaired: report.unrepaired.count)
                    Swift.print(json ? Output.json(scrubReportJSON(report)) : scrubReportText(report))
                case .failure(let error):
                    counts.add(failure: 1)
                    FileHandle.standardError.write(Data("scrub of \(name) failed: \(error.code): \(error.message)\n".utf8))
                }
            }
            // Each pass connects afresh (map re-read), so a server that comes back, or comes back
            // empty at a new address, is seen at the next pass.
            let (cluster, rebuildEmpty) = (cluster, rebuildEmpty)
            let pass = { () async throws(PMUError) -> ScrubReport in
                do {
                    return try await withCluster(cluster) { cluster in
                        if rebuildEmpty {
                            for report in try await cluster.rebuildEmptyServers(set: name) {
                                Swift.print(json ? Output.json(rebuildJSON(report)) : rebuildText(report))
                                if !report.unrecoverable.isEmpty { counts.add(failure: 1) }
                            }
                        }
                        return try await cluster.scrub(set: name, options: options)
                    }
                } catch let error as PMUError {
                    throw error
                } catch {
                    throw PMUError(.invalidArgument, "\(error)")
                }
            }
            if let every {
                _ = await scrubLoop(.seconds(every), passes: passes, onPass: print, pass)
            } else {
                await print(.success(try await pass()))
            }
            let outcome = counts.value
            if outcome.failures > 0 { throw PMUError(.unrecoverable, "\(outcome.failures) scrub pass(es) of \(name) failed (see above)") }
            if outcome.unrepaired > 0 { throw PMUError(.damaged, "\(outcome.unrepaired) damaged subsegment(s) of \(name) could not be repaired (see above)") }
        }
    }

    struct Rebuild: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Regenerate a lost or replaced server's pieces of every complete checkpoint from the others.",
            discussion: "Without --online: run it with no primary writing; reopen primaries afterwards. With --online: the set's forming server (its primary, pmu-server --cluster-map) rejoins the empty server and backfills it while checkpoints formed there go on (docs/CLUSTER.md 6b).")
        @Argument(help: "Server name in the cluster map.") var server: String
        @Option(help: "Only this set (repeatable; default: every set found).") var set: [String] = []
        @Flag(help: "Rebuild through the forming server while primaries keep checkpointing there (the map's formingServer, or the first reachable other server).")
        var online = false
        @Option(name: .customLong("forming-server"), help: "With --online: the forming server to rebuild through.")
        var formingServer: String?
        @OptionGroup var cluster: ClusterOptions
        @OptionGroup var connection: ConnectionOptions // --json (a @Flag named json here would never be set)
        var json: Bool { connection.json }

        func execute() async throws {
            let reports = try await withCluster(cluster) { cluster -> [RebuildReport] in
                var sets = set
                if sets.isEmpty { sets = await cluster.setNames() }
                var reports: [RebuildReport] = []
                for name in sets {
                    if online || formingServer != nil {
                        reports.append(try await cluster.rebuildThroughFormingServer(server, set: name, options: ServerFormingOptions(server: formingServer)))
                    } else {
                        reports.append(try await cluster.rebuild(server: server, set: name))
                    }
                }
                return reports
            }
            if json {
                print(Output.json(reports.map(rebuildJSON)))
            } else {
                for report in reports { print(rebuildText(report)) }
            }
            if reports.contains(where: { !$0.unrecoverable.isEmpty }) {
                throw PMUError(.unrecoverable, "some checkpoints could not be rebuilt (see above)")
            }
        }
    }

    struct Delete: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a checkpoint set from every reachable server.")
        @Argument var name: String
        @OptionGroup var cluster: ClusterOptions

        func execute() async throws {
            try await withCluster(cluster) { try await $0.deleteCheckpointSet(name) }
        }
    }
}

extension String {
    func ifEmpty(_ replacement: String) -> String { isEmpty ? replacement : self }
}

/// `pmuctl checkpoint ... --cluster MAP`: the same commands on a striped or mirrored set.
enum ClusterCheckpointCommands {
    static func put(_ name: String, data: Data, cluster options: ClusterOptions, forming: ServerFormingOptions?, json: Bool) async throws {
        if let forming {
            let (server, formed) = try await withCluster(options) { cluster in
                try await cluster.checkpointFormedOnServer(name, payload: ByteBuffer(bytes: data), options: forming)
            }
            print(json ? Output.json(["set": name, "sequence": formed.sequence, "sizeBytes": data.count, "formedOn": server, "pieceBytes": formed.pieceBytes] as [String: Any]) : String(formed.sequence))
            return
        }
        let sequence = try await withCluster(options) { cluster -> UInt64 in
            let primary = try await ClusterPrimary.open(name, cluster: cluster)
            do {
                let sequence = try await primary.checkpoint(ByteBuffer(bytes: data))
                await primary.close()
                return sequence
            } catch {
                await primary.close()
                throw error
            }
        }
        print(json ? Output.json(["set": name, "sequence": sequence, "sizeBytes": data.count]) : String(sequence))
    }

    static func get(_ name: String, sequence: UInt64?, out: String?, cluster options: ClusterOptions) async throws {
        let checkpoint = try await withCluster(options) { cluster -> ClusterCheckpoint in
            let backup = try ClusterBackup(name: name, cluster: cluster)
            if let sequence { return try await backup.checkpoint(sequence: sequence) }
            guard let latest = try await backup.latest() else {
                throw PMUError(.unknownSequence, "set \(name) holds no complete checkpoint yet")
            }
            return latest
        }
        if checkpoint.isDegraded {
            var notes = ["checkpoint \(checkpoint.sequence) reassembled"]
            if !checkpoint.unavailable.isEmpty { notes.append("without \(checkpoint.unavailable.keys.sorted().joined(separator: ", "))") }
            if checkpoint.rebuilt > 0 { notes.append("\(checkpoint.rebuilt) subsegment(s) rebuilt from parity") }
            if !checkpoint.damaged.isEmpty { notes.append("damaged: \(checkpoint.damaged.joined(separator: ", "))") }
            Output.printError("warning: " + notes.joined(separator: "; "))
        }
        if !checkpoint.skipped.isEmpty {
            Output.printError("warning: newer complete checkpoint(s) \(checkpoint.skipped.map(String.init).joined(separator: ", ")) cannot be reassembled; returning \(checkpoint.sequence)")
        }
        let data = checkpoint.payload.withUnsafeReadableBytes { Data($0) }
        if let out {
            guard FileManager.default.createFile(atPath: out, contents: data) else { throw PMUError(.invalidArgument, "cannot write output file \(out)") }
            Output.printError("checkpoint \(checkpoint.sequence) (\(data.count) bytes) written to \(out)")
        } else {
            FileHandle.standardOutput.write(data)
        }
    }

    static func list(_ name: String, cluster options: ClusterOptions, json: Bool) async throws {
        let (infos, total) = try await withCluster(options) { cluster -> ([ClusterCheckpointInfo], Int) in
            let backup = try ClusterBackup(name: name, cluster: cluster)
            return (try await backup.list(), cluster.map.servers.count)
        }
        if json {
            print(Output.json(infos.map { ["sequence": $0.sequence, "sizeBytes": $0.sizeBytes, "timestampNanoseconds": $0.timestampNanoseconds, "holders": $0.holders, "survivesMoreLosses": $0.survivesMoreLosses ?? -1] as [String: Any] }))
            return
        }
        _ = total
        print(Output.table(["SEQUENCE", "BYTES", "TIME", "LAYOUT", "HELD BY", "SURVIVES MORE LOSSES"], infos.map { info in
            [String(info.sequence), String(info.sizeBytes), Output.time(info.timestampNanoseconds / 1_000_000), info.redundancy.description,
             info.holders.joined(separator: ","), info.survivesMoreLosses.map(String.init) ?? "LOST"]
        }))
    }

    static func verify(_ name: String, cluster options: ClusterOptions, json: Bool) async throws {
        let report = try await withCluster(options) { cluster in try await ClusterBackup(name: name, cluster: cluster).verify() }
        let bad = report.filter { $0.failure != nil || !$0.damaged.isEmpty || !$0.lacking.isEmpty }
        if json {
            print(Output.json(report.map { ["sequence": $0.sequence, "damaged": $0.damaged, "lacking": $0.lacking, "error": $0.failure?.message ?? ""] as [String: Any] }))
        } else {
            print("\(name): \(report.count) complete checkpoints checked, \(bad.count) with problems")
            for item in report {
                if !item.damaged.isEmpty { print("checkpoint \(item.sequence): damaged subsegments \(item.damaged.joined(separator: ", "))\(item.failure == nil ? " (rebuildable from parity)" : "")") }
                if !item.lacking.isEmpty { print("checkpoint \(item.sequence): no piece on \(item.lacking.keys.sorted().joined(separator: ", "))") }
                if let failure = item.failure { print("checkpoint \(item.sequence): \(failure.code): \(failure.message)") }
            }
        }
        if let failed = report.first(where: { $0.failure != nil }) {
            throw PMUError(failed.failure!.code, "set \(name): checkpoint \(failed.sequence) cannot be reassembled")
        }
        if !bad.isEmpty {
            throw PMUError(.damaged, "set \(name) is degraded: pieces missing or damaged (every checkpoint still reassembles); bring the servers named back, or run pmuctl cluster rebuild SERVER")
        }
    }
}

func scrubJSON(_ record: ScrubRecord) -> [String: Any] {
    ["startedMs": record.startedNanoseconds / 1_000_000, "finishedMs": record.finishedNanoseconds / 1_000_000, "passes": record.passes,
     "piecesChecked": record.piecesChecked, "subsegmentsChecked": record.subsegmentsChecked, "bytesRead": record.bytesRead,
     "damaged": record.damaged, "repaired": record.repaired, "unrepaired": record.unrepaired, "newestSequence": record.newestSequence]
}

func scrubReportJSON(_ report: ScrubReport) -> [String: Any] {
    ["set": report.set, "record": scrubJSON(report.record), "damaged": report.damaged, "repaired": report.repaired,
     "unrepaired": report.unrepaired, "displaced": report.displaced, "unchecked": report.unchecked,
     "recordFailures": report.recordFailures.mapValues { "\($0.code): \($0.message)" }]
}

func scrubReportText(_ report: ScrubReport) -> String {
    let r = report.record
    var lines = ["set \(report.set): scrubbed \(r.piecesChecked) pieces (\(r.subsegmentsChecked) subsegments, \(ByteSize.format(r.bytesRead))) up to checkpoint \(r.newestSequence): \(r.damaged) damaged, \(r.repaired) repaired, \(r.unrepaired) unrepaired"]
    lines += report.repaired.map { "  repaired \($0)" }
    lines += report.unrepaired.sorted { $0.key < $1.key }.map { "  NOT repaired \($0.key): \($0.value)" }
    lines += report.unchecked.sorted { $0.key < $1.key }.map { "  not checked on \($0.key): \($0.value)" }
    lines += report.recordFailures.sorted { $0.key < $1.key }.map { "  scrub record not stored on \($0.key): \($0.value.code): \($0.value.message)" }
    return lines.joined(separator: "\n")
}

/// Totals over the passes of one `cluster scrub` (filled from the pass callback).
private final class ScrubCounts: @unchecked Sendable {
    private var failures = 0
    private var unrepaired = 0
    private let lock = NSLock()

    func add(failure: Int = 0, unrepaired: Int = 0) {
        lock.withLock {
            failures += failure
            self.unrepaired += unrepaired
        }
    }

    var value: (failures: Int, unrepaired: Int) { lock.withLock { (failures, unrepaired) } }
}

func rebuildJSON(_ report: RebuildReport) -> [String: Any] {
    ["set": report.set, "server": report.server, "rebuilt": report.rebuilt, "unrecoverable": report.unrecoverable, "bytesWritten": report.bytesWritten]
}

func rebuildText(_ report: RebuildReport) -> String {
    "set \(report.set): rebuilt \(report.rebuilt.count) checkpoint piece(s) on \(report.server) (\(ByteSize.format(report.bytesWritten)))"
        + (report.unrecoverable.isEmpty ? "" : "; could not reassemble \(report.unrecoverable.map(String.init).joined(separator: ", "))")
}
