//! A reason the node cannot go on, raised by an actor and awaited by the process that runs the
//! node (`troupe node` exits non-zero with it). Today: every server refused this node's cookie.

use std::sync::Arc;
use tokio::sync::watch;

/// Cloned into whoever may raise it; the first reason raised is kept.
#[derive(Clone)]
pub struct Fatal(Arc<watch::Sender<Option<String>>>);

impl Default for Fatal {
    fn default() -> Self {
        Fatal(Arc::new(watch::Sender::new(None)))
    }
}

impl std::fmt::Debug for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fatal").field(&*self.0.borrow()).finish()
    }
}

impl Fatal {
    /// Keeps the first reason; later ones are dropped.
    pub fn raise(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
            true
        });
    }

    pub fn is_raised(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The reason, once one is raised (waits until then).
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`: it cannot be dropped while this waits.
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        reason.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_is_kept_and_awaited() {
        let f = Fatal::default();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait().await }
        });
        f.raise("first");
        f.raise("second");
        assert_eq!(waiter.await.unwrap(), "first");
        assert_eq!(f.wait().await, "first");
    }
}
