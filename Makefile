# The two commands of README.md. Both install what they need first.
SHELL := /bin/bash
.PHONY: run test build bench

# Runs a VM with the built-in default: a 128 MiB PC whose SeaBIOS shows its boot menu on
# this terminal (press Esc for the menu; Ctrl-C quits).
run:
	@scripts/setup-debian.sh
	scripts/swift-build-release --product swiftdm
	.build/release/swiftdm -boot menu=on

# Builds everything and runs every test (unit, integration on KVM, interop with the real
# tools). Tests needing /dev/kvm skip loudly when it is missing; the summary counts skips.
test:
	@scripts/setup-debian.sh
	swift build --build-tests
	swift test --skip-build 2>&1 | tee .test-output.log; status=$${PIPESTATUS[0]}; \
	  scripts/test-summary.sh .test-output.log; exit $$status

build:
	scripts/swift-build-release

bench:
	bench/run
