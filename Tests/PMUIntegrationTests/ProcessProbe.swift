import Foundation
import NIOCore
import PMUCore

#if canImport(Glibc)
import Glibc
#endif

/// What /proc says about a running server: memory, CPU time, descriptors.
enum ProcessProbe {
    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    static func statusKiB(_ pid: Int32, _ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) }
        }
        return nil
    }

    /// User + system CPU seconds so far (/proc/PID/stat fields 14 and 15).
    static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: end)...].split(separator: " ") // fields[0] is field 3 (state)
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// The soft open-file limit (/proc/PID/limits, "Max open files").
    static func softFileLimit(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Max open files") {
            return line.dropFirst("Max open files".count).split(separator: " ").first.flatMap { Int($0) }
        }
        return nil
    }
}

extension RawConnection {
    /// Reads up to `count` replies from the stream, handing each to `each` and dropping it (8 MiB
    /// DATA replies are not kept); returns how many arrived before the server closed or a 10 s
    /// receive timeout passed. Receives straight into one reused buffer.
    func readFrames(_ count: Int, _ each: (Int, Frame<Response>) -> Void) -> Int {
        var pending = ByteBuffer()
        pending.reserveCapacity(Limits.maxFrameBytes + (1 << 20))
        var received = 0
        while received < count {
            while received < count, let frame = try? FrameCodec.decode(Response.self, from: &pending) {
                each(received, frame)
                received += 1
            }
            if received == count { break }
            pending.discardReadBytes()
            var result = 0
            pending.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 20) { space in
                result = recv(fd, space.baseAddress!, space.count, 0)
                return max(0, result)
            }
            if result <= 0 { break }
        }
        return received
    }
}

/// A flag and a counter shared with a load thread.
final class LoadControl: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var finished = false
    private var count = 0

    var isStopped: Bool { lock.withLock { stopped } }
    var isFinished: Bool { lock.withLock { finished } }
    var total: Int { lock.withLock { count } }
    func stop() { lock.withLock { stopped = true } }
    func finish() { lock.withLock { finished = true } }
    func add() { lock.withLock { count += 1 } }
}
