#include "optim_common.hpp"

#include "error.hpp"

namespace gpt2::optim {

static std::string key_path(const std::string& sub, const std::string& key) {
  return sub.empty() ? "optimizer." + key : "optimizer." + sub + "." + key;
}

const json& entry(const json& cfg, const std::string& sub, const std::string& key) {
  const json* o = cfg.contains("optimizer") ? &cfg["optimizer"] : nullptr;
  if (o && !sub.empty()) o = o->contains(sub) ? &(*o)[sub] : nullptr;
  if (!o || !o->is_object() || !o->contains(key))
    fail("config key ", key_path(sub, key),
         " is missing; start from the defaults (train_gpt2 config) and override it");
  return (*o)[key];
}

double number(const json& cfg, const std::string& sub, const std::string& key, double lo,
              double hi) {
  const json& v = entry(cfg, sub, key);
  if (!v.is_number())
    fail("config key ", key_path(sub, key), " = ", v.dump(), " must be a number in [", lo, ", ",
         hi, "]");
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi))
    fail("config key ", key_path(sub, key), " = ", v.dump(), " is out of range; set it to a value in [",
         lo, ", ", hi, "]");
  return x;
}

Common::Common(const json& cfg)
    : weight_decay(number(cfg, "", "weight_decay", 0.0, 1e6)),
      decay_vectors(false) {
  const json& v = entry(cfg, "", "decay_vectors");
  if (!v.is_boolean())
    fail("config key optimizer.decay_vectors = ", v.dump(), " must be true or false");
  decay_vectors = v.get<bool>();
}

void ScalingOptimizer::update_many(const std::vector<TensorUpdate<float>>& us) {
  for (const TensorUpdate<float>& u : us) {
    if (u.grad_scale != 1.0f)
      for (size_t i = 0; i < u.p->numel; i++) u.grad[i] *= u.grad_scale;
    update(*u.p, u.param, u.master, u.grad);
  }
}

float* StateStore::add(const ParamSpec& p, const std::string& what, size_t n) {
  if (!p.local) return nullptr;
  const std::string name = what + "." + p.name;
  bufs_.emplace_back(dev_, n, MemCategory::optimizer_state, name);
  names_.push_back(name);
  return bufs_.back().get();
}

std::vector<StateBlob> StateStore::blobs() const {
  std::vector<StateBlob> out;
  for (size_t i = 0; i < bufs_.size(); i++)
    out.push_back({names_[i], bufs_[i].get(), bufs_[i].bytes()});
  return out;
}

}  // namespace gpt2::optim
