//! Wake-ups between processes: a process that hands out work NOTIFYs, and every process
//! LISTENs so its idle workers look for work at once instead of at their next poll.

use super::{CONNECT_TIMEOUT, PgStore};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

/// The channel processes use to wake each other's idle workers.
const WAKE_CHANNEL: &str = "cairn_wake";

/// LISTENs on a connection of its own and turns notifications into wake-ups, reconnecting with
/// backoff; ends when the store is dropped.
pub(super) async fn listen(config: tokio_postgres::Config, wake: std::sync::Weak<tokio::sync::Notify>) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        if wake.upgrade().is_none() {
            return;
        }
        if let Ok(Ok((client, mut connection))) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
            // The connection delivers notifications; drive it in its own task.
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if matches!(message, tokio_postgres::AsyncMessage::Notification(_)) && tx.send(()).is_err() {
                        return;
                    }
                }
            });
            if client.batch_execute(&format!("LISTEN {WAKE_CHANNEL}")).await.is_ok() {
                backoff = Duration::from_millis(100);
                // Anything may have happened while nobody listened.
                if let Some(w) = wake.upgrade() {
                    w.notify_waiters();
                }
                loop {
                    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
                    let Some(w) = wake.upgrade() else {
                        // The store is gone: stop listening.
                        driver.abort();
                        return;
                    };
                    match got {
                        Ok(Some(())) => w.notify_waiters(),
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
            }
            driver.abort();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl PgStore {
    /// Wakes idle workers in every process (best effort: they also poll).
    pub(super) async fn notify(&self) {
        let _ = self.execute("SELECT pg_notify('cairn_wake', '')", &[]).await;
    }
}
