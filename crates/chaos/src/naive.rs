//! The naive runner Cairn is measured against: the same five stages, run by a plain in-process
//! loop with in-memory retries (3 attempts, 100 ms apart, 1 s per request) and no journal. When
//! its process is killed it loses what it held: the job starts again from its first stage (a
//! supervisor restarts the process at once, so nobody has to step in). It has no fallback model
//! and sends no idempotency keys, as such loops usually don't.

use crate::world::{EVALUATE, KillOrder};
use cairn_core::chaos_plan::STAGES;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How the naive runs went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub completed: usize,
    pub failed: usize,
    /// Kills it came back from (by starting the job over).
    pub recoveries: usize,
    pub wall: Duration,
}

enum Job {
    Done,
    Failed,
}

/// Runs `jobs` jobs one after another against the world at `addr`; kill orders for the job in
/// progress arrive on `kills`.
///
/// `model_wait` bounds a model request (1 s for the world's own answers; longer for a real model).
pub async fn run(
    addr: SocketAddr,
    jobs: usize,
    kills: &mut mpsc::UnboundedReceiver<KillOrder>,
    model_wait: Duration,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    for job in 0..jobs {
        loop {
            tokio::select! {
                ended = run_job(addr, job, model_wait) => {
                    match ended {
                        Job::Done => outcome.completed += 1,
                        Job::Failed => outcome.failed += 1,
                    }
                    break;
                }
                Some(order) = kills.recv() => {
                    // The process dies with everything it held; it is started again and takes
                    // the job from the top.
                    let _ = order.done.send(());
                    outcome.recoveries += 1;
                }
            }
        }
    }
    outcome.wall = started.elapsed();
    outcome
}

async fn run_job(addr: SocketAddr, job: usize, model_wait: Duration) -> Job {
    for (stage, name) in STAGES.iter().enumerate() {
        let mut done = false;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (path, body) = if stage == EVALUATE {
                let body = json!({"model": "primary", "max_tokens": 16,
                                  "messages": [{"role": "user", "content": format!("score job {job}")}]});
                ("/v1/chat/completions".to_string(), body)
            } else {
                (format!("/stage/{job}/{name}"), json!({"job": job}))
            };
            let wait = if stage == EVALUATE { model_wait } else { Duration::from_secs(1) };
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(wait, crate::http::post(addr, &path, &body.to_string())).await
            {
                done = true;
                break;
            }
        }
        if !done {
            return Job::Failed;
        }
    }
    Job::Done
}
