/// Human sizes as pmuctl and pmu-server accept them: `4096`, `4KiB`, `64MiB`, `1GiB`, `1TiB`,
/// and the decimal `KB`/`MB`/`GB`/`TB`. Units are case-insensitive; a `B` alone means bytes.
public enum ByteSize {
    public static func parse(_ text: String) throws(PMUError) -> UInt64 {
        let trimmed = text.trimmingSpaces()
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        let unit = trimmed.dropFirst(digits.count).lowercased().trimmingSpaces()
        guard !digits.isEmpty, let value = UInt64(digits) else {
            throw PMUError(.invalidSize, "size \"\(text)\" is not a number with an optional unit (e.g. 4096, 4KiB, 64MiB, 1GiB)")
        }
        let multiplier: UInt64
        switch unit {
        case "", "b": multiplier = 1
        case "k", "kib": multiplier = 1 << 10
        case "m", "mib": multiplier = 1 << 20
        case "g", "gib": multiplier = 1 << 30
        case "t", "tib": multiplier = 1 << 40
        case "kb": multiplier = 1_000
        case "mb": multiplier = 1_000_000
        case "gb": multiplier = 1_000_000_000
        case "tb": multiplier = 1_000_000_000_000
        default:
            throw PMUError(.invalidSize, "size \"\(text)\" has an unknown unit \"\(unit)\"; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw PMUError(.invalidSize, "size \"\(text)\" does not fit in 64 bits") }
        return product
    }

    /// The shortest exact binary-unit spelling: 1073741824 -> "1GiB", 1000 -> "1000B".
    public static func format(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        for (size, name) in units where bytes >= size && bytes % size == 0 {
            return "\(bytes / size)\(name)"
        }
        return "\(bytes)B"
    }
}

extension StringProtocol {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
