# fleetcert: build, test and demo targets. `make test` is what CI runs.
GO       ?= go
BIN      ?= bin/fleetcert
PKGS_UNIT = $(shell $(GO) list ./... | grep -v '/e2e$$')
export TESTCONTAINERS_RYUK_DISABLED = true

.PHONY: build test unit lint e2e e2e-image e2e-host demo demo-up demo-down bench bench-fleet bench-scale clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) .

# Everything CI checks: static checks, unit tests, then the e2e suite
# against the container fleet.
test: lint unit e2e

unit:
	$(GO) test -count=1 $(PKGS_UNIT)

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

e2e-image: e2e-host
	$(GO) run ./e2e/image

e2e: e2e-image
	$(GO) test -count=1 -timeout 30m ./e2e/

# What the container fleet needs from the host: debootstrap to build the
# node image (installed from Debian's packages when missing), and enough
# inotify instances, since every node container runs systemd and the
# kernel's default of 128 per user runs out with a few fleets up at once.
e2e-host:
	@command -v debootstrap >/dev/null || { \
		echo "installing debootstrap (needed once, to build the node image)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
	@[ "$$(cat /proc/sys/fs/inotify/max_user_instances)" -ge 1024 ] || \
		sysctl -q -w fs.inotify.max_user_instances=1024 || \
		echo "warning: fs.inotify.max_user_instances is low; node containers may fail to boot"

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS_UNIT)

# check against real OpenSSH: N loopback sshd nodes chrooted into the e2e
# node rootfs (make e2e-image caches it), check and a bare x/crypto/ssh
# fan-out in alternating rounds. Needs root. Flags: BENCH_FLEET_FLAGS,
# e.g. "-nodes 500 -rounds 3" (see go run ./bench/fleet -h).
bench-fleet: build
	$(GO) run ./bench/fleet -bin $(BIN) $(BENCH_FLEET_FLAGS)

# check over 10,000 nodes at --concurrency 256: in-process SSH servers in
# a process of their own, check measured as a process of its own (wall,
# CPU, peak RSS) and the servers counting its round trips per node.
# BENCH_SCALE_FLAGS, e.g. "-nofile 256" (see go run ./bench/scale -h).
bench-scale: build
	$(GO) run ./bench/scale -bin $(BIN) $(BENCH_SCALE_FLAGS)

demo: e2e-image
	$(GO) run ./e2e/demo

demo-up: e2e-image
	$(GO) run ./e2e/demo up

demo-down:
	$(GO) run ./e2e/demo down

clean:
	rm -rf bin
