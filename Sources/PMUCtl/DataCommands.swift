import ArgumentParser
import Foundation
import NIOCore
import PMUClient
import PMUCore

/// Bytes per request when pmuctl streams a file: big enough for full-speed transfers, small
/// enough that memory stays bounded (chunk × chunks in flight).
private let streamChunkBytes = 4 * 1024 * 1024

struct WriteCommand: PMUCtlCommand {
    static let configuration = CommandConfiguration(commandName: "write", abstract: "Write a file (or stdin) into a region at an offset.")
    @Argument var name: String
    @Option(help: "Region offset to write at.") var offset: String = "0"
    @Option(help: "File to write (default: stdin).") var file: String?
    @OptionGroup var connection: ConnectionOptions

    func execute() async throws {
        let start = try ByteSize.parse(offset)
        let input: FileHandle
        if let file {
            guard let handle = FileHandle(forReadingAtPath: file) else {
                throw PMUError(.invalidArgument, "cannot open input file \(file)")
            }
            input = handle
        } else {
            input = FileHandle.standardInput
        }
        let total = file.flatMap { try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int } ?? 0
        let progress = Progress(total: total, label: "write \(name)")
        let written = try await withClient(connection) { client -> UInt64 in
            let handle = try await client.openRegion(name, rights: .readWrite)
            var position = start
            // Stream: read a chunk, send it while reading the next (one chunk in flight plus one read).
            var pending: Task<Void, Error>?
            while true {
                let data = try input.read(upToCount: streamChunkBytes) ?? Data()
                if data.isEmpty { break }
                try await pending?.value
                let at = position
                let buffer = ByteBuffer(bytes: data)
                pending = Task { try await client.write(handle, at: at, buffer) }
                // --offset is the user's: near 2^64 the end would overflow (the write above fails
                // with OUT_OF_BOUNDS for the same range; this keeps the count from trapping first).
                let (next, overflow) = position.addingReportingOverflow(UInt64(data.count))
                guard !overflow else {
                    throw PMUError(.outOfBounds, "range [\(at), \(at) + \(data.count)) is outside region \(NameRules.quoted(name)) (its end is past 2^64)")
                }
                position = next
                progress.advance(by: data.count)
            }
            try await pending?.value
            try await client.close(handle)
            return position - start
        }
        progress.finish()
        if connection.json {
            print(Output.json(["region": name, "offset": start, "bytes": written]))
        } else {
            print("wrote \(written) bytes to \(name) at offset \(start) (not yet durable: run pmuctl persist \(name))")
        }
    }
}

struct ReadCommand: PMUCtlCommand {
    static let configuration = CommandConfiguration(commandName: "read", abstract: "Read bytes from a region to a file (or stdout).")
    @Argument var name: String
    @Option(help: "Region offset to read from.") var offset: String = "0"
    @Option(help: "Bytes to read (e.g. 4096, 1MiB).") var length: String
    @Option(help: "Output file (default: stdout).") var out: String?
    @OptionGroup var connection: ConnectionOptions

    func execute() async throws {
        let start = try ByteSize.parse(offset)
        let count = try ByteSize.parse(length)
        // Both are the user's: start + at below must not overflow (the server judges the bounds).
        guard start.addingReportingOverflow(count).overflow == false else {
            throw PMUError(.outOfBounds, "range [\(start), \(start) + \(count)) is outside region \(NameRules.quoted(name)) (its end is past 2^64)")
        }
        let output: FileHandle
        if let out {
            guard FileManager.default.createFile(atPath: out, contents: nil), let handle = FileHandle(forWritingAtPath: out) else {
                throw PMUError(.invalidArgument, "cannot create output file \(out)")
            }
            output = handle
        } else {
            output = FileHandle.standardOutput
        }
        let progress = Progress(total: Int(clamping: count), label: "read \(name)")
        try await withClient(connection) { client in
            let handle = try await client.openRegion(name, rights: .read)
            var done: UInt64 = 0
            var next: Task<ByteBuffer, Error>?
            func fetch(_ at: UInt64) -> Task<ByteBuffer, Error>? {
                guard at < count else { return nil }
                let size = Int(min(UInt64(streamChunkBytes), count - at))
                return Task { try await client.read(handle, at: start + at, length: size) }
            }
            next = fetch(0)
            // Keep one read in flight while the previous chunk is written out.
            while let current = next {
                let buffer = try await current.value
                done += UInt64(buffer.readableBytes)
                next = fetch(done)
                buffer.withUnsafeReadableBytes { output.write(Data($0)) }
                progress.advance(by: buffer.readableBytes)
            }
            try await client.close(handle)
        }
        progress.finish()
        if out != nil { try output.close() }
    }
}

struct PersistCommand: PMUCtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "persist", abstract: "Make a region's bytes durable (msync); returns once they are on stable storage.")
    @Argument var name: String
    @Option(help: "Start of the range.") var offset: String = "0"
    @Option(help: "Length of the range (default: to the end of the region).") var length: String = "0"
    @OptionGroup var connection: ConnectionOptions

    func execute() async throws {
        let start = try ByteSize.parse(offset)
        let count = try ByteSize.parse(length)
        try await withClient(connection) { client in
            // Read rights suffice to persist, so pmuctl never takes (and fences) a checkpoint's writer role.
            let handle = try await client.openRegion(name, rights: .read)
            try await client.persist(handle, offset: start, length: count)
            try await client.close(handle)
        }
        if connection.json { print(Output.json(["persisted": name])) } else { print("persisted \(name)") }
    }
}
