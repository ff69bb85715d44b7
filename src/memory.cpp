#include "memory.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "error.hpp"

namespace gpt2 {

const char* mem_category_name(MemCategory c) {
  static const char* names[kMemCategories] = {"params",      "master_weights", "grads",
                                              "optimizer_state", "activations", "workspace",
                                              "communication"};
  return names[int(c)];
}

void MemoryLedger::add(MemCategory c, size_t bytes) {
  size_t& cur = current[int(c)];
  cur += bytes;
  if (cur > peak[int(c)]) peak[int(c)] = cur;
  total += bytes;
  if (total > total_peak) total_peak = total;
}

void MemoryLedger::remove(MemCategory c, size_t bytes) {
  current[int(c)] -= bytes;
  total -= bytes;
}

void* Device::alloc(size_t bytes, MemCategory c, const std::string& what) {
  void* p = raw_alloc(bytes ? bytes : 1);
  if (!p)
    fail("out of ", is_cuda() ? "GPU" : "host", " memory allocating ", format_bytes(bytes),
         " for ", what, " (", mem_category_name(c), "); already allocated ",
         format_bytes(ledger_.total));
  zero(p, bytes);
  blocks_[p] = {bytes, c};
  ledger_.add(c, bytes);
  return p;
}

void Device::free(void* p) {
  auto it = blocks_.find(p);
  if (it == blocks_.end()) return;
  ledger_.remove(it->second.category, it->second.bytes);
  blocks_.erase(it);
  raw_free(p);
}

void* CpuDevice::raw_alloc(size_t bytes) {
  return std::aligned_alloc(256, (bytes + 255) / 256 * 256);
}
void CpuDevice::raw_free(void* p) { std::free(p); }
void CpuDevice::to_host(void* host, const void* dev, size_t bytes) { std::memcpy(host, dev, bytes); }
void CpuDevice::to_device(void* dev, const void* host, size_t bytes) { std::memcpy(dev, host, bytes); }
void CpuDevice::zero(void* dev, size_t bytes) { std::memset(dev, 0, bytes); }

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, u++;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

}  // namespace gpt2
