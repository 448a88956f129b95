import Foundation
import NIOCore
import PMUClient
import PMUCore
import PMUTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// kill -9 of the real server process, restart on the same data directory, compare every byte.
@Suite(.serialized) struct CrashTests {
    let scratch = Scratch()

    /// The acceptance test: a 1 GiB region written in chunks and persisted survives kill -9
    /// of the server and reads back byte-identical after restart. PMU_CRASH_REGION_MIB shrinks it
    /// where memory is short (the RDMA VM's tmpfs holds 1 GiB in all).
    @Test func oneGiBRegionSurvivesKill9() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let size = (ProcessInfo.processInfo.environment["PMU_CRASH_REGION_MIB"].flatMap(Int.init) ?? 1024) << 20
        let chunk = 8 << 20
        let pages = PagePattern(chunkBytes: chunk, seed: 42)
        do {
            let client = try await server.client()
            let handle = try await client.createRegion("big", sizeBytes: UInt64(size))
            for offset in stride(from: 0, to: size, by: chunk) {
                try await client.write(handle, at: UInt64(offset), pages.chunk(at: UInt64(offset)))
            }
            try await client.persist(handle)
            await client.disconnect()
        }
        server.kill9()
        try server.start()
        #expect(server.log.contains("recovered data directory"))
        let client = try await server.client()
        let handle = try await client.openRegion("big")
        #expect(handle.sizeBytes == UInt64(size))
        var mismatches = 0
        for offset in stride(from: 0, to: size, by: chunk) {
            let bytes = try await client.read(handle, at: UInt64(offset), length: chunk)
            if !pages.matches(bytes, at: UInt64(offset)) { mismatches += 1 }
        }
        #expect(mismatches == 0)
        await client.disconnect()
    }

    /// Unpersisted writes are in the page cache, which kill -9 of the process does not lose: they
    /// are still there after restart. (Power loss is what persist protects against; the store
    /// tests cover that with simulated lost writes.) Except over verbs on a disk filesystem: there
    /// region memory is a shmem shadow that reaches the file only on PERSIST, so kill -9 loses the
    /// unpersisted bytes exactly as power loss would, and the region reads back as the file had it.
    @Test func acknowledgedWritesSurviveKill9EvenUnpersisted() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        do {
            let client = try await server.client()
            let handle = try await client.createRegion("r", sizeBytes: 1 << 20)
            try await client.write(handle, at: 100, pattern(offset: 100, count: 5000, seed: 7))
            await client.disconnect()
        }
        server.kill9()
        try server.start()
        let client = try await server.client()
        let handle = try await client.openRegion("r")
        let expected = server.log.contains("region memory: shmem shadows") ? [UInt8](repeating: 0, count: 5000) : pattern(offset: 100, count: 5000, seed: 7)
        #expect(Array(try await client.read(handle, at: 100, length: 5000).readableBytesView) == expected)
        await client.disconnect()
    }

    /// kill -9 at random moments while clients create and delete regions: after every restart
    /// the catalog matches the region files exactly, regions acknowledged as created exist (unless
    /// acknowledged as deleted), and acknowledged deletes never come back.
    @Test func metadataStaysConsistentAcrossKill9DuringCreatesAndDeletes() async throws {
        // PMU_TEST_SEED=N reproduces a failing run; the seed is printed and in every failure message.
        let seed = ProcessInfo.processInfo.environment["PMU_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        print("metadata crash test seed: \(seed)")
        var generator = SeededGenerator(seed: seed)
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        var created = Set<String>()
        var deleted = Set<String>()
        var attemptedDeletes = Set<String>()
        for round in 0..<8 {
            let acknowledged = Acknowledged()
            let workers = (0..<3).map { worker in
                Task {
                    guard let client = try? await server.client() else { return }
                    var local = SeededGenerator(seed: seed &+ UInt64(round * 10 + worker))
                    for step in 0..<10_000 {
                        let name = "r\(round)-\(worker)-\(step)"
                        do {
                            _ = try await client.createRegion(name, sizeBytes: UInt64.random(in: 1...65536, using: &local))
                            acknowledged.created(name)
                            if Bool.random(using: &local) {
                                // A delete cut off by the kill may or may not have committed.
                                acknowledged.deleteAttempted(name)
                                try await client.delete(name)
                                acknowledged.deleted(name)
                            }
                        } catch {
                            return
                        }
                    }
                }
            }
            // PMU_KILL_DELAY_SCALE stretches the window where the host is slow (the emulated RDMA VM).
            let scale = ProcessInfo.processInfo.environment["PMU_KILL_DELAY_SCALE"].flatMap(Int.init) ?? 1
            try await Task.sleep(for: .milliseconds(Int.random(in: 50...400, using: &generator) * scale))
            server.kill9()
            for worker in workers { await worker.value }
            created.formUnion(acknowledged.createdNames)
            deleted.formUnion(acknowledged.deletedNames)
            attemptedDeletes.formUnion(acknowledged.deleteAttemptedNames)
            try server.start()
            let client = try await server.client()
            let listed = Dictionary(uniqueKeysWithValues: try await client.list().map { ($0.name, $0) })
            await client.disconnect()
            for name in created.subtracting(attemptedDeletes) {
                #expect(listed[name] != nil, "seed \(seed): acknowledged region \(name) lost")
            }
            for name in deleted {
                #expect(listed[name] == nil, "seed \(seed): deleted region \(name) came back")
            }
            // Every listed region has a file of its exact size, and every file is a listed region.
            let files = try FileManager.default.contentsOfDirectory(atPath: server.dataDirectory + "/regions")
            #expect(files.count == listed.count, "seed \(seed): \(files.count) files for \(listed.count) regions")
            for info in listed.values {
                let path = server.dataDirectory + "/regions/" + String(format: "%016llx", info.id) + ".region"
                let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? nil
                #expect(size == info.sizeBytes, "seed \(seed): \(info.name) file size \(String(describing: size)) != \(info.sizeBytes)")
            }
        }
        #expect(created.count > 0)
    }

    @Test func secondServerOnTheSameDataDirectoryRefusesToStart() throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let second = try run(binDirectory + "/pmu-server", ["--data-dir", server.dataDirectory, "--listen", "127.0.0.1:0"], timeoutSeconds: 30)
        #expect(second.status != 0)
        #expect(second.stderr.contains("in use by another pmu-server"))
        #expect(server.process.isRunning)
    }

    @Test func startupErrorsAreClear() throws {
        let missing = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/no/such/dir", "--listen", "127.0.0.1:0"], timeoutSeconds: 30)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("cannot create data directory"))

        try writeSecretsFile(scratch.path + "/open-secrets", mode: 0o644)
        let open = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/d1", "--secrets", scratch.path + "/open-secrets", "--listen", "127.0.0.1:0"], timeoutSeconds: 30)
        #expect(open.status != 0)
        #expect(open.stderr.contains("chmod 600"))

        let absent = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/d2", "--secrets", scratch.path + "/absent", "--listen", "127.0.0.1:0"], timeoutSeconds: 30)
        #expect(absent.status != 0)
        #expect(absent.stderr.contains("cannot read secrets file"))

        let badListen = try run(binDirectory + "/pmu-server", ["--listen", "nowhere"], timeoutSeconds: 30)
        #expect(badListen.status != 0)
        #expect(badListen.stderr.contains("has no port"))
    }

    @Test func embeddedDefaultCreatesAPrivateAdminSecret() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        for file in ["secrets", "admin.secret"] {
            let mode = try FileManager.default.attributesOfItem(atPath: server.dataDirectory + "/" + file)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(file)")
        }
        let client = try await server.client("admin") // uses DATA_DIR/admin.secret
        await client.disconnect()
        // The secret survives restarts (it is not regenerated).
        let before = server.secret(for: "admin")
        server.kill9()
        try server.start()
        #expect(server.secret(for: "admin") == before)
        let again = try await server.client("admin")
        await again.disconnect()
    }
}

final class Acknowledged: @unchecked Sendable {
    private let lock = NSLock()
    private var createdSet = Set<String>()
    private var deletedSet = Set<String>()
    private var attemptedSet = Set<String>()
    func deleteAttempted(_ name: String) { lock.withLock { _ = attemptedSet.insert(name) } }
    var deleteAttemptedNames: Set<String> { lock.withLock { attemptedSet } }
    func created(_ name: String) { lock.withLock { _ = createdSet.insert(name) } }
    func deleted(_ name: String) { lock.withLock { _ = deletedSet.insert(name) } }
    var createdNames: Set<String> { lock.withLock { createdSet } }
    var deletedNames: Set<String> { lock.withLock { deletedSet } }
}


/// Bulk test data that is cheap to make and check even in a debug build: one random chunk, with
/// every 4 KiB page stamped with its absolute offset, so a page landing in the wrong place or a
/// stale page is detected. Compared with memcmp.
struct PagePattern {
    let base: [UInt8]

    init(chunkBytes: Int, seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        var bytes = [UInt8](repeating: 0, count: chunkBytes)
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
        }
        base = bytes
    }

    func chunk(at offset: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer(bytes: base)
        for page in stride(from: 0, to: base.count, by: 4096) {
            buffer.setInteger(offset + UInt64(page), at: page, endianness: .little)
        }
        return buffer
    }

    func matches(_ bytes: ByteBuffer, at offset: UInt64) -> Bool {
        let expected = chunk(at: offset)
        guard bytes.readableBytes == expected.readableBytes else { return false }
        return bytes.withUnsafeReadableBytes { a in
            expected.withUnsafeReadableBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 }
        }
    }
}
