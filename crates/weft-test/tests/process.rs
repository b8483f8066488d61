//! Tests of WeftProcess against a stand-in `weft` written in sh.

use std::time::Duration;

use weft_test::{WeftBuilder, WeftProcess, SIGHUP, SIGTERM};

/// Behaves like `weft proxy` as far as WeftProcess can tell: writes the ready
/// file atomically, logs to stderr, reacts to SIGHUP and SIGTERM.
const FAKE_WEFT: &str = r#"
ready=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ready-file) ready="$2"; shift 2 ;;
    --fail) echo "config error: boom" >&2; exit 3 ;;
    --hang) while :; do sleep 0.05; done ;;
    *) shift ;;
  esac
done
echo "fake weft on stdout"
echo "fake weft starting" >&2
trap 'echo "reloading on HUP" >&2' HUP
trap 'echo "stopping on TERM" >&2; exit 0' TERM
printf '{"admin":"127.0.0.1:9901","listeners":{"main":"127.0.0.1:10000","grpc":"127.0.0.1:10001"}}' > "$ready.tmp"
mv "$ready.tmp" "$ready"
while :; do sleep 0.05; done
"#;

/// Run the script through /bin/sh rather than executing a freshly written
/// file (which can fail with ETXTBSY while other tests fork).
fn fake(builder: WeftBuilder) -> WeftBuilder {
    let script = builder.write_file("fake-weft.sh", FAKE_WEFT);
    builder.arg(script).arg("proxy")
}

#[tokio::test]
async fn starts_reads_ready_file_and_signals() {
    let mut weft = fake(WeftProcess::builder("/bin/sh")).start().await;
    assert_eq!(weft.admin().to_string(), "127.0.0.1:9901");
    assert_eq!(weft.listener("main").to_string(), "127.0.0.1:10000");
    assert_eq!(weft.listener("grpc").port(), 10001);
    assert!(weft.stdout_text().contains("fake weft on stdout"));
    weft.signal(SIGHUP);
    assert!(weft.wait_for_stderr("reloading on HUP", Duration::from_secs(10)).await);
    weft.signal(SIGTERM);
    let status = weft.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(weft.stderr_text().contains("stopping on TERM"));
}

#[tokio::test]
async fn early_exit_is_reported_with_stderr() {
    let err = fake(WeftProcess::builder("/bin/sh")).arg("--fail").try_start().await.err().expect("start must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("before becoming ready"), "{msg}");
    assert!(msg.contains("config error: boom"), "{msg}");
}

#[tokio::test]
async fn ready_timeout_kills_and_reports() {
    let err = fake(WeftProcess::builder("/bin/sh"))
        .arg("--hang")
        .ready_timeout(Duration::from_millis(300))
        .try_start()
        .await
        .err()
        .expect("start must time out");
    assert!(format!("{err:#}").contains("did not become ready"), "{err:#}");
}

#[tokio::test]
#[should_panic(expected = "no listener \"nope\"")]
async fn unknown_listener_panics_clearly() {
    let weft = fake(WeftProcess::builder("/bin/sh")).start().await;
    weft.listener("nope");
}

#[test]
#[should_panic(expected = "definitely-not-a-weft-tool not found: run scripts/test.sh, which installs it")]
fn missing_tool_fails_clearly() {
    weft_test::tools::require_tool("definitely-not-a-weft-tool");
}

#[test]
fn present_tool_is_found() {
    assert!(weft_test::tools::require_tool("sh").is_absolute());
}
