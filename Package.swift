// swift-tools-version: 6.1
import PackageDescription

// Module map (see docs/ARCHITECTURE.md):
//   CISAL         Intel ISA-L (Debian libisal-dev): CRC32C now, erasure coding later
//   PMUCore       no I/O: wire codec, region/catalog formats, protection table, errors, auth math
//   PMUCheckpoint checkpoint layout, writer, reader, verifier over a RegionIO protocol (no transport)
//   PMUTesting    test doubles: SimulatedRegion (crashes, torn and lost writes), seeded generator
//   PMULog        one append-only checksummed log: pure record format + file-backed segments
//   PMUMetrics    metric names + a facade over swift-metrics (no backend; pmu-server serves Prometheus)
//   PMUStore      region files (fallocate + mmap), the metadata catalog, persistence, recovery
//   CVerbs        rdma-core (libibverbs, librdmacm) + shims for its macros and inline functions
//   PMUVerbs      Swift wrappers, one file per verbs object, each releasing its resource on deinit
//   PMUTransport  one transport protocol; TCP (SwiftNIO) and RDMA verbs implementations
//   PMUPair       write mirroring between two servers: mirror channel, mirror logs, takeover
//   PMUFailover   heartbeat failover: roles, failure detector (pure), etcd authority, address hook
//   PMUServer     the server as a Service: sessions, verbs, authentication
//   PMUClient     async client library (regions, checkpoints as primary and backup)
//   PMUStripe     no I/O: stripe geometry, piece headers, erasure code (ISA-L), survivability
//   PMUCluster    checkpoints striped with parity and/or mirrored across several pmu-servers
//   CUserfault    C shim: userfaultfd, UFFDIO_*, PAGEMAP_SCAN, memfd (what Swift cannot import)
//   PMUSnapshot   live copy-on-write snapshots of an arena, streamed to a PMU region; restore
//   PMUCtl        pmuctl's commands as a library
//   PMUFuzzing    fuzz targets over every decoder of stored bytes + their seed corpus (pmu-fuzz runs them)
//   pmu-server, pmuctl   thin executables
//   Examples/     pmu-example-primary, pmu-example-backup (+ PMUExampleComputation)
//   Benchmarks/   pmu-bench (scripts/bench.sh runs it next to raw TCP, msync and Redis baselines)
let package = Package(
    name: "pmu",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "PMUClient", targets: ["PMUClient"]),
        .library(name: "PMUCheckpoint", targets: ["PMUCheckpoint"]),
        .library(name: "PMUCluster", targets: ["PMUCluster"]),
        .library(name: "PMUSnapshot", targets: ["PMUSnapshot"]),
        .executable(name: "pmu-server", targets: ["pmu-server"]),
        .executable(name: "pmuctl", targets: ["pmuctl"]),
        .executable(name: "pmu-example-primary", targets: ["pmu-example-primary"]),
        .executable(name: "pmu-example-backup", targets: ["pmu-example-backup"]),
        .executable(name: "pmu-example-live", targets: ["pmu-example-live"]),
        .executable(name: "pmu-example-standby", targets: ["pmu-example-standby"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Intel ISA-L from Debian's libisal-dev: CRC32C now, erasure coding later.
        .systemLibrary(
            name: "CISAL",
            pkgConfig: "libisal",
            providers: [.apt(["libisal-dev"])]
        ),
        // rdma-core from Debian's libibverbs-dev and librdmacm-dev (the modulemap links both).
        .systemLibrary(
            name: "CVerbs",
            pkgConfig: "libibverbs",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
        ),
        .target(name: "PMUVerbs", dependencies: ["CVerbs"]),
        .target(
            name: "PMUCore",
            dependencies: [
                "CISAL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "PMUCheckpoint",
            dependencies: ["PMUCore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Test doubles: an in-memory region with simulated crashes, torn and lost writes.
        .target(
            name: "PMUTesting",
            dependencies: [
                "PMUCore", "PMUCheckpoint",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // One append-only, checksummed log: the partner's mirror log (and the server journal).
        .target(
            name: "PMULog",
            dependencies: [
                "PMUCore",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The metric names PMU emits and a small facade over swift-metrics (no backend: the
        // server bootstraps Prometheus, an application using the client picks its own).
        .target(
            name: "PMUMetrics",
            dependencies: [.product(name: "Metrics", package: "swift-metrics")]
        ),
        .target(
            name: "PMUStore",
            dependencies: [
                "PMUCore", "PMUMetrics", "PMULog",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "PMUTransport",
            dependencies: [
                "PMUCore", "PMUVerbs",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Server to server: the mirror channel (owner), mirror logs (partner), takeover.
        .target(
            name: "PMUPair",
            dependencies: [
                "PMUCore", "PMULog", "PMUStore", "PMUClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Heartbeat failover (issue 13): roles, the failure detector and rules (pure), the etcd
        // authority over its JSON gateway, the service address hook.
        .target(
            name: "PMUFailover",
            dependencies: [
                "PMUCore", "PMUTransport", "PMUMetrics",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "PMUServer",
            dependencies: [
                "PMUCore", "PMUStore", "PMUTransport", "PMUVerbs", "PMUPair", "PMULog", "PMUFailover", "PMUMetrics", "PMUCluster",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "PMUClient",
            dependencies: [
                "PMUCore", "PMUTransport", "PMUCheckpoint", "PMUMetrics",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Pure: how a checkpoint is cut, protected and placed across servers; erasure code via ISA-L.
        .target(
            name: "PMUStripe",
            dependencies: ["PMUCore", "CISAL", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "PMUCluster",
            dependencies: [
                "PMUCore", "PMUStripe", "PMUClient", "PMUCheckpoint", "PMUTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Kernel interfaces for live snapshots that Swift cannot import (syscall, _IOWR ioctls) and
        // that Debian 12's headers lack (WP_ASYNC, PAGEMAP_SCAN): defined locally in shim.c.
        .target(name: "CUserfault"),
        .target(
            name: "PMUSnapshot",
            dependencies: [
                "CUserfault", "PMUCore", "PMUCheckpoint", "PMUClient", "PMUMetrics",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .target(
            name: "PMUCtl",
            dependencies: [
                "PMUCore", "PMUClient", "PMUTransport", "PMUCheckpoint", "PMUCluster", "PMUStripe", "PMUSnapshot", "PMUFailover",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(name: "pmu-server", dependencies: ["PMUServer", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "pmuctl", dependencies: ["PMUCtl", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // Examples/: a primary that checkpoints a computation, a backup that takes over from it.
        .target(
            name: "PMUExampleComputation",
            dependencies: ["PMUClient", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "NIOCore", package: "swift-nio")],
            path: "Examples/Computation"
        ),
        .executableTarget(
            name: "pmu-example-primary",
            dependencies: ["PMUClient", "PMUExampleComputation", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/Primary"
        ),
        .executableTarget(
            name: "pmu-example-backup",
            dependencies: ["PMUClient", "PMUExampleComputation", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/Backup"
        ),
        // Fuzz targets for every decoder of stored bytes (scripts/fuzz.sh builds pmu-fuzz with
        // -sanitize=fuzzer in its own scratch path; the normal build makes it a corpus replayer).
        .target(
            name: "PMUFuzzing",
            dependencies: ["PMUCore", "PMUCheckpoint", "PMUStripe", "PMUTesting", "PMULog", "PMUFailover", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .executableTarget(name: "pmu-fuzz", dependencies: ["PMUFuzzing"]),
        // Examples/: a live program snapshotting a large grid while it runs, a standby resuming from it.
        .target(
            name: "PMUExampleLiveGrid",
            dependencies: ["PMUClient", "PMUSnapshot", "PMUExampleComputation", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/LiveGrid"
        ),
        .executableTarget(
            name: "pmu-example-live",
            dependencies: ["PMUClient", "PMUSnapshot", "PMUExampleComputation", "PMUExampleLiveGrid", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/Live"
        ),
        .executableTarget(
            name: "pmu-example-standby",
            dependencies: ["PMUClient", "PMUSnapshot", "PMUExampleComputation", "PMUExampleLiveGrid", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/Standby"
        ),
        // Benchmarks/: PMU's side of each benchmark workload (scripts/bench.sh runs it with baselines).
        .executableTarget(
            name: "pmu-bench",
            dependencies: ["PMUClient", "PMUCluster", "PMUStripe", "PMUSnapshot", "CISAL", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "NIOCore", package: "swift-nio")],
            path: "Benchmarks/pmu-bench"
        ),
        .testTarget(
            name: "PMUCoreTests",
            dependencies: [
                "PMUCore", "PMUTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "PMUCheckpointTests",
            dependencies: ["PMUCore", "PMUCheckpoint", "PMUTesting", "PMUFuzzing", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "PMUStripeTests",
            dependencies: ["PMUCore", "PMUStripe", "PMUTesting", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "PMUSnapshotTests",
            dependencies: ["PMUCore", "PMUSnapshot", "PMUTesting", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "PMULogTests",
            dependencies: ["PMUCore", "PMULog", "PMUTesting"]
        ),
        .testTarget(
            name: "PMUPairTests",
            dependencies: ["PMUCore", "PMULog", "PMUPair", .product(name: "Logging", package: "swift-log"), .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "PMUFailoverTests",
            dependencies: ["PMUCore", "PMUFailover", "PMUTransport", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "PMUStoreTests",
            dependencies: ["PMUCore", "PMUStore", "PMULog", .product(name: "Logging", package: "swift-log")]
        ),
        // The session's limits over an in-process transport (embedded event loop, recording sink).
        .testTarget(
            name: "PMUServerTests",
            dependencies: [
                "PMUServer", "PMUCore", "PMUStore", "PMUTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "PMUIntegrationTests",
            dependencies: [
                "PMUCore", "PMUClient", "PMUCtl", "PMUTransport", "PMUCheckpoint", "PMUExampleComputation", "PMUTesting", "PMULog",
                "PMUCluster", "PMUStripe", "PMUSnapshot", "PMUExampleLiveGrid", "PMUFailover",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
