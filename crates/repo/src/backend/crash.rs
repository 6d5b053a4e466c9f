//! [`CrashFs`]: an in-memory file system that can lose power (FAULT-MATRIX F9, helper H4).
//!
//! It keeps, for every file, the data as last written and the data as last *synced*, and for
//! every directory the entries as they are and as they were at the last directory sync. A power
//! cut reverts everything to the synced state — the worst case POSIX allows: a file renamed
//! into place whose data was never synced comes back empty, a directory created but never made
//! durable in its parent vanishes with everything in it. A process kill keeps everything done so
//! far. A [`CrashPlan`] makes the file system "die" at the n-th sync or mutating operation: that
//! operation fails, the cut is applied, and every later call fails until [`CrashFs::reboot`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::fs::{Fs, FsDirEntry, FsMeta, FsSpace};
use crate::clock::{Clock, SystemClock};

/// What a crash loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// Power loss: everything not synced is lost.
    PowerCut,
    /// `kill -9`: everything the process did so far survives.
    ProcessKill,
}

/// When the crash happens (1-based counts since [`CrashFs::arm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTrigger {
    /// Instead of the n-th sync (file data sync or directory sync).
    Sync(u64),
    /// Instead of the n-th mutating operation (syncs included).
    Op(u64),
}

/// A planned crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPlan {
    /// What is lost.
    pub kind: CrashKind,
    /// When.
    pub at: CrashTrigger,
}

#[derive(Debug, Clone)]
enum Node {
    File {
        data: Vec<u8>,
        synced: Vec<u8>,
        mtime: SystemTime,
    },
    Dir {
        entries: BTreeMap<String, u64>,
        synced: BTreeMap<String, u64>,
        mtime: SystemTime,
    },
}

#[derive(Debug)]
struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    plan: Option<CrashPlan>,
    ops: u64,
    syncs: u64,
    crashed: bool,
}

const ROOT: u64 = 0;

/// The simulated file system. Share it as `Arc<CrashFs>`; clones of the `Arc` see one state.
#[derive(Debug)]
pub struct CrashFs {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

fn crashed_err() -> io::Error {
    io::Error::other("simulated crash: the file system is gone until reboot")
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn components(path: &Path) -> io::Result<Vec<String>> {
    path.components()
        .map(|c| match c {
            Component::Normal(s) => s
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput)),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        })
        .collect()
}

impl State {
    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let mut ino = ROOT;
        for name in components(path)? {
            match self.nodes.get(&ino) {
                Some(Node::Dir { entries, .. }) => {
                    ino = *entries.get(&name).ok_or_else(not_found)?;
                }
                _ => return Err(not_found()),
            }
        }
        Ok(ino)
    }

    /// The parent directory's inode and the final name.
    fn parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut parts = components(path)?;
        let name = parts
            .pop()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let parent_path: std::path::PathBuf = parts.iter().collect();
        let ino = self.lookup(&parent_path)?;
        match self.nodes.get(&ino) {
            Some(Node::Dir { .. }) => Ok((ino, name)),
            _ => Err(not_found()),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> io::Result<&mut BTreeMap<String, u64>> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            _ => Err(not_found()),
        }
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        ino
    }

    fn power_cut(&mut self) {
        for node in self.nodes.values_mut() {
            match node {
                Node::File { data, synced, .. } => data.clone_from(synced),
                Node::Dir {
                    entries, synced, ..
                } => entries.clone_from(synced),
            }
        }
        // Forget what is no longer reachable.
        let mut reachable = std::collections::HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if reachable.insert(ino)
                && let Some(Node::Dir { entries, .. }) = self.nodes.get(&ino)
            {
                stack.extend(entries.values().copied());
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
    }
}

impl CrashFs {
    /// An empty file system (just the root directory), durable; file times from the system
    /// clock.
    #[must_use]
    pub fn new() -> Arc<CrashFs> {
        CrashFs::with_clock(Arc::new(SystemClock))
    }

    /// As [`CrashFs::new`], with file modification times taken from `clock` (so that tests on
    /// a manual clock see consistent ages).
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Arc<CrashFs> {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                entries: BTreeMap::new(),
                synced: BTreeMap::new(),
                mtime: SystemTime::now(),
            },
        );
        Arc::new(CrashFs {
            state: Mutex::new(State {
                nodes,
                next: 1,
                plan: None,
                ops: 0,
                syncs: 0,
                crashed: false,
            }),
            clock,
        })
    }

    fn now(&self) -> SystemTime {
        SystemTime::from(self.clock.now())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Plans a crash and resets the operation counters.
    pub fn arm(&self, plan: Option<CrashPlan>) {
        let mut s = self.lock();
        s.plan = plan;
        s.ops = 0;
        s.syncs = 0;
    }

    /// (mutating operations, syncs) since the last [`CrashFs::arm`].
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.ops, s.syncs)
    }

    /// Whether the planned crash has happened.
    #[must_use]
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// "Reboots": the file system works again (in its post-crash state) and no crash is planned.
    pub fn reboot(&self) {
        let mut s = self.lock();
        s.crashed = false;
        s.plan = None;
    }

    /// Makes everything durable, as a clean shutdown would.
    pub fn sync_all(&self) {
        let mut s = self.lock();
        for node in s.nodes.values_mut() {
            match node {
                Node::File { data, synced, .. } => synced.clone_from(data),
                Node::Dir {
                    entries, synced, ..
                } => synced.clone_from(entries),
            }
        }
    }

    /// Cuts power now.
    pub fn power_cut(&self) {
        self.lock().power_cut();
    }

    /// Every file (path, size), for assertions.
    #[must_use]
    pub fn files(&self) -> Vec<(String, usize)> {
        let s = self.lock();
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((ino, prefix)) = stack.pop() {
            match s.nodes.get(&ino) {
                Some(Node::Dir { entries, .. }) => {
                    for (name, child) in entries {
                        let p = if prefix.is_empty() {
                            name.clone()
                        } else {
                            format!("{prefix}/{name}")
                        };
                        stack.push((*child, p));
                    }
                }
                Some(Node::File { data, .. }) => out.push((prefix, data.len())),
                None => {}
            }
        }
        out.sort();
        out
    }

    /// Counts a mutating operation (and a sync if `sync`); crashes if the plan says so.
    fn step(&self, s: &mut State, sync: bool) -> io::Result<()> {
        if s.crashed {
            return Err(crashed_err());
        }
        s.ops += 1;
        if sync {
            s.syncs += 1;
        }
        let hit = match s.plan {
            Some(CrashPlan {
                at: CrashTrigger::Op(n),
                ..
            }) => s.ops == n,
            Some(CrashPlan {
                at: CrashTrigger::Sync(n),
                ..
            }) => sync && s.syncs == n,
            None => false,
        };
        if hit {
            if let Some(CrashPlan {
                kind: CrashKind::PowerCut,
                ..
            }) = s.plan
            {
                s.power_cut();
            }
            s.crashed = true;
            return Err(crashed_err());
        }
        Ok(())
    }

    fn read_state(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.lock();
        if s.crashed {
            return Err(crashed_err());
        }
        Ok(s)
    }
}

impl Fs for CrashFs {
    fn describe(&self) -> String {
        "crashfs:".into()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.read_state()?;
        match s.nodes.get(&s.lookup(path)?) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            _ => Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let data = self.read(path)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn metadata(&self, path: &Path) -> io::Result<FsMeta> {
        let s = self.read_state()?;
        match s.nodes.get(&s.lookup(path)?) {
            Some(Node::File { data, mtime, .. }) => Ok(FsMeta {
                len: data.len() as u64,
                mtime: *mtime,
                is_dir: false,
            }),
            Some(Node::Dir { mtime, .. }) => Ok(FsMeta {
                len: 0,
                mtime: *mtime,
                is_dir: true,
            }),
            None => Err(not_found()),
        }
    }

    fn write_new(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let (dir, name) = s.parent(path)?;
        if s.entries_mut(dir)?.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = s.alloc(Node::File {
            data: data.to_vec(),
            synced: Vec::new(),
            mtime: self.now(),
        });
        s.entries_mut(dir)?.insert(name, ino);
        if sync {
            self.step(&mut s, true)?;
            if let Some(Node::File { data, synced, .. }) = s.nodes.get_mut(&ino) {
                synced.clone_from(data);
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let (fdir, fname) = s.parent(from)?;
        let (tdir, tname) = s.parent(to)?;
        let ino = *s.entries_mut(fdir)?.get(&fname).ok_or_else(not_found)?;
        if let Some(existing) = s.entries_mut(tdir)?.get(&tname).copied()
            && matches!(s.nodes.get(&existing), Some(Node::Dir { .. }))
        {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        s.entries_mut(fdir)?.remove(&fname);
        s.entries_mut(tdir)?.insert(tname, ino);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let ino = s.lookup(from)?;
        if matches!(s.nodes.get(&ino), Some(Node::Dir { .. })) {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let (tdir, tname) = s.parent(to)?;
        let entries = s.entries_mut(tdir)?;
        if entries.contains_key(&tname) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        entries.insert(tname, ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let (dir, name) = s.parent(path)?;
        let ino = *s.entries_mut(dir)?.get(&name).ok_or_else(not_found)?;
        if matches!(s.nodes.get(&ino), Some(Node::Dir { .. })) {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        s.entries_mut(dir)?.remove(&name);
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let (dir, name) = s.parent(path)?;
        if s.entries_mut(dir)?.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = s.alloc(Node::Dir {
            entries: BTreeMap::new(),
            synced: BTreeMap::new(),
            mtime: self.now(),
        });
        s.entries_mut(dir)?.insert(name, ino);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let (dir, name) = s.parent(path)?;
        let ino = *s.entries_mut(dir)?.get(&name).ok_or_else(not_found)?;
        match s.nodes.get(&ino) {
            Some(Node::Dir { entries, .. }) if entries.is_empty() => {}
            Some(Node::Dir { .. }) => {
                return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
            }
            _ => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
        s.entries_mut(dir)?.remove(&name);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, true)?;
        let ino = s.lookup(path)?;
        match s.nodes.get_mut(&ino) {
            Some(Node::Dir {
                entries, synced, ..
            }) => {
                synced.clone_from(entries);
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsDirEntry>> {
        let s = self.read_state()?;
        match s.nodes.get(&s.lookup(path)?) {
            Some(Node::Dir { entries, .. }) => Ok(entries
                .iter()
                .map(|(name, ino)| FsDirEntry {
                    name: name.clone(),
                    is_dir: matches!(s.nodes.get(ino), Some(Node::Dir { .. })),
                })
                .collect()),
            _ => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn set_mtime(&self, path: &Path, t: SystemTime) -> io::Result<()> {
        let mut s = self.lock();
        self.step(&mut s, false)?;
        let ino = s.lookup(path)?;
        match s.nodes.get_mut(&ino) {
            Some(Node::File { mtime, .. } | Node::Dir { mtime, .. }) => {
                *mtime = t;
                Ok(())
            }
            None => Err(not_found()),
        }
    }

    fn space(&self) -> Option<FsSpace> {
        None
    }

    fn create_root(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_cut_loses_unsynced_data_and_entries() {
        let fs = CrashFs::new();
        fs.create_dir(Path::new("d")).unwrap();
        fs.sync_dir(Path::new("")).unwrap();
        // Synced data, entry made durable by a directory sync: survives.
        fs.write_new(Path::new("d/a"), b"aaa", true).unwrap();
        fs.sync_dir(Path::new("d")).unwrap();
        // Entry durable, data never synced: comes back empty.
        fs.write_new(Path::new("d/b"), b"bbb", false).unwrap();
        fs.sync_dir(Path::new("d")).unwrap();
        // Data synced but the entry never made durable: vanishes.
        fs.write_new(Path::new("d/c"), b"ccc", true).unwrap();
        // A directory never synced into its parent vanishes with its content.
        fs.create_dir(Path::new("e")).unwrap();
        fs.write_new(Path::new("e/x"), b"x", true).unwrap();
        fs.sync_dir(Path::new("e")).unwrap();
        fs.power_cut();
        assert_eq!(
            fs.files(),
            vec![("d/a".to_owned(), 3), ("d/b".to_owned(), 0)]
        );
    }

    #[test]
    fn planned_crash_stops_everything_until_reboot() {
        let fs = CrashFs::new();
        fs.arm(Some(CrashPlan {
            kind: CrashKind::ProcessKill,
            at: CrashTrigger::Op(2),
        }));
        fs.write_new(Path::new("a"), b"1", false).unwrap();
        assert!(fs.write_new(Path::new("b"), b"2", false).is_err());
        assert!(fs.crashed());
        assert!(fs.read(Path::new("a")).is_err());
        fs.reboot();
        assert_eq!(fs.read(Path::new("a")).unwrap(), b"1");
        assert!(fs.read(Path::new("b")).is_err());
    }
}
