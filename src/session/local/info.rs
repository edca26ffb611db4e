//! INFO: Redis's answer, except that `connected_clients` counts statecar's clients, as Redis
//! counts its own (Redis would count statecar's few upstream connections instead). The rest
//! (`blocked_clients` included) is Redis's view.

use tokio::io::{AsyncRead, AsyncWrite};

use super::super::{Flow, Session};
use crate::command::{Command, Kind};
use crate::state::transform::{Pending, Transform};

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn info(&mut self, cmd: Command) -> Flow {
        if self.ded.pinned.is_some() {
            // In a transaction (or on a pinned connection) it is one of the connection's
            // commands, answered by Redis in its place.
            return Box::pin(self.dispatch_pinned(Kind::Plain, cmd)).await;
        }
        let reshape = self.reshape(Box::new(Pending {
            transform: Transform::Info {
                connected_clients: self.ctx.clients.len(),
            },
            retry: None,
        }));
        self.forward_with(cmd.raw(), Some(reshape)).await
    }
}
