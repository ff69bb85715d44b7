# The two commands a fresh machine needs: `make run` and `make test`. Every target
# does its own setup (packages, build, data), so any of them works from a clean clone.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CONFIG ?= configs/quickstart.json
TOKENIZER := data/gpt2/encoder.json data/gpt2/vocab.bpe
BROWN_TEXT := data/brown/text/.done
BROWN_SHARDS := data/brown/.prepared

.PHONY: all deps configure build bin data test run clean

all: build

deps:
	@tools/install_deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 \
	  || { cat $(BUILD).configure.log; exit 1; }

# Everything: the program, the tests, the tools.
build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The program alone (what `make data` and `make run` need).
bin: configure
	cmake --build $(BUILD) -j $(JOBS) --target train_gpt2

$(TOKENIZER):
	data/fetch_tokenizer.sh

$(BROWN_TEXT):
	data/fetch_brown.sh

$(BROWN_SHARDS): $(BROWN_TEXT) $(TOKENIZER) | bin
	$(BUILD)/train_gpt2 prepare --input data/brown/text --out data/brown
	@touch $@

data: bin $(BROWN_SHARDS)

test: build $(TOKENIZER) $(BROWN_TEXT)
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

run: data
	$(BUILD)/train_gpt2 train $(CONFIG)

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
