import PMUCore

/// A `HOST:PORT` address as the command lines take it: `127.0.0.1:7690`, `localhost:7690`, `[::1]:7690`.
public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// The embedded default: loopback only, so a fresh server is never reachable from the network.
    public static let defaultPort = 7690
    public static let `default` = Endpoint(host: "127.0.0.1", port: defaultPort)

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(PMUError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw PMUError(.invalidArgument, "address \"\(text)\" is not [IPV6]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw PMUError(.invalidArgument, "address \"\(text)\" has no port; write HOST:PORT, e.g. 127.0.0.1:\(Self.defaultPort)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw PMUError(.invalidArgument, "address \"\(text)\" has an empty host") }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw PMUError(.invalidArgument, "address \"\(text)\" has an invalid port \"\(portText)\" (0-65535)")
        }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
