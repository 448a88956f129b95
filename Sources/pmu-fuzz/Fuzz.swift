import PMUFuzzing

// One executable for every fuzz target (`FuzzTarget`). Built two ways:
//
// - normally (`swift build`): a replayer, `pmu-fuzz TARGET FILE...` runs files through a target
//   (a crash reproduces), and `pmu-fuzz --write-seeds DIR` writes the seed corpus;
// - by scripts/fuzz.sh with `-sanitize=fuzzer,address -DPMU_FUZZ`: a libFuzzer binary,
//   `pmu-fuzz TARGET [libFuzzer options] CORPUS...`.
//
// SwiftPM links an executable's entry point as `pmu_fuzz_main` (aliased to main); under libFuzzer
// that function hands control to the fuzzer driver with the target named by the first argument.

#if PMU_FUZZ
nonisolated(unsafe) var selectedTarget = FuzzTarget.checkpoint

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selectedTarget.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

@_cdecl("pmu_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    guard argc >= 2, let argv, let name = argv[1].map({ String(cString: $0) }), let target = FuzzTarget(rawValue: name) else {
        print("usage: pmu-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) [libFuzzer options] [CORPUS...]")
        return 2
    }
    selectedTarget = target
    // Drop the target name: libFuzzer sees argv[0] followed by its own options.
    argv[1] = argv[0]
    var count = argc - 1
    var rest: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv + 1
    return LLVMFuzzerRunDriver(&count, &rest, fuzzOneInput)
}
#else
import Foundation

@main
struct Replay {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            for target in FuzzTarget.allCases {
                let directory = arguments[1] + "/" + target.rawValue
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                for seed in SeedCorpus.seeds(target) {
                    try Data(seed.bytes).write(to: URL(fileURLWithPath: directory + "/seed-" + seed.name))
                }
            }
            return
        }
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("usage: pmu-fuzz TARGET FILE... | pmu-fuzz --write-seeds DIR (TARGET: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n".utf8))
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else { throw CocoaError(.fileReadNoSuchFile) }
            target.run(Array(data))
            print("\(target.rawValue): \(path) ok")
        }
    }
}
#endif
