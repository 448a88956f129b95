#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import PMUClient
import PMUCore
import PMUTesting
import Testing

/// WRITE payloads copied into the region piece by piece as the socket reads arrive (TCP,
/// `RequestStreamDecoder`, Session+StreamedWrite.swift), against a real pmu-server, driven by
/// hand-made frames sent in small, irregular pieces so the server sees many reads per payload.
@Suite(.enabled(if: testTransport == .tcp, "streamed WRITEs are the TCP transport's path; verbs writes are one-sided"))
struct StreamedWriteTests {
    let scratch = Scratch()

    /// A raw, authenticated admin connection with `name` open for `rights`.
    static func rawSession(_ server: ServerProcess, open name: String, rights: Rights = .readWrite) throws -> (RawConnection, AccessKey) {
        let raw = try RawConnection(server.endpoint)
        guard raw.authenticate(clientId: "admin", secret: server.secret(for: "admin")) else { throw PMUError(.authenticationFailed, "raw handshake failed") }
        raw.send(Request.open(name: name, rights: rights), id: 3)
        guard case .grant(let grant)? = raw.readFrame()?.message else { throw PMUError(.internalError, "no grant for \(name)") }
        return (raw, grant.key)
    }

    static func frame(_ id: UInt64, _ request: Request) -> [UInt8] {
        var buffer = ByteBuffer()
        FrameCodec.encode(Frame(requestId: id, message: request), into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// Sends `bytes` in pieces of 1 byte to 64 KiB (some of 1-40 bytes, so frame heads are split
    /// too), pausing now and then so the server reads them separately.
    static func sendInPieces(_ raw: RawConnection, _ bytes: [UInt8], _ generator: inout SeededGenerator) {
        var at = 0
        var count = 0
        while at < bytes.count {
            let size = min(bytes.count - at, Bool.random(using: &generator) ? Int.random(in: 1...40, using: &generator) : Int.random(in: 1...65_536, using: &generator))
            raw.send(Array(bytes[at..<(at + size)]))
            at += size
            count += 1
            if count % 4 == 0 { usleep(300) }
        }
    }

    /// Reads `count` replies, keeping what one recv brings beyond a frame (`readFrame` does not).
    static func readReplies(_ raw: RawConnection, _ count: Int) -> [Frame<Response>] {
        var pending = ByteBuffer()
        var frames: [Frame<Response>] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while frames.count < count {
            while frames.count < count, let frame = try? FrameCodec.decode(Response.self, from: &pending) { frames.append(frame) }
            guard frames.count < count else { break }
            let n = chunk.withUnsafeMutableBytes { recv(raw.fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { break }
            pending.writeBytes(chunk[0..<n])
        }
        return frames
    }

    /// Nonzero bytes, so a landed prefix can be told from the zeros after it.
    static func payload(_ count: Int, _ generator: inout SeededGenerator) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 1...255, using: &generator) }
    }

    /// Large writes, each split across many socket reads and surrounded by whole frames (a small
    /// WRITE, a PERSIST), land byte for byte; the replies come in order; so do the client
    /// library's concurrent 8 MiB writes.
    @Test func largeWritesSplitAcrossManyReadsLandByteForByte() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let size = 24 << 20
        let handle = try await client.createRegion("streamed", sizeBytes: UInt64(size))
        var model = [UInt8](repeating: 0, count: size)
        var generator = SeededGenerator(seed: 15)

        let (raw, key) = try Self.rawSession(server, open: "streamed")
        let writes: [(offset: Int, count: Int)] = [(1 << 20 | 1, 3 << 20 | 17), (9, 100), (5 << 20, 64 << 10), (7 << 20 + 3, 8 << 20), (20 << 20, 200_001)]
        var stream: [UInt8] = []
        for (index, write) in writes.enumerated() {
            let bytes = Self.payload(write.count, &generator)
            model.replaceSubrange(write.offset..<(write.offset + write.count), with: bytes)
            stream += Self.frame(UInt64(10 + index), .write(key: key, offset: UInt64(write.offset), data: ByteBuffer(bytes: bytes)))
            if index == 1 { stream += Self.frame(99, .persist(key: key, offset: 0, length: 4096)) }
        }
        Self.sendInPieces(raw, stream, &generator)
        var replies: [UInt64] = []
        for reply in Self.readReplies(raw, writes.count + 1) {
            #expect(reply.message == .ok, "request \(reply.requestId): \(reply.message)")
            replies.append(reply.requestId)
        }
        // WRITEs are answered in order; the PERSIST runs beside them and may answer later.
        #expect(replies.filter { $0 != 99 } == [10, 11, 12, 13, 14] && replies.contains(99), "replies \(replies)")

        // The client library's path: 8 MiB chunks, several in flight on one connection.
        let library = Self.payload(16 << 20, &generator)
        model.replaceSubrange((4 << 20)..<(20 << 20), with: library)
        try await client.write(handle, at: 4 << 20, library)
        let back = try await client.read(handle, at: 0, length: size)
        #expect(Array(back.readableBytesView) == model)
        try await client.close(handle)
        await client.disconnect()
    }

    /// A connection that ends inside a payload: what arrived before the end lands (a prefix of
    /// the payload), nothing after it, and no reply is ever sent. Closed with FIN (every sent
    /// byte reaches the server: the prefix is exactly what was sent) and with RST (the kernel may
    /// drop what the server had not read: some shorter prefix).
    @Test func connectionCutMidPayloadLeavesAPrefixAndNoReply() async throws {
        let server = try ServerProcess(dataDirectory: scratch.path + "/data")
        let client = try await server.client()
        let size = 4 << 20
        let handle = try await client.createRegion("torn", sizeBytes: UInt64(size))
        var generator = SeededGenerator(seed: 16)

        for (round, reset) in [false, true].enumerated() {
            let base = round * (size / 2)
            let length = size / 2
            let payload = Self.payload(length, &generator)
            let (raw, key) = try Self.rawSession(server, open: "torn")
            let frame = Self.frame(7, .write(key: key, offset: UInt64(base), data: ByteBuffer(bytes: payload)))
            let sent = FrameCodec.writeHeadBytes + length / 2 + 12_345  // head + part of the payload
            Self.sendInPieces(raw, Array(frame[0..<sent]), &generator)
            let landedAtMost = sent - FrameCodec.writeHeadBytes
            if reset {
                var option = linger(l_onoff: 1, l_linger: 0)
                setsockopt(raw.fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
                _ = consume raw  // closed with RST
            } else {
                shutdown(raw.fd, Int32(SHUT_WR))
                let (frames, closed) = raw.readUntilClosed()
                #expect(frames.isEmpty, "a torn WRITE was answered: \(frames)")
                #expect(closed)
            }
            // The server learns of the close asynchronously: wait until the raw handle is gone.
            var handles = try await client.stat("torn").openHandles
            for _ in 0..<100 where handles != 1 {
                try await Task.sleep(for: .milliseconds(100))
                handles = try await client.stat("torn").openHandles
            }
            #expect(handles == 1)
            let region = Array(try await client.read(handle, at: UInt64(base), length: length).readableBytesView)
            let landed = region.firstIndex(of: 0) ?? length
            #expect(landed <= landedAtMost, "round \(round): \(landed) bytes landed, only \(landedAtMost) were sent")
            #expect(Array(region[0..<landed]) == Array(payload[0..<landed]), "round \(round): the landed bytes are not the payload's prefix")
            #expect(region[landed...].allSatisfy { $0 == 0 }, "round \(round): bytes landed after a gap")
            if !reset { #expect(landed == landedAtMost, "round \(round): with FIN every sent byte reaches the server") }
        }
        try await client.close(handle)
        await client.disconnect()
    }

    /// OUT_OF_BOUNDS, INVALID_KEY, PERMISSION_DENIED and FENCED on a streamed WRITE: the same
    /// code and message as the whole-frame path (a server with `--streamed-write-min 0`), no
    /// byte of the refused payload lands, and the connection goes on with its next request.
    @Test func refusalsAreAsOnTheWholeFramePath() async throws {
        var outcomes: [[String]] = []
        for (index, arguments) in [[String](), ["--streamed-write-min", "0"]].enumerated() {
            let server = try ServerProcess(dataDirectory: scratch.path + "/data-\(index)", extraArguments: arguments)
            outcomes.append(try await refusals(server))
            _ = server.terminate()
        }
        #expect(outcomes[0] == outcomes[1])
        #expect(outcomes[0].map { String($0.prefix(while: { $0 != ":" })) } == ["\(PMUErrorCode.outOfBounds)", "\(PMUErrorCode.invalidKey)", "\(PMUErrorCode.permissionDenied)", "\(PMUErrorCode.fenced)", "ok"])
    }

    /// The refusal scenario against one server: each outcome as "code: message".
    func refusals(_ server: ServerProcess) async throws -> [String] {
        let client = try await server.client()
        let regionBytes = 2 << 20
        let raw = try await client.createRegion("plain", sizeBytes: UInt64(regionBytes))
        let checkpoint = try await client.createRegion("ckpt", sizeBytes: UInt64(regionBytes), kind: .checkpointOverwrite)
        try await client.close(checkpoint)
        var generator = SeededGenerator(seed: 17)
        let (connection, key) = try Self.rawSession(server, open: "plain")
        connection.send(Request.open(name: "plain", rights: .read), id: 4)
        guard case .grant(let readGrant)? = connection.readFrame()?.message else { throw PMUError(.internalError, "no read grant") }
        let readKey = readGrant.key
        connection.send(Request.open(name: "ckpt", rights: .readWrite), id: 5)
        guard case .grant(let staleGrant)? = connection.readFrame()?.message else { throw PMUError(.internalError, "no checkpoint grant") }
        // Another writer takes the checkpoint region over and writes it.
        let fresh = try await client.openRegion("ckpt", rights: .readWrite)
        let freshBytes = [UInt8](repeating: 0xBB, count: 1 << 20)
        try await client.write(fresh, at: 0, freshBytes)

        let forged = AccessKey(high: 0x5EED, low: 0xF00D)
        let refused: [(UInt64, Request)] = [
            (20, .write(key: key, offset: UInt64(regionBytes - (64 << 10)), data: ByteBuffer(bytes: Self.payload(128 << 10, &generator)))),
            (21, .write(key: forged, offset: 0, data: ByteBuffer(bytes: Self.payload(1 << 20, &generator)))),
            (22, .write(key: readKey, offset: 0, data: ByteBuffer(bytes: Self.payload(1 << 20, &generator)))),
            (23, .write(key: staleGrant.key, offset: 0, data: ByteBuffer(bytes: Self.payload(1 << 20, &generator)))),
        ]
        // Then a write that must succeed on the same connection, right behind the refused ones.
        let accepted = Self.payload(300_000, &generator)
        var stream = refused.flatMap { Self.frame($0.0, $0.1) }
        stream += Self.frame(24, .write(key: key, offset: 4096, data: ByteBuffer(bytes: accepted)))
        Self.sendInPieces(connection, stream, &generator)
        var outcomes: [String] = []
        let replies = Self.readReplies(connection, 5)
        #expect(replies.map(\.requestId) == Array(20...24))
        for reply in replies {
            switch reply.message {
            case .ok: outcomes.append("ok")
            case .error(let error): outcomes.append("\(error.code): \(error.message)")
            default: outcomes.append("unexpected \(reply.message)")
            }
        }
        // Nothing refused landed: the plain region holds only the accepted write, the checkpoint
        // region only the new writer's bytes.
        var plain = [UInt8](repeating: 0, count: regionBytes)
        plain.replaceSubrange(4096..<(4096 + accepted.count), with: accepted)
        #expect(Array(try await client.read(raw, at: 0, length: regionBytes).readableBytesView) == plain)
        #expect(Array(try await client.read(fresh, at: 0, length: 1 << 20).readableBytesView) == freshBytes)
        await client.disconnect()
        return outcomes
    }
}
