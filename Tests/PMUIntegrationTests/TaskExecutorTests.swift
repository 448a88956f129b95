import Foundation
import NIOCore
import PMUClient
import PMUCore
import Testing

/// `PMUClient.taskExecutor` against a real pmu-server, over TCP (the connection's event loop) and
/// over verbs in the soft-RoCE VM (the completion thread, CompletionThreadExecutor): work run
/// under it stays on that thread across awaits, stays correct with requests from several tasks
/// in flight, and the client can disconnect from inside it.
@Suite struct TaskExecutorTests {
    let scratch = Scratch()

    /// The kernel's name of the calling thread (15 bytes at most) and its pthread id, "name#id".
    static func threadName() -> String {
        let name = ((try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return "\(name)#\(UInt(pthread_self()))"
    }

    @Test func workUnderTheClientsExecutorRunsOnItsThreadAndStaysCorrect() async throws {
        let secrets = scratch.path + "/secrets"
        try writeSecretsFile(secrets)
        let server = try ServerProcess(dataDirectory: scratch.path + "/data", secretsPath: secrets)
        let client = try await server.client()
        let executor = try #require(client.taskExecutor)
        let handle = try await client.createRegion("executor", sizeBytes: 1 << 20)
        // The completion thread's name, cut to the kernel's 15 bytes; TCP: a NIO event loop.
        let expectedThread = testTransport == .rdma ? "pmu-rdma-client" : "NIO-"
        let rounds = 40
        let names = try await withTaskExecutorPreference(executor) { () async throws -> [String] in
            var names: [String] = []
            // Four tasks at once, each writing, making durable and reading back its own 64 B
            // slots: replies and completions for several requests in flight on one thread.
            try await withThrowingTaskGroup(of: [String].self) { group in
                for task in 0..<4 {
                    group.addTask {
                        var seen: [String] = []
                        for round in 0..<rounds {
                            let offset = UInt64((task * rounds + round) * 64)
                            let bytes = pattern(offset: offset, count: 64, seed: UInt64(task))
                            if round % 2 == 0 {
                                try await client.write(handle, at: offset, bytes)
                            } else {
                                try await client.writeDurably(handle, at: offset, ByteBuffer(bytes: bytes))
                            }
                            seen.append(Self.threadName())
                            let back = try await client.read(handle, at: offset, length: 64)
                            #expect(Array(back.readableBytesView) == bytes, "task \(task) round \(round)")
                            seen.append(Self.threadName())
                        }
                        return seen
                    }
                }
                for try await seen in group { names += seen }
            }
            // Disconnecting from inside: the verbs close joins the completion thread it would
            // be running on, so it must wait by suspending, not by blocking.
            await client.disconnect()
            return names
        }
        #expect(names.count == 4 * rounds * 2)
        let elsewhere = Set(names.filter { !$0.hasPrefix(expectedThread) })
        #expect(elsewhere.isEmpty, "expected every step on \(expectedThread)*, some ran on: \(elsewhere)")
        // One thread for all of it: a name alone would not tell two pool threads apart.
        #expect(Set(names).count == 1, "\(Set(names))")
        // A second connection sees every byte the first wrote.
        let other = try await server.client()
        let otherHandle = try await other.openRegion("executor", rights: .read)
        let all = try await other.read(otherHandle, at: 0, length: 4 * rounds * 64)
        for task in 0..<4 {
            for round in 0..<rounds {
                let offset = (task * rounds + round) * 64
                #expect(Array(all.getBytes(at: offset, length: 64)!) == pattern(offset: UInt64(offset), count: 64, seed: UInt64(task)))
            }
        }
        await other.disconnect()
    }
}
