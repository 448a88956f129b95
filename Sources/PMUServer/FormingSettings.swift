import ArgumentParser
import PMUCore

/// Server-side forming of striped checkpoints (docs/CLUSTER.md section 7b): where the cluster map
/// is and how much a server holds for primaries at once.
public struct FormingSettings: Sendable {
    /// The cluster map this server forms with (`--cluster-map`); nil: it forms nothing
    /// (FORM_BEGIN fails with FORMING_UNAVAILABLE). Read when a forming connects to the servers,
    /// so it may be written after the servers start and edited while they run.
    public var clusterMap: String?
    /// Bound on the payload bytes of every upload in progress or being formed, together
    /// (`--max-forming-bytes`). While one is formed the server also holds its pieces, so memory
    /// peaks near (1 + A) × this (A: the set's write amplification, 1.25 for k = 4, m = 1).
    public var maxFormingBytes: UInt64 = 1 << 30
    /// `--rebuild-empty`: when this server opens a set to form on it and a server of the set's
    /// stripe is empty (wiped or replaced), that server rejoins and is backfilled in the
    /// background while checkpoints go on (docs/CLUSTER.md 6b).
    public var rebuildEmpty = false

    public init() {}
}

/// pmu-server's options for forming (an option group: ServerCommand keeps one line for them).
struct FormingOptions: ParsableArguments {
    @Option(name: .customLong("cluster-map"), help: "Cluster map (docs/CLUSTER.md) naming the servers this server forms striped checkpoints for primaries on (pmuctl checkpoint put --form-on-server); it authenticates to each as the map's client with its secretFile.")
    var clusterMap: String?

    @Option(name: .customLong("max-forming-bytes"), help: "Checkpoint bytes this server holds at once for primaries forming on it, all uploads together (e.g. 1GiB); an upload beyond it is refused FORMING_LIMIT.")
    var maxFormingBytes: String = "1GiB"

    @Flag(name: .customLong("rebuild-empty"), help: "With --cluster-map: a server of a set formed here that comes back empty (wiped or replaced) rejoins and is rebuilt in the background while checkpoints go on.")
    var rebuildEmpty = false

    func settings() throws -> FormingSettings {
        var settings = FormingSettings()
        settings.clusterMap = clusterMap
        settings.rebuildEmpty = rebuildEmpty
        do {
            settings.maxFormingBytes = try ByteSize.parse(maxFormingBytes)
        } catch {
            throw ValidationError("--max-forming-bytes: \(error.message)")
        }
        return settings
    }
}
