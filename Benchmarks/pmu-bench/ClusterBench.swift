import ArgumentParser
import CISAL
import Foundation
import NIOCore
import PMUClient
import PMUCluster
import PMUStripe

// Issue 6's figures: erasure code throughput per core (no I/O), and a large checkpoint striped
// across a local cluster against the same checkpoint on one server.

struct Erasure: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "ISA-L encode and decode GB/s on one core, against memcpy and CRC32C of the same bytes.")
    @Option var k = 4
    @Option var m = 1
    @Option(help: "Bytes per subsegment.") var subsegment = 1 << 20
    @Option(help: "Data bytes per measurement.") var total = 256 << 20

    func execute() async throws {
        // Distinct memory for every group (total bytes of data), so the figures are for data
        // streamed from RAM, as in a real checkpoint, not for a few MiB sitting in cache.
        let groups = max(1, total / (k * subsegment))
        let groupBytes = k * subsegment
        let code = ErasureCode(k: k, m: m)
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: groups * groupBytes, alignment: 64)
        let parity = UnsafeMutableRawBufferPointer.allocate(byteCount: groups * max(1, m) * subsegment, alignment: 64)
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: groups * groupBytes, alignment: 64)
        defer { data.deallocate(); parity.deallocate(); copy.deallocate() }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in stride(from: 0, to: data.count, by: 8) {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            data.storeBytes(of: state, toByteOffset: i, as: UInt64.self)
        }
        copy.initializeMemory(as: UInt8.self, repeating: 0)
        parity.initializeMemory(as: UInt8.self, repeating: 0)
        func sources(_ g: Int) -> [UnsafeRawPointer] { (0..<k).map { UnsafeRawPointer(data.baseAddress! + g * groupBytes + $0 * subsegment) } }
        func targets(_ g: Int) -> [UnsafeMutableRawPointer] { (0..<m).map { parity.baseAddress! + (g * m + $0) * subsegment } }
        let bytes = Double(groups * groupBytes)
        func rate(_ body: (Int) throws -> Void) rethrows -> Double {
            let start = ContinuousClock.now
            for g in 0..<groups { try body(g) }
            return bytes / microseconds(since: start) / 1e3
        }
        let encode = rate { code.encode(data: sources($0), parity: targets($0), length: subsegment) }
        // Decode the worst case the code allows: m data subsegments lost.
        let decode = try rate { g in
            var available: [Int: UnsafeRawPointer] = [:]
            for index in m..<k { available[index] = sources(g)[index] }
            for j in 0..<m { available[k + j] = UnsafeRawPointer(targets(g)[j]) }
            var missing: [Int: UnsafeMutableRawPointer] = [:]
            for index in 0..<m { missing[index] = copy.baseAddress! + g * groupBytes + index * subsegment }
            try code.reconstruct(available: available, missing: missing, length: subsegment)
        }
        let memcpyRate = rate { g in (copy.baseAddress! + g * groupBytes).copyMemory(from: data.baseAddress! + g * groupBytes, byteCount: groupBytes) }
        let crcRate = rate { g in _ = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[(g * groupBytes)..<((g + 1) * groupBytes)])) }
        emit(["k": k, "m": m, "subsegment": subsegment, "encode_gbps": encode, "decode_gbps": decode, "memcpy_gbps": memcpyRate, "crc32c_gbps": crcRate])
    }
}

struct Striped: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One large checkpoint striped across a cluster: write, read and degraded-read GB/s, bytes on the wire.")
    @Option var map: String
    @Option var k = 4
    @Option var m = 1
    @Option var copies = 1
    @Option var total = 1 << 30
    @Option(help: "Server to leave out for the degraded read (as if it were dead).") var exclude: String?

    func execute() async throws {
        let clusterMap = try ClusterMap.load(path: map)
        let cluster = await Cluster.connect(clusterMap)
        let name = "bench-striped-\(getpid())"
        let redundancy = Redundancy(k: k, m: m, copies: copies)
        try await cluster.createCheckpointSet(name, options: CheckpointSetOptions(redundancy: redundancy, maxCheckpointBytes: UInt64(total), keepNewest: 1))
        let payload = ByteBuffer(bytes: (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) })
        let primary = try await ClusterPrimary.open(name, cluster: cluster)
        let start = ContinuousClock.now
        _ = try await primary.checkpoint(payload)
        let write = microseconds(since: start)
        await primary.close()
        let geometry = try StripeGeometry.plan(payloadLength: UInt64(total), redundancy: redundancy, serverCount: clusterMap.servers.count, maxSubsegmentBytes: 1 << 20)
        let readStart = ContinuousClock.now
        let healthy = try await ClusterBackup(name: name, cluster: cluster).latest()
        let read = microseconds(since: readStart)
        guard healthy?.payload == payload else { throw PMUError(.damaged, "read back differs") }
        var result: [String: Any] = [
            "bytes": total, "k": k, "m": m, "copies": copies, "servers": clusterMap.servers.count,
            "write_gbps": Double(total) / write / 1e3, "read_gbps": Double(total) / read / 1e3,
            "wire_amplification": geometry.amplification,
        ]
        if let exclude {
            var partial = clusterMap
            partial.servers.removeAll { $0.name == exclude }
            let degradedCluster = await Cluster.connect(partial)
            let degradedStart = ContinuousClock.now
            let degraded = try await ClusterBackup(name: name, cluster: degradedCluster).latest()
            let degradedTime = microseconds(since: degradedStart)
            guard degraded?.payload == payload, degraded?.rebuilt ?? 0 > 0 else { throw PMUError(.damaged, "degraded read differs or rebuilt nothing") }
            result["degraded_read_gbps"] = Double(total) / degradedTime / 1e3
            await degradedCluster.disconnect()
        }
        try await cluster.deleteCheckpointSet(name)
        await cluster.disconnect()
        emit(result)
    }
}

struct SingleCheckpoint: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The same large checkpoint on one server through the checkpoint API: write and read GB/s.")
    @Option var total = 1 << 30
    @OptionGroup var connection: Connection

    func execute() async throws {
        let client = try await connection.connect()
        let name = "bench-checkpoint-\(getpid())"
        try await client.createCheckpointRegion(name, sizeBytes: UInt64(total) * 2 + (1 << 20), options: CheckpointOptions(mode: .overwrite))
        let payload = ByteBuffer(bytes: (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) })
        let primary = try await client.openPrimary(name)
        let start = ContinuousClock.now
        _ = try await primary.checkpoint(payload)
        let write = microseconds(since: start)
        try await primary.close()
        let backup = try await client.openBackup(name)
        let readStart = ContinuousClock.now
        guard try await backup.latest()?.payload == payload else { throw PMUError(.damaged, "read back differs") }
        let read = microseconds(since: readStart)
        try await client.delete(name)
        await client.disconnect()
        emit(["bytes": total, "write_gbps": Double(total) / write / 1e3, "read_gbps": Double(total) / read / 1e3])
    }
}
