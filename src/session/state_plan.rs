//! Running a state plan (a command on a state key, rewritten by [`crate::state::plan`]) in the
//! client's pipeline: on the shared connection, or on the dedicated one inside a transaction.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pinned::{Expect, NOT_COUNTED};
use super::{Flow, Session};
use crate::command::Command;
use crate::protocol::reply;
use crate::state::followup::FollowUp;
use crate::state::plan::Plan;
use crate::state::transform::{Pending, Reshape};
use crate::upstream::conn::SharedConn;
use std::sync::Arc;

/// A shared connection as the state layer's follow-up channel.
struct OnShared(SharedConn);

impl FollowUp for OnShared {
    fn call(
        &self,
        cmd: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Bytes>> + Send + '_>>
    {
        Box::pin(async move {
            crate::upstream::conn::call(&self.0, cmd, 1)
                .await
                .map_err(|f| Bytes::from(f.error.to_resp()))
        })
    }
}

/// Follow-ups of a reshape go on `conn`.
pub(super) fn follow_up(conn: SharedConn) -> Arc<dyn FollowUp> {
    Arc::new(OnShared(conn))
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Binds a transform to this session's engine, protocol and shared connection.
    pub(super) fn reshape(&mut self, pending: Box<Pending>) -> Box<Reshape> {
        Box::new(Reshape {
            pending,
            engine: self.ctx.state.load_full(),
            proto: self.client.proto,
            conn: Some(follow_up(self.shared_conn())),
        })
    }

    /// The client's shared connection to the routed node for its current db and protocol.
    pub(super) fn shared_conn(&mut self) -> SharedConn {
        let route = self.links.route.clone();
        self.links
            .conn(&self.ctx.upstream, route.as_ref(), self.client.key())
    }

    /// Turns a script plan into an upstream command.
    ///
    /// With Redis 7 it is an FCALL of statecar's function library, which needs no script body
    /// and survives SCRIPT FLUSH, so it pipelines like any command. Without functions, EVALSHA
    /// saves sending the script body, but a NOSCRIPT reply (after a SCRIPT FLUSH) can only be
    /// retried safely if nothing of this client's runs in between; so EVALSHA is used only when
    /// the client has nothing else queued (the next command then waits for the reply), and EVAL
    /// otherwise. Inside MULTI (`allow_fast` false) it is always EVAL: an error there would only
    /// surface at EXEC.
    pub(super) fn script_plan(&mut self, plan: Plan, allow_fast: bool) -> Plan {
        let Plan::Script { call, transform } = plan else {
            return plan;
        };
        let state = self.ctx.state.load();
        let script = state.scripts.get(call.script);
        // STATE.ROLLBACK finishes on the reply path (it writes the version it read): the
        // client's next command waits for it, as after an EVALSHA.
        if call.script == crate::state::scripts::ScriptKind::Rollback {
            self.cur.evalsha_in_flight = true;
        }
        if allow_fast && self.ctx.upstream.functions() {
            Plan::Send {
                raw: state.scripts.fcall(call.script, &call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: Some(call),
                }),
            }
        } else if allow_fast && self.io.inbuf.is_empty() {
            self.cur.evalsha_in_flight = true;
            Plan::Send {
                raw: script.evalsha(&call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: Some(call),
                }),
            }
        } else {
            Plan::Send {
                raw: script.eval(&call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: None,
                }),
            }
        }
    }

    /// Runs a state plan on the shared connection, in its place in the pipeline.
    pub(super) async fn run_plan(&mut self, plan: Plan) -> Flow {
        let Some(plan) = self.stage(plan).await else {
            return Flow::Stop;
        };
        match self.script_plan(plan, true) {
            Plan::Reject(e) | Plan::Fail(e) => self.reply(e).await,
            Plan::Send { raw, pending } => {
                let reshape = self.reshape(pending);
                self.forward_with(&raw, Some(reshape)).await
            }
            // script_plan converts every script; never drop a command silently if that changes.
            Plan::Script { .. } => {
                self.reply(reply::error(
                    "ERR statecar: internal error: unplanned script",
                ))
                .await
            }
        }
    }

    /// Runs a state plan on the pinned connection (inside MULTI the transform waits for EXEC).
    /// Scripts go as EVAL here: inside MULTI a NOSCRIPT would only surface at EXEC.
    pub(super) async fn run_plan_pinned(&mut self, plan: Plan) -> Flow {
        let in_multi = self.tx.in_multi;
        match self.script_plan(plan, false) {
            Plan::Reject(e) => {
                if in_multi {
                    self.tx.poisoned = true;
                }
                self.reply(e).await
            }
            Plan::Fail(e) if in_multi => {
                // Queue a command that fails with the same error when EXEC runs it.
                let msg = String::from_utf8_lossy(&e[1..e.len().saturating_sub(2)]).into_owned();
                let raw = Command::from_args([
                    Bytes::from_static(b"EVAL"),
                    Bytes::from_static(b"return redis.error_reply(ARGV[1])"),
                    Bytes::from_static(b"0"),
                    Bytes::from(msg),
                ])
                .raw()
                .clone();
                self.tx.queued.push(None);
                let discard = self.client.take_discard();
                self.send_pinned(&raw, Some(Expect::replies(1, discard)))
                    .await
            }
            Plan::Fail(e) => self.reply(e).await,
            Plan::Send { raw, pending } => {
                let discard = self.client.take_discard();
                let expect = if in_multi {
                    self.tx.queued.push(Some(pending.transform));
                    Expect::replies(1, discard)
                } else {
                    Expect::Replies {
                        frames: 1,
                        swallow: discard,
                        then_stream: false,
                        notify: None,
                        reshape: Some(self.reshape(pending)),
                        cmd: NOT_COUNTED,
                    }
                };
                self.send_pinned(&raw, Some(expect)).await
            }
            // script_plan converts every script; never drop a command silently if that changes.
            Plan::Script { .. } => {
                self.reply(reply::error(
                    "ERR statecar: internal error: unplanned script",
                ))
                .await
            }
        }
    }
}
