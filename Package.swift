// swift-tools-version: 6.0
import PackageDescription

// Module split follows docs/ARCHITECTURE.md: C only in the thin shims, devices never see the
// accelerator, the executable only parses, assembles and runs.
let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "SwiftDM",
    products: [
        .executable(name: "swiftdm", targets: ["swiftdm"]),
        .executable(name: "swiftdm-img", targets: ["swiftdm-img"]),
    ],
    targets: [
        .target(name: "CLinux", path: "Sources/CLinux"),
        .target(name: "DMCore", dependencies: ["CLinux"], swiftSettings: strict),
        .target(name: "Backends", dependencies: ["DMCore", "CLinux", "Config"], swiftSettings: strict),
        .target(name: "Devices", dependencies: ["DMCore", "Backends"], swiftSettings: strict),
        .target(name: "KVMAccel", dependencies: ["DMCore", "CLinux"], swiftSettings: strict),
        .target(name: "Config", dependencies: [], swiftSettings: strict),
        .target(name: "CXen", path: "Sources/CXen"),
        .target(name: "XenAccel", dependencies: ["DMCore", "CXen"], swiftSettings: strict),
        .target(name: "CMonitor", path: "Sources/CMonitor"),
        .target(name: "Monitor", dependencies: ["DMCore", "Config", "Backends", "CMonitor"], swiftSettings: strict),
        .target(name: "Display", dependencies: ["DMCore", "Config"], swiftSettings: strict),
        .target(name: "Machine",
                dependencies: ["DMCore", "Devices", "Backends", "KVMAccel", "XenAccel", "Config", "Monitor", "Display"],
                swiftSettings: strict),
        .executableTarget(name: "dispatch-bench", dependencies: ["DMCore"], path: "bench/dispatch",
                          swiftSettings: strict),
        .executableTarget(name: "swiftdm", dependencies: ["Machine", "Config", "DMCore", "Monitor"],
                          swiftSettings: strict),
        .testTarget(name: "DMCoreTests", dependencies: ["DMCore"], swiftSettings: strict),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "DMCore", "Backends"],
                    swiftSettings: strict),
        .testTarget(name: "BackendsTests", dependencies: ["Backends", "DMCore", "Config"], swiftSettings: strict),
        .testTarget(name: "XenAccelTests", dependencies: ["XenAccel", "DMCore"], swiftSettings: strict),
        // Test support shared by more than one test target.
        .target(name: "TestTools", path: "Tests/TestTools", swiftSettings: strict),
        .testTarget(name: "DisplayTests", dependencies: ["Display", "DMCore", "Config", "TestTools"], swiftSettings: strict),
        .testTarget(name: "ConfigTests", dependencies: ["Config"], swiftSettings: strict),
        .testTarget(name: "IntegrationTests", dependencies: ["swiftdm", "CMonitor", "TestTools"], swiftSettings: strict),
        .executableTarget(name: "swiftdm-img", dependencies: ["Backends", "Config"], swiftSettings: strict),
        .testTarget(name: "MonitorTests", dependencies: ["Monitor", "DMCore", "Config", "Backends", "CMonitor"],
                    swiftSettings: strict),
        .testTarget(name: "BlockTests", dependencies: ["Backends", "DMCore", "TestTools"], swiftSettings: strict),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "XenAccel", "Config", "DMCore", "Devices"], swiftSettings: strict),
    ]
)
