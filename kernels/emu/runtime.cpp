// The kernel emulator's runtime: runs a launch (grid, block, dynamic shared memory) on the
// host. Blocks are shared out to one worker OS thread per core; on its worker, each thread of
// a block is a fiber with its own stack; a fiber that stops at a barrier switches straight to
// the next one of the pass (`next_fiber`), and the last returns to the worker's scheduler (see
// emu.h for the model). Built only with the `cuda-emu` feature; the Rust side
// calls `emu_launch` through the typed launchers in src/backend/cuda/launch.rs.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#else
#define EMU_TSAN 0
#endif

// ---- context switch --------------------------------------------------------------------
// lorafuse_emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control
// word on the current stack, stores the stack pointer in *save, and resumes the context whose
// stack pointer is `to`.
#if defined(__x86_64__)
extern "C" void lorafuse_emu_switch(void** save, void* to);
asm(R"(
    .pushsection .text
    .globl lorafuse_emu_switch
    .hidden lorafuse_emu_switch
    .type lorafuse_emu_switch,@function
lorafuse_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lorafuse_emu_switch,.-lorafuse_emu_switch
    .popsection
)");
#else
#include <ucontext.h>
#endif

namespace emu {

thread_local Thread* current = nullptr;

namespace {

// The running launch's architecture (set under the launch lock before its workers start).
int launch_sm = 80;
// This worker's counts for the running launch, added to `launch_tally` when its blocks end.
thread_local uint64_t counts[COUNTED];
uint64_t launch_tally[COUNTED];
std::mutex tally_mu;

enum Wait : int { RUNNING = 0, AT_BLOCK = 1, AT_WARP = 2 };

// Bookkeeping shared between fibers and the scheduler goes through relaxed atomics: fibers of
// one worker never run at the same time, and under ThreadSanitizer the barriers' explicit
// release/acquire are then the only synchronisation it sees between threads of a block.
template <typename T>
T ld(const T& x) {
    return __atomic_load_n(&x, __ATOMIC_RELAXED);
}
template <typename T>
void st(T& x, T v) {
    __atomic_store_n(&x, v, __ATOMIC_RELAXED);
}

constexpr size_t STACK = 256 * 1024;  // per fiber; a guard page below it

struct Fiber {
    Thread t;
    void* sp = nullptr;
    unsigned char* stack = nullptr;  // mapping base (guard page first)
    int wait = RUNNING;
    unsigned wait_gen = 0;
    int done = 0;
    unsigned char parity = 0;  // which warp slot set its next exchange uses
    void* tsan = nullptr;  // its ThreadSanitizer fiber, when built with TSan
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
};

struct Gate {  // a barrier's counters
    unsigned live = 0, arrived = 0, gen = 0;
};

// A warp's exchange slots and combined results, two sets used alternately (a lane's `parity`):
// a lane can be one exchange ahead of a slower lane still reading the previous one, never two.
struct Warp {
    Gate gate;
    alignas(16) unsigned char slots[2][32][WARP_SLOT];
    alignas(16) unsigned char results[2][32][WARP_SLOT];
};

// One worker's state: its fibers (kept across launches), the scheduler's context, the block
// being run.
struct Worker {
    std::vector<Fiber*> fibers;
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_ctx;
#endif
#if EMU_TSAN
    void* sched_tsan = nullptr;
#endif
    Gate block;
    std::vector<Warp> warps;
    std::vector<unsigned char> smem;
    unsigned char* smem_base = nullptr;
    void (*thunk)(void*) = nullptr;
    void* closure = nullptr;
    Fiber* running = nullptr;
    int block_start = 0, block_end = 0;  // addresses used as TSan sync objects
    // The passes over the block's threads (`next_fiber`, run by the fibers themselves, so
    // through relaxed atomics like the rest of the bookkeeping): the block's thread count, the
    // direction, the next position in the pass, and whether this pass found every thread
    // returned / resumed one.
    unsigned n = 0, pos = 0;
    bool up = true, all_done = true, progressed = false;
};

thread_local Worker* worker = nullptr;

// Whether `f` waits at a barrier that not every live thread has reached yet.
bool waiting(const Worker& w, const Fiber* f) {
    int wt = ld(f->wait);
    if (wt == AT_BLOCK) return ld(f->wait_gen) == ld(w.block.gen);
    if (wt == AT_WARP) return ld(f->wait_gen) == ld(w.warps[f->t.linear >> 5].gate.gen);
    return false;
}

// The next thread of the block to run, or nullptr when all have returned. The threads run in
// passes over the block, ascending in even blocks and descending in odd ones; a pass skips
// those that returned or wait at a barrier not everyone has reached. A pass that resumes no
// thread while some have not returned is a deadlock.
Fiber* next_fiber(Worker& w) {
    for (;;) {
        unsigned n = ld(w.n), k = ld(w.pos);
        if (k == n) {
            if (ld(w.all_done)) return nullptr;
            if (!ld(w.progressed)) {
                std::fprintf(stderr,
                             "emu: deadlock in block (%u, %u, %u): threads wait at barriers that "
                             "not every live thread of the block (or warp) reaches\n",
                             w.fibers[0]->t.bid.x, w.fibers[0]->t.bid.y, w.fibers[0]->t.bid.z);
                std::abort();
            }
            k = 0;
            st(w.all_done, true);
            st(w.progressed, false);
        }
        st(w.pos, k + 1);
        Fiber* f = w.fibers[ld(w.up) ? k : n - 1 - k];
        if (ld(f->done)) continue;
        st(w.all_done, false);
        if (waiting(w, f)) continue;
        st(w.progressed, true);
        st(f->wait, int(RUNNING));
        return f;
    }
}

// Control passes from `from` to `next`, either of them a thread of the block or nullptr for
// the worker's scheduler: the scheduler starting a block, a thread that stops (at a barrier,
// or returned) handing on directly (one context switch), the last one back to the scheduler.
// When `next` is `from` itself (its barrier completed), it simply continues.
void switch_to(Fiber* from, Fiber* next) {
    if (next == from) return;
    Worker& w = *worker;
    st(w.running, next);
    st(current, next ? &next->t : static_cast<Thread*>(nullptr));
#if EMU_TSAN
    __tsan_switch_to_fiber(next ? next->tsan : w.sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__x86_64__)
    lorafuse_emu_switch(from ? &from->sp : &w.sched_sp, next ? next->sp : w.sched_sp);
#else
    swapcontext(from ? &from->ctx : &w.sched_ctx, next ? &next->ctx : &w.sched_ctx);
#endif
}

// The running thread waits at a barrier; the next one in pass order goes on.
void yield_fiber() {
    Fiber* f = ld(worker->running);
    switch_to(f, next_fiber(*worker));
}

// Arrive at `g` and wait until every live member has arrived. The last to arrive runs
// `last(ctx)` (when given) before the others go on: after every other member's release and
// before its own, so under ThreadSanitizer it sees what they wrote and they see what it wrote.
void arrive_and_wait(Gate& g, int kind, void (*last)(void*) = nullptr, void* ctx = nullptr) {
    Fiber* f = ld(worker->running);
    unsigned gen = ld(g.gen);
    st(f->wait, kind);
    st(f->wait_gen, gen);
    unsigned a = ld(g.arrived) + 1;
    bool is_last = a >= ld(g.live);
    if (is_last && last) {
#if EMU_TSAN
        __tsan_acquire(&g);
#endif
        last(ctx);
    }
#if EMU_TSAN
    __tsan_release(&g);
#endif
    if (is_last) {
        st(g.arrived, 0u);
        st(g.gen, gen + 1);
    } else {
        st(g.arrived, a);
    }
    yield_fiber();
#if EMU_TSAN
    __tsan_acquire(&g);
#endif
}

void reset(Gate& g, unsigned live) {
    st(g.live, live);
    st(g.arrived, 0u);
    st(g.gen, 0u);
}

// A thread leaves a gate for good (it returned): the others no longer wait for it.
void leave(Gate& g) {
    unsigned live = ld(g.live) - 1;
    st(g.live, live);
    if (ld(g.arrived) > 0 && ld(g.arrived) >= live) {
        st(g.arrived, 0u);
        st(g.gen, ld(g.gen) + 1);
    }
}

[[noreturn]] void fiber_main() {
    for (;;) {
        Worker& w = *worker;
#if EMU_TSAN
        __tsan_acquire(&w.block_start);
#endif
        Fiber* f = ld(w.running);
        w.thunk(w.closure);
        // The thread returned: it leaves the block's and its warp's barriers.
        leave(w.block);
        leave(w.warps[f->t.linear >> 5].gate);
        st(f->done, 1);
        // Chosen before the release: what this thread read of the others' state (next_fiber)
        // is then ordered before the scheduler rewrites it for the next block.
        Fiber* next = next_fiber(w);
#if EMU_TSAN
        __tsan_release(&w.block_end);
#endif
        switch_to(f, next);  // resumed again at the next block
    }
}

#if !defined(__x86_64__)
void fiber_trampoline() { fiber_main(); }
#endif

Fiber* new_fiber() {
    Fiber* f = new Fiber();
    long page = sysconf(_SC_PAGESIZE);
    size_t len = STACK + size_t(page);
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
        std::fprintf(stderr, "emu: cannot map a fiber stack\n");
        std::abort();
    }
    mprotect(m, size_t(page), PROT_NONE);  // overflow faults instead of corrupting
    f->stack = static_cast<unsigned char*>(m);
    unsigned char* top = f->stack + len;
#if defined(__x86_64__)
    // The frame lorafuse_emu_switch pops: MXCSR + x87 control word, r15..r12, rbx, rbp, then
    // the return address (fiber_main); fiber_main starts with rsp = 8 (mod 16), as after a call.
    uintptr_t t16 = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(t16 - 72);
    uint32_t mxcsr = 0x1f80;
    uint16_t fpucw = 0x037f;
    std::memset(sp, 0, 72);
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &fpucw, 2);
    sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack + page;
    f->ctx.uc_stack.ss_size = STACK;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, fiber_trampoline, 0);
#endif
#if EMU_TSAN
    f->tsan = __tsan_create_fiber(0);
#endif
    return f;
}

// Runs blocks first, first + step, ... of the launch on this worker.
void run_blocks(unsigned first, unsigned step, dim3 gdim, dim3 bdim, size_t smem_bytes,
                void (*thunk)(void*), void* closure) {
    // Set up once per OS thread, before any of its fibers exists; kept for its lifetime.
    static thread_local Worker* mine = [] {
        Worker* m = new Worker();
        worker = m;
#if EMU_TSAN
        m->sched_tsan = __tsan_get_current_fiber();
#endif
        return m;
    }();
    Worker& w = *mine;
    unsigned n = bdim.x * bdim.y * bdim.z;
    while (w.fibers.size() < n) w.fibers.push_back(new_fiber());
    w.warps.resize((n + 31) / 32);
    w.smem.resize(smem_bytes + 16);
    w.smem_base = w.smem.data() + (16 - reinterpret_cast<uintptr_t>(w.smem.data()) % 16) % 16;
    w.thunk = thunk;
    w.closure = closure;
    unsigned blocks = gdim.x * gdim.y * gdim.z;
    for (unsigned b = first; b < blocks; b += step) {
        dim3 bid{b % gdim.x, b / gdim.x % gdim.y, b / (gdim.x * gdim.y)};
#if EMU_TSAN
        __tsan_acquire(&w.block_end);
#endif
        std::memset(w.smem_base, 0xff, smem_bytes);
        reset(w.block, n);
        for (unsigned i = 0; i < w.warps.size(); ++i)
            reset(w.warps[i].gate, std::min(32u, n - i * 32));
        for (unsigned i = 0; i < n; ++i) {
            Fiber* f = w.fibers[i];
            f->t = Thread{dim3{i % bdim.x, i / bdim.x % bdim.y, i / (bdim.x * bdim.y)}, bid, bdim,
                          gdim, i, nullptr};
            st(f->wait, int(RUNNING));
            st(f->done, 0);
            f->parity = 0;
        }
#if EMU_TSAN
        __tsan_release(&w.block_start);
#endif
        // The threads switch from one to the next themselves (`yield_fiber`); the last to
        // stop returns here.
        st(w.n, n);
        st(w.pos, 0u);
        st(w.up, (b & 1u) == 0);
        st(w.all_done, true);
        st(w.progressed, false);
        switch_to(nullptr, next_fiber(w));
#if EMU_TSAN
        __tsan_acquire(&w.block_end);  // what the block wrote, for whoever reads next
#endif
    }
    st(current, static_cast<Thread*>(nullptr));
    std::lock_guard<std::mutex> g(tally_mu);
    for (int i = 0; i < COUNTED; ++i) {
        launch_tally[i] += __atomic_exchange_n(&counts[i], 0, __ATOMIC_RELAXED);
    }
}

}  // namespace

int sm() { return __atomic_load_n(&launch_sm, __ATOMIC_RELAXED); }

// Relaxed atomics: the worker's fibers take turns on `counts`, but ThreadSanitizer sees each
// fiber as a thread of its own.
void tally(Counted what) { __atomic_fetch_add(&counts[what], 1, __ATOMIC_RELAXED); }

void syncthreads() { arrive_and_wait(worker->block, AT_BLOCK); }

void* dyn_smem() { return worker->smem_base; }

namespace {

// A warp exchange in flight: its warp, slot set and combining step (for the last lane).
struct Exchange {
    Warp* warp;
    unsigned char parity;
    void (*combine)(const unsigned char* slots, unsigned char* out);
};

void run_combine(void* ctx) {
    const Exchange& x = *static_cast<const Exchange*>(ctx);
    x.combine(&x.warp->slots[x.parity][0][0], &x.warp->results[x.parity][0][0]);
}

}  // namespace

const unsigned char* warp_combine(const void* mine, size_t bytes,
                                  void (*combine)(const unsigned char* slots, unsigned char* out)) {
    Worker& w = *worker;
    Fiber* f = ld(w.running);
    Warp& warp = w.warps[f->t.linear >> 5];
    if (bytes > WARP_SLOT) {
        std::fprintf(stderr, "emu: warp exchange of %zu bytes is too large\n", bytes);
        std::abort();
    }
    unsigned char p = f->parity;
    std::memcpy(warp.slots[p][f->t.linear & 31u], mine, bytes);
    Exchange x{&warp, p, combine};
    arrive_and_wait(warp.gate, AT_WARP, combine ? run_combine : nullptr, &x);
    f->parity = p ^ 1;
    return combine ? &warp.results[p][0][0] : &warp.slots[p][0][0];
}

const unsigned char* warp_exchange(const void* mine, size_t bytes) {
    return warp_combine(mine, bytes, nullptr);
}

namespace {

struct Fragments {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};

// One 16-bit element of a fragment register (the low half first), as f32.
float h(uint32_t word, int hi) {
    __half x;
    x.bits = uint16_t(hi ? word >> 16 : word & 0xffffu);
    return __half2float(x);
}
float bf(uint32_t word, int hi) {
    __nv_bfloat16 x;
    x.bits = uint16_t(hi ? word >> 16 : word & 0xffffu);
    return __bfloat162float(x);
}

// D = A·B + C for a 16x8 tile with K-deep A (16xK) and B (Kx8), the products added in k order
// in f32; D's fragments into `out`, lane by lane (lane g·4 + t holds rows g and g + 8, columns
// 2t and 2t + 1, as for C).
template <int K>
void mma_d(const float (&A)[16][K], const float (&B)[K][8], const float (&C)[16][8],
           unsigned char* out) {
    for (int ln = 0; ln < 32; ++ln) {
        int g = ln >> 2, t = ln & 3;
        float d[4];
        for (int i = 0; i < 4; ++i) {
            int row = g + ((i & 2) ? 8 : 0), col = t * 2 + (i & 1);
            float acc = C[row][col];
            for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
            d[i] = acc;
        }
        std::memcpy(out + ln * WARP_SLOT, d, sizeof d);
    }
}

// D = A·B + C on one m16n8k16 tile whose 16-bit elements `elem` reads (f16 or bf16), for
// the whole warp from its lanes' `Fragments`: D's fragments into `out`, lane by lane. The
// products of two 16-bit values are exact in f32; they are added in k order in f32.
template <float (*elem)(uint32_t, int)>
void mma_k16_warp(const unsigned char* slots, unsigned char* out) {
    // Rebuild A (16x16), B (16x8, k by n) and C (16x8) from every lane's fragments.
    float A[16][16], B[16][8], C[16][8];
    for (int ln = 0; ln < 32; ++ln) {
        Fragments fr;
        std::memcpy(&fr, slots + ln * WARP_SLOT, sizeof fr);
        int g = ln >> 2, t = ln & 3;
        for (int i = 0; i < 8; ++i) {
            int row = g + ((i & 2) ? 8 : 0);
            int col = t * 2 + (i & 1) + ((i & 4) ? 8 : 0);
            A[row][col] = elem(fr.a[i >> 1], i & 1);
        }
        for (int i = 0; i < 4; ++i) {
            int k = t * 2 + (i & 1) + ((i & 2) ? 8 : 0);
            B[k][g] = elem(fr.b[i >> 1], i & 1);
        }
        for (int i = 0; i < 4; ++i) {
            int row = g + ((i & 2) ? 8 : 0);
            C[row][t * 2 + (i & 1)] = fr.c[i];
        }
    }
    mma_d<16>(A, B, C, out);
}

template <float (*elem)(uint32_t, int)>
void mma_k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    if (lane() == 0) tally(MMA_M16N8K16);
    Fragments mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.c, c, sizeof mine.c);
    const unsigned char* out = warp_combine(&mine, sizeof(Fragments), mma_k16_warp<elem>);
    std::memcpy(d, out + lane() * WARP_SLOT, 4 * sizeof(float));
}

}  // namespace

void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    mma_k16<h>(d, a, b, c);
}

void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    if (sm() < 80) {
        std::fprintf(stderr,
                     "emu: mma.sync bf16 needs sm_80 or later (this launch emulates sm_%d); "
                     "the launcher must not run a bf16 tensor-core kernel there\n",
                     sm());
        std::abort();
    }
    mma_k16<bf>(d, a, b, c);
}

namespace {

struct FragmentsK8 {
    uint32_t a[2];
    uint32_t b;
    float c[4];
};

// D = A·B + C on one m16n8k8 f16 tile for the whole warp from its lanes' `FragmentsK8`, as
// mma_k16_warp does for m16n8k16.
void mma_k8_warp(const unsigned char* slots, unsigned char* out) {
    // Rebuild A (16x8), B (8x8, k by n) and C (16x8) from every lane's fragments.
    float A[16][8], B[8][8], C[16][8];
    for (int ln = 0; ln < 32; ++ln) {
        FragmentsK8 fr;
        std::memcpy(&fr, slots + ln * WARP_SLOT, sizeof fr);
        int g = ln >> 2, t = ln & 3;
        for (int i = 0; i < 4; ++i) A[g + ((i & 2) ? 8 : 0)][t * 2 + (i & 1)] = h(fr.a[i >> 1], i & 1);
        for (int i = 0; i < 2; ++i) B[t * 2 + i][g] = h(fr.b, i);
        for (int i = 0; i < 4; ++i) C[g + ((i & 2) ? 8 : 0)][t * 2 + (i & 1)] = fr.c[i];
    }
    mma_d<8>(A, B, C, out);
}

}  // namespace

void mma_m16n8k8(float d[4], const uint32_t a[2], uint32_t b, const float c[4]) {
    if (lane() == 0) tally(MMA_M16N8K8);
    FragmentsK8 mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    mine.b = b;
    std::memcpy(mine.c, c, sizeof mine.c);
    const unsigned char* out = warp_combine(&mine, sizeof(FragmentsK8), mma_k8_warp);
    std::memcpy(d, out + lane() * WARP_SLOT, 4 * sizeof(float));
}

void ldmatrix(uint32_t* d, int count, const void* row, bool trans) {
    const unsigned char* slots = warp_exchange(&row, sizeof(const void*));
    // Lane r's row address: row r of the matrices, 8 rows per matrix.
    auto at = [&](int r) {
        const uint16_t* m;
        std::memcpy(&m, slots + r * WARP_SLOT, sizeof m);
        return m;
    };
    int l = int(lane());
    for (int j = 0; j < count; ++j) {
        uint16_t lo, hi;
        if (!trans) {
            lo = at(8 * j + (l >> 2))[(l & 3) * 2];
            hi = at(8 * j + (l >> 2))[(l & 3) * 2 + 1];
        } else {
            lo = at(8 * j + (l & 3) * 2)[l >> 2];
            hi = at(8 * j + (l & 3) * 2 + 1)[l >> 2];
        }
        d[j] = uint32_t(lo) | uint32_t(hi) << 16;
    }
}

}  // namespace emu

namespace {

// Worker OS threads live for the whole process and are handed one launch at a time.
class Pool {
   public:
    // Runs `body(worker_index)` on `n` workers and returns when all have finished.
    void run(unsigned n, const std::function<void(unsigned)>& body) {
        std::unique_lock<std::mutex> g(mu_);
        while (workers_.size() < n) {
            unsigned id = unsigned(workers_.size());
            workers_.emplace_back([this, id] { loop(id); });
        }
        job_ = &body;
        active_ = n;
        pending_ = n;
        ++gen_;
        cv_.notify_all();
        done_.wait(g, [&] { return pending_ == 0; });
        job_ = nullptr;
    }

   private:
    void loop(unsigned id) {
        unsigned seen = 0;
        for (;;) {
            const std::function<void(unsigned)>* job;
            {
                std::unique_lock<std::mutex> g(mu_);
                cv_.wait(g, [&] { return gen_ != seen && id < active_; });
                seen = gen_;
                job = job_;
            }
            (*job)(id);
            std::lock_guard<std::mutex> g(mu_);
            if (--pending_ == 0) done_.notify_all();
        }
    }
    std::mutex mu_;
    std::condition_variable cv_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned active_ = 0, pending_ = 0, gen_ = 0;
};

std::mutex launch_mu;
Pool* pool() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive static destructors
    return p;
}

unsigned worker_count() {
    if (const char* s = std::getenv("LORAFUSE_EMU_WORKERS")) {
        int v = std::atoi(s);
        if (v > 0) return unsigned(v);
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw ? std::min(hw, 16u) : 1u;
}

}  // namespace

// Runs `thunk(closure)` as the kernel body for every thread of every block, as on a device of
// compute capability `sm` (major·10 + minor); adds the launch's counted instructions to
// `tally[emu::COUNTED]`. Returns 0, or a nonzero code when the launch configuration is
// invalid (the Rust side checks first).
extern "C" int emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, size_t smem_bytes, int sm, void (*thunk)(void*),
                          void* closure, uint64_t* tally) {
    unsigned n = bx * by * bz;
    if (n == 0 || n > 1024 || gx == 0 || gy == 0 || gz == 0) return 1;
    std::lock_guard<std::mutex> serial(launch_mu);
    __atomic_store_n(&emu::launch_sm, sm, __ATOMIC_RELAXED);
    for (int i = 0; i < emu::COUNTED; ++i) emu::launch_tally[i] = 0;
    const dim3 bdim{bx, by, bz}, gdim{gx, gy, gz};
    unsigned blocks = gx * gy * gz;
    unsigned workers = std::min(worker_count(), blocks);
    std::function<void(unsigned)> body = [&](unsigned id) {
        emu::run_blocks(id, workers, gdim, bdim, smem_bytes, thunk, closure);
    };
    pool()->run(workers, body);
    {
        std::lock_guard<std::mutex> g(emu::tally_mu);
        for (int i = 0; i < emu::COUNTED; ++i) tally[i] += emu::launch_tally[i];
    }
    return 0;
}
