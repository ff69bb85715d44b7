// Test runner shared by every tests/test_*.cpp. When asked for the [gpu] cases on a
// machine with no usable GPU, or with fewer GPUs than `--need-gpus N` asks for (the
// multi-GPU cases), it prints why and exits 77, which ctest reports as "Skipped"
// (SKIP_RETURN_CODE in CMakeLists.txt), so a machine without them shows those tests as
// skipped instead of silently passing them.
#define CATCH_CONFIG_RUNNER
#include <cstdio>
#include <string>
#include <vector>

#include "backend.hpp"
#include "catch.hpp"

int main(int argc, char** argv) {
  int need_gpus = 0;
  std::vector<char*> args;
  for (int i = 0; i < argc; i++) {
    if (std::string(argv[i]) == "--need-gpus" && i + 1 < argc) {
      need_gpus = std::stoi(argv[++i]);
      continue;
    }
    args.push_back(argv[i]);
  }
  argc = int(args.size());
  argv = args.data();
  for (int i = 1; i < argc; i++) {
    const std::string arg = argv[i];
    if (arg.find("[gpu]") != std::string::npos && arg.find("~[gpu]") == std::string::npos) {
      std::string why;
      if (!gpt2::cuda_usable(&why)) {
        std::printf("SKIPPED: GPU tests need a GPU (%s)\n", why.c_str());
        return 77;
      }
      const int gpus = gpt2::cuda_device_count(&why);
      if (gpus < need_gpus) {
        std::printf("SKIPPED: these GPU tests need %d GPUs, this machine has %d\n", need_gpus, gpus);
        return 77;
      }
    }
  }
  return Catch::Session().run(argc, argv);
}
