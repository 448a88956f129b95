/// The server's secrets file, in the spirit of rsyncd.secrets: one `CLIENT_ID:SECRET` a line,
/// `#` starts a comment line, blank lines are ignored. Parsing is pure; reading the file and
/// checking its mode (0600) is the server's job.
public struct SecretsTable: Sendable, Equatable {
    public private(set) var secrets: [String: [UInt8]]

    public init(secrets: [String: [UInt8]] = [:]) {
        self.secrets = secrets
    }

    public func secret(for clientId: String) -> [UInt8]? { secrets[clientId] }

    public var clientIds: [String] { secrets.keys.sorted() }

    /// Secrets shorter than this are refused: HMAC is only as strong as its key.
    public static let minimumSecretBytes = 16

    public static func parse(_ text: String, source: String) throws(PMUError) -> SecretsTable {
        var table: [String: [UInt8]] = [:]
        var lineNumber = 0
        // Character.isNewline: "\r\n" is one Character in Swift, so splitting on "\n" would miss it.
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: { $0.isNewline }) {
            lineNumber += 1
            let trimmed = line.trimmingSpaces()
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let colon = trimmed.firstIndex(of: ":") else {
                throw PMUError(.invalidArgument, "\(source):\(lineNumber): expected CLIENT_ID:SECRET")
            }
            let id = String(trimmed[..<colon])
            let secret = String(trimmed[trimmed.index(after: colon)...])
            do {
                try NameRules.validateClientId(id)
            } catch {
                throw PMUError(.invalidArgument, "\(source):\(lineNumber): \(error.message)")
            }
            guard secret.utf8.count >= minimumSecretBytes else {
                throw PMUError(.invalidArgument, "\(source):\(lineNumber): the secret for '\(id)' is shorter than \(minimumSecretBytes) bytes")
            }
            guard table[id] == nil else {
                throw PMUError(.invalidArgument, "\(source):\(lineNumber): client '\(id)' is listed twice")
            }
            table[id] = Array(secret.utf8)
        }
        return SecretsTable(secrets: table)
    }

    /// A client's `--secret-file` holds the secret alone; surrounding whitespace and a final newline are ignored.
    public static func parseClientSecret(_ text: String, source: String) throws(PMUError) -> [UInt8] {
        let secret = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).first.map { $0.trimmingSpaces() } ?? ""
        guard !secret.isEmpty else {
            throw PMUError(.invalidArgument, "secret file \(source) is empty")
        }
        return Array(secret.utf8)
    }
}
