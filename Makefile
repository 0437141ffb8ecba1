# Quick start: `make demo` runs the main job, `make test` runs every test.
# Both install missing Debian packages first and build in $(BUILD).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DPython3_EXECUTABLE=/usr/bin/python3

.PHONY: all deps configure build demo test clean

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

clean:
	rm -rf $(BUILD)
