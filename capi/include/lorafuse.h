// lorafuse.h: the C ABI of lorafuse (link with -llorafuse_capi).
// Generated from capi/src/lib.rs by capi/tests/header.rs: do not edit; after changing the
// Rust declarations run LORAFUSE_BLESS=1 cargo test --release -p lorafuse-capi --test header
//
// Every function may be called from any thread, returns an int32_t status (LORAFUSE_OK or
// an error code) unless it says otherwise, and keeps a failure's message on the trainer
// (lorafuse_error_message). Strings in are UTF-8 and NUL-terminated; strings out are copied
// into the caller's buffer as snprintf does (the whole length is returned: call again with a
// larger buffer when it is >= cap).
#ifndef LORAFUSE_H
#define LORAFUSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Success (`lorafuse_wait`: the run finished all its steps, or stopped early as configured).
#define LORAFUSE_OK 0

// `lorafuse_wait`: the run was cancelled; it finished its step and saved its state, and
// `lorafuse_start(t, 1)` resumes it.
#define LORAFUSE_CANCELLED 1

// The configuration has problems (`lorafuse_problem_key`/`lorafuse_problem_message`);
// nothing was done.
#define LORAFUSE_ERR_INVALID 2

// The memory cap refuses the run (or its thread pool cannot start); nothing was done.
#define LORAFUSE_ERR_REFUSED 3

// The run failed (a bad image, a device error, a full disk).
#define LORAFUSE_ERR_FAILED 4

// A run was started and not yet waited for.
#define LORAFUSE_ERR_BUSY 5

// A pointer argument is NULL.
#define LORAFUSE_ERR_NULL 6

// A string argument is not valid UTF-8.
#define LORAFUSE_ERR_UTF8 7

// `lorafuse_wait` without a run started.
#define LORAFUSE_ERR_NOT_STARTED 8

// An internal error in lorafuse (a caught panic): please report it.
#define LORAFUSE_ERR_PANIC 9

// {"event":"info","message":text}
#define LORAFUSE_EVENT_INFO 1

// {"event":"warning","message":text}
#define LORAFUSE_EVENT_WARNING 2

// {"event":"started","total_steps","first_step","steps_per_epoch","images","validation_images","trainable"}
#define LORAFUSE_EVENT_STARTED 3

// {"event":"step","step","total","epoch","loss","lr","seconds","skipped","device_memory":{"in_use","peak"} or null}
#define LORAFUSE_EVENT_STEP 4

// {"event":"validation","step","loss","best"}
#define LORAFUSE_EVENT_VALIDATION 5

// {"event":"saved","what","path"}
#define LORAFUSE_EVENT_SAVED 6

// The last event of a run that ended (also when cancelled): {"event":"finished","report":{...}}
// with the report of lorafuse_report.
#define LORAFUSE_EVENT_FINISHED 7

// The last event of a run that did not end well: {"event":"failed","code","message"}.
#define LORAFUSE_EVENT_FAILED 8

// A configured trainer: made by lorafuse_trainer_from_yaml or lorafuse_trainer_from_file,
// released by lorafuse_free. All functions taking one may be called from any thread;
// lorafuse_free must be the last call on it.
typedef struct lorafuse_trainer lorafuse_trainer;

// Receives a run's events on the run's own thread: `kind` is a LORAFUSE_EVENT_* value and
// `json` a small JSON object (valid only during the call) whose "event" names the kind. It may
// call lorafuse_cancel, but not lorafuse_wait or lorafuse_free on the same trainer.
typedef void (*lorafuse_event_fn)(void *user, int32_t kind, const char *json);

// The library's version, a static string.
const char *lorafuse_version(void);

// Writes `lorafuse demo`'s tiny model, synthetic data and DIR/demo.yaml (`steps` optimizer
// steps) under `dir`, for trying the library. On failure the message goes to `message`
// (`cap` bytes, may be NULL when `cap` is 0).
int32_t lorafuse_demo_write(const char *dir, uint32_t steps, char *message, size_t cap);

// Makes a trainer from YAML text (`name` stands for the file in messages, NULL for
// "config.yaml"; relative paths in it are read against the working folder) and
// `n_overrides` "key=value" strings (`overrides` may be NULL when it is 0). When `out` is
// not NULL, *out is a trainer to free even when the result is an error: its
// lorafuse_error_message and problems say what is wrong.
int32_t lorafuse_trainer_from_yaml(const char *yaml, const char *name, const char *const *overrides, size_t n_overrides, lorafuse_trainer **out);

// Makes a trainer from a config file (lorafuse's YAML or a kohya TOML) and overrides, as
// lorafuse_trainer_from_yaml does.
int32_t lorafuse_trainer_from_file(const char *path, const char *const *overrides, size_t n_overrides, lorafuse_trainer **out);

// Worker threads for the run's CPU work (a pool of its own); 0: a pool shared by the
// process. Applies to runs started afterwards.
int32_t lorafuse_set_threads(lorafuse_trainer *t, size_t threads);

// Refuses a run whose planned memory exceeds `bytes` (0: no cap); with `adapt` non-zero, turns
// on gradient checkpointing and splits the batch until the plan fits instead (a warning event
// says so).
int32_t lorafuse_set_max_memory(lorafuse_trainer *t, uint64_t bytes, int32_t adapt);

// Every folder the run writes must lie under `root` (NULL: anywhere); one outside is a
// problem that lorafuse_validate and lorafuse_start report (LORAFUSE_ERR_INVALID).
int32_t lorafuse_set_output_root(lorafuse_trainer *t, const char *root);

// Sends the events of runs started afterwards to `callback` with `user` (NULL: none).
int32_t lorafuse_set_event_callback(lorafuse_trainer *t, lorafuse_event_fn callback, void *user);

// Checks everything that would stop a run before it starts (the configuration, its paths,
// the output root): LORAFUSE_OK, or LORAFUSE_ERR_INVALID with the problems' count in *count
// (`count` may be NULL).
int32_t lorafuse_validate(lorafuse_trainer *t, size_t *count);

// Copies the key of problem `i` (from the last lorafuse_validate, or the failed load or run)
// into `buf` ("" when it is about no one key) and returns its length: as snprintf, `cap`
// counts the NUL and a longer text is cut.
size_t lorafuse_problem_key(lorafuse_trainer *t, size_t i, char *buf, size_t cap);

// Copies the message of problem `i` into `buf`, as lorafuse_problem_key.
size_t lorafuse_problem_message(lorafuse_trainer *t, size_t i, char *buf, size_t cap);

// Copies the configuration's notices (settings that are valid but do nothing as combined,
// kohya meanings applied: what the CLI prints as warnings), one a line, into `buf` ("" when
// there are none), as lorafuse_problem_key.
size_t lorafuse_notices(lorafuse_trainer *t, char *buf, size_t cap);

// Starts a run on a thread of its own and returns at once: from the start, or with `resume`
// non-zero from the state saved in output_dir (after a cancel or a crash). Returns
// LORAFUSE_ERR_INVALID with the problems lorafuse_validate would give, LORAFUSE_ERR_BUSY while
// an earlier run has not been waited for; a run the memory cap refuses starts and ends at
// once (lorafuse_wait: LORAFUSE_ERR_REFUSED).
int32_t lorafuse_start(lorafuse_trainer *t, int32_t resume);

// Asks the run to stop (from any thread, the event callback included): it finishes its
// step, saves its state and ends, and lorafuse_wait returns LORAFUSE_CANCELLED. Nothing
// happens without a run.
int32_t lorafuse_cancel(lorafuse_trainer *t);

// Waits for the run to end and returns how it ended: LORAFUSE_OK, LORAFUSE_CANCELLED or an
// error (its message in lorafuse_error_message). Called again, returns the same. From the
// run's own event callback: LORAFUSE_ERR_BUSY (it would never return).
int32_t lorafuse_wait(lorafuse_trainer *t);

// Copies the report of the last run waited for (JSON: "lora_path", "state_path", "steps",
// "stopped", "interrupted", "train_loss_before", "train_loss_after", "best_validation",
// "skipped_steps"; "" when there is none) into `buf`, as lorafuse_problem_key.
size_t lorafuse_report(lorafuse_trainer *t, char *buf, size_t cap);

// Copies the message of the last call on `t` that failed into `buf`, as
// lorafuse_problem_key.
size_t lorafuse_error_message(lorafuse_trainer *t, char *buf, size_t cap);

// Cancels a run in flight, waits for it, and releases the trainer (NULL: nothing). From the
// run's own event callback it does nothing (it could not wait there).
void lorafuse_free(lorafuse_trainer *t);

#ifdef __cplusplus
}
#endif

#endif /* LORAFUSE_H */
