//! A generic, OTP-style supervisor for [ractor] actors.
//!
//! ractor only offers supervision *events* (a linked parent hears
//! `ActorTerminated` / `ActorFailed` for its children); restart policies are
//! left to the user, and the default `handle_supervisor_evt` stops the parent
//! on the first child exit. [`Supervisor`] fills that gap.
//!
//! # Model
//!
//! A supervisor owns an ordered list of children (static children from its
//! arguments, started in order in `pre_start`, followed by dynamic children added
//! with [`SupervisorMsg::StartChild`]). Each child is described by a
//! [`ChildSpec`]: a unique name, a [`Restart`] policy and a [`StartFn`] that
//! spawns the actor *linked to the supervisor cell it receives*.
//!
//! When a child exits, the supervisor decides from the child's [`Restart`]
//! policy whether it is restarted at all:
//!
//! | exit                          | `Permanent` | `Transient` | `Temporary` |
//! |-------------------------------|-------------|-------------|-------------|
//! | failure (panic / `Err` / kill) | restart     | restart     | forget      |
//! | normal stop / drain           | restart     | forget      | forget      |
//!
//! "kill" means an `ActorTerminated` whose reason is `"killed"` (a
//! `Signal::Kill`) or `"actor_task_cancelled"`; every other `ActorTerminated` is a
//! normal stop. A child that is forgotten never affects its siblings.
//!
//! If the child is restarted, the [`Strategy`] says which siblings go with it.
//! Siblings are stopped gracefully (reverse start order, `stop_and_wait`, then
//! `kill` after [`SHUTDOWN_TIMEOUT`]); their own exit events are ignored because
//! the supervisor only acts on events whose `ActorId` is a child's *current* id,
//! and a child stopped on purpose no longer has one. `Temporary` siblings
//! stopped this way are forgotten, the others are restarted in start order.
//!
//! # Restart budget and backoff (per child)
//!
//! Every restart-triggering exit of a child (including a failed re-spawn) is
//! recorded. If a child has more than [`SupervisorConfig::max_restarts`] such
//! exits within [`SupervisorConfig::period`], the supervisor *escalates*: it
//! stops all its children (reverse order) and fails with an error such as
//! ``child `runner-3` failed 6 times in 10s (budget 5): giving up``, so its own
//! parent receives `SupervisionEvent::ActorFailed` (and, if that parent is a
//! [`Supervisor`], applies its own policy to us).
//!
//! Otherwise the n-th exit within the period is followed by a delay of
//! `backoff_initial * 2^(n-1)`, capped at `backoff_max`, implemented with
//! `send_after` (the supervisor never sleeps). While waiting, the child is listed
//! by [`SupervisorMsg::Children`] with `id: None`. Siblings restarted along with a
//! failed child are not charged.
//!
//! The period is measured on [`SupervisorConfig::clock`] (the node's clock); the
//! budget and the backoff are pure functions of the time read from it
//! (`supervisor/budget.rs`, unit-tested with a `ManualClock`).
//!
//! # Nesting
//!
//! A supervisor is a normal actor, so [`ChildSpec::supervisor`] builds a spec
//! whose start function spawns a nested [`Supervisor`] linked to the parent.
//! Stopping a supervisor stops its children gracefully in reverse order (in
//! `post_stop`); if it fails, ractor kills its remaining children.
//!
//! # Caveats
//!
//! * A [`StartFn`] must link the actor to the supervisor cell it is given
//!   (`Actor::spawn_linked(.., sup)`); otherwise the supervisor links it itself.
//! * A restarted child has a new `ActorId`: address children by registered name
//!   (`ractor::registry::where_is`) or ask the supervisor.
//! * Starting and stopping children happens inside the supervisor's handlers,
//!   so a child must not `call` its supervisor from `pre_start`/`post_stop`
//!   (it would wait for its call timeout, or up to [`SHUTDOWN_TIMEOUT`]).
//! * Escalation is also reported if a delayed re-spawn fails beyond the budget
//!   (then the error comes from `handle` instead of `handle_supervisor_evt`;
//!   the parent sees the same `ActorFailed`).

mod budget;
mod runtime;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, RpcReplyPort, SpawnErr};

/// How long a child gets to stop gracefully before it is killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which children are restarted together when one child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Only the exited child is restarted.
    #[default]
    OneForOne,
    /// All other children are stopped (reverse start order), then all are
    /// restarted in start order.
    OneForAll,
    /// The exited child and every child started after it are stopped (reverse
    /// order) and restarted in start order; earlier children are untouched.
    RestForOne,
}

/// Whether a child is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always restarted, whether it failed or stopped normally.
    #[default]
    Permanent,
    /// Restarted only after a failure; forgotten after a normal stop.
    Transient,
    /// Never restarted; forgotten whenever it exits.
    Temporary,
}

/// Spawns a child linked to the given supervisor cell and returns its cell.
pub type StartFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// Describes one child of a [`Supervisor`]. Cloning is cheap (the start
/// function is shared).
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique name among the supervisor's children (not necessarily the
    /// actor's registered name, although that is the usual choice).
    pub name: String,
    /// Restart policy.
    pub restart: Restart,
    /// Called for the first start and for every restart.
    pub start: StartFn,
}

impl ChildSpec {
    /// Builds a spec from an async closure, e.g.
    /// `ChildSpec::new("db", Restart::Permanent, |sup| async move {
    ///     Ok(Actor::spawn_linked(Some("db".into()), Db, (), sup).await?.0.get_cell()) })`.
    pub fn new<F, Fut>(name: impl Into<String>, restart: Restart, f: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name: name.into(),
            restart,
            start: Arc::new(move |sup| Box::pin(f(sup))),
        }
    }

    /// A spec for a nested [`Supervisor`], registered under `name`, that starts
    /// (and on every restart re-starts) the given children.
    pub fn supervisor(
        name: impl Into<String>,
        restart: Restart,
        config: SupervisorConfig,
        children: Vec<ChildSpec>,
    ) -> Self {
        let name = name.into();
        let actor_name = name.clone();
        Self::new(name, restart, move |parent| {
            let args = (config.clone(), children.clone());
            let actor_name = actor_name.clone();
            async move {
                let (sup, _) =
                    Actor::spawn_linked(Some(actor_name), Supervisor, args, parent).await?;
                Ok(sup.get_cell())
            }
        })
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// Supervisor settings. See the module docs for the exact semantics.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Which siblings are restarted with a child.
    pub strategy: Strategy,
    /// Restarts of one child allowed within `period`; one more escalates.
    pub max_restarts: u32,
    /// Sliding window for `max_restarts` and for counting consecutive restarts.
    pub period: Duration,
    /// Delay before the first restart within the period.
    pub backoff_initial: Duration,
    /// Upper bound of the doubling delay.
    pub backoff_max: Duration,
    /// What the restart budget's period is measured with: the node's clock (the system clock
    /// by default; a `ManualClock` in tests).
    pub clock: troupe_clock::SharedClock,
}

impl Default for SupervisorConfig {
    /// One-for-one, 5 restarts in 10 s, backoff 10 ms doubling up to 1 s.
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            clock: troupe_clock::system(),
        }
    }
}

/// A child as reported by [`SupervisorMsg::Children`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The spec's name.
    pub name: String,
    /// Current actor id; `None` while a (delayed) restart is pending.
    pub id: Option<ActorId>,
    /// How many times the child has been re-started (successfully) so far,
    /// including restarts caused by a sibling under `OneForAll`/`RestForOne`.
    pub restarts: u32,
}

/// Messages understood by [`Supervisor`].
pub enum SupervisorMsg {
    /// Start a dynamic child (appended to the start order). Replies with the
    /// child's cell, or an error if the name is taken or the spawn failed (a
    /// failed spawn leaves nothing behind and does not count as a restart).
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, String>>),
    /// Stop a child (gracefully, waiting for it) and forget it; it is not
    /// restarted. Unknown names are ignored.
    StopChild(String),
    /// All children in start order.
    Children(RpcReplyPort<Vec<ChildInfo>>),
    /// Internal: a delayed restart is due. Cannot be constructed outside this
    /// module.
    #[doc(hidden)]
    Restart(RestartToken),
}

/// Opaque identifier of a scheduled restart (see [`SupervisorMsg::Restart`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartToken(u64);

/// The supervisor actor. `Arguments = (SupervisorConfig, Vec<ChildSpec>)`: the
/// static children, started in order in `pre_start`. If one of them fails to
/// start, the ones already started are stopped and the spawn of the supervisor
/// fails with `SpawnErr::StartupFailed`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for SupervisorMsg {}
