//! Group commit: write jobs from many callers, applied in arrival order in one redb transaction
//! and answered after its commit, so one fsync covers them all.
//!
//! A job that fails before changing anything (a `WrongKind`, a `NotAnInteger`, a corrupt record
//! read) is answered its error and the group goes on. A job that fails after changing part of the
//! transaction (a redb write error) aborts it: that job gets its error, every other job of the
//! group `Unavailable`, and none is acknowledged.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::oneshot;

use super::{BACKEND, Writer, write};
use crate::storage::StorageError;

/// Jobs one transaction takes at most.
const GROUP_JOBS_MAX: usize = 256;

/// One queued write.
pub(super) trait Job: Send {
    /// Applies the job to the transaction. `Err` only if it failed after changing part of it.
    fn apply(&mut self, w: &mut Writer<'_>) -> Result<(), StorageError>;
    /// Answers the caller: its own outcome, or `failure` if the transaction did not commit.
    fn answer(self: Box<Self>, failure: Option<StorageError>);
}

/// A job running `f` and answering on `reply`.
pub(super) struct Pending<T, F> {
    f: Option<F>,
    outcome: Option<Result<T, StorageError>>,
    reply: oneshot::Sender<Result<T, StorageError>>,
}

impl<T, F> Pending<T, F> {
    pub(super) fn new(f: F, reply: oneshot::Sender<Result<T, StorageError>>) -> Pending<T, F> {
        Pending {
            f: Some(f),
            outcome: None,
            reply,
        }
    }
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&mut Writer<'_>) -> Result<T, StorageError> + Send,
{
    fn apply(&mut self, w: &mut Writer<'_>) -> Result<(), StorageError> {
        let Some(f) = self.f.take() else {
            return Ok(());
        };
        w.changed = false;
        match f(w) {
            Ok(answer) => self.outcome = Some(Ok(answer)),
            Err(e) if !w.changed => self.outcome = Some(Err(e)),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn answer(self: Box<Self>, failure: Option<StorageError>) {
        let outcome = match (failure, self.outcome) {
            (Some(e), _) => Err(e),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(StorageError::Unavailable {
                backend: BACKEND,
                reason: "the write was not applied".to_owned(),
            }),
        };
        // The caller may have given up waiting: nothing to do then.
        let _ = self.reply.send(outcome);
    }
}

/// The thread applying queued jobs; stopped (and waited for) when dropped.
#[derive(Debug)]
pub(super) struct GroupWriter {
    jobs: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupWriter {
    /// Starts the writer thread of `db`.
    pub(super) fn start(db: Arc<Database>) -> Result<GroupWriter, StorageError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("tunnox-kv-writer".to_owned())
            .spawn(move || run(&db, &queue))
            .map_err(|e| StorageError::Unavailable {
                backend: BACKEND,
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(GroupWriter {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `job`; `Unavailable` if the writer has stopped.
    pub(super) fn submit(&self, job: Box<dyn Job>) -> Result<(), StorageError> {
        let stopped = || StorageError::Unavailable {
            backend: BACKEND,
            reason: "the writer thread has stopped".to_owned(),
        };
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current group; waiting for it releases the
        // database file before a new `open` of the same path.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, queue: &Receiver<Box<dyn Job>>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_JOBS_MAX {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit(db, group);
    }
}

fn commit(db: &Database, mut group: Vec<Box<dyn Job>>) {
    let mut failed_at = None;
    let result = write(db, |w| {
        for (index, job) in group.iter_mut().enumerate() {
            if let Err(e) = job.apply(w) {
                failed_at = Some(index);
                return Err(e);
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => group.into_iter().for_each(|job| job.answer(None)),
        Err(e) => {
            let reason = format!("the write transaction failed: {e}");
            let mut own = Some(e);
            for (index, job) in group.into_iter().enumerate() {
                let failure = match (Some(index) == failed_at, own.take()) {
                    (true, Some(e)) => e,
                    (_, taken) => {
                        own = taken;
                        StorageError::Unavailable {
                            backend: BACKEND,
                            reason: reason.clone(),
                        }
                    }
                };
                job.answer(Some(failure));
            }
        }
    }
}
