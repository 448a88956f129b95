import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Cases only the RDMA verbs transport has: one-sided data checked byte for byte, revoked and
/// foreign rkeys, clients killed mid-transfer, memory-registration limits. They need a real
/// RDMA device and run in the soft-RoCE VM (scripts/test-rdma.sh sets PMU_TEST_TRANSPORT=rdma);
/// elsewhere they are skipped. Sizes and loop counts are env-tunable because the VM is emulated.
@Suite(.enabled(if: testTransport == .rdma, "needs PMU_TEST_TRANSPORT=rdma and an RDMA device (scripts/test-rdma.sh)"))
struct VerbsTests {
    let scratch = Scratch()

    static func envInt(_ name: String, _ fallback: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap { Int($0) } ?? fallback
    }

    func startServer(_ extra: [String] = []) throws -> ServerProcess {
        let secrets = scratch.path + "/secrets"
        try writeSecretsFile(secrets)
        return try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: secrets, extraArguments: extra)
    }

    /// A 256 MiB region (PMU_VERBS_LARGE_MIB), written by one-sided WRITEs that cross 4 KiB pages
    /// and the 4 MiB chunks, read back byte for byte on this connection and on a second one,
    /// with the bytes around each write still zero. Plus a whole-range write of
    /// PMU_VERBS_FULL_MIB (default 16) through many chunks in flight.
    @Test func largeRegionByteForByte() async throws {
        let server = try startServer()
        let client = try await server.client()
        #expect(client.transportDescription.hasPrefix("rdma"))
        let size = UInt64(Self.envInt("PMU_VERBS_LARGE_MIB", 256)) << 20
        let handle = try await client.createRegion("big", sizeBytes: size)
        #expect(handle.remote != nil)
        let chunk: UInt64 = 4 << 20
        let writes: [(offset: UInt64, count: Int)] = [
            (4096 - 100, 200),                            // across the first page boundary
            (chunk - 3000, 8000),                         // across the first 4 MiB chunk
            (3 * chunk - 1234, Int(2 * chunk) + 2468),    // two chunk boundaries, 8 MiB + a bit
            (size / 2 + 1, 1),                            // a single byte
            (size - 5000, 5000),                          // the very end
        ]
        for (index, write) in writes.enumerated() {
            try await client.write(handle, at: write.offset, pattern(offset: write.offset, count: write.count, seed: UInt64(index)))
        }
        try await client.persist(handle)
        for (index, write) in writes.enumerated() {
            let expected = pattern(offset: write.offset, count: write.count, seed: UInt64(index))
            #expect(Array(try await client.read(handle, at: write.offset, length: write.count).readableBytesView) == expected)
            // Guard bytes on either side stay zero (no write spilled over).
            let before = try await client.read(handle, at: write.offset - 16, length: 16)
            #expect(Array(before.readableBytesView) == [UInt8](repeating: 0, count: 16))
        }
        // Whole range through many chunks in flight, then read by a second connection.
        let full = Self.envInt("PMU_VERBS_FULL_MIB", 16) << 20
        let fullOffset = size - UInt64(full) - 8192
        let data = pattern(offset: fullOffset, count: full, seed: 99)
        try await client.write(handle, at: fullOffset, data)
        try await client.persist(handle, offset: fullOffset, length: UInt64(full))
        let other = try await server.client()
        let otherHandle = try await other.openRegion("big", rights: .read)
        #expect(Array(try await other.read(otherHandle, at: fullOffset, length: full).readableBytesView) == data)
        await other.disconnect()
        await client.disconnect()
    }

    /// CLOSE deregisters the handle's memory region before answering: a write through the old
    /// rkey completes with a remote access error, kills only that connection, and the region
    /// is untouched (checked through a second connection).
    @Test func closedKeyIsRefusedAndRegionUntouched() async throws {
        let server = try startServer()
        let client = try await server.client()
        let handle = try await client.createRegion("closed", sizeBytes: 1 << 20)
        let before = pattern(offset: 0, count: 4096, seed: 1)
        try await client.write(handle, at: 0, before)
        try await client.close(handle)
        #expect(await code { try await client.write(handle, at: 0, [UInt8](repeating: 0xEE, count: 4096)) } == .remoteAccess)
        #expect(await code { _ = try await client.stat("closed") } == .connectionClosed)
        let checker = try await server.client()
        let view = try await checker.openRegion("closed", rights: .read)
        #expect(Array(try await checker.read(view, at: 0, length: 4096).readableBytesView) == before)
        await checker.disconnect()
    }

    /// An rkey is valid only on the connection that received it (one protection domain per
    /// connection): another connection using it gets a remote access error; the region and
    /// the key's owner are unaffected.
    @Test func foreignKeyIsRefused() async throws {
        let server = try startServer()
        let owner = try await server.client()
        let ownerHandle = try await owner.createRegion("foreign", sizeBytes: 1 << 20, writers: ["*"])
        let before = pattern(offset: 0, count: 8192, seed: 2)
        try await owner.write(ownerHandle, at: 0, before)
        let thief = try await server.client()
        let thiefHandle = try await thief.openRegion("foreign", rights: .readWrite)
        // The thief's own grant, but the owner's rkey and address.
        let stolen = RegionHandle(name: "foreign", grant: thiefHandle.grant, remote: ownerHandle.remote)
        #expect(await code { try await thief.write(stolen, at: 0, [UInt8](repeating: 0xEE, count: 8192)) } == .remoteAccess)
        let checker = try await server.client()
        let view = try await checker.openRegion("foreign", rights: .read)
        #expect(Array(try await checker.read(view, at: 0, length: 8192).readableBytesView) == before)
        // The owner's connection and key still work.
        do {
            try await owner.write(ownerHandle, at: 8192, [1, 2, 3])
        } catch {
            Issue.record("owner's write failed: \(error)\nserver log:\n\(server.log)")
            throw error
        }
        #expect(Array(try await checker.read(view, at: 8192, length: 3).readableBytesView) == [1, 2, 3])
        await owner.disconnect()
        await checker.disconnect()
    }

    /// DELETE deregisters every connection's memory regions for the region before it commits:
    /// another client's rkey for it is dead afterwards.
    @Test func deleteRevokesOtherConnectionsRkeys() async throws {
        let server = try startServer()
        let owner = try await server.client("alice")
        _ = try await owner.createRegion("doomed", sizeBytes: 1 << 20, readers: ["bob"])
        let bob = try await server.client("bob")
        let bobHandle = try await bob.openRegion("doomed")
        #expect(try await bob.read(bobHandle, at: 0, length: 16).readableBytes == 16)
        try await owner.delete("doomed")
        #expect(await code { _ = try await bob.read(bobHandle, at: 0, length: 16) } == .remoteAccess)
        // The owner's connection is unaffected.
        _ = try await owner.createRegion("doomed", sizeBytes: 4096)
        await owner.disconnect()
    }

    /// A read-only grant's memory region has no remote write access; the library refuses the
    /// write locally with the same error as TCP (the server would too).
    @Test func readOnlyHandleCannotWrite() async throws {
        let server = try startServer()
        let client = try await server.client()
        _ = try await client.createRegion("ro", sizeBytes: 1 << 20)
        let reader = try await client.openRegion("ro", rights: .read)
        #expect(await code { try await client.write(reader, at: 0, [1]) } == .permissionDenied)
        #expect(await code { _ = try await client.read(reader, at: (1 << 20) - 1, length: 2) } == .outOfBounds)
        await client.disconnect()
    }

    /// pmuctl writing 32 MiB (PMU_VERBS_KILL_FILE_MIB) is killed (SIGKILL) mid-transfer
    /// PMU_VERBS_KILLS times (default 3);
    /// another client keeps writing and reading throughout, and the server keeps serving.
    @Test func clientKilledMidTransferLeavesServerServing() async throws {
        let server = try startServer()
        let survivor = try await server.client()
        let handle = try await survivor.createRegion("kills", sizeBytes: 64 << 20, writers: ["*"])
        let file = scratch.path + "/big.bin"
        FileManager.default.createFile(atPath: file, contents: Data(pattern(offset: 0, count: Self.envInt("PMU_VERBS_KILL_FILE_MIB", 32) << 20, seed: 5)))
        for round in 0..<Self.envInt("PMU_VERBS_KILLS", 3) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binDirectory + "/pmuctl")
            process.arguments = ["write", "kills", "--file", file, "--offset", "\(16 << 20)", "--server", server.endpoint.description,
                                 "--client", "bob", "--secret-file", scratch.path + "/bob.secret", "--transport", "rdma"]
            FileManager.default.createFile(atPath: scratch.path + "/bob.secret", contents: Data(testSecrets["bob"]!.utf8),
                                           attributes: [.posixPermissions: 0o600])
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            try await Task.sleep(for: .milliseconds(300 + 200 * round))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let bytes = pattern(offset: UInt64(round), count: 100_000, seed: UInt64(round))
            try await survivor.write(handle, at: UInt64(round), bytes)
            #expect(Array(try await survivor.read(handle, at: UInt64(round), length: bytes.count).readableBytesView) == bytes)
        }
        // New connections are still accepted and served.
        let late = try await server.client("alice")
        #expect(try await late.list().isEmpty == false || true)
        await late.disconnect()
        #expect(server.process.isRunning)
        await survivor.disconnect()
    }

    /// Memory registration refused: a server without CAP_IPC_LOCK and a small RLIMIT_MEMLOCK
    /// answers the create with RDMA_ERROR naming the limit and how to raise it, and keeps serving.
    @Test func lockedMemoryLimitIsReported() async throws {
        let secrets = scratch.path + "/secrets"
        try writeSecretsFile(secrets)
        let data = scratch.path + "/limited"
        let ready = data + ".ready"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", "/bin/bash", "-c",
                             "ulimit -l 32768 && exec \"$0\" \"$@\"", binDirectory + "/pmu-server",
                             "--data-dir", data, "--listen", "\(testListenHost):0", "--ready-file", ready, "--transport", "rdma",
                             "--secrets", secrets]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        var endpoint: Endpoint?
        for _ in 0..<600 where endpoint == nil {
            if let text = try? String(contentsOfFile: ready, encoding: .utf8), text.hasSuffix("\n") {
                endpoint = try Endpoint(parsing: text.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        var configuration = ClientConfiguration(endpoint: try #require(endpoint), clientId: "admin", secret: Array(testSecrets["admin"]!.utf8))
        configuration.transport = .rdma
        let client = try await PMUClient.connect(configuration)
        do {
            _ = try await client.createRegion("too-big", sizeBytes: 64 << 20)
            Issue.record("registration of 64 MiB under a 32 MiB memlock limit succeeded")
        } catch {
            #expect(error.code == .rdmaError)
            #expect(error.message.contains("RLIMIT_MEMLOCK") && error.message.contains("ulimit -l"))
        }
        // Still serving, on the same connection.
        let small = try await client.createRegion("small", sizeBytes: 1 << 20)
        try await client.write(small, at: 0, [7])
        #expect(Array(try await client.read(small, at: 0, length: 1).readableBytesView) == [7])
        await client.disconnect()
    }
}

/// Start-up errors of --transport, checked wherever the suite runs (on the host there is no
/// RDMA device; in the VM there is one).
@Suite struct TransportChoiceTests {
    let scratch = Scratch()

    @Test func rdmaWithoutADeviceOrOnAnotherAddressFailsAtStart() throws {
        let result = try run(binDirectory + "/pmu-server", ["--data-dir", scratch.path + "/data",
                                                            "--listen", "127.0.0.1:0", "--transport", "rdma"], timeoutSeconds: 60)
        #expect(result.status != 0)
        if testTransport == .rdma {
            // A device exists, but not on the loopback address.
            #expect(result.stderr.contains("RDMA_ERROR") && result.stderr.contains("127.0.0.1"))
        } else {
            #expect(result.stderr.contains("RDMA_ERROR") && result.stderr.contains("no RDMA device"))
        }
    }

    /// Over verbs on a disk filesystem (the VM's ext4 disk; skipped on tmpfs, where file mappings
    /// are registered directly): region memory is a shmem shadow. A one-sided WRITE is not in
    /// the region file until PERSIST; PERSIST puts exactly the persisted range there (read from
    /// the file itself, not through the server); a restart loads the file; the shadow bound is
    /// enforced with SHADOW_MEMORY_FULL and leaves what was stored intact.
    @Test func diskFilesystemRegionsAreShadowsCopiedOutOnPersist() async throws {
        // scripts/test-rdma.sh sets PMU_RDMA_SCRATCH when the scratch (TMPDIR) is its ext4 disk.
        guard testTransport == .rdma, ProcessInfo.processInfo.environment["PMU_RDMA_SCRATCH"] != nil else { return }
        let secrets = scratch.path + "/secrets"
        try writeSecretsFile(secrets)
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: secrets, extraArguments: ["--rdma-shadow-memory", "3MiB"])
        #expect(server.log.contains("region memory: shmem shadows"), "\(server.log)")
        let client = try await server.client()
        let handle = try await client.createRegion("disk", sizeBytes: 2 << 20)
        #expect(handle.remote != nil)
        let file = try #require(regionFile(dataDirectory: scratch.path + "/data"))
        let persisted = pattern(offset: 5000, count: 70_000, seed: 3)
        let unpersisted = pattern(offset: 1 << 20, count: 4096, seed: 4)
        try await client.write(handle, at: 5000, persisted)
        try await client.write(handle, at: 1 << 20, unpersisted)
        #expect(try fileBytes(file, at: 5000, count: 70_000) == [UInt8](repeating: 0, count: 70_000), "a WRITE reached the file before PERSIST")
        try await client.persist(handle, offset: 5000, length: 70_000)
        #expect(try fileBytes(file, at: 5000, count: 70_000) == persisted)
        #expect(try fileBytes(file, at: 1 << 20, count: 4096) == [UInt8](repeating: 0, count: 4096), "PERSIST copied pages outside its range")
        // The bound: this 2 MiB shadow plus another 2 MiB is over 3 MiB. The region is created
        // (its file is on disk) but cannot be opened; the first region is untouched.
        #expect(await code { _ = try await client.createRegion("second", sizeBytes: 2 << 20) } == .shadowMemoryFull)
        let refusal = await message { _ = try await client.openRegion("second") }
        #expect(refusal.code == .shadowMemoryFull && refusal.text.contains("--rdma-shadow-memory"), "\(refusal.text)")
        #expect(Array(try await client.read(handle, at: 5000, length: 70_000).readableBytesView) == persisted)
        try await client.persist(handle, offset: 1 << 20, length: 4096)
        await client.disconnect()
        // Restart: the shadow is loaded from the file.
        server.terminate()
        try server.start()
        let again = try await server.client()
        let reopened = try await again.openRegion("disk")
        #expect(Array(try await again.read(reopened, at: 5000, length: 70_000).readableBytesView) == persisted)
        #expect(Array(try await again.read(reopened, at: 1 << 20, length: 4096).readableBytesView) == unpersisted)
        await again.disconnect()
        server.terminate()
    }

    /// The one region file of a data directory that holds one region.
    private func regionFile(dataDirectory: String) -> String? {
        let regions = dataDirectory + "/regions"
        let files = (try? FileManager.default.contentsOfDirectory(atPath: regions))?.filter { $0.hasSuffix(".region") } ?? []
        return files.count == 1 ? regions + "/" + files[0] : nil
    }

    private func fileBytes(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
        let handle = try #require(FileHandle(forReadingAtPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    @Test func autoFallsBackToTCPAndSaysSo() throws {
        guard testTransport != .rdma else { return }
        let data = scratch.path + "/auto"
        let server = try ServerProcess(dataDirectory: data, extraArguments: ["--transport", "auto"])
        #expect(server.log.contains("transport: tcp (no RDMA device"))
        // The client side says so too (stderr), and works.
        let pmuctl = try run(binDirectory + "/pmuctl", ["region", "list", "--transport", "auto", "--server", server.endpoint.description, "--secret-file", data + "/admin.secret"])
        #expect(pmuctl.status == 0 && pmuctl.stderr.contains("pmuctl: transport: tcp (no RDMA device"), "\(pmuctl.stderr)")
        server.terminate()
    }
}
