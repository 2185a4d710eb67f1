//! Progress on stderr: a redrawn bar on a terminal, a plain line every few
//! seconds otherwise (logs, CI), nothing when asked.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// A bar redrawn in place.
    Bar,
    /// A plain line every few seconds.
    Lines,
    /// Nothing.
    Off,
}

/// Counters the import updates as it goes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sessions finished (whatever the outcome).
    pub sessions: AtomicU64,
    /// Messages written.
    pub messages: AtomicU64,
    /// Sessions left alone because they conflict.
    pub conflicts: AtomicU64,
    /// Sessions that failed.
    pub failed: AtomicU64,
}

/// A running progress display; [`Progress::finish`] draws the last state.
pub struct Progress {
    /// What to display.
    pub counters: Arc<Counters>,
    mode: ProgressMode,
    total: u64,
    started: Instant,
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

const BAR_TICK: Duration = Duration::from_millis(200);
const LINE_TICK: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 28;

impl Progress {
    /// Starts showing progress towards `total` sessions.
    pub fn start(mode: ProgressMode, total: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            m => m,
        };
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(Notify::new());
        let started = Instant::now();
        let task = (mode != ProgressMode::Off).then(|| {
            let (c, stop) = (counters.clone(), stop.clone());
            tokio::spawn(async move {
                let tick = if mode == ProgressMode::Bar {
                    BAR_TICK
                } else {
                    LINE_TICK
                };
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(tick) => draw(mode, &c, total, started, false),
                        () = stop.notified() => return,
                    }
                }
            })
        });
        Self {
            counters,
            mode,
            total,
            started,
            stop,
            task,
        }
    }

    /// Stops the display after drawing the final state.
    pub async fn finish(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if self.mode != ProgressMode::Off {
            draw(self.mode, &self.counters, self.total, self.started, true);
        }
    }
}

fn draw(mode: ProgressMode, c: &Counters, total: u64, started: Instant, last: bool) {
    let done = c.sessions.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 && total > done && !last {
        format!(" · ETA {}", human_secs((total - done) as f64 / rate))
    } else {
        String::new()
    };
    let stats = format!(
        "{done}/{total} sessions · {} messages written · {} conflicting · {} failed · {rate:.1} sessions/s{eta}",
        c.messages.load(Ordering::Relaxed),
        c.conflicts.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
    let mut err = std::io::stderr().lock();
    let _ = match mode {
        ProgressMode::Bar => {
            let filled = if total == 0 {
                BAR_WIDTH
            } else {
                ((done.min(total) as f64 / total as f64) * BAR_WIDTH as f64) as usize
            };
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
            write!(
                err,
                "\r\x1b[2Kimport [{bar}] {stats}{}",
                if last { "\n" } else { "" }
            )
        }
        _ => writeln!(err, "import: {stats}"),
    };
    let _ = err.flush();
}

fn human_secs(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
