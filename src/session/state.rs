//! Routing of commands that touch state keys.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session};
use crate::protocol::Command;
use crate::reply;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Handles `cmd` if it touches a state key; None means "plain command, forward it".
    pub(super) async fn state_route(&mut self, _cmd: &Command) -> Option<Flow> {
        None
    }

    /// The STATE.* family.
    pub(super) async fn state_command(&mut self, cmd: Command) -> Flow {
        let name = cmd.name();
        self.reply(reply::error(&format!("ERR unknown command '{name}'"))).await
    }
}
