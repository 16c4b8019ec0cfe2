//! A network partition: the remote end (its own sshd) lives in a network namespace of its own,
//! reached over a veth pair this test makes; once a call is running there, the link is cut
//! (`ip link set ... down`: packets vanish, nothing closes). The parent's heartbeat timeout
//! fails the call with an error that says so, and the teardown stays bounded (the watchdog
//! fails a test that hangs). Root only (network namespaces); it skips, saying so, elsewhere —
//! except in CI, where it must run.

use std::process::Command;
use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::LinkConfig;
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, run_root};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::run_bounded;
use harrow_testkit::sshd::{Sshd, required};

const BIN: &str = env!("CARGO_BIN_EXE_harrow-remote-testchild");

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace with one end of a veth pair; the other end stays here. Removed when dropped
/// (with every process still inside it killed).
struct NetNs {
    name: String,
    outer: String,
    inner_addr: String,
}

impl NetNs {
    fn create() -> Result<NetNs, String> {
        let tag = std::process::id() % 100_000;
        let ns = NetNs {
            name: format!("hwpart{tag}"),
            outer: format!("hwpa{tag}"),
            inner_addr: format!("10.213.{}.2", tag % 250),
        };
        let inner = format!("hwpb{tag}");
        let outer_cidr = format!("10.213.{}.1/30", tag % 250);
        let inner_cidr = format!("{}/30", ns.inner_addr);
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &ns.outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &ns.name])?;
        ip(&["addr", "add", &outer_cidr, "dev", &ns.outer])?;
        ip(&["link", "set", &ns.outer, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &inner_cidr, "dev", &inner])?;
        inside(&["link", "set", &inner, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the link: the host side of the veth goes down.
    fn cut(&self) -> Result<(), String> {
        ip(&["link", "set", &self.outer, "down"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Whatever still runs inside (sshd's sessions, a remote child) is killed first, so that
        // nothing outlives the test.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn skip(why: String) {
    if required() {
        panic!("CI is set, so the partition test must run, but: {why}");
    }
    eprintln!("SKIPPED partition_mid_call: {why}");
}

#[test]
fn partition_mid_call() {
    if !rustix_is_root() {
        return skip("network namespaces need root".into());
    }
    let net = match NetNs::create() {
        Ok(n) => n,
        Err(why) => return skip(format!("cannot make a network namespace: {why}")),
    };
    let sshd = match Sshd::start_in_netns(&net.name, &net.inner_addr) {
        Ok(s) => s,
        Err(why) => return skip(format!("cannot start sshd in the namespace: {why}")),
    };
    // To the server in the namespace, on its own connection (no multiplexing master).
    let mut backend = RemoteBackend::ssh(sshd.host())
        .port(sshd.port())
        .user(sshd.user())
        .identity(sshd.identity())
        .program(BIN)
        .remote_path(BIN)
        .child_heartbeat_timeout(Some(Duration::from_secs(2)))
        .start_timeout(Duration::from_secs(10));
    for o in sshd.direct_options() {
        backend = backend.ssh_option(o);
    }
    let backend = backend.into_shared();
    let mut config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let mut link = LinkConfig::default().heartbeat(
        Some(Duration::from_millis(100)),
        Some(Duration::from_secs(1)),
    );
    link.hello_timeout = Duration::from_secs(15);
    config.link_config = link;
    let net = &net;
    let result = run_bounded("partition_mid_call", Duration::from_secs(60), || {
        run_root(config, |n| async move {
            let child = n.start_actor("far", backend, ActorSpec::new()).await?;
            assert_eq!(
                child.run("testfns:echo", Value::Int(7)).await?,
                Value::Int(7),
                "the link works before the cut"
            );
            // Once `started` arrived the call is running over there: cut the link now.
            let (ctx, _) = child
                .portal()
                .open_context("testfns:ctx_wait_forever", Value::Null)
                .await?;
            net.cut().expect("cut the link");
            let err = ctx.result().await.expect_err("the call cannot succeed");
            Ok(err.to_string())
        })
    });
    // The call failed because of the heartbeat, whatever the nursery adds for the lost child.
    let text = match result {
        Ok(text) => text,
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("heartbeat"),
        "the error names the silence: {text}"
    );
    drop(sshd);
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
