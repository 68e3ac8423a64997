//! Maglev tables for the services reconciler: what a table is built from
//! ([`TableInput`]; equal inputs give equal tables, so an unchanged input is
//! never rebuilt) and building a batch of them on every core, a chunk at a
//! time, overlapped with the writes of the previous chunk; services' first
//! tables built and written by a [`Pipeline`] beside the caller's writes.
use std::{
    collections::VecDeque,
    sync::{mpsc, Arc},
    thread::Scope,
};

use super::{services::Problem, DatapathError};
use crate::{maglev::Maglev, model::ServiceKey, store::TableSink, view::table_hash};

/// Tables built per chunk of an apply (a table is 32 KiB while it waits to
/// be written: a cold start of 10k services stays at a few MiB).
const CHUNK: usize = 256;

/// The value written for a table of M = `slots.len()` slots: the whole of
/// its size class's value, slot i >= M repeating slot i mod M. A reader
/// that still has another M of the same class (the frontends are rewritten
/// after the table) then reads only indices the table names, never the
/// zeros of a padded tail.
pub(crate) fn padded(mut slots: Vec<u16>) -> Vec<u16> {
    let m = slots.len();
    let class = crate::abi::maglev_class(m);
    if m > 0 && class > m {
        slots.reserve(class - m);
        for i in m..class {
            let s = slots[i - m];
            slots.push(s);
        }
    }
    slots
}

/// What a Maglev table is built from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TableInput {
    /// Table size; 0 when there is no table.
    pub size: u32,
    /// (stable name, weight, service-local index) of each active backend, sorted.
    pub active: Vec<(Arc<str>, u32, u16)>,
}

impl TableInput {
    /// No table (no frontend, or no active backend).
    pub fn is_none(&self) -> bool {
        self.active.is_empty()
    }
}

/// One table to build.
#[derive(Debug)]
pub(crate) struct TableJob {
    pub key: ServiceKey,
    pub input: TableInput,
}

type Built = Result<Vec<(TableJob, Vec<u16>)>, DatapathError>;

fn build_one(job: &TableJob) -> Result<Vec<u16>, DatapathError> {
    let TableInput { size, active } = &job.input;
    if active.is_empty() {
        return Ok(Vec::new());
    }
    let invalid =
        |e| DatapathError::Invalid { service: job.key.clone(), problem: Problem::Maglev(e) };
    let maglev = Maglev::new(*size).map_err(invalid)?;
    let input: Vec<(&str, u32)> = active.iter().map(|(n, w, _)| (&**n, *w)).collect();
    let positions = maglev.build(&input).map_err(invalid)?;
    Ok(positions.iter().map(|&p| active[usize::from(p)].2).collect())
}

/// Table slots below which a batch is built on the calling thread: spawning
/// a thread per core and waking it costs more than a few small tables
/// (endpoint churn: one table of M = 1993 is ~60 µs; two thread spawns on a
/// busy machine took longer than the build and doubled the tail latency).
const INLINE_SLOTS: usize = 65_536;

/// Builds `jobs` on every core (about 0.3 ms a table at M = 16381).
fn build(jobs: Vec<TableJob>) -> Built {
    let slots: usize = jobs.iter().map(|j| j.input.size as usize).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 || slots <= INLINE_SLOTS {
        return jobs.into_iter().map(|j| build_one(&j).map(|t| (j, t))).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    let built: Vec<Result<Vec<u16>, DatapathError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(build_one).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("Maglev build panicked")).collect()
    });
    jobs.into_iter().zip(built).map(|(j, t)| t.map(|t| (j, t))).collect()
}

/// A chunk of tables being built on a thread, or to be built in place.
enum Building<'scope> {
    Thread(std::thread::ScopedJoinHandle<'scope, Built>),
    Inline(Vec<TableJob>),
}

/// Builds every job's table and hands each to `write`, in job order. One
/// chunk (a watch event's worth) is built right here; more are built a
/// chunk ahead of the writes, so at most two chunks of tables exist at once.
pub(crate) fn build_all(
    jobs: Vec<TableJob>,
    mut write: impl FnMut(TableJob, Vec<u16>) -> Result<(), DatapathError>,
) -> Result<(), DatapathError> {
    let mut chunks: VecDeque<Vec<TableJob>> = VecDeque::new();
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        chunks.push_back(jobs.by_ref().take(CHUNK).collect());
    }
    std::thread::scope(|scope| {
        let overlap = chunks.len() > 1;
        let spawn = |c: Vec<TableJob>| {
            if overlap {
                Building::Thread(scope.spawn(move || build(c)))
            } else {
                Building::Inline(c)
            }
        };
        let mut next = chunks.pop_front().map(spawn);
        while let Some(building) = next.take() {
            let built = match building {
                Building::Thread(h) => h.join().expect("Maglev build panicked")?,
                Building::Inline(c) => build(c)?,
            };
            next = chunks.pop_front().map(spawn);
            for (job, table) in built {
                write(job, table)?;
            }
        }
        Ok(())
    })
}

/// Services in one apply from which their first tables go through a
/// [`Pipeline`] (a chunk's worth: below, starting its thread costs more
/// than the overlap gains).
pub(crate) const PIPELINE_MIN: usize = CHUNK;

/// A service's first table (the maps hold none of it in any class): built
/// and written by a [`Pipeline`].
#[derive(Debug)]
pub(crate) struct FirstTable {
    pub job: TableJob,
    pub svc_id: u32,
}

/// A first table as written: its hash and size M, as the bookkeeping keeps
/// them ([`super::services`]' `Table`).
pub(crate) type Written = Result<(u64, usize), DatapathError>;

/// Builds services' first tables and writes them through a [`TableSink`]
/// on threads of their own while the caller does its own writes (a cold
/// start's backend writes leave a core idle for ~0.7 s at 30k services;
/// the tables' fills and kernel allocations take ~1.8 s of CPU). Outcomes
/// come back in the order the tables were pushed. The caller pushes a
/// service only once its backends are written: a table never names a
/// backend the maps do not hold.
pub(crate) struct Pipeline {
    tx: mpsc::Sender<Vec<FirstTable>>,
    rx: mpsc::Receiver<Vec<(FirstTable, Written)>>,
    chunk: Vec<FirstTable>,
}

impl Pipeline {
    /// A thread of `scope` takes chunks of [`CHUNK`] tables, builds and
    /// writes each chunk on every core.
    pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, sink: Arc<dyn TableSink>) -> Pipeline {
        let (tx, jobs) = mpsc::channel::<Vec<FirstTable>>();
        let (done, rx) = mpsc::channel();
        scope.spawn(move || {
            for chunk in jobs {
                if done.send(build_write(chunk, &*sink)).is_err() {
                    break; // the caller gave up (an error): the rest is not written
                }
            }
        });
        Pipeline { tx, rx, chunk: Vec::new() }
    }

    pub fn push(&mut self, table: FirstTable) {
        self.chunk.push(table);
        if self.chunk.len() >= CHUNK {
            self.send();
        }
    }

    fn send(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        // A send fails only once the thread is gone (it panicked): the
        // scope reports that.
        let _ = self.tx.send(chunk);
    }

    /// Every table's outcome, in push order, each as soon as it is known.
    pub fn outcomes(mut self) -> impl Iterator<Item = (FirstTable, Written)> {
        if !self.chunk.is_empty() {
            self.send();
        }
        let Pipeline { tx, rx, .. } = self;
        drop(tx); // the thread ends after the last chunk
        rx.into_iter().flatten()
    }
}

/// Builds and writes `chunk` on every core.
fn build_write(chunk: Vec<FirstTable>, sink: &dyn TableSink) -> Vec<(FirstTable, Written)> {
    let one = |t: &FirstTable| -> Written {
        let slots = padded(build_one(&t.job)?);
        sink.write_table(t.svc_id, &slots)?;
        Ok((table_hash(&slots), t.job.input.size as usize))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(chunk.len());
    let outcomes: Vec<Written> = if threads <= 1 {
        chunk.iter().map(one).collect()
    } else {
        let part = chunk.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let mut parts = chunk.chunks(part);
            let here = parts.next().unwrap_or_default();
            let handles: Vec<_> =
                parts.map(|p| scope.spawn(move || p.iter().map(one).collect::<Vec<_>>())).collect();
            let mut out: Vec<Written> = here.iter().map(one).collect();
            for h in handles {
                out.extend(h.join().expect("Maglev build panicked"));
            }
            out
        })
    };
    chunk.into_iter().zip(outcomes).collect()
}
