import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

@testable import PMUCheckpoint

/// Issue 10, defects 6, 7 and 10 against a real pmu-server: a client with write access to a
/// checkpoint region crafts bytes with valid checksums (through plain WRITEs), and every reader,
/// as library calls and as pmuctl processes, gets a clean non-zero exit naming the error code;
/// the server and the other regions are unharmed.
@Suite struct CraftedBytesIntegrationTests {
    let scratch = Scratch()

    struct Ctl {
        let server: ServerProcess
        func callAsFunction(_ arguments: [String], stdin: Data? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
            let base = ["--server", server.endpoint.description, "--secret-file", server.dataDirectory + "/admin.secret"]
            let result = try run(binDirectory + "/pmuctl", arguments + base, stdin: stdin, timeoutSeconds: 60)
            return (result.status, String(decoding: result.stdout, as: UTF8.self), result.stderr)
        }

        /// A clean failure: non-zero exit (not a signal: a trap would kill pmuctl with SIGILL or
        /// SIGTRAP, which Process reports as its status), one line on stderr with the code.
        func expectRefused(_ arguments: [String], stdin: Data? = nil, code: String, mentioning: String? = nil) throws {
            let result = try self(arguments, stdin: stdin)
            #expect(result.status == 1, "\(arguments): exit \(result.status), \(result.stderr)")
            #expect(result.stderr.contains("error: \(code):"), "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(arguments): \(result.stderr)")
            if let mentioning { #expect(result.stderr.contains(mentioning), "\(arguments): \(result.stderr)") }
        }
    }

    /// Writes bytes into a region through an ordinary read-write handle, as any writer may.
    func rawWrite(_ client: PMUClient, _ name: String, _ parts: [(UInt64, ByteBuffer)]) async throws {
        let handle = try await client.openRegion(name, rights: .readWrite)
        for (offset, bytes) in parts { try await client.writeDurably(handle, at: offset, bytes) }
        try await client.close(handle)
    }

    /// A bystander region with one checkpoint, checked after each attack.
    func makeBystander(_ client: PMUClient) async throws {
        try await client.createCheckpointRegion("bystander", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .overwrite))
        let bystander = try await client.openPrimary("bystander")
        _ = try await bystander.checkpoint(Array("still here".utf8))
        try await bystander.close()
    }

    /// The server survived and the bystander's checkpoint reads back, by library and by pmuctl.
    func expectUnharmed(_ server: ServerProcess, _ client: PMUClient, _ ctl: Ctl) async throws {
        #expect(server.process.isRunning)
        let backup = try await client.openBackup("bystander")
        let latest = try await backup.latest()
        #expect(latest.map { String(buffer: $0.payload) } == "still here")
        try await backup.close()
        let got = try ctl(["checkpoint", "get", "bystander"])
        #expect(got.status == 0 && got.stdout == "still here", "\(got.stderr)")
        await client.disconnect()
    }

    @Test func aCraftedIndexOffsetIsDamageForEveryReader() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let ctl = Ctl(server: server)
        let client = try await server.client()
        try await makeBystander(client)

        try await client.createCheckpointRegion("victim", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append, maxCheckpoints: 16))
        let crafted = CheckpointGeometry(mode: .append, indexEntries: 16, keepNewest: 0, indexOffset: .max, dataOffset: 8192, dataBytes: 1 << 19)
        try await rawWrite(client, "victim", [(0, crafted.encode())])

        let expected = "index offset 18446744073709551615 is outside the region of 1048576 bytes"
        for open in [{ _ = try await client.openBackup("victim") }, { _ = try await client.openPrimary("victim") }] as [() async throws -> Void] {
            do {
                try await open()
                Issue.record("opening a region with a crafted header succeeded")
            } catch let error as PMUError {
                #expect(error.code == .damaged)
                #expect(error.message.contains("checkpoint header of region \"victim\": \(expected)"), "\(error.message)")
            }
        }
        for arguments in [["checkpoint", "list", "victim"], ["checkpoint", "get", "victim"], ["checkpoint", "verify", "victim"], ["region", "inspect", "victim"]] {
            try ctl.expectRefused(arguments, code: "DAMAGED", mentioning: expected)
        }
        try ctl.expectRefused(["checkpoint", "put", "victim"], stdin: Data("x".utf8), code: "DAMAGED", mentioning: expected)
        // The put did not format over the crafted header: the bytes are as the attacker left them.
        let handle = try await client.openRegion("victim", rights: .read)
        #expect(try await client.read(handle, at: 0, length: 52) == crafted.encode())
        try await client.close(handle)

        try await expectUnharmed(server, client, ctl)
    }

    @Test func exhaustedSequencesAndOutOfRangeOptionsAreRefusedCleanly() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let ctl = Ctl(server: server)
        let client = try await server.client()
        try await makeBystander(client)

        // A ring (keep newest 4) whose newest record is 2^64-1 or 2^64-2, with a valid payload.
        for (name, newest) in [("at-max", UInt64.max), ("below-max", UInt64.max - 1)] {
            let geometry = try await client.createCheckpointRegion(name, sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append, maxCheckpoints: 8, keepNewest: 4))
            let payload = ByteBuffer(bytes: Array("last words".utf8))
            let record = CheckpointRecord(sequence: newest, epoch: 1, dataOffset: 0, payloadLength: 10, timestampNanoseconds: 1, payloadCRC: CRC32C.checksum(payload.readableBytesView))
            try await rawWrite(client, name, [(geometry.dataOffset, payload), (geometry.entryOffset(sequence: newest), record.encode())])
            try ctl.expectRefused(["checkpoint", "put", name], stdin: Data("next".utf8), code: "REGION_FULL", mentioning: "used up its sequence numbers")
            let primary = try await client.openPrimary(name)
            #expect(await code { _ = try await primary.checkpoint(Array("next".utf8)) } == .regionFull)
            try await primary.close()
            // What is there stays readable.
            let got = try ctl(["checkpoint", "get", name])
            #expect(got.status == 0 && got.stdout == "last words", "\(got.stderr)")
            let listed = try ctl(["checkpoint", "list", name])
            #expect(listed.status == 0 && listed.stdout.contains("\(newest)"), "\(listed.stderr)")
            #expect(try ctl(["region", "inspect", name]).status == 0)
        }

        try ctl.expectRefused(["region", "create", "huge-keep", "--size", "1MiB", "--kind", "checkpoint-append", "--keep-newest", "4294967295"], code: "INVALID_ARGUMENT", mentioning: "keep-newest 4294967295")
        #expect(await code { _ = try await client.stat("huge-keep") } == .unknownRegion) // refused before anything was created
        try ctl.expectRefused(["write", "bystander", "--offset", "18446744073709551615"], stdin: Data("x".utf8), code: "OUT_OF_BOUNDS")
        try ctl.expectRefused(["read", "bystander", "--offset", "18446744073709551615", "--length", "2"], code: "OUT_OF_BOUNDS")

        try await expectUnharmed(server, client, ctl)
    }

    /// Defect 10: the only record damaged, no writer: `checkpoint get` says which record and
    /// which checksum at once, instead of retrying and blaming a fast writer.
    @Test func aDamagedOnlyRecordIsNamed() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let ctl = Ctl(server: server)
        let client = try await server.client()
        let geometry = try await client.createCheckpointRegion("one", sizeBytes: 1 << 20, options: CheckpointOptions(mode: .append, maxCheckpoints: 8))
        let primary = try await client.openPrimary("one")
        #expect(try await primary.checkpoint(Array("intact bytes".utf8)) == 1)
        try await primary.close()
        try await rawWrite(client, "one", [(geometry.dataOffset, ByteBuffer(bytes: Array("INTACT bytes".utf8)))])

        let started = ContinuousClock.now
        try ctl.expectRefused(["checkpoint", "get", "one"], code: "DAMAGED", mentioning: "checkpoint 1 (epoch 2, 12 bytes at data offset 0): its payload's CRC32C is 0x76dfeaec, its record says 0x3b663b4b")
        let result = try ctl(["checkpoint", "get", "one"])
        #expect(!result.stderr.contains("too slow") && !result.stderr.contains("faster") && result.stderr.contains("no writer replaced them"), "\(result.stderr)")
        try ctl.expectRefused(["checkpoint", "get", "one", "--sequence", "1"], code: "DAMAGED", mentioning: "its record says 0x")
        try ctl.expectRefused(["checkpoint", "verify", "one"], code: "DAMAGED", mentioning: "checkpoint(s) 1 damaged")
        print("three pmuctl checkpoint get/verify runs on a damaged region took \(ContinuousClock.now - started)")
        await client.disconnect()
    }

    /// Defect 7: names that hide '/', '..', a leading space or invisible scalars behind combining
    /// marks are refused by pmuctl and the client library, and by the server itself.
    @Test func disguisedNamesAreRefusedEverywhere() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let ctl = Ctl(server: server)
        let disguised = ["a/\u{301}b", "..\u{301}/\u{301}etc", " \u{301}lead", "report\u{202E}fdp.exe", "two\u{2028}lines", "zero\u{200B}width"]
        for name in disguised {
            try ctl.expectRefused(["region", "create", name, "--size", "4KiB"], code: "INVALID_NAME", mentioning: "region name")
        }
        let client = try await server.client()
        for name in disguised {
            #expect(await code { _ = try await client.createRegion(name, sizeBytes: 4096) } == .invalidName, "\(name.unicodeScalars.map { $0.escaped(asASCII: true) }.joined())")
        }
        // The server checks too: a CREATE frame sent by hand, past any client-side check.
        let raw = try RawConnection(server.endpoint)
        #expect(raw.authenticate(clientId: "admin", secret: server.secret(for: "admin")))
        for (i, name) in disguised.enumerated() {
            raw.send(Request.create(CreateRegion(name: name, sizeBytes: 4096, kind: .raw, readers: [], writers: [])), id: UInt64(10 + i))
            guard case .error(let error)? = raw.readFrame()?.message else {
                Issue.record("the server did not refuse \(NameRules.quoted(name))")
                continue
            }
            #expect(error.code == .invalidName && error.message.contains("region name"), "\(error.message)")
        }
        #expect(try await client.list().isEmpty)
        #expect(server.process.isRunning)
        await client.disconnect()
    }
}
