import PMUCore
import PMUTesting
import Testing

@testable import PMUStripe

/// Every erasure pattern the code promises to survive, on random data, against ISA-L for real.
@Suite struct ErasureCodeTests {
    func subsets(of n: Int, size: Int) -> [[Int]] {
        if size == 0 { return [[]] }
        if n < size { return [] }
        return subsets(of: n - 1, size: size) + subsets(of: n - 1, size: size - 1).map { $0 + [n - 1] }
    }

    func roundTrip(k: Int, m: Int, length: Int, seed: UInt64) throws {
        var random = SeededGenerator(seed: seed)
        let code = ErasureCode(k: k, m: m)
        var vectors = (0..<(k + m)).map { index in
            index < k ? (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) } : [UInt8](repeating: 0, count: length)
        }
        // Encode into the parity vectors through stable pointers.
        let data = vectors[0..<k].map { bytes -> UnsafeMutableRawBufferPointer in
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64)
            copy.copyBytes(from: bytes)
            return copy
        }
        let parity = (0..<m).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64) }
        defer { (data + parity).forEach { $0.deallocate() } }
        code.encode(data: data.map { UnsafeRawPointer($0.baseAddress!) }, parity: parity.map { $0.baseAddress! }, length: length)
        for j in 0..<m { vectors[k + j] = Array(parity[j]) }
        if m == 1 {
            // m = 1 is plain XOR parity (RAID-5).
            let xor = (0..<length).map { i in (0..<k).reduce(UInt8(0)) { $0 ^ vectors[$1][i] } }
            #expect(vectors[k] == xor)
        }
        let all = (0..<(k + m)).map { index in index < k ? UnsafeRawPointer(data[index].baseAddress!) : UnsafeRawPointer(parity[index - k].baseAddress!) }
        for lost in 1...max(1, m) {
            for erased in subsets(of: k + m, size: lost) where lost <= m {
                var available: [Int: UnsafeRawPointer] = [:]
                for index in 0..<(k + m) where !erased.contains(index) { available[index] = all[index] }
                let outputs = erased.map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1) }
                defer { outputs.forEach { $0.deallocate() } }
                var missing: [Int: UnsafeMutableRawPointer] = [:]
                for (slot, index) in erased.enumerated() { missing[index] = outputs[slot].baseAddress! }
                try code.reconstruct(available: available, missing: missing, length: length)
                for (slot, index) in erased.enumerated() {
                    #expect(Array(outputs[slot]) == vectors[index], "k=\(k) m=\(m) erased \(erased): index \(index) differs")
                }
            }
        }
        // One more loss than parity: refused, never guessed.
        if m < k + m - 1 {
            var available: [Int: UnsafeRawPointer] = [:]
            for index in (m + 1)..<(k + m) { available[index] = all[index] }
            let out = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1)
            defer { out.deallocate() }
            let error = #expect(throws: PMUError.self) { try code.reconstruct(available: available, missing: [0: out.baseAddress!], length: length) }
            #expect(error?.code == .unrecoverable)
        }
    }

    @Test func xorParityRebuildsAnySingleLoss() throws {
        try roundTrip(k: 4, m: 1, length: 4096, seed: 1)
        try roundTrip(k: 1, m: 1, length: 64, seed: 2)
    }

    @Test func reedSolomonRebuildsEveryCombinationOfLosses() throws {
        try roundTrip(k: 4, m: 2, length: 4096, seed: 3)
        try roundTrip(k: 6, m: 3, length: 1024, seed: 4)
        try roundTrip(k: 10, m: 4, length: 640, seed: 5)
        try roundTrip(k: 3, m: 2, length: 64, seed: 6)
    }
}
