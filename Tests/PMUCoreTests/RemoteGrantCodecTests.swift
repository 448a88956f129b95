import NIOCore
import Testing

@testable import PMUCore

/// GRANT_RDMA (0x87): the verbs transport's grant. GRANT's 42 bytes, then u64 remote address and
/// u32 rkey, little-endian; GRANT itself must stay byte-identical so TCP peers see no change.
@Suite struct RemoteGrantCodecTests {
    let grant = RegionGrant(key: sampleKey, regionId: 9, sizeBytes: 1 << 20, rights: .readWrite, kind: .raw, epoch: 4)
    let remote = RemoteAccess(address: 0x0102_0304_0506_0708, rkey: 0xA1B2_C3D4)

    @Test func layoutIsGrantThenAddressThenRkey() {
        let plain = encoded(Frame(requestId: 5, message: Response.grant(grant)))
        let withRemote = encoded(Frame(requestId: 5, message: Response.remoteGrant(grant, remote)))
        #expect(plain.readableBytes == 16 + 42)
        #expect(withRemote.readableBytes == 16 + 54)
        #expect(withRemote.getInteger(at: 5, as: UInt8.self) == 0x87)
        #expect(plain.getInteger(at: 5, as: UInt8.self) == 0x83)
        // Same 42 grant bytes in both.
        #expect(Array(plain.readableBytesView.dropFirst(16)) == Array(withRemote.readableBytesView.dropFirst(16).prefix(42)))
        #expect(withRemote.getInteger(at: 16 + 42, endianness: .little, as: UInt64.self) == remote.address)
        #expect(withRemote.getInteger(at: 16 + 50, endianness: .little, as: UInt32.self) == remote.rkey)
    }

    @Test func truncatedOrPaddedBodyIsMalformed() throws {
        let full = encoded(Frame(requestId: 5, message: Response.remoteGrant(grant, remote)))
        let body = Array(full.readableBytesView.dropFirst(16))
        for cut in [0, 41, 42, 49, 50, 53] {
            var part = ByteBuffer(bytes: body.prefix(cut))
            #expect(throws: PMUError.self) { _ = try Response.decodeBody(opcode: 0x87, body: &part) }
        }
        var padded = ByteBuffer(bytes: body + [0])
        #expect(throws: PMUError.self) { _ = try Response.decodeBody(opcode: 0x87, body: &padded) }
        var exact = ByteBuffer(bytes: body)
        #expect(try Response.decodeBody(opcode: 0x87, body: &exact) == .remoteGrant(grant, remote))
    }
}
