# Quick start: `make demo` runs the main job, `make test` runs every test.
# Both install missing Debian packages first and build in $(BUILD).
# `make sanitize` builds everything but the LibTorch worker with clang,
# ASan and UBSan in $(SANITIZE_BUILD) and runs its tests and fuzzers.
BUILD ?= build
SANITIZE_BUILD ?= build-sanitize
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DPython3_EXECUTABLE=/usr/bin/python3

.PHONY: all deps configure build demo test sanitize clean

all: build

deps:
	scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	scripts/demo.sh $(BUILD)

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 1200

sanitize: deps
	CC=clang CXX=clang++ cmake -S . -B $(SANITIZE_BUILD) $(CMAKE_FLAGS) \
	  -DTLSERVE_SANITIZE=ON
	cmake --build $(SANITIZE_BUILD) -j$(JOBS)
	cd $(SANITIZE_BUILD) && UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j$(JOBS) --timeout 1200

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD)
