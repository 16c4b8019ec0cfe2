//! Relay: an error passing through an intermediate actor keeps its source and gains a hop.

mod common;

use std::sync::Arc;

use common::*;
use harrow_portal::ipc::{ErrorKind, Value};
use harrow_portal::{Executor, FnRegistry, LinkConfig, Portal};

async fn error_through_intermediate_keeps_source_and_gains_hop(exec: Executor, t: Transport) {
    // C: the failing leaf.
    let (c_reg, _probe) = standard_registry();
    let (b_to_c, c) = link_pair_named(
        &exec,
        t,
        local("b"),
        None,
        local("c"),
        Some(Arc::new(c_reg)),
        LinkConfig::default(),
    )
    .await;
    let b_id = b_to_c.local().clone();
    // B: relays to C with `?`.
    let to_c: Portal = b_to_c.portal();
    let mut b_reg = FnRegistry::new();
    b_reg
        .unary("mid:relay", move |v| {
            let to_c = to_c.clone();
            async move { Ok(to_c.run("t:fail", v).await?) }
        })
        .unwrap();
    let (a, _b_from_a) = link_pair_named(
        &exec,
        t,
        local("a"),
        None,
        b_id.clone(),
        Some(Arc::new(b_reg)),
        LinkConfig::default(),
    )
    .await;
    let err = bounded("relay", a.portal().run("mid:relay", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("remote");
    assert_eq!(re.kind, ErrorKind::Raised);
    assert_eq!(re.type_name, "ValueError");
    assert_eq!(re.source, c.local().id);
    assert_eq!(re.relay_path, vec![b_id.id]);
}

/// A portal error that is not a remote one (a call to a closed link, say), passed on with `?`,
/// reaches the caller under the type's public name, not the private module it is defined in.
async fn a_local_portal_error_passed_on_has_its_public_type_name(exec: Executor, t: Transport) {
    let mut reg = FnRegistry::new();
    reg.unary("mid:closed", |_| async move {
        let closed: Result<Value, _> =
            Err(harrow_portal::Error::Closed("the peer went away".into()));
        Ok(closed?)
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let err = bounded("closed", a.portal().run("mid:closed", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("remote");
    assert_eq!(re.type_name, "harrow_portal::Error", "{err}");
    assert!(re.message.contains("the peer went away"), "{err}");
}

both_transports!(
    error_through_intermediate_keeps_source_and_gains_hop,
    a_local_portal_error_passed_on_has_its_public_type_name
);
