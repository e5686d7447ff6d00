//! Cairn as a Rust library: a workflow built in code that mixes a custom Rust step kind
//! (`word_count`) with a built-in one (`echo`), run durably on a SQLite file. Run it twice on the
//! same file and the second start finds nothing left to do; kill it mid-run and the next start
//! resumes the run where it stopped.
//!
//! ```sh
//! cargo run -p cairn-example-library -- /tmp/library.db "the quick brown fox"
//! ```

use cairn_sdk::{Activity, Attempt, AttemptFuture, Cairn, ErrorClass, Failure, KindSpec, Step, Value, Workflow, json};
use std::path::Path;

/// A step kind written in Rust: counts the words of `with.text`.
struct WordCount;

impl Activity for WordCount {
    fn spec(&self) -> KindSpec {
        KindSpec::new("word_count", "counts the words of `with.text`")
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let text = attempt.input["text"].as_str().ok_or_else(|| {
                Failure::new(ErrorClass::Permanent, "word_count needs `with.text`, a string".to_string())
            })?;
            Ok(json!({"words": text.split_whitespace().count()}))
        })
    }
}

/// Opens (or creates) the database at `db`, finishes any run a previous process left, then runs
/// the workflow on `text` and returns its output.
async fn run(db: &Path, text: &str) -> Result<Value, cairn_sdk::Error> {
    let cairn = Cairn::new().kind(WordCount).open_sqlite(db)?;
    // Runs an earlier process did not finish go on from their last recorded step.
    for outcome in cairn.resume().await? {
        let outcome = outcome?;
        println!("resumed {}: {}", outcome.run_id, outcome.status.as_str());
    }
    let workflow = Workflow::new("library-demo")
        .input("text", None)
        .step(Step::new("count", "word_count").with(json!({"text": "{{ inputs.text }}"})).retry(3))
        .step(Step::new("report", "echo").needs(["count"]).with(json!({"words": "{{ steps.count.output.words }}"})));
    let outcome = cairn.run(&workflow, json!({"text": text})).await?;
    match outcome.failure {
        Some(f) => Err(cairn_sdk::Error::Invalid(vec![format!("the run failed: {}", f.message)])),
        None => Ok(outcome.output.unwrap_or(Value::Null)),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let db = args.get(1).map_or("library.db", String::as_str);
    let text = args.get(2).map_or("the quick brown fox jumps", String::as_str);
    match run(Path::new(db), text).await {
        Ok(output) => {
            println!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_custom_rust_kind_and_a_builtin_kind_run_durably_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("library.db");
        let output = run(&db, "one two three").await.expect("the run completes");
        assert_eq!(output["report"], json!({"words": 3}), "{output}");
        // The journal is on disk: a second process on the same file sees the first run.
        let store = cairn_sdk::SqliteStore::open(&db, cairn_sdk::Durability::Full).expect("reopen");
        let runs = cairn_store::Journal::list_runs(&store, Default::default()).await.expect("list");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "COMPLETED");
        assert!(run(&db, "").await.is_ok(), "an empty text counts zero words");
    }
}
