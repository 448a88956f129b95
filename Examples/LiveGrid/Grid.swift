import Foundation
import PMUSnapshot
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The live example's state: a grid of tiles, one per arena page, updated by several threads, and
/// designed so that a restored image can be proven right by recomputation alone.
///
/// Page 0 is the manifest: magic, seed, thread count and, per thread, how many updates it has made.
/// Tile p (p >= 1) belongs to thread (p - 1) % threads and holds (version u64, p u64, then 4080
/// bytes that are a deterministic function of (seed, p, version)). Thread t's i-th update picks its
/// tile from (seed, t, i), so the whole grid is a function of the counters: replaying them gives
/// every tile's version, and every tile's bytes must then be exactly fill(seed, p, version). A
/// snapshot that mixed two instants, lost a page, or tore one, fails that check.
public struct Grid: @unchecked Sendable {
    public static let magic: UInt64 = 0x4449_5247_554D_5001 // "\u{1}PMUGRID"
    public static let maxThreads = 64
    public let arena: SnapshotArena
    public var pageBytes: Int { arena.pageBytes }
    public var tiles: Int { arena.pageCount - 1 }

    public init(arena: SnapshotArena) { self.arena = arena }

    public var seed: UInt64 { arena.base.load(fromByteOffset: 8, as: UInt64.self) }
    public var threads: Int { Int(arena.base.load(fromByteOffset: 16, as: UInt64.self)) }
    public var isFormatted: Bool { arena.base.load(fromByteOffset: 0, as: UInt64.self) == Self.magic }

    /// Writes the manifest of a fresh grid (all tiles at version 0, all zeros).
    public func format(seed: UInt64, threads: Int) {
        precondition(threads >= 1 && threads <= Self.maxThreads && tiles >= threads)
        arena.base.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
        arena.base.storeBytes(of: seed, toByteOffset: 8, as: UInt64.self)
        arena.base.storeBytes(of: UInt64(threads), toByteOffset: 16, as: UInt64.self)
    }

    public func counter(_ thread: Int) -> UInt64 { arena.base.load(fromByteOffset: 64 + 8 * thread, as: UInt64.self) }
    public var totalSteps: UInt64 { (0..<threads).reduce(0) { $0 + counter($1) } }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The tile thread `thread` updates at its `index`-th update.
    func tile(thread: Int, index: UInt64) -> Int {
        let owned = (tiles - thread + threads - 1) / threads
        let choice = Int(Self.mix(seed ^ Self.mix(UInt64(thread) << 40 ^ index)) % UInt64(owned))
        return 1 + thread + choice * threads
    }

    func fill(_ page: UnsafeMutableRawPointer, tile: Int, version: UInt64) {
        page.storeBytes(of: version, toByteOffset: 0, as: UInt64.self)
        page.storeBytes(of: UInt64(tile), toByteOffset: 8, as: UInt64.self)
        var state = Self.mix(seed ^ UInt64(tile) &* 0x1000_0000_01B3 ^ version)
        for word in 2..<(pageBytes / 8) {
            state = Self.mix(state)
            page.storeBytes(of: state, toByteOffset: word * 8, as: UInt64.self)
        }
    }

    /// One update by `thread`: the next tile in its sequence gets version + 1. Call inside the gate.
    public func update(thread: Int) {
        let index = counter(thread)
        let tile = tile(thread: thread, index: index)
        let page = arena.page(tile)
        fill(page, tile: tile, version: page.load(as: UInt64.self) + 1)
        arena.base.storeBytes(of: index + 1, toByteOffset: 64 + 8 * thread, as: UInt64.self)
    }

    /// Proves the grid right: replays the counters into versions and checks every tile's bytes.
    /// Returns nil when right, or what is wrong.
    public func verify() -> String? {
        guard isFormatted else { return "the manifest is missing (page 0 has no grid magic)" }
        guard threads >= 1, threads <= Self.maxThreads, tiles >= threads else { return "the manifest names \(threads) threads" }
        var versions = [UInt64](repeating: 0, count: tiles + 1)
        for thread in 0..<threads {
            for index in 0..<counter(thread) { versions[tile(thread: thread, index: index)] += 1 }
        }
        let expected = UnsafeMutableRawPointer.allocate(byteCount: pageBytes, alignment: 8)
        defer { expected.deallocate() }
        for tile in 1...tiles {
            if versions[tile] == 0 {
                memset(expected, 0, pageBytes)
            } else {
                fill(expected, tile: tile, version: versions[tile])
            }
            if memcmp(expected, arena.page(tile), pageBytes) != 0 {
                let stored = arena.page(tile).load(as: UInt64.self)
                return "tile \(tile) holds version \(stored), the counters say \(versions[tile]) (or its bytes are not that version's)"
            }
        }
        return nil
    }
}
