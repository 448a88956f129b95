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
        // Every rule looks at Unicode scalars, never at Characters: Swift compares grapheme
        // clusters, so "a/\u{301}b" (a slash carrying a combining accent) contains no Character
        // "/" although its bytes hold one. Tools and logs see the scalars.
        let scalars = Array(name.unicodeScalars)
        for (index, scalar) in scalars.enumerated() {
            if let why = refusal(scalar) {
                throw PMUError(.invalidName, "region name \(quoted(name)) contains \(describe(scalar)) at scalar \(index), \(why)")
            }
            if index > 0, scalar == ".", scalars[index - 1] == "." {
                throw PMUError(.invalidName, "region name \(quoted(name)) contains '..' at scalar \(index - 1)")
            }
        }
        // A trailing space still ends the name when combining marks ride on it ("x \u{301}").
        let isMark: (Unicode.Scalar) -> Bool = {
            [.nonspacingMark, .spacingMark, .enclosingMark].contains($0.properties.generalCategory)
        }
        if scalars.first == " " || scalars.last(where: { !isMark($0) }) == " " {
            throw PMUError(.invalidName, "region name \(quoted(name)) starts or ends with a space")
        }
    }

    /// Why a scalar may not appear in a region name, or nil if it may.
    static func refusal(_ scalar: Unicode.Scalar) -> String? {
        if scalar == "/" || scalar == "\\" { return "a path separator ('/' or '\\')" }
        switch scalar.properties.generalCategory {
        case .control: return "a control character"
        // Invisible scalars that reorder or hide text: U+202E makes "exe.txt" print as "txt.exe",
        // U+200B..U+200D and U+FEFF make two names that print alike differ.
        case .format: return "an invisible format character (bidirectional control, zero-width or similar)"
        case .lineSeparator, .paragraphSeparator: return "a line or paragraph separator"
        // Only the ASCII space: the others (U+00A0, U+2000..U+200A, U+3000, ...) print like it or
        // like nothing, so a name could pass for another.
        case .spaceSeparator where scalar != " ": return "a space other than U+0020"
        default: return nil
        }
    }

    static func describe(_ scalar: Unicode.Scalar) -> String {
        let hex = String(scalar.value, radix: 16, uppercase: true)
        return "U+" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
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
