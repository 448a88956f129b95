import ArgumentParser
import Foundation
import PMUClient
import PMUCore

struct RegionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "region", abstract: "Create, list, describe and delete regions.",
        subcommands: [Create.self, List.self, Stat.self, Inspect.self, Delete.self])

    struct Create: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Create a region (preallocated on the server).")
        @Argument(help: "Region name (1-255 bytes of UTF-8; no '/', '\\', '..', leading or trailing space, control, invisible or non-ASCII space characters).") var name: String
        @Option(help: "Size, e.g. 4096, 4KiB, 64MiB, 1GiB.") var size: String
        @Option(help: "raw, checkpoint-overwrite, checkpoint-append or snapshot.") var kind = "raw"
        @Option(name: .customLong("max-checkpoints"), help: "checkpoint-append: most checkpoints kept at once.") var maxCheckpoints: UInt32 = 1024
        @Option(name: .customLong("keep-newest"), help: "checkpoint-append: keep the newest N, reusing older space as a ring (0: keep all, refuse when full).") var keepNewest: UInt32 = 0
        @Option(name: .customLong("reader"), help: "Client id that may open it for reading ('*': anyone). Repeatable.") var readers: [String] = []
        @Option(name: .customLong("writer"), help: "Client id that may open it for writing ('*': anyone). Repeatable.") var writers: [String] = []
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            _ = try ByteSize.parse(size)
            guard RegionKind.allCases.contains(where: { $0.description == kind }) else {
                throw ValidationError("unknown --kind \(kind); use raw, checkpoint-overwrite, checkpoint-append or snapshot")
            }
        }

        func execute() async throws {
            let bytes = try ByteSize.parse(size)
            let regionKind = RegionKind.allCases.first { $0.description == kind }!
            let info = try await withClient(connection) { client in
                if let mode = CheckpointMode(kind: regionKind) {
                    let options = CheckpointOptions(mode: mode, maxCheckpoints: maxCheckpoints, keepNewest: keepNewest, readers: readers, writers: writers)
                    try await client.createCheckpointRegion(name, sizeBytes: bytes, options: options)
                } else {
                    let handle = try await client.createRegion(name, sizeBytes: bytes, kind: regionKind, readers: readers, writers: writers)
                    try await client.close(handle)
                }
                return try await client.stat(name)
            }
            if connection.json {
                print(Output.json(["name": name, "id": info.id, "sizeBytes": info.sizeBytes, "kind": kind]))
            } else {
                print("created region \(name) (id \(info.id), \(ByteSize.format(info.sizeBytes)), \(kind))")
            }
        }
    }

    struct List: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "List the regions this client may see.")
        @Option(help: "Only regions whose names sort (bytewise) after this one.") var after = ""
        @Option(help: "At most this many regions (default: all).") var limit: Int?
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            if let limit, limit < 1 { throw PMUError(.invalidArgument, "--limit must be at least 1") }
            let regions = try await withClient(connection) { try await $0.list(after: after, limit: limit) }
            if connection.json {
                print(Output.json(regions.map(Output.dictionary)))
                return
            }
            let rows = regions.map { info in
                [info.name, String(info.id), ByteSize.format(info.sizeBytes), info.kind.description, info.owner, String(info.openHandles), Output.time(info.createdAtMilliseconds)]
            }
            print(Output.table(["NAME", "ID", "SIZE", "KIND", "OWNER", "HANDLES", "CREATED"], rows))
        }
    }

    struct Stat: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Show one region's metadata.")
        @Argument var name: String
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let info = try await withClient(connection) { try await $0.stat(name) }
            if connection.json {
                print(Output.json(Output.dictionary(info)))
                return
            }
            let rows: [[String]] = [
                ["name", info.name], ["id", String(info.id)], ["size", "\(ByteSize.format(info.sizeBytes)) (\(info.sizeBytes) bytes)"],
                ["kind", info.kind.description], ["owner", info.owner],
                ["readers", info.readers.isEmpty ? "-" : info.readers.joined(separator: ",")],
                ["writers", info.writers.isEmpty ? "-" : info.writers.joined(separator: ",")],
                ["created", Output.time(info.createdAtMilliseconds)], ["generation", String(info.generation)],
                ["writer epoch", String(info.writerEpoch)], ["open handles", String(info.openHandles)],
            ]
            print(Output.table(["FIELD", "VALUE"], rows))
        }
    }

    typealias Inspect = InspectCommand

    struct Delete: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a region and its data (owner or admin only).")
        @Argument var name: String
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            try await withClient(connection) { try await $0.delete(name) }
            if connection.json { print(Output.json(["deleted": name])) } else { print("deleted region \(name)") }
        }
    }
}
