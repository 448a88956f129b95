// swift-tools-version:6.0
// Prototype of PMU's RDMA verbs layer: a systemLibrary for rdma-core (libibverbs, librdmacm),
// thin Swift wrappers (one file per verbs object), and a probe with server and client modes.
// No dependencies besides rdma-core and the Swift toolchain (the build machine is shared).
import PackageDescription

let package = Package(
    name: "verbs-proto",
    products: [
        .library(name: "Verbs", targets: ["Verbs"]),
        .executable(name: "verbs-probe", targets: ["verbs-probe"]),
    ],
    targets: [
        .systemLibrary(
            name: "CVerbs",
            pkgConfig: "libibverbs",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
        ),
        .target(name: "Verbs", dependencies: ["CVerbs"]),
        .target(name: "VerbsProbe", dependencies: ["Verbs", "CVerbs"]),
        .executableTarget(name: "verbs-probe", dependencies: ["VerbsProbe"]),
        .testTarget(name: "VerbsTests", dependencies: ["Verbs", "VerbsProbe"]),
    ]
)
