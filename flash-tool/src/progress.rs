//! Progress reporting behind one trait, [`Reporter`]: indicatif bars ([`Bars`]), JSON
//! lines on stdout ([`JsonLines`], one object per event, progress throttled to 4 per
//! second per device and phase), or nothing ([`Quiet`]).
//!
//! JSON events (`"event"` is the discriminator):
//!
//! ```text
//! {"event":"phase","device":"/dev/sdb","phase":"write","total":1073741824}
//! {"event":"progress","device":"/dev/sdb","phase":"write","done":536870912}
//! {"event":"done","device":"/dev/sdb","phase":"write","bytes":1073741824,"seconds":9.5}
//! {"event":"result","device":"/dev/sdb","ok":false,"exit_code":5,"error":"…"}
//! ```
//!
//! The source is reported as device `"source"` with phase `read` (compressed bytes
//! consumed when the input length is known).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A phase of the work on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading and decompressing the source.
    Read,
    /// Writing the device.
    Write,
    /// Reading back and comparing.
    Verify,
}

/// Receives progress from the reader and writer threads.
pub trait Reporter: Send + Sync {
    /// A phase starts; `total` bytes when known.
    fn phase(&self, device: &str, phase: Phase, total: Option<u64>);
    /// `done` bytes of the phase are complete.
    fn progress(&self, device: &str, phase: Phase, done: u64);
    /// The phase ended successfully after `bytes`.
    fn done(&self, device: &str, phase: Phase, bytes: u64);
    /// The final result for a device.
    fn result(&self, device: &str, error: Option<(&str, i32)>);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {
    fn phase(&self, _: &str, _: Phase, _: Option<u64>) {}
    fn progress(&self, _: &str, _: Phase, _: u64) {}
    fn done(&self, _: &str, _: Phase, _: u64) {}
    fn result(&self, _: &str, _: Option<(&str, i32)>) {}
}

/// JSON lines on stdout.
#[derive(Debug, Default)]
pub struct JsonLines {
    last: Mutex<HashMap<(String, Phase), Instant>>,
    started: Mutex<HashMap<(String, Phase), Instant>>,
}

fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

impl Reporter for JsonLines {
    fn phase(&self, device: &str, phase: Phase, total: Option<u64>) {
        if let Ok(mut s) = self.started.lock() {
            s.insert((device.to_string(), phase), Instant::now());
        }
        emit(
            serde_json::json!({"event": "phase", "device": device, "phase": phase, "total": total}),
        );
    }

    fn progress(&self, device: &str, phase: Phase, done: u64) {
        let key = (device.to_string(), phase);
        let now = Instant::now();
        if let Ok(mut last) = self.last.lock() {
            if last
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(250))
            {
                return;
            }
            last.insert(key, now);
        }
        emit(
            serde_json::json!({"event": "progress", "device": device, "phase": phase, "done": done}),
        );
    }

    fn done(&self, device: &str, phase: Phase, bytes: u64) {
        let secs = self
            .started
            .lock()
            .ok()
            .and_then(|s| {
                s.get(&(device.to_string(), phase))
                    .map(|t| t.elapsed().as_secs_f64())
            })
            .unwrap_or(0.0);
        emit(
            serde_json::json!({"event": "done", "device": device, "phase": phase, "bytes": bytes, "seconds": secs}),
        );
    }

    fn result(&self, device: &str, error: Option<(&str, i32)>) {
        emit(match error {
            None => {
                serde_json::json!({"event": "result", "device": device, "ok": true, "exit_code": 0})
            }
            Some((e, code)) => {
                serde_json::json!({"event": "result", "device": device, "ok": false, "exit_code": code, "error": e})
            }
        });
    }
}

/// indicatif bars on stderr: one per device and phase, with throughput and ETA.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, Phase), ProgressBar>>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Reporter for Bars {
    fn phase(&self, device: &str, phase: Phase, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::no_length(),
        };
        let bar = self.multi.add(bar);
        let template = if total.is_some() {
            "{prefix:>14} {msg:7} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "{prefix:>14} {msg:7} {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(device.to_string());
        bar.set_message(format!("{phase:?}").to_lowercase());
        if let Ok(mut b) = self.bars.lock() {
            b.insert((device.to_string(), phase), bar);
        }
    }

    fn progress(&self, device: &str, phase: Phase, done: u64) {
        if let Ok(b) = self.bars.lock()
            && let Some(bar) = b.get(&(device.to_string(), phase))
        {
            bar.set_position(done);
        }
    }

    fn done(&self, device: &str, phase: Phase, bytes: u64) {
        if let Ok(b) = self.bars.lock()
            && let Some(bar) = b.get(&(device.to_string(), phase))
        {
            bar.set_position(bytes);
            bar.finish();
        }
    }

    fn result(&self, device: &str, error: Option<(&str, i32)>) {
        if let Ok(b) = self.bars.lock() {
            for ((d, _), bar) in b.iter() {
                if d == device && !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
        let line = match error {
            None => format!("{device}: ok"),
            Some((e, code)) => format!("{device}: FAILED (exit code {code}): {e}"),
        };
        let _ = self.multi.println(line);
    }
}
