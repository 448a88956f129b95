import CISAL
import PMUCore

/// k + m erasure code over GF(2^8), computed by Intel ISA-L.
///
/// The encode matrix is systematic (identity on top: data subsegments are stored as they are).
/// m = 1 uses a row of ones, so the parity is the XOR of the data (RAID-5); m >= 2 uses a Cauchy
/// matrix, every k x k submatrix of which is invertible, so any k of the k + m subsegments rebuild
/// the rest (Reed-Solomon). The matrix is part of the on-disk format: never change it for a k, m.
public struct ErasureCode: Sendable {
    public let k: Int
    public let m: Int
    /// (k + m) x k, row-major.
    let matrix: [UInt8]
    /// ISA-L's expanded multiplication tables for the m parity rows.
    let encodeTables: [UInt8]

    public init(k: Int, m: Int) {
        precondition(k >= 1 && k <= 32 && m >= 0 && m <= 16)
        self.k = k
        self.m = m
        var matrix = [UInt8](repeating: 0, count: (k + m) * k)
        if m == 1 {
            for i in 0..<k { matrix[i * k + i] = 1; matrix[k * k + i] = 1 }
        } else if m >= 2 {
            gf_gen_cauchy1_matrix(&matrix, Int32(k + m), Int32(k))
        } else {
            for i in 0..<k { matrix[i * k + i] = 1 }
        }
        self.matrix = matrix
        var tables = [UInt8](repeating: 0, count: max(1, 32 * k * m))
        if m > 0 {
            var parityRows = Array(matrix[(k * k)...])
            ec_init_tables(Int32(k), Int32(m), &parityRows, &tables)
        }
        self.encodeTables = tables
    }

    /// Computes the m parity vectors of k data vectors, each `length` bytes.
    public func encode(data: [UnsafeRawPointer], parity: [UnsafeMutableRawPointer], length: Int) {
        precondition(data.count == k && parity.count == m)
        guard m > 0, length > 0 else { return }
        var sources = data.map { UnsafeMutablePointer(mutating: $0.assumingMemoryBound(to: UInt8.self)) as UnsafeMutablePointer<UInt8>? }
        var destinations = parity.map { $0.assumingMemoryBound(to: UInt8.self) as UnsafeMutablePointer<UInt8>? }
        var tables = encodeTables
        ec_encode_data(Int32(length), Int32(k), Int32(m), &tables, &sources, &destinations)
    }

    /// Rebuilds the `missing` subsegments (by index 0..<k+m) of one group from `available` ones.
    ///
    /// - Parameters:
    ///   - available: at least k intact subsegments, by index; the first k (by index) are used.
    ///   - missing: where to put each rebuilt subsegment.
    public func reconstruct(available: [Int: UnsafeRawPointer], missing: [Int: UnsafeMutableRawPointer], length: Int) throws(PMUError) {
        guard !missing.isEmpty, length > 0 else { return }
        let use = available.keys.sorted().prefix(k)
        guard use.count == k else {
            throw PMUError(.unrecoverable, "\(available.count) of \(k + m) subsegments left in a group; at least \(k) are needed")
        }
        // Rows of the encode matrix for the subsegments we have, inverted: data = inverse x available.
        var square = [UInt8](repeating: 0, count: k * k)
        for (row, index) in use.enumerated() {
            for column in 0..<k { square[row * k + column] = matrix[index * k + column] }
        }
        var inverse = [UInt8](repeating: 0, count: k * k)
        guard gf_invert_matrix(&square, &inverse, Int32(k)) == 0 else {
            throw PMUError(.internalError, "erasure decode matrix is singular for subsegments \(Array(use)) (k=\(k), m=\(m))")
        }
        let targets = missing.keys.sorted()
        var rows = [UInt8](repeating: 0, count: targets.count * k)
        for (r, target) in targets.enumerated() {
            for column in 0..<k {
                if target < k {
                    rows[r * k + column] = inverse[target * k + column]
                } else {
                    // A parity row of the encode matrix applied to the recovered data.
                    var sum: UInt8 = 0
                    for i in 0..<k { sum ^= gf_mul(matrix[target * k + i], inverse[i * k + column]) }
                    rows[r * k + column] = sum
                }
            }
        }
        var tables = [UInt8](repeating: 0, count: 32 * k * targets.count)
        ec_init_tables(Int32(k), Int32(targets.count), &rows, &tables)
        var sources = use.map { UnsafeMutablePointer(mutating: available[$0]!.assumingMemoryBound(to: UInt8.self)) as UnsafeMutablePointer<UInt8>? }
        var destinations = targets.map { missing[$0]!.assumingMemoryBound(to: UInt8.self) as UnsafeMutablePointer<UInt8>? }
        ec_encode_data(Int32(length), Int32(k), Int32(targets.count), &tables, &sources, &destinations)
    }
}
