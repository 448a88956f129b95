import NIOCore
import PMUCore

/// Puts a payload back together from whatever intact subsegments are left, rebuilding missing
/// ones from parity, and checks the result against the payload's CRC32C: it returns the exact
/// bytes that were written, or throws.
public enum StripeAssembler {
    public struct Key: Hashable, Sendable {
        public var group: Int
        public var index: Int
        public init(group: Int, index: Int) {
            self.group = group
            self.index = index
        }
    }

    /// Groups that cannot be rebuilt with what is available, with the indices they lack.
    public static func unrecoverableGroups(_ geometry: StripeGeometry, available: Set<Key>) -> [Int] {
        (0..<geometry.groups).filter { group in
            (0..<geometry.redundancy.groupWidth).filter { available.contains(Key(group: group, index: $0)) }.count < geometry.k
        }
    }

    /// - Parameter subsegments: verified bytes (one copy) of each intact subsegment, `subsegmentBytes` long.
    /// - Returns: the payload and how many subsegments had to be rebuilt from parity.
    public static func assemble(_ geometry: StripeGeometry, payloadCRC: UInt32, subsegments: [Key: ByteBuffer]) throws(PMUError) -> (payload: ByteBuffer, rebuilt: Int) {
        let k = geometry.k
        var payload = ByteBuffer()
        payload.reserveCapacity(Int(geometry.payloadLength))
        var rebuilt = 0
        for group in 0..<geometry.groups {
            var data: [Int: ByteBuffer] = [:]
            for index in 0..<k { data[index] = subsegments[Key(group: group, index: index)] }
            let missing = (0..<k).filter { data[$0] == nil }
            if !missing.isEmpty {
                for (index, bytes) in try rebuild(geometry, group: group, subsegments: subsegments, targets: missing) { data[index] = bytes }
                rebuilt += missing.count
            }
            for index in 0..<k {
                let range = geometry.payloadRange(group: group, index: index)
                guard !range.isEmpty else { break }
                var slice = data[index]!.getSlice(at: data[index]!.readerIndex, length: range.count)!
                payload.writeBuffer(&slice)
            }
        }
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        guard crc == payloadCRC, payload.readableBytes == Int(geometry.payloadLength) else {
            throw PMUError(.damaged, "reassembled checkpoint does not match its CRC32C (\(String(crc, radix: 16)) != \(String(payloadCRC, radix: 16))); refusing to return it")
        }
        return (payload, rebuilt)
    }

    /// Rebuilds every subsegment (data and parity) of one group from the intact ones: what a
    /// replaced server needs to get its copies back.
    public static func fullGroup(_ geometry: StripeGeometry, group: Int, subsegments: [Key: ByteBuffer]) throws(PMUError) -> [ByteBuffer] {
        let missing = (0..<geometry.redundancy.groupWidth).filter { subsegments[Key(group: group, index: $0)] == nil }
        var result = (0..<geometry.redundancy.groupWidth).map { subsegments[Key(group: group, index: $0)] }
        for (index, bytes) in try rebuild(geometry, group: group, subsegments: subsegments, targets: missing) { result[index] = bytes }
        return result.map { $0! }
    }

    /// Computes subsegments `targets` of a group from any k intact ones.
    static func rebuild(_ geometry: StripeGeometry, group: Int, subsegments: [Key: ByteBuffer], targets: [Int]) throws(PMUError) -> [Int: ByteBuffer] {
        guard !targets.isEmpty else { return [:] }
        let sub = geometry.subsegmentBytes
        let k = geometry.k
        let present = (0..<geometry.redundancy.groupWidth).filter { subsegments[Key(group: group, index: $0)] != nil }
        guard present.count >= k else {
            throw PMUError(.unrecoverable, "group \(group) has \(present.count) of its \(geometry.redundancy.groupWidth) subsegments (indices \(present)); \(k) are needed to rebuild it")
        }
        // Contiguous copies of the sources so ISA-L can be handed plain pointers.
        let use = Array(present.prefix(k))
        var sources = [UInt8](repeating: 0, count: k * sub)
        for (slot, index) in use.enumerated() {
            let bytes = subsegments[Key(group: group, index: index)]!
            sources.withUnsafeMutableBytes { out in
                bytes.withUnsafeReadableBytes { out.baseAddress!.advanced(by: slot * sub).copyMemory(from: $0.baseAddress!, byteCount: sub) }
            }
        }
        var outputs = [UInt8](repeating: 0, count: targets.count * sub)
        let code = ErasureCode(k: k, m: geometry.m)
        // withUnsafeBytes erases typed throws: carry the error out as a Result.
        let outcome: Result<Void, PMUError> = sources.withUnsafeBytes { src in
            outputs.withUnsafeMutableBytes { out in
                var available: [Int: UnsafeRawPointer] = [:]
                for (slot, index) in use.enumerated() { available[index] = src.baseAddress! + slot * sub }
                var destinations: [Int: UnsafeMutableRawPointer] = [:]
                for (slot, index) in targets.enumerated() { destinations[index] = out.baseAddress! + slot * sub }
                do throws(PMUError) {
                    try code.reconstruct(available: available, missing: destinations, length: sub)
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
        }
        try outcome.get()
        var result: [Int: ByteBuffer] = [:]
        for (slot, index) in targets.enumerated() { result[index] = ByteBuffer(bytes: outputs[(slot * sub)..<((slot + 1) * sub)]) }
        return result
    }
}
