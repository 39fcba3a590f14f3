# Thin wrapper over CMake: the README's commands.
#   make demo   build and run the demo
#   make test   build and run every test (then the sanitizer and fuzz runs when CI=true)
#   make test-tsan  the serving tests (engine, HTTP server, clients) under ThreadSanitizer
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
ifeq ($(CI),true)
CMAKE_FLAGS += -DLORAC_WERROR=ON
endif

.PHONY: all deps test-deps build demo test test-unit test-asan test-tsan fuzz bench clean

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

# ThreadSanitizer build of the serving tests (ctest -R 'serve|engine'): the
# engine thread, the HTTP server's connection threads and concurrent clients.
# clang, because GCC's target_clones kernels resolve through ifuncs that run
# before TSan is initialised; kernels on one OpenMP thread (see CMakeLists).
# halt_on_error: the first race fails the test (the server's log has it).
test-tsan: test-deps
	cmake -S . -B build-tsan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DLORAC_SANITIZE=thread $(CMAKE_FLAGS) >/dev/null
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && LORAC_SANITIZED=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
		ctest --output-on-failure -R 'serve|engine' -j $(JOBS)

# Every libFuzzer target for FUZZ_SECONDS each (default 10).
fuzz: test-deps
	scripts/run-fuzz.sh

test: test-unit
ifeq ($(CI),true)
	$(MAKE) test-asan
	$(MAKE) test-tsan
	$(MAKE) fuzz
	$(MAKE) build
	$(MAKE) -C bench check-build
endif

bench: build
	bench/run-all.sh

clean:
	rm -rf build build-asan build-tsan build-fuzz
