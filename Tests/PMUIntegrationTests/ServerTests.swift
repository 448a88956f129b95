import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real pmu-server executable, driven through the client library on 127.0.0.1.
@Suite struct ServerTests {
    let scratch = Scratch()

    func startServer(_ extra: [String] = [], multiClient: Bool = true) throws -> ServerProcess {
        let secrets = scratch.path + "/secrets"
        if multiClient { try writeSecretsFile(secrets) }
        return try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: multiClient ? secrets : nil, extraArguments: extra)
    }

    /// Resident bytes of the server's mapping of a region file (from /proc/PID/smaps).
    func residentBytes(_ server: ServerProcess, regionId: UInt64) throws -> Int {
        let file = String(format: "%016llx.region", regionId)
        // /proc files report size 0: read to the end rather than by the file's size.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/\(server.process.processIdentifier)/smaps"))
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        try handle.close()
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            if line.contains(" /") { inMapping = line.hasSuffix(file) }
            if inMapping, line.hasPrefix("Rss:") {
                return Int(line.split(separator: " ").dropFirst().first!)! * 1024
            }
        }
        return -1
    }

    @Test func populateFaultsNewRegionsInAtCreate() async throws {
        let plain = try ServerProcess(dataDirectory: scratch.path + "/plain")
        let populated = try ServerProcess(dataDirectory: scratch.path + "/populated", extraArguments: ["--populate"])
        for (server, expectResident) in [(plain, false), (populated, true)] {
            let client = try await server.client()
            let handle = try await client.createRegion("warm", sizeBytes: 8 << 20)
            let id = try await client.stat("warm").id
            let resident = try residentBytes(server, regionId: id)
            if server.log.contains("region memory: shmem shadows") {
                // Verbs on a disk filesystem: the region lives in an anonymous shmem shadow that
                // smaps names by no file (-1 here); the file's bytes are loaded into it whole and
                // the grant's registration pins it, so there is no untouched state to measure.
                #expect(resident == -1, "a shadowed region is not a file mapping: resident \(resident)")
            } else {
                // Not mapped at all (-1) or mapped but untouched: nothing resident without --populate.
                // Over verbs the grant's memory registration pins (so faults in) every page anyway.
                #expect(expectResident || testTransport == .rdma ? resident == 8 << 20 : resident <= 0, "resident \(resident)")
            }
            // Either way the region reads as zeros and takes writes.
            #expect(try await client.read(handle, at: (8 << 20) - 4096, length: 4096) == ByteBuffer(repeating: 0, count: 4096))
            try await client.writeDurably(handle, at: 12345, ByteBuffer(bytes: [1, 2, 3]))
            #expect(try await client.read(handle, at: 12345, length: 3) == ByteBuffer(bytes: [1, 2, 3]))
            await client.disconnect()
        }
    }

    @Test func regionLifecycleThroughTheClientLibrary() async throws {
        let server = try startServer()
        let client = try await server.client()
        let handle = try await client.createRegion("life", sizeBytes: 3 * 1024 * 1024 + 17)
        #expect(handle.rights == .readWrite)
        // Unaligned writes that cross pages and the client's chunk boundaries.
        let data = pattern(offset: 5, count: 3 * 1024 * 1024 + 12, seed: 1)
        try await client.write(handle, at: 5, data)
        try await client.persist(handle, offset: 4095, length: 2)
        try await client.persist(handle)
        let back = try await client.read(handle, at: 5, length: data.count)
        #expect(Array(back.readableBytesView) == data)
        // WRITE and PERSIST pipelined in one round trip; errors still come back in order.
        try await client.writeDurably(handle, at: 1 << 20, ByteBuffer(bytes: [9, 8, 7]))
        #expect(Array(try await client.read(handle, at: 1 << 20, length: 3).readableBytesView) == [9, 8, 7])
        #expect(await code { try await client.writeDurably(handle, at: .max - 1, ByteBuffer(bytes: [1, 2, 3])) } == .outOfBounds)
        try await client.write(handle, at: 5, data) // restore what the durable write overwrote
        let head = try await client.read(handle, at: 0, length: 5)
        #expect(Array(head.readableBytesView) == [0, 0, 0, 0, 0]) // preallocated space reads as zeros

        let info = try await client.stat("life")
        #expect(info.sizeBytes == 3 * 1024 * 1024 + 17 && info.owner == "admin" && info.openHandles == 1 && info.writerEpoch == 1)
        #expect(try await client.list().map(\.name) == ["life"])
        try await client.close(handle)
        #expect(try await client.stat("life").openHandles == 0)
        #expect(await code { try await client.write(handle, at: 0, [1]) } == .invalidKey)
        try await client.delete("life")
        #expect(try await client.list().isEmpty)
        #expect(await code { _ = try await client.stat("life") } == .unknownRegion)
        await client.disconnect()
        #expect(server.terminate() == 0)
        #expect(server.log.contains("pmu-server stopped"))
    }

    @Test func manyConcurrentRequestsPipelineOnOneConnection() async throws {
        let server = try startServer()
        let client = try await server.client()
        let handle = try await client.createRegion("pipe", sizeBytes: 1 << 20)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<256 {
                group.addTask {
                    let offset = UInt64(index * 4096)
                    try await client.write(handle, at: offset, pattern(offset: offset, count: 4096, seed: 2))
                }
            }
            try await group.waitForAll()
        }
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<256 {
                group.addTask {
                    let offset = UInt64(index * 4096)
                    let bytes = try await client.read(handle, at: offset, length: 4096)
                    return Array(bytes.readableBytesView) == pattern(offset: offset, count: 4096, seed: 2)
                }
            }
            for try await ok in group { #expect(ok) }
        }
        await client.disconnect()
    }

    @Test func badRegionRequestsGetClearErrorsAndStoreNothing() async throws {
        let server = try startServer()
        let client = try await server.client()
        let handle = try await client.createRegion("keep", sizeBytes: 8192)
        try await client.write(handle, at: 0, pattern(offset: 0, count: 8192, seed: 3))

        #expect(await code { _ = try await client.openRegion("nope") } == .unknownRegion)
        #expect(await code { _ = try await client.createRegion("keep", sizeBytes: 1) } == .regionExists)
        for name in ["", String(repeating: "x", count: 256), "a/b", "..", "x..y", "nul\u{0}byte"] {
            #expect(await code { _ = try await client.createRegion(name, sizeBytes: 1) } == .invalidName, "\(name.debugDescription)")
        }
        #expect(await code { _ = try await client.createRegion("zero", sizeBytes: 0) } == .invalidSize)
        #expect(await code { _ = try await client.createRegion("huge", sizeBytes: 1 << 52) } == .invalidSize) // over --max-region-size
        #expect(await code { try await client.write(handle, at: 8190, [1, 2, 3]) } == .outOfBounds)
        #expect(await code { try await client.write(handle, at: .max, [1]) } == .outOfBounds)
        #expect(await code { _ = try await client.read(handle, at: 1, length: 8192) } == .outOfBounds)
        #expect(await code { try await client.persist(handle, offset: 8193, length: 0) } == .outOfBounds)
        #expect(await code { try await client.persist(handle, offset: 1, length: .max) } == .outOfBounds)

        // Stale, forged and foreign keys.
        let forged = RegionHandle(name: "keep", grant: RegionGrant(key: AccessKey(high: 1, low: 2), regionId: 1, sizeBytes: 8192, rights: .readWrite, kind: .raw, epoch: 1))
        #expect(await code { try await client.write(forged, at: 0, [9]) } == .invalidKey)
        let other = try await server.client()
        #expect(await code { _ = try await other.read(handle, at: 0, length: 1) } == .invalidKey)
        let readOnly = try await other.openRegion("keep", rights: .read)
        #expect(await code { try await other.write(readOnly, at: 0, [9]) } == .permissionDenied)
        try await other.close(readOnly)
        #expect(await code { _ = try await other.read(readOnly, at: 0, length: 1) } == .invalidKey)
        #expect(await code { try await other.close(readOnly) } == .invalidKey)

        // Nothing above changed a byte.
        #expect(Array(try await client.read(handle, at: 0, length: 8192).readableBytesView) == pattern(offset: 0, count: 8192, seed: 3))
        await other.disconnect()
        await client.disconnect()
    }

    @Test func regionLargerThanTheFreeDiskIsRefusedAtCreate() async throws {
        let server = try startServer(["--max-region-size", "16TiB"])
        let client = try await server.client()
        let error = await code { _ = try await client.createRegion("too-big", sizeBytes: 15 << 40) }
        #expect(error == .noSpace)
        #expect(try await client.list().isEmpty)
        #expect((try FileManager.default.contentsOfDirectory(atPath: server.dataDirectory + "/regions")).isEmpty)
        await client.disconnect()
    }

    @Test func deleteRevokesEveryonesKeys() async throws {
        let server = try startServer()
        let owner = try await server.client("alice")
        let handle = try await owner.createRegion("shared", sizeBytes: 4096, readers: ["bob"])
        let bob = try await server.client("bob")
        let bobHandle = try await bob.openRegion("shared")
        #expect(await code { try await bob.delete("shared") } == .accessDenied)
        try await owner.delete("shared")
        #expect(await code { _ = try await bob.read(bobHandle, at: 0, length: 1) } == .invalidKey)
        #expect(await code { try await owner.write(handle, at: 0, [1]) } == .invalidKey)
        _ = try await owner.createRegion("shared", sizeBytes: 4096) // name is free again
        #expect(await code { _ = try await bob.read(bobHandle, at: 0, length: 1) } == .invalidKey)
        await bob.disconnect()
        await owner.disconnect()
    }

    @Test func accessListsDecideWhoOpensWhat() async throws {
        let server = try startServer()
        let alice = try await server.client("alice")
        let bob = try await server.client("bob")
        let admin = try await server.client("admin")
        _ = try await alice.createRegion("private", sizeBytes: 4096)
        _ = try await alice.createRegion("readable", sizeBytes: 4096, readers: ["bob"])
        _ = try await alice.createRegion("writable", sizeBytes: 4096, writers: ["*"])
        #expect(await code { _ = try await bob.openRegion("private") } == .accessDenied)
        #expect(await code { _ = try await bob.stat("private") } == .unknownRegion) // not even visible
        _ = try await bob.openRegion("readable")
        #expect(await code { _ = try await bob.openRegion("readable", rights: .readWrite) } == .accessDenied)
        _ = try await bob.openRegion("writable", rights: .readWrite)
        #expect(try await bob.list().map(\.name) == ["readable", "writable"])
        #expect(try await admin.list().map(\.name) == ["private", "readable", "writable"])
        _ = try await admin.openRegion("private", rights: .readWrite)
        try await admin.delete("private")
        for client in [alice, bob, admin] { await client.disconnect() }
    }

    @Test func listPagesThroughManyRegions() async throws {
        let server = try startServer()
        let client = try await server.client()
        let names = (0..<1500).map { String(format: "r%05d", $0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for chunk in stride(from: 0, to: names.count, by: 150) {
                group.addTask {
                    let c = try await server.client()
                    for name in names[chunk..<min(chunk + 150, names.count)] { _ = try await c.createRegion(name, sizeBytes: 1) }
                    await c.disconnect()
                }
            }
            try await group.waitForAll()
        }
        #expect(try await client.list().map(\.name) == names)
        await client.disconnect()
    }
}

extension ServerTests {
    /// More PERSISTs in flight than the per-connection cap: reading pauses and resumes, all complete,
    /// and a read-write open from another client (metadata pool) is not stuck behind them.
    @Test func persistFloodIsBoundedAndCompletes() async throws {
        let server = try startServer()
        let client = try await server.client()
        let handle = try await client.createRegion("flood", sizeBytes: 4 << 20)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<1000 {
                group.addTask { try await client.writeDurably(handle, at: UInt64(index % 1000) * 4096, ByteBuffer(repeating: UInt8(index % 251), count: 4096)) }
            }
            group.addTask {
                let other = try await server.client()
                _ = try await other.openRegion("flood", rights: .readWrite)
                await other.disconnect()
            }
            try await group.waitForAll()
        }
        let back = try await client.read(handle, at: 999 * 4096, length: 4096)
        #expect(back.readableBytesView.allSatisfy { $0 == UInt8(999 % 251) })
        await client.disconnect()
    }
}
