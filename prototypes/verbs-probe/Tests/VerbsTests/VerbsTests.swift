import Testing
@testable import Verbs
@testable import VerbsProbe
#if canImport(Glibc)
import Glibc
#endif

@Suite struct WireTests {
    @Test func descriptorRoundTripsWithFixedLayout() {
        let descriptor = RegionDescriptor(address: 0x7f12_3456_7000, lengthBytes: 64 << 20, rkey: 0x2bc)
        let bytes = descriptor.encoded()
        #expect(bytes.count == RegionDescriptor.sizeBytes)
        #expect(Array(bytes[0..<4]) == Array("PMUV".utf8))
        #expect(Array(bytes[24..<28]) == [0xbc, 0x02, 0, 0])  // rkey, little-endian
        #expect(RegionDescriptor(decoding: bytes) == descriptor)
    }

    @Test func descriptorRejectsShortLongAndForeignInput() {
        let bytes = RegionDescriptor(address: 1, lengthBytes: 2, rkey: 3).encoded()
        // Every split of the input (a truncated message) is refused, not misread.
        for cut in 0..<bytes.count {
            #expect(RegionDescriptor(decoding: bytes[0..<cut]) == nil)
        }
        #expect(RegionDescriptor(decoding: bytes + [0]) == nil)
        var wrongMagic = bytes
        wrongMagic[0] ^= 0xff
        #expect(RegionDescriptor(decoding: wrongMagic) == nil)
        var wrongVersion = bytes
        wrongVersion[4] = 9
        #expect(RegionDescriptor(decoding: wrongVersion) == nil)
    }

    @Test func controlMessageRoundTrips() {
        let message = ControlMessage(.verifyResult, status: 1, value: 0x0102_0304_0506_0708)
        let bytes = message.encoded()
        #expect(bytes.count == ControlMessage.sizeBytes)
        #expect(ControlMessage(decoding: bytes) == message)
        #expect(ControlMessage(decoding: [99, 0, 0, 0] + bytes[4...]) == nil)
    }

    @Test func planFitsTheSmallestRegionAndCrossesBoundaries() {
        let size = TestPlan.minimumRegionBytes
        let writes = TestPlan.writes(regionBytes: size)
        for write in writes {
            #expect(write.offset >= 0 && write.offset + write.lengthBytes <= size)
        }
        #expect(writes.contains { $0.offset / 4096 != ($0.offset + $0.lengthBytes - 1) / 4096 })
        #expect(writes.contains { $0.lengthBytes == 1 << 20 })
        // The pattern depends on the offset: a write one byte off does not verify.
        var buffer = [UInt8](repeating: 0, count: 64)
        buffer.withUnsafeMutableBytes { TestPlan.fill($0, regionOffset: 100, seed: 7) }
        buffer.withUnsafeBytes {
            #expect(TestPlan.firstMismatch($0, regionOffset: 100, seed: 7) == nil)
            #expect(TestPlan.firstMismatch($0, regionOffset: 101, seed: 7) != nil)
        }
    }
}

@Suite struct ErrorTests {
    @Test func memlockRefusalNamesTheLimitAndTheFix() {
        var scratch: UInt8 = 0
        let error = withUnsafeMutableBytes(of: &scratch) {
            MemoryRegion.registrationError(errno: ENOMEM, address: $0.baseAddress!, lengthBytes: 64 << 20)
        }
        #expect(error.kind == .memoryRegistration)
        #expect(error.description.contains("ENOMEM"))
        #expect(error.description.contains("RLIMIT_MEMLOCK"))
        #expect(error.description.contains("ulimit -l"))
    }

    @Test func pinRefusalPointsAtTheFilesystem() {
        var scratch: UInt8 = 0
        let error = withUnsafeMutableBytes(of: &scratch) {
            MemoryRegion.registrationError(errno: EFAULT, address: $0.baseAddress!, lengthBytes: 4096)
        }
        #expect(error.description.contains("tmpfs"))
    }

    /// Where no RDMA device exists (this project's build machines), opening one must say so and
    /// say how to get one; where one exists (the VM), the port check applies instead.
    @Test func openingWithoutADeviceSaysWhichIsMissing() throws {
        let names = DeviceList.names()
        do {
            let context = try DeviceList.open(name: "no-such-device0")
            Issue.record("opened \(context.name)")
        } catch {
            if names.isEmpty {
                #expect(error.kind == .noDevice)
                #expect(error.description.contains("no-such-device0") || error.description.contains("rdma link add"))
            } else {
                #expect(error.kind == .deviceNotFound)
                #expect(error.description.contains("no-such-device0"))
            }
        }
    }
}
