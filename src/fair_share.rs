//! A task that moves a big value gives the others a turn every [`SHARE`] bytes.
//!
//! statecar runs every session and every upstream connection on one thread by default. Tokio
//! only makes a task yield after 128 ready I/O operations, and a task copying an 8 MB value in
//! 512 KiB steps is ready every time: it held the thread for most of the value, so another
//! client's GET waited 3.8-4.7 ms (median) while 8.5 MB SETs passed through, against 0.3-0.4 ms
//! for a GET sent to Redis directly beside direct SETs; 1.2-1.4 ms with the turns
//! (docs/BENCHMARKS.md, "Other clients while a big value passes").

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes a task moves between the turns it gives to the others: at memory speed a few tens of
/// microseconds of copying, against about one microsecond for the turn.
pub const SHARE: usize = 256 * 1024;

/// Counts the bytes a task moved since it last gave the others a turn.
#[derive(Debug, Default)]
pub struct FairShare {
    moved: usize,
}

impl FairShare {
    /// `n` more bytes were read or written.
    pub fn moved(&mut self, n: usize) {
        self.moved = self.moved.saturating_add(n);
    }

    /// Lets every other ready task run first once the task has moved [`SHARE`] bytes since
    /// its last turn. Cancel-safe: it holds nothing.
    pub async fn take_turn(&mut self) {
        if self.moved >= SHARE {
            self.moved = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// `AsyncReadExt::read_buf`, taking at most [`SHARE`] bytes: a socket holding megabytes would
/// otherwise be copied out in one system call, a turn nobody else gets a share of.
/// Cancel-safe, as `read_buf` is.
pub async fn read_buf<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    r.read_buf(&mut buf.limit(SHARE)).await
}

/// `AsyncWriteExt::write_all`, giving the other tasks a turn every [`SHARE`] bytes (a whole
/// 8 MB command is otherwise written without one).
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, mut buf: &[u8]) -> std::io::Result<()> {
    let mut share = FairShare::default();
    while !buf.is_empty() {
        share.take_turn().await;
        let n = w.write(&buf[..buf.len().min(SHARE)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        share.moved(n);
        buf = &buf[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_turn_is_given_after_a_share_of_bytes_and_not_before() {
        let other_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = other_ran.clone();
        let other =
            tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
        let mut f = FairShare::default();
        f.moved(SHARE - 1);
        f.take_turn().await;
        assert!(
            !other_ran.load(std::sync::atomic::Ordering::SeqCst),
            "yielded before a share"
        );
        f.moved(1);
        f.take_turn().await;
        assert!(
            other_ran.load(std::sync::atomic::Ordering::SeqCst),
            "no turn after a share"
        );
        // The count starts again after the turn.
        other_ran.store(false, std::sync::atomic::Ordering::SeqCst);
        f.moved(usize::MAX);
        f.moved(1);
        assert_eq!(f.moved, usize::MAX);
        other.await.ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn write_all_lets_another_task_run_while_the_socket_takes_everything() {
        // Room for the whole value: every write is ready, so only a turn given on purpose lets
        // the other task run before write_all returns.
        let (mut a, _b) = tokio::io::duplex(4 * SHARE);
        let other_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = other_ran.clone();
        let other =
            tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
        write_all(&mut a, &vec![7u8; 2 * SHARE + 1])
            .await
            .expect("write");
        assert!(other_ran.load(std::sync::atomic::Ordering::SeqCst));
        other.await.ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_buf_takes_at_most_a_share() {
        let (mut a, mut b) = tokio::io::duplex(4 * SHARE);
        a.write_all(&vec![1u8; 3 * SHARE]).await.expect("write");
        let mut buf = BytesMut::with_capacity(4 * SHARE);
        assert_eq!(read_buf(&mut b, &mut buf).await.expect("read"), SHARE);
        assert_eq!(read_buf(&mut b, &mut buf).await.expect("read"), SHARE);
        assert_eq!(buf.len(), 2 * SHARE);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn write_all_writes_everything_in_order() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..3 * SHARE + 17).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .map(|_| got)
        });
        write_all(&mut a, &data).await.expect("write");
        drop(a);
        let got = reader.await.expect("join").expect("read");
        assert_eq!(got, expected);
    }
}
