import PMUFailover
import Testing

@Suite struct HeartbeatMessageTests {
    let secret = Array("pair-secret-0123456789".utf8)
    let message = HeartbeatMessage(kind: .ping, role: .monitor, serving: false, sequence: 0x0102_0304_0506_0708, epoch: 99, senderId: "mon-1", sentAtNanoseconds: 123_456_789)

    @Test func roundTrips() throws {
        let bytes = message.encode(secret: secret)
        #expect(bytes.count == HeartbeatMessage.size)
        #expect(try HeartbeatMessage.decode(bytes, secret: secret) == message)
        var long = message
        long.senderId = String(repeating: "x", count: 40)
        #expect(try HeartbeatMessage.decode(long.encode(secret: secret), secret: secret).senderId == String(repeating: "x", count: 16))
    }

    @Test func everyFlippedBitIsRefused() {
        let bytes = message.encode(secret: secret)
        for index in 0..<bytes.count {
            for bit in 0..<8 {
                var damaged = bytes
                damaged[index] ^= UInt8(1) << UInt8(bit)
                #expect(throws: HeartbeatMessage.DecodeError.self) { _ = try HeartbeatMessage.decode(damaged, secret: secret) }
            }
        }
    }

    @Test func wrongSecretSizeAndGarbageAreRefused() {
        let bytes = message.encode(secret: secret)
        #expect(throws: HeartbeatMessage.DecodeError.badTag) { _ = try HeartbeatMessage.decode(bytes, secret: Array("another-secret-0123456".utf8)) }
        #expect(throws: HeartbeatMessage.DecodeError.wrongSize(63)) { _ = try HeartbeatMessage.decode(Array(bytes.dropLast()), secret: secret) }
        #expect(throws: HeartbeatMessage.DecodeError.wrongSize(0)) { _ = try HeartbeatMessage.decode([], secret: secret) }
        var seed: UInt64 = 42
        for _ in 0..<500 {
            let garbage = (0..<64).map { _ -> UInt8 in
                seed = seed &* 6364136223846793005 &+ 1
                return UInt8(truncatingIfNeeded: seed >> 56)
            }
            #expect(throws: HeartbeatMessage.DecodeError.self) { _ = try HeartbeatMessage.decode(garbage, secret: secret) }
        }
    }
}
