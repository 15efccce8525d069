//! The [`Supervisor`] actor implementation: child bookkeeping, restart
//! strategies, restart budget and backoff. See the parent module for the
//! semantics.

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::budget::{Exits, Verdict};
use super::{
    ChildInfo, ChildSpec, Restart, RestartToken, SHUTDOWN_TIMEOUT, Strategy, Supervisor,
    SupervisorConfig, SupervisorMsg,
};

/// Runtime state of a [`Supervisor`].
pub struct SupervisorState {
    config: SupervisorConfig,
    /// In start order.
    children: Vec<Child>,
    next_token: u64,
    /// Name (or id) of the supervisor, for logs.
    label: String,
}

struct Child {
    spec: ChildSpec,
    /// `None` while a restart is pending.
    cell: Option<ActorCell>,
    /// The restart batch this child waits for, if any.
    pending: Option<u64>,
    restarts: u32,
    /// Restart-triggering exits within the current period.
    exits: Exits,
}

impl Child {
    fn new(spec: ChildSpec, cell: ActorCell) -> Self {
        Self {
            spec,
            cell: Some(cell),
            pending: None,
            restarts: 0,
            exits: Exits::default(),
        }
    }
}

/// Exit reasons of `ActorTerminated` that are not a normal stop.
fn is_abnormal_reason(reason: Option<&str>) -> bool {
    matches!(reason, Some("killed") | Some("actor_task_cancelled"))
}

/// Spawns a child via its spec and makes sure it is linked to `sup`.
async fn spawn(sup: &ActorCell, spec: &ChildSpec) -> Result<ActorCell, ractor::SpawnErr> {
    let cell = (spec.start)(sup.clone()).await?;
    let linked = cell
        .try_get_supervisor()
        .is_some_and(|s| s.get_id() == sup.get_id());
    if !linked {
        tracing::debug!(child = %spec.name, "start function did not link the child; linking it");
        cell.link(sup.clone());
    }
    Ok(cell)
}

/// Stops a child gracefully, killing it if it does not exit in time.
async fn stop_child(cell: &ActorCell) {
    let reason = Some("stopped by supervisor".to_string());
    if cell
        .stop_and_wait(reason, Some(SHUTDOWN_TIMEOUT))
        .await
        .is_err()
    {
        let _ = cell.kill_and_wait(Some(SHUTDOWN_TIMEOUT)).await;
    }
}

impl SupervisorState {
    fn position(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.name == name)
    }

    fn position_of_id(&self, id: ActorId) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|cell| cell.get_id() == id))
    }

    fn infos(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|c| ChildInfo {
                name: c.spec.name.clone(),
                id: c.cell.as_ref().map(ActorCell::get_id),
                restarts: c.restarts,
            })
            .collect()
    }

    /// Stops every running child in reverse start order.
    async fn stop_all(&mut self) {
        for child in self.children.iter_mut().rev() {
            child.pending = None;
            if let Some(cell) = child.cell.take() {
                stop_child(&cell).await;
            }
        }
    }

    /// A child at `idx` exited and must be restarted (its cell is already
    /// cleared): charge its budget, stop the siblings the strategy names and
    /// schedule the restart after the backoff. Returns `Err` to escalate.
    async fn restart_after_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
    ) -> Result<(), ActorProcessingErr> {
        let now = self.config.clock.now();
        let child = &mut self.children[idx];
        child.cell = None;
        let (n, delay) = match child.exits.charge(now, &self.config) {
            Verdict::Restart { n, delay } => (n, delay),
            Verdict::Spent { n } => {
                let msg = format!(
                    "child `{}` failed {n} times in {:?} (budget {}): giving up",
                    child.spec.name, self.config.period, self.config.max_restarts
                );
                tracing::error!(supervisor = %self.label, "{msg}");
                self.stop_all().await;
                return Err(msg.into());
            }
        };

        let affected = match self.config.strategy {
            Strategy::OneForOne => idx..idx + 1,
            Strategy::RestForOne => idx..self.children.len(),
            Strategy::OneForAll => 0..self.children.len(),
        };
        for j in affected.clone().rev() {
            if j == idx {
                continue;
            }
            if let Some(cell) = self.children[j].cell.take() {
                tracing::info!(
                    supervisor = %self.label,
                    child = %self.children[j].spec.name,
                    "stopping sibling for restart"
                );
                stop_child(&cell).await;
            }
        }

        let token = self.next_token;
        self.next_token += 1;
        for j in affected {
            self.children[j].pending = Some(token);
        }
        // Temporary siblings stopped above are forgotten, not restarted.
        let failed_name = self.children[idx].spec.name.clone();
        self.children.retain(|c| {
            !(c.pending == Some(token)
                && c.spec.restart == Restart::Temporary
                && c.spec.name != failed_name)
        });

        tracing::info!(
            supervisor = %self.label,
            child = %failed_name,
            attempt = n,
            ?delay,
            "scheduling restart"
        );
        myself.send_after(delay, move || SupervisorMsg::Restart(RestartToken(token)));
        Ok(())
    }

    /// A restart batch is due: start its children in order.
    async fn run_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        token: u64,
    ) -> Result<(), ActorProcessingErr> {
        let names: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.pending == Some(token))
            .map(|c| c.spec.name.clone())
            .collect();
        for name in names {
            // Re-check: an earlier spawn failure may have rescheduled this one.
            let Some(idx) = self.position(&name) else {
                continue;
            };
            if self.children[idx].pending != Some(token) {
                continue;
            }
            self.children[idx].pending = None;
            let spec = self.children[idx].spec.clone();
            match spawn(&myself.get_cell(), &spec).await {
                Ok(cell) => {
                    let child = &mut self.children[idx];
                    child.restarts += 1;
                    tracing::info!(
                        supervisor = %self.label,
                        child = %name,
                        id = %cell.get_id(),
                        restarts = child.restarts,
                        "child restarted"
                    );
                    child.cell = Some(cell);
                }
                Err(err) => {
                    tracing::warn!(
                        supervisor = %self.label,
                        child = %name,
                        error = %err,
                        "child restart failed"
                    );
                    self.restart_after_exit(myself, idx).await?;
                }
            }
        }
        Ok(())
    }

    /// Handles the exit of the actor `id`; ignores actors that are not a
    /// current child (e.g. siblings stopped on purpose, forgotten children).
    async fn on_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: ActorId,
        failure: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(idx) = self.position_of_id(id) else {
            tracing::debug!(supervisor = %self.label, %id, "ignoring exit of a non-current child");
            return Ok(());
        };
        let child = &mut self.children[idx];
        child.cell = None;
        let name = child.spec.name.clone();
        match &failure {
            Some(error) => {
                tracing::warn!(supervisor = %self.label, child = %name, %id, %error, "child failed")
            }
            None => tracing::info!(supervisor = %self.label, child = %name, %id, "child stopped"),
        }
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failure.is_some(),
            Restart::Temporary => false,
        };
        if restart {
            self.restart_after_exit(myself, idx).await
        } else {
            tracing::info!(supervisor = %self.label, child = %name, "child removed (not restarted)");
            self.children.remove(idx);
            Ok(())
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (SupervisorConfig, Vec<ChildSpec>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, specs): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let label = myself
            .get_name()
            .unwrap_or_else(|| myself.get_id().to_string());
        let mut state = SupervisorState {
            config,
            children: Vec::with_capacity(specs.len()),
            next_token: 0,
            label,
        };
        for spec in specs {
            let failure = if state.position(&spec.name).is_some() {
                Some(format!("duplicate child name `{}`", spec.name))
            } else {
                match spawn(&myself.get_cell(), &spec).await {
                    Ok(cell) => {
                        state.children.push(Child::new(spec, cell));
                        continue;
                    }
                    Err(err) => Some(format!("child `{}` failed to start: {err}", spec.name)),
                }
            };
            if let Some(msg) = failure {
                tracing::warn!(supervisor = %state.label, "{msg}");
                state.stop_all().await;
                return Err(msg.into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = if state.position(&spec.name).is_some() {
                    Err(format!("child `{}` already exists", spec.name))
                } else {
                    match spawn(&myself.get_cell(), &spec).await {
                        Ok(cell) => {
                            tracing::info!(supervisor = %state.label, child = %spec.name, id = %cell.get_id(), "child started");
                            state.children.push(Child::new(spec, cell.clone()));
                            Ok(cell)
                        }
                        Err(err) => Err(format!("child `{}` failed to start: {err}", spec.name)),
                    }
                };
                if let Err(msg) = &result {
                    tracing::warn!(supervisor = %state.label, "{msg}");
                }
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(name) => {
                if let Some(idx) = state.position(&name) {
                    let child = state.children.remove(idx);
                    tracing::info!(supervisor = %state.label, child = %name, "stopping child on request");
                    if let Some(cell) = child.cell {
                        stop_child(&cell).await;
                    }
                }
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.infos());
            }
            SupervisorMsg::Restart(RestartToken(token)) => {
                state.run_restart(&myself, token).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                state
                    .on_exit(&myself, cell.get_id(), Some(err.to_string()))
                    .await
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let failure = is_abnormal_reason(reason.as_deref())
                    .then(|| format!("terminated: {}", reason.unwrap_or_default()));
                state.on_exit(&myself, cell.get_id(), failure).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_is_abnormal_stop_is_not() {
        assert!(is_abnormal_reason(Some("killed")));
        assert!(!is_abnormal_reason(None));
        assert!(!is_abnormal_reason(Some("Drained")));
    }
}
