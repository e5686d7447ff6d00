//! `cairn models`: the providers and model aliases `cairn.toml` declares, with prices and where
//! each key comes from (the key's value is never printed).

mod common;

use common::*;

const CONFIG: &str = "\
default_model = \"small\"

[providers.local]
type = \"openai\"
base_url = \"http://127.0.0.1:8000/v1\"
api_key_env = \"LOCAL_API_KEY\"

[models.small]
provider = \"local\"
model = \"SmolLM2-135M-Instruct\"
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.20
context_window = 4096
";

#[test]
fn models_lists_what_the_config_declares_and_never_a_key() {
    let env = Env::new();
    let out = env.run(&["models"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no models configured: steps use `mock_model`"), "{}", stdout(&out));

    env.write("cairn.toml", CONFIG);
    let out = env.cmd().args(["models"]).env("LOCAL_API_KEY", "sk-very-secret").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("small (default)") && shown.contains("SmolLM2-135M-Instruct"), "{shown}");
    assert!(
        shown.contains("provider local: openai at http://127.0.0.1:8000/v1, key from $LOCAL_API_KEY (set here)"),
        "{shown}"
    );
    let out = env.cmd().args(["models", "--json"]).env("LOCAL_API_KEY", "sk-very-secret").output().expect("run");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["models"]["small"]["context_window"], 4096);
    assert_eq!(doc["providers"]["local"]["type"], "openai");
    for text in [shown, stdout(&out), stderr(&out)] {
        assert!(!text.contains("sk-very-secret"), "a key's value is never printed: {text}");
    }

    env.write("cairn.toml", &CONFIG.replace("provider = \"local\"", "provider = \"remote\""));
    let out = env.run(&["models"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cairn.toml:9:12: `models.small.provider` is `remote`"), "{}", stderr(&out));
}

#[test]
fn models_check_asks_each_provider_and_says_which_did_not_answer() {
    let Some(server) = common::model::start() else { return };
    let env = Env::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.local]\ntype = \"openai\"\nbase_url = \"{}\"\n\n[providers.gone]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{closed}/v1\"\nconnect_timeout = 2\nrequest_timeout = 2\n\n[providers.keyed]\ntype = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"CAIRN_TEST_UNSET_KEY\"\n\n[models.small]\nprovider = \"local\"\nmodel = \"SmolLM2-135M-Instruct\"\n",
            server.base_url, server.base_url
        ),
    );
    let out = env.cmd().args(["models", "--check"]).env_remove("CAIRN_TEST_UNSET_KEY").output().expect("run");
    assert_eq!(out.status.code(), Some(3), "two providers do not answer: {}{}", stdout(&out), stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&format!("  ok: answers at {}/models: 1 model(s) listed", server.base_url)), "{shown}");
    assert!(shown.contains("provider gone: ") && shown.contains("  FAILED: connecting to 127.0.0.1:"), "{shown}");
    assert!(shown.contains("  FAILED: $CAIRN_TEST_UNSET_KEY is not set here"), "{shown}");
    assert!(stderr(&out).contains("2 provider(s) did not answer"), "{}", stderr(&out));

    // With the key set, it is sent (the local server ignores it) and never printed.
    let out = env
        .cmd()
        .args(["models", "--check", "--json"])
        .env("CAIRN_TEST_UNSET_KEY", "sk-local-secret-123")
        .output()
        .expect("run");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["checks"]["keyed"]["ok"], true, "{doc}");
    assert_eq!(doc["checks"]["gone"]["ok"], false, "{doc}");
    assert!(!stdout(&out).contains("sk-local-secret-123") && !stderr(&out).contains("sk-local-secret-123"));
}
