// Trains lorafuse's tiny demo model through the C ABI: a run from a YAML string with its
// events printed, a run cancelled from the main thread after its first step and resumed to
// the end, and the errors a host gets for NULL, bad UTF-8 and a bad configuration.
//
//   cargo build --release -p lorafuse-capi
//   gcc -std=c11 -Icapi/include capi/examples/train.c -Ltarget/release -llorafuse_capi
//       -Wl,-rpath,$PWD/target/release -o train
//   ./train /tmp/lorafuse-c-demo
// (capi/tests/c_example.rs does this with -Wall -Wextra -Werror -pedantic.)
//
// Exits 0 when everything behaved as it should, 1 (naming the check) otherwise.

#define _POSIX_C_SOURCE 200809L // nanosleep

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lorafuse.h"

#define STEPS 4

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "train.c:%d: check failed: %s\n", __LINE__, #cond);       \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

// What the event callback saw (it runs on the run's thread).
struct seen {
    atomic_int steps;      // step events
    atomic_int first_step; // the first step event's step
    atomic_int last_step;  // the last step event's step
    atomic_int finished;   // LORAFUSE_EVENT_FINISHED events
    atomic_int failed;     // LORAFUSE_EVENT_FAILED events
    atomic_int hold;       // set: the first step event waits until `released`
    atomic_int held;       // the first step event is waiting
    atomic_int released;
};

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_event(void *user, int32_t kind, const char *json) {
    struct seen *s = user;
    printf("  event %d %s\n", kind, json);
    fflush(stdout);
    if (kind == LORAFUSE_EVENT_STEP) {
        const char *p = strstr(json, "\"step\":");
        CHECK(p != NULL);
        int step = atoi(p + strlen("\"step\":"));
        if (atomic_fetch_add(&s->steps, 1) == 0)
            atomic_store(&s->first_step, step);
        atomic_store(&s->last_step, step);
        if (atomic_load(&s->hold) && step == 1) {
            atomic_store(&s->held, 1);
            while (!atomic_load(&s->released))
                sleep_ms(1);
        }
    } else if (kind == LORAFUSE_EVENT_FINISHED) {
        atomic_fetch_add(&s->finished, 1);
    } else if (kind == LORAFUSE_EVENT_FAILED) {
        atomic_fetch_add(&s->failed, 1);
    }
}

static void reset(struct seen *s) {
    atomic_store(&s->steps, 0);
    atomic_store(&s->first_step, 0);
    atomic_store(&s->last_step, 0);
    atomic_store(&s->finished, 0);
    atomic_store(&s->failed, 0);
    atomic_store(&s->hold, 0);
    atomic_store(&s->held, 0);
    atomic_store(&s->released, 0);
}

// Exits naming the call when `code` is not `want`.
static void expect(lorafuse_trainer *t, const char *call, int32_t code, int32_t want) {
    if (code == want)
        return;
    char msg[2048];
    lorafuse_error_message(t, msg, sizeof msg);
    fprintf(stderr, "train.c: %s returned %d, expected %d: %s\n", call, code, want, msg);
    exit(1);
}

static void errors_are_codes_and_messages(void) {
    lorafuse_trainer *t = NULL;
    char msg[512];

    // NULL text: a code, and a trainer that says why.
    CHECK(lorafuse_trainer_from_yaml(NULL, NULL, NULL, 0, &t) == LORAFUSE_ERR_NULL);
    lorafuse_error_message(t, msg, sizeof msg);
    printf("NULL yaml: %s\n", msg);
    CHECK(strstr(msg, "yaml is NULL") != NULL);
    CHECK(lorafuse_start(t, 0) == LORAFUSE_ERR_INVALID);
    lorafuse_error_message(t, msg, sizeof msg);
    CHECK(strstr(msg, "yaml is NULL") != NULL);
    lorafuse_free(t);
    CHECK(lorafuse_trainer_from_yaml("a: 1", NULL, NULL, 0, NULL) == LORAFUSE_ERR_NULL);
    CHECK(lorafuse_start(NULL, 0) == LORAFUSE_ERR_NULL);

    CHECK(lorafuse_trainer_from_yaml("lora_rank: \xff\n", NULL, NULL, 0, &t) == LORAFUSE_ERR_UTF8);
    lorafuse_free(t);

    // Every problem of a configuration at once, each with its key.
    const char *bad = "train_data_dir: /nowhere\nbase_model: m\noutput_dir: o\n"
                      "lora_rank: 0\nbatch_size: 0\n";
    CHECK(lorafuse_trainer_from_yaml(bad, "host.yaml", NULL, 0, &t) == LORAFUSE_ERR_INVALID);
    size_t n = 0;
    CHECK(lorafuse_validate(t, &n) == LORAFUSE_ERR_INVALID);
    int rank = 0, batch = 0;
    for (size_t i = 0; i < n; i++) {
        char key[64];
        lorafuse_problem_key(t, i, key, sizeof key);
        lorafuse_problem_message(t, i, msg, sizeof msg);
        printf("problem %zu [%s]: %s\n", i, key, msg);
        rank |= strcmp(key, "lora_rank") == 0;
        batch |= strcmp(key, "batch_size") == 0;
    }
    CHECK(rank && batch);
    lorafuse_free(t);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR (the demo's model and data are written there)\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    printf("lorafuse %s\n", lorafuse_version());
    errors_are_codes_and_messages();

    char msg[2048];
    CHECK(lorafuse_demo_write(dir, STEPS, msg, sizeof msg) == LORAFUSE_OK);

    // 1. A run from YAML text, within caps, its events printed.
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "train_data_dir: %s/data\n"
             "base_model: %s/model\n"
             "output_dir: %s/from-c\n"
             "resolution: 64\n"
             "lora_rank: 4\n"
             "batch_size: 4\n"
             "max_train_steps: %d\n"
             "learning_rate: 0.002\n"
             "mixed_precision: \"no\"\n"
             "device: cpu\n",
             dir, dir, dir, STEPS);
    struct seen seen;
    reset(&seen);
    lorafuse_trainer *t = NULL;
    int32_t made = lorafuse_trainer_from_yaml(yaml, "from-c.yaml", NULL, 0, &t);
    expect(t, "from_yaml", made, LORAFUSE_OK);
    expect(t, "set_threads", lorafuse_set_threads(t, 2), LORAFUSE_OK);
    expect(t, "set_output_root", lorafuse_set_output_root(t, dir), LORAFUSE_OK);
    expect(t, "set_event_callback", lorafuse_set_event_callback(t, on_event, &seen), LORAFUSE_OK);
    expect(t, "validate", lorafuse_validate(t, NULL), LORAFUSE_OK);
    printf("run 1: %d steps\n", STEPS);
    expect(t, "start", lorafuse_start(t, 0), LORAFUSE_OK);
    expect(t, "wait", lorafuse_wait(t), LORAFUSE_OK);
    CHECK(atomic_load(&seen.steps) == STEPS && atomic_load(&seen.last_step) == STEPS);
    CHECK(atomic_load(&seen.finished) == 1 && atomic_load(&seen.failed) == 0);
    size_t len = lorafuse_report(t, msg, sizeof msg);
    CHECK(len > 0 && len < sizeof msg);
    printf("report: %s\n", msg);
    CHECK(strstr(msg, "\"interrupted\":false") != NULL);
    lorafuse_free(t);

    // 2. The demo's config file with overrides, cancelled from this thread during step 1's
    // event (the callback holds the run there until this thread has cancelled).
    char out[1024];
    snprintf(out, sizeof out, "output_dir=%s/cut", dir);
    const char *sets[] = {out, "sample_every_n_steps=0"};
    char path[1024];
    snprintf(path, sizeof path, "%s/demo.yaml", dir);
    reset(&seen);
    atomic_store(&seen.hold, 1);
    made = lorafuse_trainer_from_file(path, sets, 2, &t);
    expect(t, "from_file", made, LORAFUSE_OK);
    lorafuse_set_event_callback(t, on_event, &seen);
    lorafuse_set_threads(t, 1);
    printf("run 2: cancelled after its first step\n");
    expect(t, "start", lorafuse_start(t, 0), LORAFUSE_OK);
    expect(t, "a second start", lorafuse_start(t, 0), LORAFUSE_ERR_BUSY);
    for (int waited = 0; !atomic_load(&seen.held) && waited < 120000; waited += 5)
        sleep_ms(5);
    CHECK(atomic_load(&seen.held));
    expect(t, "cancel", lorafuse_cancel(t), LORAFUSE_OK);
    atomic_store(&seen.released, 1);
    expect(t, "wait", lorafuse_wait(t), LORAFUSE_CANCELLED);
    expect(t, "wait again", lorafuse_wait(t), LORAFUSE_CANCELLED);
    int done = atomic_load(&seen.last_step);
    printf("cancelled after step %d\n", done);
    CHECK(done == 1 && atomic_load(&seen.finished) == 1);
    lorafuse_report(t, msg, sizeof msg);
    CHECK(strstr(msg, "\"interrupted\":true") != NULL);

    // 3. Resumed on the same trainer: the remaining steps only.
    reset(&seen);
    printf("run 3: resumed\n");
    expect(t, "resume", lorafuse_start(t, 1), LORAFUSE_OK);
    expect(t, "wait", lorafuse_wait(t), LORAFUSE_OK);
    CHECK(atomic_load(&seen.first_step) == done + 1 && atomic_load(&seen.last_step) == STEPS);
    lorafuse_free(t);

    printf("train.c: ok\n");
    return 0;
}
