import Foundation
import Testing

/// Every executable answers --help on stdout with exit 0, and a bad flag with usage on stderr and
/// argument-parser's exit code 64 (EX_USAGE), not an error dump.
@Suite struct HelpTests {
    static let executables = ["pmu-server", "pmuctl", "pmu-example-primary", "pmu-example-backup", "pmu-example-live", "pmu-example-standby"]

    @Test(arguments: executables)
    func helpIsAnsweredAndBadFlagsAreUsageErrors(_ name: String) throws {
        let path = binDirectory + "/" + name
        let help = try run(path, ["--help"], timeoutSeconds: 30)
        let text = String(decoding: help.stdout, as: UTF8.self)
        #expect(help.status == 0, "\(name) --help exited \(help.status): \(help.stderr)")
        #expect(text.contains("USAGE:"), "\(name) --help printed: \(text.prefix(300))")
        #expect(!text.contains("helpRequested") && !help.stderr.contains("helpRequested"))

        let bad = try run(path, ["--no-such-flag"], timeoutSeconds: 30)
        #expect(bad.status == 64, "\(name) --no-such-flag exited \(bad.status)")
        #expect(bad.stderr.contains("Unknown option '--no-such-flag'"), "\(name): \(bad.stderr.prefix(300))")
    }
}
