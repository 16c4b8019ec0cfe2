//! The remote backend's rows: spawn-to-first-reply and the RPC round trip of an actor started
//! over ssh to this machine, each interleaved with the same figure on the process backend (the
//! local child it would otherwise be), and a routed peer round trip to that actor interleaved
//! with the parent-child one. The ssh target is `HARROW_BENCH_SSH`
//! (`ssh://[user@]host[:port]`, with this binary at the same path there), or else a private
//! sshd this run starts on 127.0.0.1 (harrow-testkit's fixture); without either, the rows are
//! skipped with a message.

use std::sync::Arc;
use std::time::Instant;

use harrow::{ActorNursery, ActorSpec, SpawnBackend, Value};
use harrow_testkit::sshd::Sshd;

use super::backend::Row;
use super::stats::{Samples, Unit};
use super::{Progress, Sizes};

/// Where the remote rows connect, and the server this run started (stopped when dropped).
pub(super) struct Target {
    backend: Arc<dyn SpawnBackend>,
    label: String,
    _sshd: Option<Sshd>,
}

/// The ssh target, or why the rows are skipped.
pub(super) fn target() -> Result<Target, String> {
    if let Ok(url) = std::env::var("HARROW_BENCH_SSH") {
        let b = harrow::RemoteBackend::from_url(&url)?;
        return Ok(Target {
            backend: b.into_shared(),
            label: url,
            _sshd: None,
        });
    }
    let sshd = Sshd::start().map_err(|e| {
        format!("no HARROW_BENCH_SSH host and no private sshd ({e}); scripts/setup installs one")
    })?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut b = harrow::RemoteBackend::ssh(sshd.host())
        .port(sshd.port())
        .user(sshd.user())
        .identity(sshd.identity())
        .remote_path(exe.display().to_string());
    for o in sshd.ssh_options() {
        b = b.ssh_option(o);
    }
    Ok(Target {
        backend: b.into_shared(),
        label: format!("ssh to {}:{} (a private sshd)", sshd.host(), sshd.port()),
        _sshd: Some(sshd),
    })
}

fn row(key: &'static str, label: &'static str, unit: Unit, base: &str) -> Row {
    Row {
        backend: "remote",
        key,
        label,
        unit,
        harrow: Samples::default(),
        note: String::new(),
        baseline_label: base.to_owned(),
        baseline: Samples::default(),
        harrow_lat: Samples::default(),
        baseline_lat: Samples::default(),
    }
}

/// The remote rows, each sample beside the process backend's in the same run.
pub(super) async fn measure(
    n: &ActorNursery,
    t: &Target,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Vec<Row>> {
    let local = harrow::ProcessBackend::shared();
    let echo = "demo:echo";
    prog.step(&format!(
        "remote: spawn-to-first-reply x{} over {}, interleaved with the process backend's",
        s.spawns, t.label
    ));
    let mut spawn = row(
        "remote_spawn_to_first_reply",
        "spawn-to-first-reply (ssh)",
        Unit::Ms,
        "process backend, same figure",
    );
    for i in 0..s.spawns {
        for (backend, samples) in [
            (&t.backend, &mut spawn.harrow),
            (&local, &mut spawn.baseline),
        ] {
            let t0 = Instant::now();
            let child = n
                .start_actor(
                    &format!("remote-spawn-{i}"),
                    backend.clone(),
                    ActorSpec::new(),
                )
                .await?;
            child.run(echo, Value::Int(1)).await?;
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
            child.cancel().await;
        }
    }
    let per_batch = (s.round_trips / s.reps).max(1);
    prog.step(&format!(
        "remote: {} rounds of {per_batch} RPC round trips over {}, interleaved with the process \
         backend's",
        s.reps, t.label
    ));
    let mut rtt = row(
        "remote_rpc_round_trip",
        "RPC round trip (ssh)",
        Unit::Us,
        "process backend, same figure",
    );
    let far = n
        .start_actor("remote-rpc", t.backend.clone(), ActorSpec::new())
        .await?;
    let near = n
        .start_actor("remote-rpc-local", local, ActorSpec::new())
        .await?;
    for i in 0..50 {
        far.run(echo, Value::Int(i)).await?;
        near.run(echo, Value::Int(i)).await?;
    }
    for _ in 0..s.reps {
        for (child, samples, lat) in [
            (&far, &mut rtt.harrow, &mut rtt.harrow_lat),
            (&near, &mut rtt.baseline, &mut rtt.baseline_lat),
        ] {
            let t0 = Instant::now();
            for i in 0..per_batch {
                let one = Instant::now();
                child.run(echo, Value::Int(i as i64)).await?;
                lat.push(one.elapsed().as_secs_f64() * 1e6);
            }
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / per_batch as f64);
        }
    }
    let routed = routed_peer_round_trip(n, &far, s, prog, &t.label).await?;
    far.cancel().await;
    near.cancel().await;
    Ok(vec![spawn, rtt, routed])
}

/// A call over a routed peer portal to the remote actor (it is in another host domain, so the
/// root's peer link to it is a tunnel through the tree: here down the root's own link to it),
/// interleaved with the same call over that parent-child link.
async fn routed_peer_round_trip(
    n: &ActorNursery,
    far: &harrow::ChildHandle,
    s: Sizes,
    prog: &Progress,
    label: &str,
) -> anyhow::Result<Row> {
    let echo = "demo:echo";
    let per_batch = (s.round_trips / s.reps).max(1);
    prog.step(&format!(
        "remote: {} rounds of {per_batch} routed peer round trips over {label}, interleaved with \
         parent-child ones",
        s.reps
    ));
    let mut r = row(
        "remote_routed_peer_round_trip",
        "routed peer round trip (ssh)",
        Unit::Us,
        "parent-child round trip (same remote actor)",
    );
    let peer = n
        .actor()
        .find_actor_by_uid(&far.id().uid)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} is not registered", far.id()))?;
    for i in 0..50 {
        peer.run(echo, Value::Int(i)).await?;
        far.run(echo, Value::Int(i)).await?;
    }
    for _ in 0..s.reps {
        for (portal, samples, lat) in [
            (&peer, &mut r.harrow, &mut r.harrow_lat),
            (far.portal(), &mut r.baseline, &mut r.baseline_lat),
        ] {
            let t0 = Instant::now();
            for i in 0..per_batch {
                let one = Instant::now();
                portal.run(echo, Value::Int(i as i64)).await?;
                lat.push(one.elapsed().as_secs_f64() * 1e6);
            }
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / per_batch as f64);
        }
    }
    Ok(r)
}
