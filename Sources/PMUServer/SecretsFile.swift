#if canImport(Glibc)
import Glibc
#endif
import Logging
import PMUCore
import SystemPackage

/// Loading the secrets file, and creating the embedded default on first start.
enum SecretsFile {
    /// Reads and parses the file, refusing one that group or others can read (as rsync's strict modes do).
    static func load(path: String) throws(PMUError) -> SecretsTable {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw PMUError(.invalidArgument, "cannot read secrets file \(path): \(Errno(rawValue: errno)); create it with lines CLIENT_ID:SECRET and chmod 600")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw PMUError(.invalidArgument, "secrets file \(path) is accessible by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); run: chmod 600 \(path)")
        }
        let text: String
        do {
            let fd = try FileDescriptor.open(FilePath(path), .readOnly)
            defer { try? fd.close() }
            var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
            let count = try bytes.withUnsafeMutableBytes { try fd.read(into: $0) }
            text = String(decoding: bytes.prefix(count), as: UTF8.self)
        } catch {
            throw PMUError(.invalidArgument, "cannot read secrets file \(path): \(error)")
        }
        let table = try SecretsTable.parse(text, source: path)
        guard !table.secrets.isEmpty else {
            throw PMUError(.invalidArgument, "secrets file \(path) names no clients; add a line CLIENT_ID:SECRET")
        }
        return table
    }

    /// The embedded default: never an open server. On first start the server writes
    /// DATA_DIR/secrets with one client, `admin`, and a random 256-bit secret, and DATA_DIR/admin.secret
    /// holding that secret alone for pmuctl's --secret-file. Both mode 0600.
    static func createDefaultIfMissing(dataDirectory: String, logger: Logger) throws(PMUError) {
        let secretsPath = dataDirectory + "/secrets"
        guard access(secretsPath, F_OK) != 0 else { return }
        var generator = SystemRandomNumberGenerator()
        let secret = (0..<32).map { _ in String(format2: UInt8.random(in: 0...255, using: &generator)) }.joined()
        try writeAtomically(dataDirectory + "/admin.secret", contents: secret + "\n")
        try writeAtomically(secretsPath, contents: "# pmu-server secrets: one CLIENT_ID:SECRET a line (keep mode 0600)\nadmin:\(secret)\n")
        logger.notice("created secrets file with a new random secret for client 'admin'", metadata: [
            "secrets": "\(secretsPath)", "adminSecretFile": "\(dataDirectory)/admin.secret",
        ])
    }

    private static func writeAtomically(_ path: String, contents: String) throws(PMUError) {
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw PMUError(.ioError, "cannot create \(temp): \(Errno(rawValue: errno))") }
        let bytes = Array(contents.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temp, path) == 0 else {
            unlink(temp)
            throw PMUError(.ioError, "cannot write \(path): \(Errno(rawValue: errno))")
        }
    }
}

extension String {
    init(format2 byte: UInt8) {
        let digits = String(byte, radix: 16)
        self = digits.count == 1 ? "0" + digits : digits
    }
}

extension SecretsFile {
    /// A small text file (a secret file for --partner-secret-file), at most 4 KiB.
    static func readText(_ path: String, what: String) throws(PMUError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PMUError(.invalidArgument, "cannot read \(what) \(path): \(Errno(rawValue: errno))") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        guard count >= 0 else { throw PMUError(.invalidArgument, "cannot read \(what) \(path): \(Errno(rawValue: errno))") }
        return String(decoding: bytes.prefix(count), as: UTF8.self)
    }
}
