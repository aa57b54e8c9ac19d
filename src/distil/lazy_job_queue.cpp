// OneFlow 0.9.0's queue of running compiled graphs, made safe against a graph that finishes early.
//
// LaunchLazyJobInstructionPolicy::Compute (lazy_job_instruction_policy.h) hands a graph's job to its
// actors (two Buffer::Push calls) and only then records it as running (LazyJobStreamPolicy::
// EnqueueNNGraph). When the job is done, an actor thread calls DequeueNNGraph, which pops the queue. A
// short job on a busy CPU can finish while the VM thread is still between the push and the enqueue:
// the pop then finds the queue empty, and std::queue::pop on an empty deque releases a stale
// weak_ptr, a SIGSEGV in DequeueNNGraph (bench/README.md, "Crashes", has the backtrace) or silent
// damage. liboneflow calls both functions through its PLT, so these definitions, loaded into the global
// scope before `import oneflow` (distil/native.py), take their place: a pop that comes before its push
// is remembered, and the push it belongs to is then dropped. The layout below is that of the 0.9.0
// wheel (read off its machine code: the queue at +0x08, the mutex at +0x58, the condition at +0x80);
// distil/native.py loads this only for that build of liboneflow.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <queue>

namespace oneflow {
class NNGraphIf;
namespace vm {

class LazyJobStreamPolicy {
 public:
  void EnqueueNNGraph(const std::shared_ptr<NNGraphIf>& nn_graph);
  void DequeueNNGraph();

 private:
  friend int layout_matches();
  friend std::size_t queued(const LazyJobStreamPolicy& policy);
  void* vtable_;
  std::queue<std::weak_ptr<NNGraphIf>> queue_;
  std::mutex mutex_;
  std::condition_variable cond_;
};

}  // namespace vm
}  // namespace oneflow

namespace {

// Pops that came before their push, per queue object (OneFlow has one lazy-job stream per device).
std::atomic<long> pops{0}, early_pops{0};  // every DequeueNNGraph, and those that came before their push
std::mutex early_mutex;
struct Early {
  const void* queue;
  std::size_t count;
};
Early early[16];

std::size_t* early_count(const void* queue) {
  std::lock_guard<std::mutex> lock(early_mutex);
  for (Early& slot : early) {
    if (slot.queue == queue) return &slot.count;
  }
  for (Early& slot : early) {
    if (slot.queue == nullptr) {
      slot.queue = queue;
      return &slot.count;
    }
  }
  return nullptr;  // never: more lazy-job streams than slots; the pop is then OneFlow's own
}

}  // namespace

namespace oneflow {
namespace vm {

int layout_matches() {
  return offsetof(LazyJobStreamPolicy, queue_) == 0x08 && offsetof(LazyJobStreamPolicy, mutex_) == 0x58 &&
         offsetof(LazyJobStreamPolicy, cond_) == 0x80;
}

std::size_t queued(const LazyJobStreamPolicy& policy) { return policy.queue_.size(); }

void LazyJobStreamPolicy::EnqueueNNGraph(const std::shared_ptr<NNGraphIf>& nn_graph) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::size_t* popped_early = early_count(this);
  if (popped_early != nullptr && *popped_early > 0) {
    --*popped_early;  // this graph has already finished: nothing is running
    return;
  }
  queue_.emplace(nn_graph);
}

void LazyJobStreamPolicy::DequeueNNGraph() {
  std::unique_lock<std::mutex> lock(mutex_);
  ++pops;
  if (queue_.empty()) {
    ++early_pops;
    std::size_t* popped_early = early_count(this);
    if (popped_early != nullptr) ++*popped_early;
  } else {
    queue_.pop();
  }
  cond_.notify_all();
}

}  // namespace vm
}  // namespace oneflow

// How many graph runs have ended through this code, and how many of them before they were recorded as running.
extern "C" long distil_lazy_job_pops() { return pops; }
extern "C" long distil_lazy_job_early_pops() { return early_pops; }

// For the tests: the early pop on a stand-in object. 0 when it behaves, else the step that failed.
extern "C" int distil_lazy_job_queue_selftest() {
  using oneflow::vm::LazyJobStreamPolicy;
  if (!oneflow::vm::layout_matches()) return 1;
  LazyJobStreamPolicy policy{};
  std::shared_ptr<oneflow::NNGraphIf> graph(reinterpret_cast<oneflow::NNGraphIf*>(&policy), [](void*) {});
  policy.DequeueNNGraph();  // the job finished before it was recorded as running
  policy.EnqueueNNGraph(graph);
  policy.EnqueueNNGraph(graph);  // the next run, recorded in time
  policy.DequeueNNGraph();
  policy.DequeueNNGraph();  // one pop too many again, then its push
  policy.EnqueueNNGraph(graph);
  return *early_count(&policy) == 0 && oneflow::vm::queued(policy) == 0 ? 0 : 2;
}
