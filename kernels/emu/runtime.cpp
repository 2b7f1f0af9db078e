// The kernel emulator's runtime: runs a launch (grid, block, dynamic shared memory) on host
// threads, one OS thread per thread of a block, blocks one after another. See emu.h for the
// model. Built only with the `cuda-emu` feature; the Rust side calls `emu_launch` through the
// typed launchers in src/backend/cuda/launch.rs.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "emu.h"

namespace emu {

thread_local Thread self;

namespace {

// A reusable barrier for a set of threads whose size can shrink while it is in use: a thread
// that leaves (returns from the kernel) no longer counts, as on the GPU where exited threads
// do not hold up `bar.sync`.
class Barrier {
   public:
    void reset(unsigned n) {
        std::lock_guard<std::mutex> g(mu_);
        expected_ = n;
        arrived_ = 0;
    }
    void wait() {
        std::unique_lock<std::mutex> g(mu_);
        unsigned gen = gen_;
        if (++arrived_ >= expected_) {
            release();
            return;
        }
        cv_.wait(g, [&] { return gen_ != gen; });
    }
    void leave() {
        std::lock_guard<std::mutex> g(mu_);
        --expected_;
        if (expected_ > 0 && arrived_ >= expected_) release();
    }

   private:
    void release() {
        arrived_ = 0;
        ++gen_;
        cv_.notify_all();
    }
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned expected_ = 0, arrived_ = 0, gen_ = 0;
};

struct Warp {
    Barrier bar;
    // Two slot sets used alternately: a lane writes set p, waits, reads, and its next exchange
    // writes the other set, so one barrier per exchange suffices (the set written next was read
    // by everyone before they passed the barrier in between).
    alignas(16) unsigned char slots[2][32][64];
};

}  // namespace

struct Block {
    Barrier bar;
    std::vector<Warp> warps;
    std::vector<unsigned char> parity;  // per thread: which slot set its next exchange uses
    unsigned char* smem = nullptr;
};

void syncthreads() { self.block->bar.wait(); }

void* dyn_smem() { return self.block->smem; }

void warp_gather(const void* mine, void* all, size_t bytes) {
    Block* b = self.block;
    unsigned w = self.linear >> 5, l = self.linear & 31u;
    Warp& warp = b->warps[w];
    unsigned char& p = b->parity[self.linear];
    if (bytes > sizeof(warp.slots[0][0])) {
        std::fprintf(stderr, "emu: warp exchange of %zu bytes is too large\n", bytes);
        std::abort();
    }
    std::memcpy(warp.slots[p][l], mine, bytes);
    warp.bar.wait();
    unsigned char* out = static_cast<unsigned char*>(all);
    for (unsigned i = 0; i < 32; ++i) std::memcpy(out + i * bytes, warp.slots[p][i], bytes);
    p ^= 1;
}

namespace {

struct Fragments {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};

float h(uint32_t word, int hi) {
    __half x;
    x.bits = uint16_t(hi ? word >> 16 : word & 0xffffu);
    return __half2float(x);
}

}  // namespace

void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    Fragments mine, all[32];
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.c, c, sizeof mine.c);
    warp_gather(&mine, all, sizeof(Fragments));
    // Rebuild A (16x16), B (16x8, k by n) and C (16x8) from every lane's fragments.
    float A[16][16], B[16][8], C[16][8];
    for (int ln = 0; ln < 32; ++ln) {
        int g = ln >> 2, t = ln & 3;
        for (int i = 0; i < 8; ++i) {
            int row = g + ((i & 2) ? 8 : 0);
            int col = t * 2 + (i & 1) + ((i & 4) ? 8 : 0);
            A[row][col] = h(all[ln].a[i >> 1], i & 1);
        }
        for (int i = 0; i < 4; ++i) {
            int k = t * 2 + (i & 1) + ((i & 2) ? 8 : 0);
            B[k][g] = h(all[ln].b[i >> 1], i & 1);
        }
        for (int i = 0; i < 4; ++i) {
            int row = g + ((i & 2) ? 8 : 0);
            C[row][t * 2 + (i & 1)] = all[ln].c[i];
        }
    }
    int g = int(lane()) >> 2, t = int(lane()) & 3;
    for (int i = 0; i < 4; ++i) {
        int row = g + ((i & 2) ? 8 : 0), col = t * 2 + (i & 1);
        float acc = C[row][col];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        d[i] = acc;
    }
}

void ldmatrix(uint32_t* d, int count, const void* row, bool trans) {
    const void* rows[32];
    warp_gather(&row, rows, sizeof(const void*));
    int l = int(lane());
    for (int j = 0; j < count; ++j) {
        const uint16_t* const* m = reinterpret_cast<const uint16_t* const*>(rows + 8 * j);
        uint16_t lo, hi;
        if (!trans) {
            lo = m[l >> 2][(l & 3) * 2];
            hi = m[l >> 2][(l & 3) * 2 + 1];
        } else {
            lo = m[(l & 3) * 2][l >> 2];
            hi = m[(l & 3) * 2 + 1][l >> 2];
        }
        d[j] = uint32_t(lo) | uint32_t(hi) << 16;
    }
}

}  // namespace emu

namespace {

// Worker threads live for the whole process and are handed one launch at a time.
class Pool {
   public:
    // Runs `body(thread_index)` on `n` workers and returns when all have finished.
    template <typename F>
    void run(unsigned n, F body) {
        std::unique_lock<std::mutex> g(mu_);
        while (workers_.size() < n) {
            unsigned id = unsigned(workers_.size());
            workers_.emplace_back([this, id] { loop(id); });
        }
        job_ = body;
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
            std::function<void(unsigned)> job;
            {
                std::unique_lock<std::mutex> g(mu_);
                cv_.wait(g, [&] { return gen_ != seen && id < active_; });
                seen = gen_;
                job = job_;
            }
            job(id);
            std::lock_guard<std::mutex> g(mu_);
            if (--pending_ == 0) done_.notify_all();
        }
    }
    std::mutex mu_;
    std::condition_variable cv_, done_;
    std::vector<std::thread> workers_;
    std::function<void(unsigned)> job_;
    unsigned active_ = 0, pending_ = 0, gen_ = 0;
};

std::mutex launch_mu;
Pool* pool() {
    static Pool* p = new Pool();  // never destroyed: its threads outlive static destructors
    return p;
}

}  // namespace

// Runs `thunk(closure)` as the kernel body for every thread of every block. Returns 0, or a
// nonzero code when the launch configuration is invalid (the Rust side checks first).
extern "C" int emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, size_t smem_bytes, void (*thunk)(void*), void* closure) {
    unsigned n = bx * by * bz;
    if (n == 0 || n > 1024 || gx == 0 || gy == 0 || gz == 0) return 1;
    std::lock_guard<std::mutex> serial(launch_mu);
    emu::Block block;
    block.warps = std::vector<emu::Warp>((n + 31) / 32);
    block.parity.assign(n, 0);
    std::vector<unsigned char> smem(smem_bytes + 16);
    block.smem = smem.data() + (16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16;
    // The end-of-block barrier: every thread finishes block k before any starts block k+1,
    // and the last one to arrive prepares the shared state for the next block.
    std::mutex end_mu;
    std::condition_variable end_cv;
    unsigned end_arrived = 0, end_gen = 0;
    auto reset_block = [&] {
        block.bar.reset(n);
        for (unsigned w = 0; w < block.warps.size(); ++w)
            block.warps[w].bar.reset(std::min(32u, n - w * 32));
        std::fill(block.parity.begin(), block.parity.end(), 0);
        std::memset(block.smem, 0xff, smem_bytes);
    };
    reset_block();
    const dim3 bdim{bx, by, bz}, gdim{gx, gy, gz};
    pool()->run(n, [&](unsigned id) {
        emu::self.bdim = bdim;
        emu::self.gdim = gdim;
        emu::self.linear = id;
        emu::self.tid = dim3{id % bx, id / bx % by, id / (bx * by)};
        emu::self.block = &block;
        for (unsigned z = 0; z < gz; ++z)
            for (unsigned y = 0; y < gy; ++y)
                for (unsigned x = 0; x < gx; ++x) {
                    emu::self.bid = dim3{x, y, z};
                    thunk(closure);
                    block.bar.leave();
                    block.warps[id >> 5].bar.leave();
                    std::unique_lock<std::mutex> g(end_mu);
                    unsigned gen = end_gen;
                    if (++end_arrived == n) {
                        end_arrived = 0;
                        reset_block();
                        ++end_gen;
                        end_cv.notify_all();
                    } else {
                        end_cv.wait(g, [&] { return end_gen != gen; });
                    }
                }
    });
    return 0;
}
