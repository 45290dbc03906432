//! Staging writers: a session's lanes, which stage, write, hash and verify
//! its files beside the session.
//!
//! A session hands each file to one of a few lanes and goes on receiving.
//! A lane takes its tasks in order (so the chunks of a file arrive in order
//! and its commit after them) on a blocking thread that it holds only while
//! it has work. While one lane waits for a direct write to reach the device
//! or creates an inode, another hashes or writes the next file; a session on
//! its own thread did all of that one file after the other.
//!
//! Nothing comes back from a lane but [`Done`] messages. Chunk bytes count
//! for flow control only once a lane is done with them, so a slow disk
//! holds the station's window back instead of piling chunks up here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use ferry_common::protocol::{ErrorCode, ErrorFrame, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::repository::{FileKey, Repository, RepositoryError, Staged};

/// Lanes per session. Two let one file's device wait overlap another's
/// hashing on a 2-core machine; more files at once only queue on the cores.
pub const LANES: usize = 2;

/// A file of a session: (batch, file id).
pub type FileId = (u64, u32);

/// What a lane reports to its session.
#[derive(Debug)]
pub enum Done {
    /// A chunk's bytes left the lane (written, or dropped because the file
    /// had failed): they count as consumed for credit.
    Consumed(u64),
    /// The file failed; the lane has closed its staging file (and removed
    /// it if the content was wrong) and ignores what else comes for it.
    Failed { file: FileId, error: ErrorFrame },
    /// The file was committed and hashes to its commit: staged and
    /// verified, to be placed (boxed: a staged file is large beside the
    /// other reports).
    Verified {
        file: FileId,
        staged: Box<Staged>,
        sha256: Sha256,
    },
}

/// A session's lanes.
pub struct Writers {
    lanes: Vec<Arc<Lane>>,
    /// The lane each open file was given.
    assigned: HashMap<FileId, usize>,
    /// The lane the next file goes to.
    next: usize,
}

impl Writers {
    /// Lanes writing into `repository`, reporting to `done`; their threads
    /// log within `span`.
    pub fn new(
        repository: Arc<Repository>,
        done: mpsc::UnboundedSender<Done>,
        span: tracing::Span,
    ) -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                Arc::new(Lane {
                    queue: Mutex::new(Queue::default()),
                    files: Mutex::new(HashMap::new()),
                    repository: repository.clone(),
                    done: done.clone(),
                    span: span.clone(),
                })
            })
            .collect();
        Self {
            lanes,
            assigned: HashMap::new(),
            next: 0,
        }
    }

    /// Stages `key` as `file` on the next lane, unless it is open already.
    fn open(&mut self, file: FileId, key: &FileKey) -> usize {
        if let Some(lane) = self.assigned.get(&file) {
            return *lane;
        }
        let lane = self.next;
        self.next = (self.next + 1) % self.lanes.len();
        self.assigned.insert(file, lane);
        self.lanes[lane].push(Task::Open {
            file,
            key: key.clone(),
        });
        lane
    }

    /// Appends a chunk to `file` (staged as `key` on first use).
    pub fn write(&mut self, file: FileId, key: &FileKey, offset: u64, data: Bytes) {
        let lane = self.open(file, key);
        self.lanes[lane].push(Task::Write { file, offset, data });
    }

    /// Checks `file` against its commit once its chunks are written; the
    /// lane answers with [`Done::Verified`] or [`Done::Failed`]. The file
    /// leaves its lane either way.
    pub fn commit(&mut self, file: FileId, key: &FileKey, size: u64, sha256: Sha256) {
        let lane = self.open(file, key);
        self.assigned.remove(&file);
        self.lanes[lane].push(Task::Commit { file, size, sha256 });
    }

    /// Forgets a file that failed (the lane already has).
    pub fn forget(&mut self, file: FileId) {
        self.assigned.remove(&file);
    }

    /// Waits until every lane has done all it was given so far: every
    /// chunk handed over before is written (or refused).
    pub async fn flush(&self) {
        self.through(false).await;
    }

    /// Waits until every lane has done all it was given, then closes the
    /// staging files still open (they stay on disk, for a resume).
    pub async fn close(self) {
        self.through(true).await;
    }

    async fn through(&self, close: bool) {
        let mut waits = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let (done, wait) = oneshot::channel();
            lane.push(Task::Mark { close, done });
            waits.push(wait);
        }
        for wait in waits {
            let _ = wait.await;
        }
    }
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("lanes", &self.lanes.len())
            .field("open", &self.assigned.len())
            .finish()
    }
}

enum Task {
    Open {
        file: FileId,
        key: FileKey,
    },
    Write {
        file: FileId,
        offset: u64,
        data: Bytes,
    },
    Commit {
        file: FileId,
        size: u64,
        sha256: Sha256,
    },
    /// Say that everything before is done, closing every open file first
    /// if `close`.
    Mark {
        close: bool,
        done: oneshot::Sender<()>,
    },
}

#[derive(Default)]
struct Queue {
    tasks: VecDeque<Task>,
    /// Whether a blocking thread is draining `tasks`.
    running: bool,
}

struct Lane {
    queue: Mutex<Queue>,
    /// The lane's open staging files. Only the thread draining the queue
    /// touches them (one at a time), so this lock is never contended.
    files: Mutex<HashMap<FileId, Staged>>,
    repository: Arc<Repository>,
    done: mpsc::UnboundedSender<Done>,
    span: tracing::Span,
}

impl Lane {
    /// Queues `task`, starting a thread to drain the queue if none is.
    fn push(self: &Arc<Self>, task: Task) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.tasks.push_back(task);
        if !queue.running {
            queue.running = true;
            let lane = self.clone();
            tokio::task::spawn_blocking(move || lane.drain());
        }
    }

    /// Runs the queued tasks in order until there are none.
    fn drain(&self) {
        let _entered = self.span.enter();
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let task = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                match queue.tasks.pop_front() {
                    Some(task) => task,
                    None => {
                        queue.running = false;
                        return;
                    }
                }
            };
            self.run(&mut files, task);
        }
    }

    fn run(&self, files: &mut HashMap<FileId, Staged>, task: Task) {
        match task {
            Task::Open { file, key } => match self.repository.stage(key) {
                Ok(staged) => {
                    files.insert(file, staged);
                }
                Err(e) => self.fail(file, repository_error(&e)),
            },
            Task::Write { file, offset, data } => {
                if let Some(staged) = files.get_mut(&file)
                    && let Err(e) = staged.write(offset, &data)
                {
                    // The staging file keeps what was written before: a
                    // resume starts from there.
                    files.remove(&file);
                    self.fail(file, repository_error(&e));
                }
                let _ = self.done.send(Done::Consumed(data.len() as u64));
            }
            Task::Commit { file, size, sha256 } => {
                let Some(staged) = files.remove(&file) else {
                    return; // failed already, and said so
                };
                match verdict(&staged, size, sha256) {
                    Ok(()) => {
                        let _ = self.done.send(Done::Verified {
                            file,
                            staged: Box::new(staged),
                            sha256,
                        });
                    }
                    Err(error) => {
                        // Wrong content is never resumed from.
                        let _ = self.repository.discard(staged);
                        self.fail(file, error);
                    }
                }
            }
            Task::Mark { close, done } => {
                if close {
                    files.clear();
                }
                let _ = done.send(());
            }
        }
    }

    fn fail(&self, file: FileId, error: ErrorFrame) {
        let _ = self.done.send(Done::Failed { file, error });
    }
}

/// Whether `staged` holds what the commit says: the offered size, all of
/// it, hashing to `sha256`.
fn verdict(staged: &Staged, size: u64, sha256: Sha256) -> Result<(), ErrorFrame> {
    let offered = staged.key.size;
    if staged.len() != offered || size != offered {
        return Err(ErrorFrame::new(
            ErrorCode::HashMismatch,
            format!(
                "{} bytes staged, {size} committed, {offered} offered",
                staged.len()
            ),
        ));
    }
    if staged.sha256() != sha256 {
        return Err(ErrorFrame::new(
            ErrorCode::HashMismatch,
            "content does not hash to the committed SHA-256",
        ));
    }
    Ok(())
}

/// The error frame a repository failure is reported with.
pub fn repository_error(e: &RepositoryError) -> ErrorFrame {
    let code = if e.is_disk_full() {
        ErrorCode::DiskFull
    } else if matches!(
        e,
        RepositoryError::OutOfOrder { .. } | RepositoryError::Oversize { .. }
    ) {
        ErrorCode::UnexpectedMessage
    } else {
        ErrorCode::Internal
    };
    ErrorFrame::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::tests::{key, sha};

    /// Content of file `n`, `len` bytes, unlike every other file's.
    fn content(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        repository: Arc<Repository>,
        writers: Writers,
        done: mpsc::UnboundedReceiver<Done>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repository = Arc::new(
            Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap(),
        );
        let (tx, done) = mpsc::unbounded_channel();
        let writers = Writers::new(repository.clone(), tx, tracing::Span::none());
        Fixture {
            _dir: dir,
            repository,
            writers,
            done,
        }
    }

    /// Everything reported until `close` returned: bytes consumed, files
    /// verified (with their staged length), files failed.
    async fn settle(
        writers: Writers,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) -> (u64, Vec<(FileId, u64, Sha256)>, Vec<(FileId, ErrorFrame)>) {
        writers.close().await;
        let (mut consumed, mut verified, mut failed) = (0, Vec::new(), Vec::new());
        while let Ok(report) = done.try_recv() {
            match report {
                Done::Consumed(n) => consumed += n,
                Done::Verified {
                    file,
                    staged,
                    sha256,
                } => verified.push((file, staged.len(), sha256)),
                Done::Failed { file, error } => failed.push((file, error)),
            }
        }
        verified.sort_by_key(|v| v.0);
        failed.sort_by_key(|f| f.0);
        (consumed, verified, failed)
    }

    #[tokio::test]
    async fn interleaved_files_are_written_in_order_verified_and_credited() {
        let mut f = fixture();
        // Six files of three chunks each (the last one short), chunks of
        // different files interleaved the way a session may receive them,
        // and one empty file that only commits.
        let files: Vec<(FileId, FileKey, Vec<u8>)> = (0..6u8)
            .map(|n| {
                let data = content(n, 3 * 70_000 - 123);
                let key = key(&format!("d/{n}.bin"), data.len() as u64);
                ((1, u32::from(n)), key, data)
            })
            .collect();
        for chunk in 0..3usize {
            for (id, key, data) in &files {
                let part = &data[chunk * 70_000..data.len().min((chunk + 1) * 70_000)];
                f.writers.write(
                    *id,
                    key,
                    (chunk * 70_000) as u64,
                    Bytes::copy_from_slice(part),
                );
            }
        }
        for (id, key, data) in &files {
            f.writers.commit(*id, key, data.len() as u64, sha(data));
        }
        f.writers.commit((1, 9), &key("d/empty", 0), 0, sha(b""));

        let (consumed, verified, failed) = settle(f.writers, f.done).await;
        assert!(failed.is_empty(), "{failed:?}");
        let total: usize = files.iter().map(|(_, _, d)| d.len()).sum();
        assert_eq!(consumed, total as u64);
        let mut expected: Vec<(FileId, u64, Sha256)> = files
            .iter()
            .map(|(id, _, d)| (*id, d.len() as u64, sha(d)))
            .collect();
        expected.push(((1, 9), 0, sha(b"")));
        assert_eq!(verified, expected);
    }

    #[tokio::test]
    async fn after_a_flush_everything_handed_over_is_written_and_credited() {
        let mut f = fixture();
        let data = content(3, 3 * 65_536);
        let files: Vec<FileKey> = (0..4)
            .map(|n| key(&format!("f/{n}.bin"), data.len() as u64))
            .collect();
        for (n, key) in files.iter().enumerate() {
            for part in 0..2 {
                let at = part * 65_536;
                f.writers.write(
                    (2, n as u32),
                    key,
                    at as u64,
                    Bytes::copy_from_slice(&data[at..at + 65_536]),
                );
            }
        }
        f.writers.flush().await;
        let mut consumed = 0;
        while let Ok(report) = f.done.try_recv() {
            match report {
                Done::Consumed(n) => consumed += n,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(consumed, 4 * 2 * 65_536);
        for key in &files {
            assert_eq!(f.repository.staged_len(key), 2 * 65_536);
        }
    }

    #[tokio::test]
    async fn wrong_content_is_removed_and_a_broken_stream_is_kept_for_its_resume() {
        let mut f = fixture();
        let repository = f.repository.clone();
        let good = content(1, 100_000);
        let (wrong_key, broken_key) = (key("wrong.bin", 100_000), key("broken.bin", 100_000));

        // Whole, but committed with another hash: refused, and removed.
        f.writers
            .write((1, 0), &wrong_key, 0, Bytes::copy_from_slice(&good));
        f.writers.commit((1, 0), &wrong_key, 100_000, sha(b"other"));
        // A gap after the first 4096 bytes: refused; the rest of its chunks
        // still count for credit, its commit is ignored, and what it wrote
        // before the gap stays staged for a resume.
        f.writers.write(
            (1, 1),
            &broken_key,
            0,
            Bytes::copy_from_slice(&good[..4096]),
        );
        f.writers.write(
            (1, 1),
            &broken_key,
            8192,
            Bytes::copy_from_slice(&good[8192..]),
        );
        f.writers.write(
            (1, 1),
            &broken_key,
            4096,
            Bytes::copy_from_slice(&good[4096..8192]),
        );
        f.writers.commit((1, 1), &broken_key, 100_000, sha(&good));

        let (consumed, verified, failed) = settle(f.writers, f.done).await;
        assert!(verified.is_empty(), "{verified:?}");
        assert_eq!(consumed, 2 * 100_000);
        let codes: Vec<(FileId, ErrorCode)> = failed.iter().map(|(id, e)| (*id, e.code)).collect();
        assert_eq!(
            codes,
            [
                ((1, 0), ErrorCode::HashMismatch),
                ((1, 1), ErrorCode::UnexpectedMessage)
            ]
        );
        assert_eq!(repository.staged_len(&wrong_key), 0);
        assert_eq!(repository.staged_len(&broken_key), 4096);
    }
}
