#if canImport(Glibc)
import Glibc
#endif
import PMUCore

/// Who is who in a pair: a data directory's stable portion id, and a process's instance id.
public enum PortionIdentity {
    /// `DIR/portion-id`: 32 lowercase hex digits, created on first use and never changed. It names
    /// the portion in MIRROR_OPEN and the partner's mirror log directory, so a portion keeps its
    /// identity when its directory moves (a shared filesystem mounted elsewhere at takeover).
    public static func load(dataDirectory: String, create: Bool) throws(PMUError) -> String {
        let path = dataDirectory + "/portion-id"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: 64)
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            let text = String(decoding: bytes.prefix(max(0, n)), as: UTF8.self).trimmingWhitespace
            guard isValid(text) else {
                throw PMUError(.damaged, "\(path) does not hold a portion id (32 lowercase hex digits); restore it or remove it to give the portion a new identity (its partner's mirror log is then orphaned)")
            }
            return text
        }
        guard create else {
            throw PMUError(.ioError, "\(dataDirectory) has no portion-id: it is not the data directory of a pmu-server that ran paired (check --partner-portion)")
        }
        var generator = SystemRandomNumberGenerator()
        let id = (0..<2).map { _ in hex16(generator.next()) }.joined()
        try store(id, dataDirectory: dataDirectory)
        return id
    }

    /// Writes `id` as the directory's portion id (durably, replacing any): a monitor's replica
    /// carries the primary's portion id, so a takeover finds the primary's mirror log for it.
    public static func store(_ id: String, dataDirectory: String) throws(PMUError) {
        precondition(isValid(id), "not a portion id")
        let path = dataDirectory + "/portion-id"
        let temp = path + ".tmp"
        let out = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw PMUError(.ioError, "cannot create \(temp)") }
        let line = Array((id + "\n").utf8)
        let written = line.withUnsafeBytes { write(out, $0.baseAddress!, $0.count) }
        let synced = fsync(out) == 0
        close(out)
        guard written == line.count, synced, rename(temp, path) == 0 else { throw PMUError(.ioError, "cannot write \(path)") }
    }

    public static func isValid(_ id: String) -> Bool {
        id.utf8.count == 32 && id.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    public static func randomInstance() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<Limits.instanceIdBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

extension String {
    var trimmingWhitespace: String {
        String(self.drop(while: { $0.isWhitespace }).reversed().drop(while: { $0.isWhitespace }).reversed())
    }
}
