# Thin wrapper over CMake: the README's commands.
#   make demo   build and run the demo
#   make test   build and run every test (then the sanitizer and fuzz runs when CI=true)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
ifeq ($(CI),true)
CMAKE_FLAGS += -DLORAC_WERROR=ON
endif

.PHONY: all deps test-deps build demo test test-unit test-asan fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/lorac demo

test-unit: test-deps build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the same tests.
test-asan: test-deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLORAC_SANITIZE=address,undefined $(CMAKE_FLAGS) >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && LORAC_SANITIZED=1 ctest --output-on-failure -j $(JOBS)

# Every libFuzzer target for FUZZ_SECONDS each (default 10).
fuzz: test-deps
	scripts/run-fuzz.sh

test: test-unit
ifeq ($(CI),true)
	$(MAKE) test-asan
	$(MAKE) fuzz
endif

bench: build
	bench/run-all.sh

clean:
	rm -rf build build-asan build-fuzz
