// Adapprox (spec optimizers.md 6.2-6.5, 6.7; twin of src/reference/optim/adapprox.cpp):
// Adam's second moment without bias correction, kept per matrix as Q U^T (Q m x k
// orthonormal, U n x k) and re-fitted every step by AS-RSI; vectors keep a full v.
//
// Per matrix and step:
//   V_t = beta2 Q U^T + (1 - beta2) g^2   dense m x n fp32 scratch (workspace), one kernel
//                                         for g^2 and one SGEMM adding the factors
//   ||V_t||_F^2                            device reduction beside the eigenvalues, so it
//                                         reaches the host with the first S-RSI's copy
//   S-RSI(k), once per rank tried          device sketch, l x (SGEMM, CholeskyQR2,
//                                         SGEMM), Gram U^T U (SGEMM), eigendecomposition
//                                         in double ((k+p) x (k+p), cuSOLVER's
//                                         XsyevBatched), eigenvalues to the host (1 sync),
//                                         Q W and U W (SGEMM) into state
//   D = g / (sqrt(max(V, 0)) + eps)        one kernel, in place over the V_t scratch
//   clip, first moment, guidance, decay    reductions + kernels, no sync
// The rank loop (grow by delta_k while xi > xi_thr, shrink with hysteresis) runs on the
// host exactly as as_rsi does: its branches need xi, so each S-RSI ends with one small
// copy, the only host sync. The rank k and smoothed error xi_bar live on the host;
// state() copies them into the "rank_err" blobs and marks them to be read back once
// (a checkpoint may have written them), so a step does not read them from the device.
// Deferred S-RSI: once a matrix sits at k = k_max with shrinking barred (xi_bar >=
// xi_thr / 2; with the default xi_thr every d12 matrix from the first steps on), no
// branch depends on this step's eigenvalues: they only feed xi_bar, and Q_t, U_t are
// first read by the next step's V_t (the "refactored" denominator reads them at once,
// so it never defers). Such an S-RSI stops at its Gram matrix, parks Y and Om in the
// factors' own state (first k_max columns) plus side_ (the p columns past them), and
// finish_deferred() -- at the next begin_step() or state() -- solves every parked Gram
// matrix of the same s in one XsyevBatched call, then does xi_bar and Q W, U W per
// matrix: same arithmetic, same decisions, only later. The one sync left per matrix
// brings the failure flag and ||V_t||^2: a failed Cholesky (or a non-finite Gram) is
// redone at once with Householder QR, as before.
// GEMMs are fp32 with cuBLAS's default math (no TF32); the sketch comes from
// sketch_rng.hpp's counter-based generator run as a device function: the same Gaussian
// numbers as the CPU reference (rounded to fp32), so both make the same rank decisions
// without shipping the sketch from the host. Eigenvector signs may differ from Eigen's:
// Q and U can differ column by column in sign; Q U^T, V_t and the weights do not.
// orth() is CholeskyQR2 (spec 6.3: GEMM-friendly; timed alone on an H200 at s = 197
// it beats cuSOLVER's geqrf + orgqr 1.5x at 768 rows, 3.4x at wte's 50304); a
// Cholesky that fails (a Gram matrix not positive definite in rounding) or non-finite
// eigenvalues send that S-RSI back to Householder QR, decided with the eigenvalues'
// copy, so no extra sync.
// Where the time goes (tools/bench_adapprox_parts, H200, s = 197, ms): eigensolver
// Dsyevd 1.62, Xsyevd 1.62, syevj 2.5-2.9, XsyevBatched 1.64 alone but 0.63 per matrix
// in a batch of 12 and 0.16 in a batch of 50 (d12's 50 matrices; same eigenvalues to
// 1e-15); widen + Dpotrf + narrow 0.19 (x4 per matrix); Strsm 0.06 (768 rows) - 0.37
// (wte); Gram SGEMM 0.02 - 0.21; V Om and V^T Y 0.025 - 0.045 (0.42 for wte); host sync
// 0.01. bench_optimizers (d12, every rank at 192, H200), one step: 152.5 ms with Dsyevd
// per matrix; 142.6 ms measured with the deferral but also the two lost kernels below
// in CholeskyQR2 (together +0.28 ms per call, 4 calls per matrix: ~57 ms); this file,
// with Dpotrf + Strsm back, adds up from the parts to ~85 ms (not timed end to end
// yet). What is left: CholeskyQR2's latency-bound Dpotrf + Strsm (~1 ms per matrix,
// ~50 ms a step), the GEMMs (~15 ms), the batched eigensolver (~8 ms).
// Lost, deleted: a one-block Cholesky in shared memory (fp64 packed triangle) took 0.29
// ms column by column and 0.36 ms with 8-column panels (one warp per panel) against
// Dpotrf's 0.19; a one-lane-per-row triangular solve with R in shared memory (2 warps
// per SM) took 0.17 ms at 768 rows against Strsm's 0.06 -- both too little parallelism
// for one SM; a batched Cholesky needs the S-RSIs of several matrices interleaved.
// Also lost (H100, same call): a right-looking one-block Cholesky plus inverse, so that
// Y R^-1 is an in-place Strmm, took 0.582 ms at s = 197 against widen + Dpotrf + narrow's
// 0.203 (its trailing updates load and store 24 bytes of shared memory per FMA), and the
// d12 step went from 88.9 / 83.6 to 156.4 / 162.5 ms. The Strmm by an explicit R^-1 is
// itself twice as fast as the Strsm (0.039 against 0.085 ms at 768 rows, 0.252 against
// 0.524 at wte's), if R^-1 ever comes cheaper than Dpotrf's R.
// Besides the V_t scratch the thin iterates (Y m x s, Om n x s, Gram, cuSOLVER work,
// s = min(k_max + p, min(m, n))) take "adapprox thin" workspace, and the deferred
// S-RSIs one fp64 Gram matrix per matrix (15.5 MB for d12) plus side_ (4 MB). The
// memory plan counts all of these but cuSOLVER's work (adapprox_workspace_bytes), whose
// size only cuSOLVER knows; the batched eigensolver's (~125 MB for d12, 2.7% of the
// peak when it had its own buffer) borrows the V_t scratch, idle when it runs.
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>

#include "fp64_copy.cuh"
#include "kernels.cuh"
#include "optim_common.cuh"
#include "reference/optim/adapprox_settings.hpp"

#define CUSOLVER_CHECK(call)                                                          \
  do {                                                                                \
    cusolverStatus_t st_ = (call);                                                    \
    if (st_ != CUSOLVER_STATUS_SUCCESS)                                               \
      ::gpt2::fail("cuSOLVER error ", int(st_), " in ", #call, " at ", __FILE__, ":", \
                   __LINE__);                                                         \
  } while (0)

namespace gpt2::cuda {
namespace {

enum Slot { kSumD2, kDot, kSumM2, kSlots };

template <class D>
__global__ void fresh_second_moment(float* V, const D* g, size_t n, float one_minus_b2) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = to_f(g[i]);
    V[i] = one_minus_b2 * x * x;
  }
}

__global__ void sketch(float* om, size_t n, uint64_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    om[i] = float(optim::gaussian(seed, i));  // entry (j, c) is number c * rows + j
}

// A deferred S-RSI's Gram matrix into its batch slot; a non-finite entry counts as a
// failure (the immediate path checks the eigenvalues instead, which come too late here).
__global__ void widen_checked(double* out, const float* in, size_t n, double* failed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    out[i] = in[i];
    if (!isfinite(in[i])) *failed = 1.0;
  }
}
__global__ void note_failure(const int* info, double* failed) {
  if (*info != 0) *failed = 1.0;
}

// W (s x k): the eigenvectors of the k largest eigenvalues, largest first (syevd sorts
// ascending).
__global__ void top_eigenvectors(float* W, const double* vecs, int s, int k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * k) return;
  const int r = i % s, j = i / s;
  W[i] = float(vecs[(s - 1 - j) * s + r]);
}

template <class D>
__global__ void matrix_direction(float* V, const D* g, size_t n, float eps) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    V[i] = to_f(g[i]) / (sqrtf(fmaxf(V[i], 0.f)) + eps);
}

template <class D>
__global__ void vector_direction(float* out, float* v, const D* g, size_t n, float b2, float eps) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = to_f(g[i]);
    v[i] = b2 * v[i] + (1.f - b2) * x * x;
    out[i] = x / (sqrtf(v[i]) + eps);
  }
}

__global__ void clip_and_moment(float* Dir, float* m1, const double* sum_d2, size_t n, double d,
                                float beta1) {
  const float clip = float(fmax(1.0, sqrt(*sum_d2 / double(n)) / d));
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = Dir[i] / clip;
    Dir[i] = x;
    if (m1) m1[i] = beta1 * m1[i] + (1.f - beta1) * x;
  }
}

template <class D>
__global__ void adapprox_apply(Weights<D> w, const float* S, const double* scal, bool guided,
                               size_t n, float lr, float wd) {
  const float guide =
      guided ? float((1 + scal[kDot] / (sqrt(scal[kSumD2] * scal[kSumM2]) + 1e-12)) / 2) : 1.f;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = w.load(i);
    w.store(i, x - lr * (guide * S[i] + wd * x));
  }
}

struct Dot {
  const float *a, *b;
  __device__ double operator()(size_t i) const { return double(a[i]) * b[i]; }
};

// The lengths of the workspace buffers the constructor allocates, from one loop shared
// with the memory plan (cuda_optimizer_workspace_bytes); cuSOLVER's work, which only a
// handle on a GPU can size, is not among them.
struct Sizes {
  size_t largest = 0;             // V_t scratch: the largest matrix (none without matrices)
  size_t y = 1, om = 1, vec = 1;  // thin iterates Y (m x s) and Om (n x s); D of a vector
  int s_max = 1;                  // the s x s buffers
  size_t side = 1, grams = 1, eigs = 1;  // deferred S-RSIs: columns past k_max, Gram64, eigenvalues
  int matrices = 0;

  size_t bytes() const {
    const size_t ss = size_t(s_max) * s_max;
    return (largest + y + om + 2 * ss + size_t(s_max) + vec + side) * sizeof(float) +  // + G, W, tau
           (ss + size_t(s_max) + 2 + grams + eigs) * sizeof(double) +  // Gd, eig
           (1 + size_t(matrices) + 1) * sizeof(int) +                  // info, batch_info
           Reducer::kPartials * sizeof(double) + kSlots * sizeof(double);
  }
};

Sizes sizes(const optim::Settings& st, const ParamTable& table) {
  Sizes z;
  for (const ParamSpec& p : table.params) {
    if (!p.is_matrix()) {
      z.vec = std::max(z.vec, p.numel);
      continue;
    }
    const int s = st.thin_cols(p), k_max = st.rule(p).k_max;
    z.largest = std::max(z.largest, p.numel);
    z.s_max = std::max(z.s_max, s);
    z.y = std::max(z.y, size_t(p.rows) * s), z.om = std::max(z.om, size_t(p.cols) * s);
    z.side += size_t(p.rows + p.cols) * (s - k_max);
    z.grams += size_t(s) * s, z.eigs += size_t(s);
    z.matrices++;
  }
  return z;
}

template <class T>
class Adapprox final : public Optimizer<T> {
 public:
  Adapprox(const json& cfg, const ParamTable& table, Device& dev, uint64_t seed)
      : common_(cfg), s_(cfg), seed_(seed), dev_(dev), store_(dev), red_(dev),
        scal_(dev, kSlots, MemCategory::workspace, "adapprox scalars") {
    const Sizes z = sizes(s_, table);
    size_t side = 1;
    for (const ParamSpec& p : table.params) {  // same blobs, same order as the reference
      Tensor t;
      if (p.is_matrix()) {
        t.k_max = s_.rule(p).k_max;
        t.rows = int(p.rows), t.cols = int(p.cols);
        t.Q = store_.add(p, "adapprox.Q", size_t(p.rows) * t.k_max);
        t.U = store_.add(p, "adapprox.U", size_t(p.cols) * t.k_max);
        t.rank_err = store_.add(p, "adapprox.rank_err", 2);
        t.rank = s_.initial_rank(p);
        const float k0 = float(t.rank);
        if (t.rank_err) dev.to_device(t.rank_err, &k0, sizeof(float));
        const int s = s_.thin_cols(p);
        t.side = side;
        side += size_t(p.rows + p.cols) * (s - t.k_max);
        auto g = std::find_if(groups_.begin(), groups_.end(), [&](const Group& x) { return x.s == s; });
        if (g == groups_.end()) g = groups_.insert(groups_.end(), Group{s});
        t.group = int(g - groups_.begin());
        g->capacity++;
      } else {
        t.v = store_.add(p, "adapprox.v", p.numel);
      }
      if (s_.beta1 > 0) t.m1 = store_.add(p, "adapprox.m1", p.numel);
      tensors_.push_back(t);
    }
    const int s_max = z.s_max;
    if (z.largest) V_ = DeviceBuffer<float>(dev, z.largest, MemCategory::workspace, "adapprox V_t");
    auto thin = [&](size_t n, const char* what) {
      return DeviceBuffer<float>(dev, n, MemCategory::workspace, std::string("adapprox thin ") + what);
    };
    Y_ = thin(z.y, "Y"), Om_ = thin(z.om, "Om"), G_ = thin(size_t(s_max) * s_max, "Gram");
    W_ = thin(size_t(s_max) * s_max, "W"), tau_ = thin(s_max, "tau"), dvec_ = thin(z.vec, "D");
    Gd_ = DeviceBuffer<double>(dev, size_t(s_max) * s_max, MemCategory::workspace, "adapprox thin Gram64");
    eig_ = DeviceBuffer<double>(dev, size_t(s_max) + 2, MemCategory::workspace,
                                "adapprox thin eigenvalues, failure flag, ||V||^2");
    info_ = DeviceBuffer<int>(dev, 1, MemCategory::workspace, "adapprox cuSOLVER info");
    size_t grams = 1, eigs = 1;
    int matrices = 0;
    for (Group& g : groups_) {
      g.gram = grams - 1, g.eig = eigs - 1, g.info = matrices;
      grams += size_t(g.capacity) * g.s * g.s, eigs += size_t(g.capacity) * g.s, matrices += g.capacity;
    }
    // The groups' offsets end where sizes() says, so the plan is what is allocated here.
    if (side != z.side || grams != z.grams || eigs != z.eigs || matrices != z.matrices)
      fail("internal: Adapprox's workspace layout disagrees with its sizes()");
    side_ = thin(z.side, "deferred S-RSI, iterate columns past k_max");
    batch_grams_ = DeviceBuffer<double>(dev, z.grams, MemCategory::workspace, "adapprox thin deferred Gram64 batch");
    batch_eig_ = DeviceBuffer<double>(dev, z.eigs, MemCategory::workspace, "adapprox thin deferred eigenvalues");
    batch_info_ = DeviceBuffer<int>(dev, size_t(z.matrices) + 1, MemCategory::workspace, "adapprox deferred cuSOLVER info");
    CUBLAS_CHECK(cublasCreate(&blas_));
    CUSOLVER_CHECK(cusolverDnCreate(&solver_));
    CUSOLVER_CHECK(cusolverDnCreateParams(&params_));
    int lwork = 1, dlwork = 1;
    size_t eig_bytes = 1, eig_host_bytes = 1, batch_bytes = 1;
    for (const ParamSpec& p : table.params) {
      if (!p.is_matrix()) continue;
      const int m = int(p.rows), s = s_.thin_cols(p);
      int a = 0, b = 0, d = 0;
      size_t c = 0, ch = 0;
      CUSOLVER_CHECK(cusolverDnSgeqrf_bufferSize(solver_, m, s, Y_.get(), m, &a));
      CUSOLVER_CHECK(cusolverDnSorgqr_bufferSize(solver_, m, s, s, Y_.get(), m, tau_.get(), &b));
      CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
          solver_, params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F,
          Gd_.get(), s, CUDA_R_64F, eig_.get(), CUDA_R_64F, &c, &ch, 1));
      CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(solver_, CUBLAS_FILL_MODE_UPPER, s, Gd_.get(), s, &d));
      lwork = std::max({lwork, a, b}), dlwork = std::max(dlwork, d);
      eig_bytes = std::max(eig_bytes, c), eig_host_bytes = std::max(eig_host_bytes, ch);
    }
    // The batched solve runs at begin_step() or state(), on the update stream after every
    // update that uses the V_t scratch, so its work lives there: ~125 MB for d12's 50
    // matrices in one call; d24's 98 larger ones (~0.4 GB, measured 2.35% over the plan)
    // go in as many calls as it takes to fit.
    for (Group& g : groups_) {
      auto work = [&](int count, size_t* host) {
        size_t c = 0;
        CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
            solver_, params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, g.s, CUDA_R_64F,
            batch_grams_.get(), g.s, CUDA_R_64F, batch_eig_.get(), CUDA_R_64F, &c, host, count));
        return c;
      };
      size_t ch = 0, c = work(g.chunk = g.capacity, &ch);
      while (c > V_.bytes() && g.chunk > 1) c = work(g.chunk = (g.chunk + 1) / 2, &ch);
      batch_bytes = std::max(batch_bytes, c), eig_host_bytes = std::max(eig_host_bytes, ch);
    }
    batch_work_bytes_ = batch_bytes;
    if (batch_bytes > V_.bytes())
      batch_work_ = DeviceBuffer<char>(dev, batch_bytes, MemCategory::workspace, "adapprox deferred syevBatched work");
    work_ = thin(size_t(lwork), "cuSOLVER work");
    dwork_ = DeviceBuffer<double>(dev, size_t(dlwork), MemCategory::workspace, "adapprox thin cuSOLVER work64");
    eig_work_ = DeviceBuffer<char>(dev, eig_bytes, MemCategory::workspace, "adapprox thin syevBatched work");
    eig_host_work_.resize(eig_host_bytes);
  }
  ~Adapprox() override {
    cusolverDnDestroyParams(params_);
    cusolverDnDestroy(solver_);
    cublasDestroy(blas_);
  }

  void begin_step(int64_t t, float lr) override {
    finish_deferred();
    t_ = t, lr_ = lr;
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    const Tensor& t = tensors_[p.id];
    CUBLAS_CHECK(cublasSetStream(blas_, update_stream()));
    CUSOLVER_CHECK(cusolverDnSetStream(solver_, update_stream()));
    float* Dir;
    if (p.is_matrix()) {
      Dir = V_.get();
      matrix_step(p, dev_ptr(grad));
    } else {
      Dir = dvec_.get();
      vector_direction<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(
          Dir, t.v, dev_ptr<T>(grad), p.numel, float(s_.beta2), float(s_.eps));
      CUDA_CHECK_LAUNCH();
    }
    // Spec 6.5 steps 5-8 (and 6.7): clip D, momentum, guidance, decoupled decay.
    double* s = scal_.get();
    red_.sum(Squares<float>{Dir}, p.numel, s + kSumD2);
    clip_and_moment<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(Dir, t.m1, s + kSumD2, p.numel,
                                                                s_.clip, float(s_.beta1));
    CUDA_CHECK_LAUNCH();
    const bool guided = t.m1 && s_.cos_guidance;
    if (guided) {
      red_.sum(Dot{Dir, t.m1}, p.numel, s + kDot);
      red_.sum(Squares<float>{Dir}, p.numel, s + kSumD2);
      red_.sum(Squares<float>{t.m1}, p.numel, s + kSumM2);
    }
    adapprox_apply<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(
        weights(param, master, seed_, t_, p.id), t.m1 ? t.m1 : Dir, s, guided, p.numel, lr_,
        float(common_.wd(p)));
    CUDA_CHECK_LAUNCH();
  }

  std::vector<StateBlob> state() override {
    finish_deferred();
    for (Tensor& t : tensors_)
      if (t.rank_err && !t.stale) {
        const float host[2] = {float(t.rank), t.xi_bar};
        // Pageable source: cudaMemcpyAsync copies it before returning.
        CUDA_CHECK(cudaMemcpyAsync(t.rank_err, host, sizeof(host), cudaMemcpyHostToDevice, update_stream()));
        t.stale = true;  // the caller may write the blob (a checkpoint load)
      }
    return store_.blobs();
  }

 private:
  struct Tensor {
    int k_max = 0;
    float *Q = nullptr, *U = nullptr, *rank_err = nullptr, *v = nullptr, *m1 = nullptr;
    int rank = 0;       // the truth between state() calls
    float xi_bar = 0;
    bool stale = false;  // rank_err on the device may be newer than rank, xi_bar
    int group = 0;       // groups_ entry of its s
    size_t side = 0;     // its iterate columns past k_max in side_ (Y's, then Om's)
    int slot = -1;       // position in its group's batch while its S-RSI is deferred
    int rows = 0, cols = 0;
    double norm_sq = 0;  // ||V_t||^2 of the deferred S-RSI
  };
  // The matrices of one thin width s: their deferred Gram matrices sit side by side (at
  // most capacity of them) for one batched eigensolver call.
  struct Group {
    int s = 0, capacity = 0, count = 0;
    int chunk = 0;             // matrices per eigensolver call (its work fits the V_t scratch)
    size_t gram = 0, eig = 0;  // offsets into batch_grams_, batch_eig_
    int info = 0;              // offset into batch_info_
  };
  // Spec 6.5 steps 1-4: V_t, AS-RSI into (Q, U), then D over the V_t scratch.
  template <class D>
  void matrix_step(const ParamSpec& p, const D* g) {
    Tensor& t = tensors_[p.id];
    const int m = int(p.rows), n = int(p.cols);
    float* V = V_.get();  // row-major m x n = column-major n x m for cuBLAS
    if (t.slot >= 0) finish_deferred();  // an update without begin_step in between
    if (t.stale) {
      float rank_err[2];
      copy_to_host_on_update_stream(rank_err, t.rank_err, sizeof(rank_err));
      t.rank = int(rank_err[0]), t.xi_bar = rank_err[1], t.stale = false;
    }
    const int k = t.rank;
    fresh_second_moment<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(V, g, p.numel,
                                                                    float(1 - s_.beta2));
    CUDA_CHECK_LAUNCH();
    const float b2 = float(s_.beta2), one = 1.f;
    CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, n, m, k, &b2, t.U, n, t.Q, m, &one, V, n));
    red_.sum(Squares<float>{V}, p.numel, eig_.get() + (eig_.size() - 1));
    double norm_sq = 0;  // arrives with the first S-RSI's eigenvalues

    // as_rsi (srsi.cpp), step for step.
    const optim::RankRule rule = s_.rule(p);
    const uint64_t seed = optim::mix_seed(seed_, t_, p.id);
    auto rel_error = [&](double kept) {
      return norm_sq > 0 ? std::sqrt(std::max(0.0, norm_sq - kept) / norm_sq) : 0.0;
    };
    auto head = [](const std::vector<double>& x, int j) {
      double s = 0;
      for (int i = 0; i < j; i++) s += x[i];
      return s;
    };
    std::vector<double> lambda;
    if (!s_.refactored && k == rule.k_max && !(t.xi_bar < s_.xi_thr / 2)) {
      // Neither growth nor shrinking can follow: the eigenvalues only feed xi_bar, so
      // the eigensolver waits for finish_deferred(), batched with the other matrices.
      if (srsi_deferred(p, k, rule, seed, &norm_sq)) {
        matrix_direction<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(V, g, p.numel, float(s_.eps));
        CUDA_CHECK_LAUNCH();
        return;
      }
      lambda = srsi(p, k, rule, seed, nullptr, true);
    } else {
      lambda = srsi(p, k, rule, seed, &norm_sq);
    }
    int rank = int(lambda.size());
    double xi = rel_error(head(lambda, rank));
    while (xi > rule.xi_thr && rank < rule.k_max) {
      rank = std::min(rank + rule.delta_k, rule.k_max);
      lambda = srsi(p, rank, rule, seed, nullptr);
      xi = rel_error(head(lambda, rank));
    }
    if (t.xi_bar < s_.xi_thr / 2) {  // shrink allowed
      int k_new = rank;
      while (k_new > rule.k_min && rel_error(head(lambda, k_new - 1)) < rule.xi_thr / 2) k_new--;
      if (k_new < rank) rank = k_new, xi = rel_error(head(lambda, rank));
    }
    CUDA_CHECK(cudaMemsetAsync(t.Q + size_t(m) * rank, 0, size_t(m) * (t.k_max - rank) * sizeof(float), update_stream()));
    CUDA_CHECK(cudaMemsetAsync(t.U + size_t(n) * rank, 0, size_t(n) * (t.k_max - rank) * sizeof(float), update_stream()));
    t.rank = rank, t.xi_bar = float(s_.rho * t.xi_bar + (1 - s_.rho) * xi);

    if (s_.refactored) {  // V_hat = Q_t U_t^T instead of the rebuilt V_t
      const float zero = 0.f;
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, n, m, rank, &one, t.U, n, t.Q, m, &zero, V, n));
    }
    matrix_direction<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(V, g, p.numel, float(s_.eps));
    CUDA_CHECK_LAUNCH();
  }

  // S-RSI of the V_t scratch at rank k: writes the first k columns of Q and U and
  // returns lambda (the k largest eigenvalues of U^T U, descending); with norm_sq, also
  // ||V_t||^2 from the slot after the eigenvalues, in the same copy.
  std::vector<double> srsi(const ParamSpec& p, int k, const optim::RankRule& rule, uint64_t seed,
                           double* norm_sq, bool householder = false) {
    const Tensor& t = tensors_[p.id];
    const int m = int(p.rows), n = int(p.cols), full = std::min(m, n);
    k = std::min(k, full);
    const int s = std::min(k + rule.p, full);
    const float one = 1.f, zero = 0.f;
    float *Y = Y_.get(), *Om = Om_.get();
    iterate(p, s, rule, seed, householder);
    widen<<<ceil_div(size_t(s) * s, kThreads), kThreads, 0, update_stream()>>>(Gd_.get(), G_.get(), size_t(s) * s);
    CUDA_CHECK_LAUNCH();
    CUSOLVER_CHECK(cusolverDnXsyevBatched(solver_, params_, CUSOLVER_EIG_MODE_VECTOR,
                                          CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F, Gd_.get(), s,
                                          CUDA_R_64F, eig_.get(), CUDA_R_64F, eig_work_.get(),
                                          eig_work_.size(), eig_host_work_.data(),
                                          eig_host_work_.size(), info_.get(), 1));
    std::vector<double> eig(eig_.size());
    copy_to_host_on_update_stream(eig.data(), eig_.get(), eig.size() * sizeof(double));
    if (norm_sq) *norm_sq = eig.back();
    const bool finite = std::all_of(eig.begin(), eig.begin() + s, [](double x) { return std::isfinite(x); });
    if (!householder && (eig[eig.size() - 2] != 0 || !finite)) return srsi(p, k, rule, seed, nullptr, true);
    std::vector<double> lambda(k);
    for (int j = 0; j < k; j++) lambda[j] = std::max(0.0, eig[s - 1 - j]);
    top_eigenvectors<<<ceil_div(size_t(s) * k, kThreads), kThreads, 0, update_stream()>>>(W_.get(), Gd_.get(), s, k);
    CUDA_CHECK_LAUNCH();
    CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, m, k, s, &one, Y, m, W_.get(), s, &zero, t.Q, m));
    CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, n, k, s, &one, Om, n, W_.get(), s, &zero, t.U, n));
    return lambda;
  }

  // S-RSI up to its Gram matrix: the sketch, l rounds of Y = V Om, orth(Y), Om = V^T Y,
  // then G_ = Om^T Om (fp32); a failed Cholesky is flagged in eig_'s failure slot.
  void iterate(const ParamSpec& p, int s, const optim::RankRule& rule, uint64_t seed, bool householder) {
    const int m = int(p.rows), n = int(p.cols);
    const float one = 1.f, zero = 0.f;
    float *V = V_.get(), *Y = Y_.get(), *Om = Om_.get();
    double* failed = eig_.get() + (eig_.size() - 2);
    CUDA_CHECK(cudaMemsetAsync(failed, 0, sizeof(double), update_stream()));
    sketch<<<elementwise_blocks(size_t(n) * s), kThreads, 0, update_stream()>>>(Om, size_t(n) * s, seed);
    CUDA_CHECK_LAUNCH();
    for (int it = 0; it < rule.l; it++) {
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, m, s, n, &one, V, n, Om, n, &zero, Y, m));
      orthonormalize(Y, m, s, householder, failed);
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, n, s, m, &one, V, n, Y, m, &zero, Om, n));
    }
    CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, s, s, n, &one, Om, n, Om, n, &zero, G_.get(), s));
  }

  // S-RSI at k = k_max up to the Gram matrix, which goes into its group's batch; Y and Om
  // wait in the factors' own state (first k columns) and side_ (the rest) until
  // finish_deferred(). One small copy brings the failure flag and ||V_t||^2: on a failed
  // Cholesky (or a non-finite Gram) returns false with nothing deferred.
  bool srsi_deferred(const ParamSpec& p, int k, const optim::RankRule& rule, uint64_t seed, double* norm_sq) {
    Tensor& t = tensors_[p.id];
    Group& g = groups_[t.group];
    const int m = int(p.rows), n = int(p.cols), s = g.s;
    iterate(p, s, rule, seed, false);
    const size_t ss = size_t(s) * s;
    double* flag_norm = eig_.get() + (eig_.size() - 2);  // failure flag, then ||V_t||^2
    widen_checked<<<ceil_div(ss, kThreads), kThreads, 0, update_stream()>>>(
        batch_grams_.get() + g.gram + size_t(g.count) * ss, G_.get(), ss, flag_norm);
    CUDA_CHECK_LAUNCH();
    double host[2];
    copy_to_host_on_update_stream(host, flag_norm, sizeof(host));
    *norm_sq = t.norm_sq = host[1];
    if (host[0] != 0) return false;
    t.slot = g.count++;
    pending_.push_back(p.id);
    const size_t extra = size_t(s - k);
    auto stash = [&](float* to, float* side, const float* from, size_t rows) {
      CUDA_CHECK(cudaMemcpyAsync(to, from, rows * k * sizeof(float), cudaMemcpyDeviceToDevice, update_stream()));
      CUDA_CHECK(cudaMemcpyAsync(side, from + rows * k, rows * extra * sizeof(float), cudaMemcpyDeviceToDevice,
                                 update_stream()));
    };
    stash(t.Q, side_.get() + t.side, Y_.get(), size_t(m));
    stash(t.U, side_.get() + t.side + size_t(m) * extra, Om_.get(), size_t(n));
    return true;
  }

  // The deferred S-RSIs' second half: batched eigensolver calls per group, one copy of
  // all eigenvalues, then per matrix xi_bar (its rank stays k_max) and Q = Y W, U = Om W.
  void finish_deferred() {
    if (pending_.empty()) return;
    CUBLAS_CHECK(cublasSetStream(blas_, update_stream()));
    CUSOLVER_CHECK(cusolverDnSetStream(solver_, update_stream()));
    for (const Group& g : groups_)
      for (int at = 0; at < g.count; at += g.chunk) {
        const size_t ss = size_t(g.s) * g.s;
        CUSOLVER_CHECK(cusolverDnXsyevBatched(
            solver_, params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, g.s, CUDA_R_64F,
            batch_grams_.get() + g.gram + at * ss, g.s, CUDA_R_64F,
            batch_eig_.get() + g.eig + size_t(at) * g.s, CUDA_R_64F, batch_work(), batch_work_bytes_,
            eig_host_work_.data(), eig_host_work_.size(), batch_info_.get() + g.info + at,
            std::min(g.chunk, g.count - at)));
      }
    std::vector<double> eig(batch_eig_.size());
    copy_to_host_on_update_stream(eig.data(), batch_eig_.get(), eig.size() * sizeof(double));
    const float one = 1.f, zero = 0.f;
    for (int id : pending_) {
      Tensor& t = tensors_[id];
      const Group& g = groups_[t.group];
      const int m = t.rows, n = t.cols, s = g.s, k = t.rank;
      const double* vals = eig.data() + g.eig + size_t(t.slot) * s;
      double kept = 0;  // the k largest, largest first, as srsi() sums them
      for (int j = 0; j < k; j++) kept += std::max(0.0, vals[s - 1 - j]);
      const double norm_sq = t.norm_sq;
      const double xi = norm_sq > 0 ? std::sqrt(std::max(0.0, norm_sq - kept) / norm_sq) : 0.0;
      t.xi_bar = float(s_.rho * t.xi_bar + (1 - s_.rho) * xi);
      top_eigenvectors<<<ceil_div(size_t(s) * k, kThreads), kThreads, 0, update_stream()>>>(
          W_.get(), batch_grams_.get() + g.gram + size_t(t.slot) * s * s, s, k);
      CUDA_CHECK_LAUNCH();
      const size_t extra = size_t(s - k);
      auto unstash = [&](float* to, const float* from, const float* side, size_t rows) {
        CUDA_CHECK(cudaMemcpyAsync(to, from, rows * k * sizeof(float), cudaMemcpyDeviceToDevice, update_stream()));
        CUDA_CHECK(cudaMemcpyAsync(to + rows * k, side, rows * extra * sizeof(float), cudaMemcpyDeviceToDevice,
                                   update_stream()));
      };
      unstash(Y_.get(), t.Q, side_.get() + t.side, size_t(m));
      unstash(Om_.get(), t.U, side_.get() + t.side + size_t(m) * extra, size_t(n));
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, m, k, s, &one, Y_.get(), m, W_.get(), s, &zero, t.Q, m));
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, n, k, s, &one, Om_.get(), n, W_.get(), s, &zero, t.U, n));
      t.slot = -1;
    }
    for (Group& g : groups_) g.count = 0;
    pending_.clear();
  }

  // orth(Y) in place, Y m x s: CholeskyQR2 (twice: G = Y^T Y, R = chol(G) in double,
  // Y <- Y R^-1), a failed Cholesky flagged in *failed; or Householder QR.
  void orthonormalize(float* Y, int m, int s, bool householder, double* failed) {
    if (householder) {
      CUSOLVER_CHECK(cusolverDnSgeqrf(solver_, m, s, Y, m, tau_.get(), work_.get(), int(work_.size()), info_.get()));
      CUSOLVER_CHECK(cusolverDnSorgqr(solver_, m, s, s, Y, m, tau_.get(), work_.get(), int(work_.size()), info_.get()));
      return;
    }
    const float one = 1.f, zero = 0.f;
    const size_t ss = size_t(s) * s;
    for (int pass = 0; pass < 2; pass++) {
      CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, s, s, m, &one, Y, m, Y, m, &zero, G_.get(), s));
      widen<<<ceil_div(ss, kThreads), kThreads, 0, update_stream()>>>(Gd_.get(), G_.get(), ss);
      CUDA_CHECK_LAUNCH();
      CUSOLVER_CHECK(cusolverDnDpotrf(solver_, CUBLAS_FILL_MODE_UPPER, s, Gd_.get(), s, dwork_.get(),
                                      int(dwork_.size()), info_.get()));
      note_failure<<<1, 1, 0, update_stream()>>>(info_.get(), failed);
      narrow<<<ceil_div(ss, kThreads), kThreads, 0, update_stream()>>>(G_.get(), Gd_.get(), ss);
      CUDA_CHECK_LAUNCH();
      CUBLAS_CHECK(cublasStrsm(blas_, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                               CUBLAS_DIAG_NON_UNIT, m, s, &one, G_.get(), s, Y, m));
    }
  }

  optim::Common common_;
  optim::Settings s_;
  uint64_t seed_;
  Device& dev_;
  optim::StateStore store_;
  Reducer red_;
  DeviceBuffer<double> scal_;
  std::vector<Tensor> tensors_;
  DeviceBuffer<float> V_, Y_, Om_, G_, W_, tau_, dvec_, work_;
  DeviceBuffer<double> Gd_, eig_, dwork_;
  DeviceBuffer<int> info_;
  DeviceBuffer<char> eig_work_, batch_work_;
  size_t batch_work_bytes_ = 0;
  void* batch_work() { return batch_work_.get() ? static_cast<void*>(batch_work_.get()) : static_cast<void*>(V_.get()); }
  std::vector<Group> groups_;
  std::vector<int> pending_;  // ids of the matrices whose S-RSI waits in finish_deferred()
  DeviceBuffer<float> side_;
  DeviceBuffer<double> batch_grams_, batch_eig_;
  DeviceBuffer<int> batch_info_;
  std::vector<char> eig_host_work_;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  cusolverDnParams_t params_ = nullptr;
  int64_t t_ = 0;
  float lr_ = 0;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adapprox(const json& cfg, const ParamTable& table,
                                                 Device& dev, uint64_t seed) {
  return std::make_unique<Adapprox<T>>(cfg, table, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_adapprox<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_adapprox<bf16>(const json&, const ParamTable&, Device&, uint64_t);

size_t adapprox_workspace_bytes(const json& cfg, const ParamTable& table) {
  return sizes(optim::Settings(cfg), table).bytes();
}

}  // namespace gpt2::cuda
