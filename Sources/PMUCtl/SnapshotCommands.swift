import ArgumentParser
import Foundation
import PMUClient
import PMUCore
import PMUSnapshot

/// `pmuctl snapshot list|inspect|verify TARGET`: live-snapshot targets, read-only.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "List, inspect and verify the live snapshots in a snapshot target.",
        subcommands: [List.self, Inspect.self, Verify.self])

    struct List: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "List the committed snapshots: sequence, epoch, pages and bytes sent, pause, time, status.")
        @Argument var name: String
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let rows = try await withClient(connection) { client in
                let target = try await client.openSnapshotTarget(name, writable: false)
                var rows: [(SnapshotHeader, String)] = []
                for header in try await target.headers() {
                    // The newest is restorable by design; an older one only while its map is intact.
                    let status = header.sequence == target.newestCommitted?.sequence ? "newest" :
                        ((try? await target.verifyMap(sequence: header.sequence)) != nil ? "previous" : "superseded")
                    rows.append((header, status))
                }
                return rows
            }
            if connection.json {
                print(Output.json(rows.map { header, status in Self.dictionary(header).merging(["status": status]) { $1 } }))
                return
            }
            print(Output.table(["SEQUENCE", "EPOCH", "PAGES", "BYTES", "PAUSE_US", "TIME", "STATUS"], rows.map { header, status in
                [String(header.sequence), String(header.epoch), String(header.pagesSent), String(header.bytesSent),
                 String(header.pauseNanoseconds / 1000), Output.time(header.committedMilliseconds), status]
            }))
        }

        static func dictionary(_ header: SnapshotHeader) -> [String: Any] {
            ["sequence": header.sequence, "epoch": header.epoch, "pagesSent": header.pagesSent, "bytesSent": header.bytesSent,
             "pauseNanoseconds": header.pauseNanoseconds, "startedMilliseconds": header.startedMilliseconds,
             "committedMilliseconds": header.committedMilliseconds, "mapCrc32c": String(format: "%08x", header.mapChecksum)]
        }
    }

    struct Inspect: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Show a target's layout, a snapshot's header and page map (the newest unless --sequence), and the heartbeat.")
        @Argument var name: String
        @Option(help: "Sequence number (default: the newest complete snapshot).") var sequence: UInt64?
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let (layout, header, map, beat, regionBytes) = try await withClient(connection) { client in
                let target = try await client.openSnapshotTarget(name, writable: false)
                let (header, map) = try await target.image(sequence: sequence)
                return (target.layout, header, map, try await target.heartbeat(), target.io.sizeBytes)
            }
            let runs = zip(map.slots, map.slots.dropFirst()).reduce(1) { $0 + ($1.1 == $1.0 + 1 ? 0 : 1) }
            var value: [String: Any] = [
                "target": name, "arenaBytes": layout.arenaBytes, "pageBytes": layout.pageBytes, "pages": layout.pageCount,
                "slots": layout.slotCount, "regionBytes": regionBytes, "requiredRegionBytes": layout.requiredRegionBytes,
                "mapOffsets": [layout.mapOffset(0), layout.mapOffset(1)], "dataOffset": layout.dataOffset,
                "snapshot": List.dictionary(header), "contiguousRuns": runs,
            ]
            if let beat {
                value["heartbeat"] = ["epoch": beat.epoch, "counter": beat.counter, "milliseconds": beat.milliseconds,
                                      "handedOverSequence": beat.handedOverSequence, "note": beat.note]
            }
            if connection.json { return print(Output.json(value)) }
            print("target \(name): arena \(layout.arenaBytes) bytes in \(layout.pageCount) pages of \(layout.pageBytes); region \(regionBytes) bytes (needs \(layout.requiredRegionBytes)): 2 maps at \(layout.mapOffset(0)), \(layout.mapOffset(1)); \(layout.slotCount) slots from \(layout.dataOffset)")
            print("snapshot \(header.sequence): epoch \(header.epoch), \(header.pagesSent) pages (\(header.bytesSent) bytes) sent, pause \(header.pauseNanoseconds / 1000) us, committed \(Output.time(header.committedMilliseconds)); image in \(runs) contiguous slot runs")
            if let beat {
                print("heartbeat: epoch \(beat.epoch), beat \(beat.counter) at \(Output.time(beat.milliseconds))" + (beat.handedOverSequence != 0 ? ", handed over at snapshot \(beat.handedOverSequence)" : ""))
            }
        }
    }

    struct Verify: PMUCtlCommand {
        static let configuration = CommandConfiguration(abstract: "Check a snapshot's header, map and every page's checksum (the newest unless --sequence); exits non-zero when damaged.")
        @Argument var name: String
        @Option(help: "Sequence number (default: the newest complete snapshot).") var sequence: UInt64?
        @OptionGroup var connection: ConnectionOptions

        func execute() async throws {
            let report = try await withClient(connection) { client in
                try await client.openSnapshotTarget(name, writable: false).verify(sequence: sequence)
            }
            if connection.json {
                print(Output.json(["target": name, "sequence": report.header.sequence, "pagesChecked": report.pagesChecked,
                                   "damagedPages": report.damagedPages]))
            } else {
                print("\(name): snapshot \(report.header.sequence): \(report.pagesChecked) pages checked, \(report.damagedPages.count) damaged")
            }
            guard report.intact else {
                throw PMUError(.damaged, "target \(name): snapshot \(report.header.sequence) has \(report.damagedPages.count) damaged page(s), first \(report.damagedPages[0])")
            }
        }
    }
}
