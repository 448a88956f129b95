import ArgumentParser
import Foundation
import NIOCore
import PMUCheckpoint
import PMUClient
import PMUCluster
import PMUCore

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint", abstract: "Put, list, get and verify checkpoints in a checkpoint region.",
        subcommands: [Put.self, List.self, Get.self, Verify.self])

    struct Put: PMUCtlCommand {
        static let configuration = CommandConfiguration(
            abstract: "Save a file (or stdin) as the next checkpoint; prints its sequence once durable.",
            discussion: "Takes the region's writer role: a primary writing to the region is fenced from then on.")
        @Argument var name: String
        @Option(help: "File to save (default: stdin).") var file: String?
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var cluster: ClusterOptions
        @Flag(name: .customLong("form-on-server"), help: "With --cluster: send the checkpoint once to a server of the set, which forms and stores the pieces (the map's formingServer, or the first reachable server; docs/CLUSTER.md 7b).")
        var formOnServer = false
        @Option(name: .customLong("forming-server"), help: "With --cluster: the server to form on (implies --form-on-server).")
        var formingServer: String?

        func execute() async throws {
            if (formOnServer || formingServer != nil) && cluster.path == nil {
                throw PMUError(.invalidArgument, "--form-on-server and --forming-server need --cluster MAP (or PMU_CLUSTER)")
            }
            let data: Data
            if let file {
                guard let contents = FileManager.default.contents(atPath: file) else {
                    throw PMUError(.invalidArgument, "cannot read input file \(file)")
                }
                data = contents
            } else {
                data = FileHandle.standardInput.readDataToEndOfFile()
            }
            if cluster.path != nil { return try await ClusterCheckpointCommands.put(
                    name, data: data, cluster: cluster, forming: formOnServer || formingServer != nil ? ServerFormingOptions(server: formingServer) : nil, json: connection.json) }
            let (sequence, epoch) = try await withClient(connection) { client in
                let primary = try await client.openPrimary(name)
                let sequence = try await primary.checkpoint(ByteBuffer(bytes: data))
                try await primary.close()
                return (sequence, primary.epoch)
            }
            if connection.json {
                print(Output.json(["region": name, "sequence": sequence, "epoch": epoch, "sizeBytes": data.count]))
            } else {
                print(sequence)
            }
        }
    }

    struct List: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "List checkpoints: sequence, epoch, size, time, checksum status.")
        @Argument var name: String
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var cluster: ClusterOptions

        func execute() async throws {
            if cluster.path != nil { return try await ClusterCheckpointCommands.list(name, cluster: cluster, json: connection.json) }
            let report = try await verifyRegion(name, connection)
            if connection.json {
                print(Output.json(report.items.map { item in
                    [
                        "sequence": item.record.sequence, "epoch": item.record.epoch, "sizeBytes": item.record.payloadLength,
                        "timestampNanoseconds": item.record.timestampNanoseconds, "status": item.status.rawValue,
                        "crc32c": String(format: "%08x", item.record.payloadCRC),
                    ] as [String: Any]
                }))
                return
            }
            let rows = report.items.map { item in
                [String(item.record.sequence), String(item.record.epoch), String(item.record.payloadLength),
                 Output.time(item.record.timestampNanoseconds / 1_000_000), item.status.rawValue]
            }
            print(Output.table(["SEQUENCE", "EPOCH", "BYTES", "TIME", "CHECKSUM"], rows))
        }
    }

    struct Get: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Write a checkpoint's bytes to a file (or stdout): the newest unless --sequence.")
        @Argument var name: String
        @Option(help: "Sequence number (default: the newest complete checkpoint).") var sequence: UInt64?
        @Option(help: "Output file (default: stdout).") var out: String?
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var cluster: ClusterOptions

        func execute() async throws {
            if cluster.path != nil { return try await ClusterCheckpointCommands.get(name, sequence: sequence, out: out, cluster: cluster) }
            let checkpoint = try await withClient(connection) { client -> Checkpoint in
                let backup = try await client.openBackup(name)
                if let sequence { return try await backup.checkpoint(sequence: sequence) }
                guard let latest = try await backup.latest() else {
                    throw PMUError(.unknownSequence, "region \(name) holds no complete checkpoint yet")
                }
                return latest
            }
            let data = checkpoint.payload.withUnsafeReadableBytes { Data($0) }
            if let out {
                guard FileManager.default.createFile(atPath: out, contents: data) else {
                    throw PMUError(.invalidArgument, "cannot write output file \(out)")
                }
                Output.printError("checkpoint \(checkpoint.sequence) (epoch \(checkpoint.epoch), \(data.count) bytes) written to \(out)")
            } else {
                FileHandle.standardOutput.write(data)
            }
        }
    }

    struct Verify: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Check every checkpoint's checksums; exits non-zero naming any damaged one.")
        @Argument var name: String
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var cluster: ClusterOptions

        func execute() async throws {
            if cluster.path != nil { return try await ClusterCheckpointCommands.verify(name, cluster: cluster, json: connection.json) }
            let report = try await verifyRegion(name, connection)
            if connection.json {
                print(Output.json([
                    "region": name, "checked": report.items.count, "damaged": report.damaged.map { $0.record.sequence },
                    "unreadableIndexSlots": report.unreadableSlots,
                ]))
            } else {
                print("\(name): \(report.items.count) checkpoints checked, \(report.damaged.count) damaged")
                for slot in report.unreadableSlots { print("index slot \(slot): unreadable header (torn by a crash while being written); not a checkpoint") }
            }
            if !report.isClean {
                let list = report.damaged.map { "\($0.record.sequence)" }.joined(separator: ", ")
                throw PMUError(.damaged, "region \(name): checkpoint(s) \(list) damaged: payload does not match its CRC32C")
            }
        }
    }
}

/// Reads every record of a checkpoint region read-only and checks its checksums.
func verifyRegion(_ name: String, _ connection: ConnectionOptions) async throws -> VerificationReport {
    try await withClient(connection) { client in
        let backup = try await client.openBackup(name)
        return try await CheckpointVerifier.verify(io: RemoteRegion(client: client, handle: backup.handle))
    }
}

struct InspectCommand: PMUCtlCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show a checkpoint region's layout, writer epoch and free space.")
    @Argument var name: String
    @OptionGroup var connection: ConnectionOptions

    func execute() async throws {
        let (info, geometry, records) = try await withClient(connection) { client in
            let info = try await client.stat(name)
            let backup = try await client.openBackup(name)
            return (info, backup.geometry, try await backup.reader.records())
        }
        let used = CheckpointIndex.usedBytes(records)
        var fields: [(String, Any)] = [
            ("region", name), ("mode", geometry.mode.description), ("sizeBytes", info.sizeBytes), ("writerEpoch", info.writerEpoch),
            ("indexEntries", geometry.indexEntries), ("checkpoints", records.count),
            ("newestSequence", records.last?.sequence ?? 0), ("dataOffset", geometry.dataOffset), ("dataBytes", geometry.dataBytes),
        ]
        switch geometry.mode {
        case .overwrite:
            fields += [("layout", "two slots"), ("slotBytes", geometry.slotBytes), ("maxCheckpointBytes", geometry.slotBytes)]
        case .append:
            fields += [
                ("layout", geometry.keepNewest == 0 ? "log, keeps all" : "ring, keeps newest \(geometry.keepNewest)"),
                ("keepNewest", geometry.keepNewest), ("usedBytes", used), ("freeBytes", geometry.dataBytes - min(used, geometry.dataBytes)),
                ("freeEntries", max(0, Int(geometry.indexEntries) - records.count)),
            ]
        }
        if connection.json {
            print(Output.json(Dictionary(fields, uniquingKeysWith: { a, _ in a })))
        } else {
            print(Output.table(["FIELD", "VALUE"], fields.map { [$0.0, "\($0.1)"] }))
        }
    }
}
