import Foundation
import PMUCore

/// Tables for people, JSON for scripts.
enum Output {
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }

    static func json(_ value: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys])) ?? Data("null".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func dictionary(_ info: RegionInfo) -> [String: Any] {
        [
            "id": info.id, "name": info.name, "sizeBytes": info.sizeBytes, "kind": info.kind.description,
            "createdAtMilliseconds": info.createdAtMilliseconds, "generation": info.generation,
            "writerEpoch": info.writerEpoch, "owner": info.owner, "readers": info.readers, "writers": info.writers,
            "openHandles": info.openHandles,
        ]
    }

    static func time(_ milliseconds: UInt64) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    static func printError(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
