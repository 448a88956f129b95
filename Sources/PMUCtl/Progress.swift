import Foundation

/// A progress bar on stderr for transfers over a few MiB, only when stderr is a terminal (so
/// scripts and logs never see carriage returns).
final class Progress: @unchecked Sendable {
    private let total: Int
    private let label: String
    private let enabled: Bool
    private var done = 0
    private var lastDrawn = -1
    private let started = Date()

    init(total: Int, label: String) {
        self.total = total
        self.label = label
        self.enabled = total > 4 * 1024 * 1024 && isatty(2) != 0
    }

    func advance(by bytes: Int) {
        done += bytes
        guard enabled else { return }
        let percent = total == 0 ? 100 : done * 100 / total
        guard percent != lastDrawn else { return }
        lastDrawn = percent
        let width = 30
        let filled = width * percent / 100
        let seconds = max(Date().timeIntervalSince(started), 0.001)
        let rate = Double(done) / seconds / 1_048_576
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        FileHandle.standardError.write(Data(String(format: "\r%@ [%@] %3d%% %.0f MiB/s", label, bar, percent, rate).utf8))
    }

    func finish() {
        guard enabled, lastDrawn >= 0 else { return }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
