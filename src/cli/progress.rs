//! The training progress display: one line per step on a terminal (redrawn in place), every
//! tenth step otherwise; epoch, step, loss (smoothed), learning rate, it/s, ETA, memory.

use std::io::{IsTerminal, Write};

use lorafuse::train::trainer::{Event, Observer};

pub struct Progress {
    tty: bool,
    smoothed: Option<f64>,
    first_step: u64,
    line_open: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            smoothed: None,
            first_step: 0,
            line_open: false,
        }
    }

    fn println(&mut self, text: &str) {
        let mut err = std::io::stderr();
        if self.line_open {
            let _ = writeln!(err);
            self.line_open = false;
        }
        let _ = writeln!(err, "{text}");
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// Resident memory of this process, from /proc (Linux); None elsewhere.
fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Observer for Progress {
    fn on(&mut self, event: Event) {
        match event {
            Event::Info(s) => self.println(&s),
            Event::Warning(s) => self.println(&format!("warning: {s}")),
            Event::Started {
                total_steps,
                first_step,
                steps_per_epoch,
                images,
                validation_images,
                trainable,
            } => {
                self.first_step = first_step;
                self.println(&format!(
                    "training {trainable} LoRA parameters on {images} images ({validation_images} held out): {total_steps} steps, {steps_per_epoch} per epoch"
                ));
            }
            Event::Step {
                step,
                total,
                epoch,
                loss,
                lr,
                seconds,
                skipped,
                device_memory,
            } => {
                let s = self.smoothed.map_or(loss, |m| 0.9 * m + 0.1 * loss);
                self.smoothed = Some(s);
                let done = (step - self.first_step) as f64;
                let rate = if seconds > 0.0 { done / seconds } else { 0.0 };
                let eta = if rate > 0.0 {
                    (total - step) as f64 / rate
                } else {
                    0.0
                };
                let mem = match device_memory {
                    Some(d) => format!(
                        "  vram {:.0} MiB (peak {:.0})",
                        d.in_use as f64 / MIB,
                        d.peak as f64 / MIB
                    ),
                    None => rss_mib().map_or(String::new(), |m| format!("  mem {m:.0} MiB")),
                };
                let skip = if skipped {
                    "  (skipped: f16 overflow)"
                } else {
                    ""
                };
                let line = format!(
                    "epoch {:>3}  step {step:>6}/{total}  loss {s:.4}  lr {lr:.2e}  {rate:.2} it/s  ETA {}{mem}{skip}",
                    epoch + 1,
                    hms(eta)
                );
                if self.tty {
                    let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
                    self.line_open = true;
                } else if step % 10 == 0 || step == total || step == self.first_step + 1 {
                    self.println(&line);
                }
            }
            Event::Validation { step, loss, best } => self.println(&format!(
                "validation at step {step}: loss {loss:.5}{}",
                if best { " (best so far)" } else { "" }
            )),
            Event::Saved { what, path } => {
                self.println(&format!("saved {what}: {}", path.display()))
            }
        }
    }
}
