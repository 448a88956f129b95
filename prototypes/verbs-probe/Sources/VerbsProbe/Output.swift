#if canImport(Glibc)
import Glibc
#endif

/// Unbuffered line output: the server runs in the background with its output in a file, and its
/// lines should be there as soon as they happen. (Swift 6 also refuses the C globals stdout and
/// stderr as shared mutable state, so setvbuf/fputs are out.)
enum Output {
    static func line(_ text: String) { write(1, text + "\n") }
    static func error(_ text: String) { write(2, text + "\n") }

    private static func write(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }
}
