import CISAL

/// CRC32C (Castagnoli), the checksum of catalog records and checkpoint payloads.
/// ISA-L's crc32_iscsi uses the SSE4.2 crc32 instruction / PCLMUL folding: many GB/s per core.
public enum CRC32C {
    /// Standard CRC32C (as in iSCSI, ext4, RocksDB): init ~0, final xor ~0. "123456789" -> 0xE3069283.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return previous }
        // crc32_iscsi takes and returns the raw (non-inverted) register value, and an Int32 length:
        // feed it at most 1 GiB at a time.
        var register = ~previous
        var offset = 0
        while offset < bytes.count {
            let chunk = min(bytes.count - offset, 1 << 30)
            let pointer = UnsafeMutablePointer(mutating: (base + offset).assumingMemoryBound(to: UInt8.self))
            register = crc32_iscsi(pointer, Int32(chunk), register)
            offset += chunk
        }
        return ~register
    }

    public static func checksum<C: Collection<UInt8>>(_ bytes: C, continuing previous: UInt32 = 0) -> UInt32 {
        if let result = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: previous) }) {
            return result
        }
        return Array(bytes).withUnsafeBytes { checksum($0, continuing: previous) }
    }
}
