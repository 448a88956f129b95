/// Validation of region names and client ids.
///
/// Region files are named by numeric id, never by the region's name, so a name can never reach
/// the filesystem; the rules below still refuse path-like names so that tools and logs that print
/// names stay unambiguous, and so that a future layout keyed by name stays possible.
public enum NameRules {
    public static func validateRegionName(_ name: String) throws(PMUError) {
        let bytes = name.utf8.count
        if bytes == 0 {
            throw PMUError(.invalidName, "region name is empty; use 1 to \(Limits.maxNameBytes) bytes")
        }
        if bytes > Limits.maxNameBytes {
            throw PMUError(
                .invalidName,
                "region name is \(bytes) bytes; the limit is \(Limits.maxNameBytes) bytes of UTF-8")
        }
        if name.utf8.contains(0) {
            throw PMUError(.invalidName, "region name contains a NUL byte")
        }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw PMUError(.invalidName, "region name contains a control character")
        }
        if name.contains("/") || name.contains("\\") {
            throw PMUError(.invalidName, "region name \(quoted(name)) contains a path separator ('/' or '\\')")
        }
        if name.contains("..") {
            throw PMUError(.invalidName, "region name \(quoted(name)) contains '..'")
        }
        if name.first == " " || name.last == " " {
            throw PMUError(.invalidName, "region name \(quoted(name)) starts or ends with a space")
        }
    }

    /// Client ids appear in the secrets file as `ID:SECRET`, so they may not contain ':' or spaces.
    public static func validateClientId(_ id: String) throws(PMUError) {
        let bytes = id.utf8.count
        guard bytes > 0, bytes <= Limits.maxClientIdBytes else {
            throw PMUError(.invalidName, "client id must be 1 to \(Limits.maxClientIdBytes) bytes, got \(bytes)")
        }
        let allowed = id.unicodeScalars.allSatisfy { scalar in
            (scalar >= "a" && scalar <= "z") || (scalar >= "A" && scalar <= "Z")
                || (scalar >= "0" && scalar <= "9") || scalar == "-" || scalar == "_" || scalar == "."
                || scalar == "@"
        }
        guard allowed else {
            throw PMUError(.invalidName, "client id \(quoted(id)) may use only letters, digits, '-', '_', '.', '@'")
        }
    }

    public static func quoted(_ s: String) -> String {
        "\"" + String(s.prefix(64)).unicodeScalars.map { $0.escaped(asASCII: true) }.joined() + "\""
    }
}
