#if canImport(Glibc)
import Glibc
#endif
import Logging

/// `--log-format json`: one JSON object a line on standard error, for journald, Loki or jq:
/// `{"time":"2026-12-01T23:40:00.123Z","level":"info","label":"pmu-server","message":"...",
/// "connection":"7","request":"12",...}`. Metadata keys are top-level fields (the session sets
/// `connection`, `peer` and `client`; per-request lines add `request`); one that collides with
/// time, level, label or message is written with a leading underscore.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        if let error = event.error, fields["error"] == nil { fields["error"] = "\(error)" }
        var line = Self.line(time: Self.timestamp(), level: event.level, label: label, message: event.message.description, metadata: fields)
        line.append("\n")
        // One write(2) a line to descriptor 2 (no stdio buffer to share between threads): lines
        // from different threads stay whole (atomic on pipes up to PIPE_BUF, and in practice on files).
        let bytes = Array(line.utf8)
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(2, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                done += n
            }
        }
    }

    static let reserved: Set<String> = ["time", "level", "label", "message"]

    /// The JSON object for one log line (no newline). Pure, for tests.
    static func line(time: String, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var out = "{\"time\":" + quoted(time) + ",\"level\":" + quoted(level.rawValue) + ",\"label\":" + quoted(label) + ",\"message\":" + quoted(message)
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            let name = reserved.contains(key) ? "_" + key : key
            out += "," + quoted(name) + ":" + encode(value)
        }
        return out + "}"
    }

    private static func encode(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): quoted(text)
        case .stringConvertible(let item): quoted(item.description)
        case .array(let items): "[" + items.map(encode).joined(separator: ",") + "]"
        case .dictionary(let items): "{" + items.sorted(by: { $0.key < $1.key }).map { quoted($0.key) + ":" + encode($0.value) }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// UTC, millisecond precision, RFC 3339.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let millis = Int(now.tv_nsec / 1_000_000)
        let fraction = String(millis)
        let whole = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return whole + "." + String(repeating: "0", count: 3 - fraction.count) + fraction + "Z"
    }
}
