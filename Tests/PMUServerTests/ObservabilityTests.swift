import Foundation
import Logging
import Testing

@testable import PMUServer

/// The pure parts of logs and metrics: JSON log lines and the HELP lines added to a scrape.
@Suite struct ObservabilityTests {
    @Test func jsonLogLineIsOneParseableObjectWithMetadataOnTop() throws {
        let line = JSONLogHandler.line(
            time: "2026-12-01T23:40:00.123Z", level: .notice, label: "pmu-server", message: "quote \" backslash \\ newline \n tab \t bell \u{07} é",
            metadata: ["connection": "7", "request": "12", "message": "collides", "list": ["a", "b"], "nested": ["k": "v"]])
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["message"] as? String == "quote \" backslash \\ newline \n tab \t bell \u{07} é")
        #expect(object["level"] as? String == "notice")
        #expect(object["time"] as? String == "2026-12-01T23:40:00.123Z")
        #expect(object["connection"] as? String == "7")
        #expect(object["request"] as? String == "12")
        #expect(object["_message"] as? String == "collides")
        #expect(object["list"] as? [String] == ["a", "b"])
        #expect((object["nested"] as? [String: String])?["k"] == "v")
    }

    @Test func timestampIsRFC3339UTCWithMilliseconds() {
        let stamp = JSONLogHandler.timestamp()
        #expect(stamp.count == 24, "\(stamp)")
        #expect(stamp.hasSuffix("Z") && stamp.dropFirst(10).hasPrefix("T") && stamp.dropFirst(19).hasPrefix("."))
    }

    @Test func scrapeGetsHelpBeforeEachKnownType() {
        let exposition = Array("# TYPE pmu_regions gauge\npmu_regions 3\n# TYPE other_thing counter\nother_thing 1\n".utf8)
        let text = String(decoding: MetricsBackend.withHelp(exposition), as: UTF8.self)
        #expect(text == "# HELP pmu_regions Regions the server holds.\n# TYPE pmu_regions gauge\npmu_regions 3\n# TYPE other_thing counter\nother_thing 1\n")
        #expect(MetricsBackend.withHelp([]).isEmpty)
    }

    @Test func verbNamesFollowTheWireProtocol() {
        #expect(RequestMeter.name(.write) == "WRITE")
        #expect(RequestMeter.name(.pairTakeover) == "PAIR_TAKEOVER")
        #expect(RequestMeter.name(.serverInfo) == "SERVER_INFO")
    }
}
