//! `weft demo` end to end, as a user runs it: the control plane, the services and their sidecars
//! come up, traffic flows with the canary split and no failures (retries hide reviews-v2's
//! 503s), a re-applied YAML moves the split, and Ctrl-C stops every process the demo started.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::WEFT;

/// A summary line of one service: (service, rps, success %, version split).
fn parse_row(line: &str) -> Option<(String, f64, f64, String)> {
    let mut f = line.split_whitespace().peekable();
    if f.peek()?.ends_with('s') && f.peek()?.trim_end_matches('s').parse::<u64>().is_ok() {
        f.next();
    }
    let service = f.next()?.to_string();
    let rps: f64 = f.next()?.parse().ok()?;
    let success: f64 = f.next()?.strip_suffix('%')?.parse().ok()?;
    let _p99 = f.next()?;
    let _retries = f.next()?;
    Some((service, rps, success, f.collect::<Vec<_>>().join(" ")))
}

struct Demo {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    /// The next stdout line, waiting at most until `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.checked_duration_since(Instant::now())?;
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    fn wait_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(l) = self.next_line(deadline) {
            if pred(&l) {
                return l;
            }
        }
        panic!("weft demo: no line with {what} within {timeout:?}; output so far:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_runs_a_mesh_follows_applied_yaml_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(WEFT)
        .args(["demo", "--rps", "20", "--interval", "1", "--duration", "120"])
        .args(["--base-ip", "127.0.0.90", "--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weft demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut demo = Demo { child, lines: rx, seen: Vec::new() };

    let banner =
        demo.wait_line("the control plane's API", Duration::from_secs(60), |l| l.contains("control plane  api"));
    let api = banner.split_whitespace().nth(3).expect("api address").to_string();
    let pids: Vec<i32> = {
        let mut pids = vec![banner.split("pid ").nth(1).and_then(|p| p.trim_end_matches(')').parse().ok()).unwrap()];
        for _ in 0..4 {
            let l = demo.wait_line("a sidecar", Duration::from_secs(5), |l| l.contains("sidecar admin"));
            pids.push(l.split("(pid ").nth(1).and_then(|p| p.split(')').next()).unwrap().parse().unwrap());
        }
        pids
    };

    // Steady traffic: both services answer, every call succeeds, the canary sends some to v2.
    let mut saw_v2 = false;
    let mut good_rows = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while good_rows < 6 || !saw_v2 {
        let Some(l) = demo.next_line(deadline) else {
            panic!("no steady traffic; output:\n{}", demo.seen.join("\n"));
        };
        let Some((service, rps, success, split)) = parse_row(&l) else { continue };
        if rps == 0.0 {
            continue;
        }
        assert!(service == "reviews" || service == "ratings", "{l}");
        assert_eq!(success, 100.0, "every call succeeds (retries hide reviews-v2's 503s): {l}");
        if service == "reviews" {
            assert!(split.contains("v1"), "{l}");
            saw_v2 |= split.contains("v2");
        } else {
            assert_eq!(split, "v1 100%", "{l}");
        }
        good_rows += 1;
    }

    // The user edits the canary and applies it while the demo runs.
    let reviews = dir.path().join("reviews.yaml");
    let text = std::fs::read_to_string(&reviews).unwrap();
    let text = text.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 100");
    std::fs::write(&reviews, text).unwrap();
    let out = Command::new(WEFT).args(["apply", "--server", &api, "-f"]).arg(&reviews).output().unwrap();
    assert!(out.status.success(), "weft apply: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("virtualservice.networking.istio.io/reviews configured"));
    demo.wait_line("all reviews traffic on v2", Duration::from_secs(30), |l| {
        parse_row(l).is_some_and(|(s, rps, success, split)| {
            s == "reviews" && rps > 0.0 && success == 100.0 && split == "v2 100%"
        })
    });

    // Ctrl-C: the demo stops everything it started and exits 0.
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(demo.child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "weft demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    for pid in pids {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "process {pid} outlived the demo");
    }
    for yaml in ["mesh.yaml", "reviews.yaml", "ratings.yaml"] {
        assert!(dir.path().join(yaml).exists(), "{yaml} stays for the user");
    }
}
