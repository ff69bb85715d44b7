// Test runner shared by every tests/test_*.cpp. When asked for the [gpu] cases on a
// machine with no usable GPU it prints why and exits 77, which ctest reports as
// "Skipped" (SKIP_RETURN_CODE in CMakeLists.txt), so CI shows GPU tests as skipped
// instead of silently passing them.
#define CATCH_CONFIG_RUNNER
#include <cstdio>
#include <string>

#include "backend.hpp"
#include "catch.hpp"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    const std::string arg = argv[i];
    if (arg.find("[gpu]") != std::string::npos && arg.find("~[gpu]") == std::string::npos) {
      std::string why;
      if (!gpt2::cuda_usable(&why)) {
        std::printf("SKIPPED: GPU tests need a GPU (%s)\n", why.c_str());
        return 77;
      }
    }
  }
  return Catch::Session().run(argc, argv);
}
