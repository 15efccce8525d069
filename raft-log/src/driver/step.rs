//! [`Stepper`]: the engine without its thread. Each [`Stepper::step`] is one cycle of the Ready
//! loop (`Driver::receive` without waiting, then `Driver::cycle`) on the caller's thread: it
//! takes what the [`EngineHandle`] queued (proposals, inbound raft messages, read barriers,
//! membership changes) and returns once the cycle is done. Its outputs go where the engine's
//! always go: raft messages to the configured [`crate::Transport`], outputs to the waiters'
//! receivers (`try_recv` them), the status to [`EngineHandle::status`]. Time is
//! `EngineConfig::time` (ticks are due when it says so), randomness `EngineConfig::seed`, and
//! snapshots are serialized inline, so with a manual clock, a seed and a
//! [`crate::MemDisk`] nothing in a step depends on the machine it runs on. The simulator
//! (`sim/`) runs several of them on one simulated network and clock.
//!
//! Dropping a stepper is a crash (nothing is flushed or answered; with a `MemDisk`, call
//! `MemDisk::crash` first); [`Stepper::shutdown`] is the clean stop `Engine::shutdown` makes.

use crate::engine::{EngineFailure, EngineHandle, prepare};
use crate::error::RaftLogError;
use crate::{EngineConfig, Hook, StateMachine};

use super::Driver;

/// A raft-log engine driven one cycle at a time by its caller (see the module docs).
pub struct Stepper<M: StateMachine> {
    /// `None` once the engine stopped (on an error, or `Input::Stop`).
    driver: Option<Driver<M>>,
    handle: EngineHandle<M>,
}

impl<M: StateMachine> Stepper<M> {
    /// Opens (or creates) the log as `Engine::open` does, restores its snapshot into `machine`
    /// and handles the first Ready, without a thread and without waiting: the replay of the
    /// committed log goes on in the first steps.
    pub fn open(cfg: EngineConfig, machine: M, hook: Hook<M>) -> Result<Self, RaftLogError> {
        let (handle, queues) = prepare(&cfg, machine)?;
        let shared = handle.shared().clone();
        let mut driver = Driver::start(cfg, hook, queues, shared, handle.state(), false)?;
        driver.begin()?;
        Ok(Stepper {
            driver: Some(driver),
            handle,
        })
    }

    /// The handle: propose, step raft messages, read barriers, status, the state.
    pub fn handle(&self) -> EngineHandle<M> {
        self.handle.clone()
    }

    /// One cycle of the loop. `Err` once the engine stopped on an error (a failed fsync, a
    /// corrupt log): every waiter was answered and the failure recorded, as the engine thread
    /// does; later calls return the same failure.
    pub fn step(&mut self) -> Result<(), EngineFailure> {
        let Some(driver) = self.driver.as_mut() else {
            return self.stopped();
        };
        let outcome = driver.receive(None).and_then(|inbox| driver.cycle(inbox));
        match outcome {
            Ok(false) => Ok(()),
            Ok(true) => {
                if let Some(d) = self.driver.take() {
                    d.finish(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                if let Some(d) = self.driver.take() {
                    d.finish(Err(e));
                }
                self.stopped()
            }
        }
    }

    fn stopped(&self) -> Result<(), EngineFailure> {
        match self.handle.failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// False once the engine stopped.
    pub fn is_running(&self) -> bool {
        self.driver.is_some()
    }

    /// Stops cleanly: answers what is outstanding and flushes the log (one sync).
    pub fn shutdown(mut self) {
        if let Some(d) = self.driver.take() {
            d.finish(Ok(()));
        }
    }
}

impl<M: StateMachine> std::fmt::Debug for Stepper<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stepper")
            .field("running", &self.driver.is_some())
            .field("status", &self.handle.status())
            .finish()
    }
}
