// Catch2 v2 (Debian's catch2 here and in CI; carried in .carry/include on the GPU
// machine). Test files include this, never catch2 directly.
#pragma once
#include <catch2/catch.hpp>
