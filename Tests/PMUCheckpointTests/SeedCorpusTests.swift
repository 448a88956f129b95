import Foundation
import PMUFuzzing
import Testing

/// The committed fuzz corpus (Fuzz/corpus) stays what the encoders produce, and every file in it,
/// seeds and regression inputs alike, runs through its target without a crash.
@Suite struct SeedCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/corpus").path

    @Test(arguments: FuzzTarget.allCases)
    func committedSeedsMatchTheEncoders(_ target: FuzzTarget) throws {
        let directory = Self.corpus + "/" + target.rawValue
        for seed in SeedCorpus.seeds(target) {
            let committed = FileManager.default.contents(atPath: directory + "/seed-" + seed.name)
            #expect(committed.map(Array.init) == seed.bytes, "\(target)/seed-\(seed.name) is stale: run pmu-fuzz --write-seeds Fuzz/corpus")
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func everyCommittedInputRunsCleanly(_ target: FuzzTarget) throws {
        let directory = Self.corpus + "/" + target.rawValue
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(!files.isEmpty)
        for file in files {
            target.run(Array(FileManager.default.contents(atPath: directory + "/" + file)!))
        }
    }
}
