//! Reloads the hooks when `gateway.toml` or a plugin file changes
//! (`plugins.watch`).
//!
//! On Linux the watcher asks the kernel (inotify) for changes to the
//! directories that hold those files, so it wakes only when one of them
//! changes. It watches directories, not files: a deploy that renames a new
//! file over the old one (or swaps a symlink, as Kubernetes does for a
//! mounted `ConfigMap`) replaces the inode a file watch would follow. Where
//! that is not possible (another OS, inotify unavailable or out of watches, a
//! directory that does not exist yet) it looks every
//! `plugins.watch_interval_ms` instead. inotify does not see changes that
//! another host makes on a network filesystem: there, reload with `SIGHUP`
//! or `POST /v1/admin/reload`.
//!
//! Either way, what decides a reload is the files' fingerprint (path, mtime,
//! size, inode): an event only makes the watcher look.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::HookHost;
use crate::config::Config;

/// What the watcher compares: per file, its path, mtime, size and inode.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64, u64)>;

/// How long the directories must stay quiet after an event before the
/// watcher looks: a copy is a create, several writes and a close, and a
/// half-written plugin would fail to load.
#[cfg(target_os = "linux")]
const SETTLE: Duration = Duration::from_millis(50);
/// The longest the watcher waits for the directories to settle.
#[cfg(target_os = "linux")]
const SETTLE_MAX: Duration = Duration::from_millis(500);

impl HookHost {
    /// Watches the config file and the plugin files and reloads when one
    /// changes (see the module docs for how). Returns when `stop` changes.
    ///
    /// What counts as seen is the fingerprint taken *before* a reload: a file
    /// written while the reload runs (e.g. while the previous copy compiles)
    /// differs from it, so it is reloaded right after, never lost.
    ///
    /// The first fingerprint is taken when this is called, not when the
    /// future first runs, so a change made right after start-up is seen.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut seen = self.fingerprint();
        async move {
            #[cfg(target_os = "linux")]
            match inotify::Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; 4096])) {
                Ok(events) => return self.watch_events(events, &mut seen, interval, stop).await,
                Err(e) => tracing::warn!(
                    error = %e,
                    every_ms = interval.as_millis() as u64,
                    "cannot watch plugin files for changes; looking for changes periodically"
                ),
            }
            self.watch_polling(&mut seen, interval, stop).await;
        }
    }

    /// Looks every `interval`.
    async fn watch_polling(
        &self,
        seen: &mut Fingerprint,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            self.reload_if_changed(seen, &stop).await;
        }
    }

    /// Looks when a watched directory changes, and every `interval` only
    /// while some directory cannot be watched.
    #[cfg(target_os = "linux")]
    async fn watch_events(
        &self,
        mut events: inotify::EventStream<Vec<u8>>,
        seen: &mut Fingerprint,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        use futures::StreamExt as _;

        let mut dirs = Dirs::new(events.watches());
        loop {
            let Follow { all_watched, added } = dirs.follow(seen);
            if added {
                // A change made before a directory was watched sent no
                // event (the first fingerprint is taken when `watch` is
                // called, before any watch exists): look now.
                self.reload_if_changed(seen, &stop).await;
                if *stop.borrow() {
                    return;
                }
                continue;
            }
            let poll = (!all_watched).then_some(interval);
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(_)) => {
                        // Wait for the directories to settle, taking what
                        // else arrives meanwhile; a directory that never
                        // quietens (other files changing all the time) is
                        // looked at every `SETTLE_MAX` all the same.
                        let until = tokio::time::Instant::now() + SETTLE_MAX;
                        while tokio::time::Instant::now() < until
                            && let Ok(Some(Ok(_))) = tokio::time::timeout(SETTLE, events.next()).await
                        {}
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "plugin file events failed; looking for changes periodically");
                        return self.watch_polling(seen, interval, stop).await;
                    }
                    None => return self.watch_polling(seen, interval, stop).await,
                },
                () = crate::store::sleep_or_forever(poll) => {}
                _ = stop.changed() => return,
            }
            self.reload_if_changed(seen, &stop).await;
        }
    }

    /// Reloads until the fingerprint stops changing (or `stop`).
    async fn reload_if_changed(&self, seen: &mut Fingerprint, stop: &watch::Receiver<bool>) {
        let mut now = self.fingerprint();
        while now != *seen && !*stop.borrow() {
            tracing::info!("plugin or config file changed; reloading");
            let report = self.reload().await;
            tracing::info!(loaded = ?report.loaded, failed = ?report.failed, "reload done");
            *seen = now;
            now = self.fingerprint();
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut paths: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        if let Some(cfg) = self
            .config_path
            .as_deref()
            .and_then(|p| Config::load(p).ok())
        {
            paths.extend(cfg.hooks.into_iter().map(|h| h.wasm));
        } else {
            paths.extend(
                self.snapshot()
                    .plugins
                    .iter()
                    .map(|p| p.config.wasm.clone()),
            );
        }
        paths
            .into_iter()
            .map(|p| {
                use std::os::unix::fs::MetadataExt as _;
                let m = std::fs::metadata(&p).ok();
                // The inode too: an atomic-rename deploy replaces the file.
                let (mtime, len, ino) = (
                    m.as_ref().and_then(|m| m.modified().ok()),
                    m.as_ref().map_or(0, std::fs::Metadata::len),
                    m.map_or(0, |m| m.ino()),
                );
                (p, mtime, len, ino)
            })
            .collect()
    }
}

/// The directories to watch for `files`: each one's parent and, for a
/// symlink, its target's parent too (a file changed in place there does not
/// touch the link's directory).
#[cfg(target_os = "linux")]
fn dirs_of<'a>(
    files: impl Iterator<Item = &'a std::path::Path>,
) -> std::collections::BTreeSet<PathBuf> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let parent = |p: &std::path::Path| match p.parent() {
            Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("/"),
        };
        dirs.insert(parent(f));
        if let Ok(real) = std::fs::canonicalize(f) {
            dirs.insert(parent(&real));
        }
    }
    dirs
}

/// The inotify watches on the directories of the watched files.
#[cfg(target_os = "linux")]
struct Dirs {
    watches: inotify::Watches,
    by_dir: std::collections::BTreeMap<PathBuf, inotify::WatchDescriptor>,
}

#[cfg(target_os = "linux")]
impl Dirs {
    fn new(watches: inotify::Watches) -> Self {
        Self {
            watches,
            by_dir: std::collections::BTreeMap::new(),
        }
    }

    /// Watches the directories of the files in `seen` and drops the watches
    /// of directories no longer needed (the config changed).
    fn follow(&mut self, seen: &Fingerprint) -> Follow {
        use inotify::WatchMask as M;
        // Entries created, written, renamed in or out, deleted, touched; the
        // directory itself removed or renamed.
        let mask = M::CREATE
            | M::CLOSE_WRITE
            | M::MOVED_TO
            | M::MOVED_FROM
            | M::DELETE
            | M::ATTRIB
            | M::DELETE_SELF
            | M::MOVE_SELF
            | M::ONLYDIR;
        let want = dirs_of(seen.iter().map(|(p, ..)| p.as_path()));
        let gone: Vec<PathBuf> = self
            .by_dir
            .keys()
            .filter(|d| !want.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            if let Some(wd) = self.by_dir.remove(&d) {
                // Fails when the directory went away (the kernel dropped it).
                let _ = self.watches.remove(wd);
            }
        }
        let mut all = true;
        let mut added = false;
        for d in want {
            // Added again every time: cheap, and it re-arms a directory that
            // was deleted and re-created under the same name.
            match self.watches.add(&d, mask) {
                Ok(wd) => {
                    // A new watch: a directory not watched before, or one
                    // deleted and re-created (the kernel gives it a new
                    // descriptor).
                    added |= self.by_dir.insert(d, wd.clone()).as_ref() != Some(&wd);
                }
                Err(e) => {
                    tracing::debug!(dir = %d.display(), error = %e, "cannot watch a plugin directory; polling it");
                    self.by_dir.remove(&d);
                    all = false;
                }
            }
        }
        Follow {
            all_watched: all,
            added,
        }
    }
}

/// What [`Dirs::follow`] did.
#[cfg(target_os = "linux")]
struct Follow {
    /// Every directory is watched (else the caller polls too).
    all_watched: bool,
    /// A directory is watched that was not before: changes made before it
    /// was sent no event.
    added: bool,
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn watches_each_files_directory_and_a_symlinks_target_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let links = dir.path().join("links");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(real.join("a.wasm"), b"x").unwrap();
        std::os::unix::fs::symlink(real.join("a.wasm"), links.join("a.wasm")).unwrap();
        let files = [links.join("a.wasm"), dir.path().join("gateway.toml")];
        let got = dirs_of(files.iter().map(PathBuf::as_path));
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert!(got.contains(&links), "{got:?}");
        assert!(got.contains(&root.join("real")), "{got:?}");
        assert!(got.contains(dir.path()), "{got:?}");
        assert!(
            dirs_of([Path::new("no-such-gateway.toml")].into_iter()).contains(Path::new(".")),
            "a bare file name is in the working directory"
        );
    }
}
