#include "catch.hpp"
#include "schedule.hpp"

using namespace gpt2;

static json schedule_cfg(const char* decay, int steps, int warmup, double min_frac) {
  json cfg = json::parse(kDefaultConfig);
  cfg["optimizer"]["lr"] = 1.0;
  cfg["schedule"] = {{"steps", steps}, {"warmup_steps", warmup}, {"decay", decay},
                     {"min_lr_fraction", min_frac}};
  return cfg;
}

TEST_CASE("warmup rises linearly to lr, cosine decays to min_lr at the last step") {
  Schedule s(schedule_cfg("cosine", 12, 2, 0.1));
  CHECK(s.at(0) == Approx(0.5));
  CHECK(s.at(1) == Approx(1.0));
  CHECK(s.at(2) == Approx(1.0));  // first decay step starts at the peak
  // Halfway through the 9 decay intervals (steps 2..11): 0.1 + 0.5 * 0.9 * (1 + cos(pi/2)).
  CHECK(s.at(2) > s.at(3));
  CHECK(s.at(11) == Approx(0.1));
  const double mid = 0.1 + 0.45 * (1 + std::cos(M_PI * 4.5 / 9.0));
  CHECK((s.at(6) + s.at(7)) / 2 == Approx(mid).epsilon(0.02));
}

TEST_CASE("linear decay is a straight line, constant stays") {
  Schedule lin(schedule_cfg("linear", 11, 0, 0.0));
  CHECK(lin.at(0) == Approx(1.0));
  CHECK(lin.at(5) == Approx(0.5));
  CHECK(lin.at(10) == Approx(0.0).margin(1e-12));
  Schedule cst(schedule_cfg("constant", 10, 3, 0.0));
  CHECK(cst.at(0) == Approx(1.0 / 3));
  CHECK(cst.at(9) == Approx(1.0));
}
