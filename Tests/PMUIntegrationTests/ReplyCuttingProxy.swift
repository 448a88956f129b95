import Foundation
import PMUCore
import PMUTransport

#if canImport(Glibc)
import Glibc
#endif

/// A fault injector for one fault a real server cannot produce on demand: a reply lost after the
/// server acted on its request. A TCP proxy on 127.0.0.1 in front of a real pmu-server forwards
/// both directions; once armed with `cut(afterReplies: n)` it forwards n more reply frames, then,
/// at the next one (which the server has therefore already executed), closes both sockets and
/// stops listening, so the client's reconnect goes to its next endpoint. Blocking sockets on
/// their own threads (not the cooperative pool); every read is bounded by a 10 s timeout.
final class ReplyCuttingProxy: @unchecked Sendable {
    private let upstream: Endpoint
    private let listener: Int32
    private let lock = NSLock()
    private var allowance: Int?
    private var sockets: [Int32] = []
    private var cutDone = false
    private var listenerClosed = false
    /// Per connection: pumps still running; the last one out closes both sockets (under the lock,
    /// so `stop` never shuts down a descriptor number that was reused).
    private var running: [Int32: Int] = [:]
    let endpoint: Endpoint

    init(to upstream: Endpoint) throws {
        self.upstream = upstream
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        listener = fd
        var address = Self.address(Endpoint(host: "127.0.0.1", port: 0))
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound, listen(fd, 8) == 0 else {
            close(fd)
            throw PMUError(.internalError, "proxy: bind/listen failed: errno \(errno)")
        }
        endpoint = Endpoint(host: "127.0.0.1", port: Int(UInt16(bigEndian: address.sin_port)))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// Forward `replies` more reply frames, then cut at the next one.
    func cut(afterReplies replies: Int) {
        lock.withLock { allowance = replies }
    }

    var hasCut: Bool { lock.withLock { cutDone } }

    /// Stops listening and cuts every connection; the threads then end and close what they hold.
    func stop() {
        lock.withLock {
            if !listenerClosed { shutdown(listener, Int32(SHUT_RDWR)) }
            for fd in sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    private func finished(_ client: Int32, _ server: Int32) {
        lock.withLock {
            running[client, default: 1] -= 1
            guard running[client] == 0 else { return }
            running[client] = nil
            sockets.removeAll { $0 == client || $0 == server }
            close(client)
            close(server)
        }
    }

    private static func address(_ endpoint: Endpoint) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(endpoint.port).bigEndian)
        inet_pton(AF_INET, endpoint.host, &address.sin_addr)
        return address
    }

    private func acceptLoop() {
        // Bounded: the proxy serves at most 16 connections over its life (a test makes 1 or 2).
        for _ in 0..<16 {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { break }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.address(upstream)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else {
                close(client)
                close(server)
                continue
            }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            for fd in [client, server] { setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) }
            lock.withLock {
                sockets += [client, server]
                running[client] = 2
            }
            Thread.detachNewThread { [self] in
                pumpRequests(from: client, to: server)
                finished(client, server)
            }
            Thread.detachNewThread { [self] in
                pumpReplies(from: server, to: client)
                finished(client, server)
            }
        }
        lock.withLock {
            listenerClosed = true
            close(listener)
        }
    }

    private func pumpRequests(from client: Int32, to server: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress!, $0.count, 0) }
            guard count > 0, sendAll(server, Array(buffer[0..<count])) else { break }
        }
        shutdown(server, Int32(SHUT_WR))
    }

    /// Reply frames one at a time (u32 length = 12 + body, then that many bytes), so a cut falls
    /// exactly between two replies.
    private func pumpReplies(from server: Int32, to client: Int32) {
        while let frame = readFrame(server) {
            let forward = lock.withLock { () -> Bool in
                guard let left = allowance else { return true }
                if left == 0 {
                    allowance = nil
                    cutDone = true
                    return false
                }
                allowance = left - 1
                return true
            }
            guard forward else {
                // The server executed this request; its reply is lost with the connection.
                lock.withLock {
                    if !listenerClosed { shutdown(listener, Int32(SHUT_RDWR)) }
                    shutdown(client, Int32(SHUT_RDWR))
                    shutdown(server, Int32(SHUT_RDWR))
                }
                return
            }
            guard sendAll(client, frame) else { break }
        }
        shutdown(client, Int32(SHUT_RDWR))
    }

    private func readFrame(_ fd: Int32) -> [UInt8]? {
        guard let prefix = readExactly(fd, 4) else { return nil }
        let length = Int(prefix[0]) | Int(prefix[1]) << 8 | Int(prefix[2]) << 16 | Int(prefix[3]) << 24
        // The client's own frame limit bounds what a server may send; 64 MiB is above it.
        guard length >= 12, length <= 64 << 20, let rest = readExactly(fd, length) else { return nil }
        return prefix + rest
    }

    private func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var have = 0
        while have < count {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, count - have, 0) }
            guard got > 0 else { return nil }
            have += got
        }
        return bytes
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { return false }
            sent += count
        }
        return true
    }
}
