//! Escalation on the real API server: a restart that leaves the instance down is followed by exactly one
//! reset; a restart that brings it back is not.
use std::time::Duration;

use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState, Escalation, EscalationTarget};
use kube::api::Api;

use crate::setup;
use crate::support::fleet::{TOKEN, zone_fleet};
use crate::support::*;

fn escalating(name: &str, instance: &str) -> ComputeInstanceAction {
    let mut obj = cia(name, instance, DesiredState::Restarted, Some("r1"));
    obj.spec.escalation = Some(Escalation {
        after: "3s".into(),
        to: EscalationTarget::Reset,
    });
    obj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_leaves_the_instance_down_is_escalated_to_one_reset() {
    let (client, ns, sim) = setup("esc-fires", zone_fleet("e", "ze", 1), 400).await;
    // The host fails the restart: the instance ends in error.
    sim.fail_actions_on("e-00");
    let _controller = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    create(&api, &escalating("esc", "e-00")).await;
    wait_for(&api, "esc", Duration::from_secs(10), "restart accepted", |_| {
        audit_for(&sim, "e-00") == ["restart"]
    })
    .await;
    // The host is repaired before the escalation: the reset brings the instance back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sim.instance("e-00").map(|i| i.status.as_str().to_owned()).as_deref(),
        Some("error")
    );
    sim.heal("e-00");
    assert_eq!(audit_for(&sim, "e-00"), ["restart"], "no reset before `after`");
    let done = wait_for(&api, "esc", Duration::from_secs(30), "Ready=Succeeded", |o| {
        condition(o, "Ready").is_some_and(|c| c.reason == "Succeeded")
    })
    .await;
    assert_eq!(audit_for(&sim, "e-00"), ["restart", "reset"], "exactly one reset");
    let status = done.status.clone().expect("status");
    let message = condition(&done, "Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains("escalated to a reset"), "{message}");
    let escalated = status
        .history
        .iter()
        .find(|r| r.action == compute_operator::api::PowerAction::Restart)
        .expect("the restart in history");
    assert_eq!(escalated.reason.as_deref(), Some("Escalated"));
    assert_eq!(
        status.action.as_ref().map(|a| a.action),
        Some(compute_operator::api::PowerAction::Reset)
    );
    // Both digests are kept: neither runs again for this requestId.
    assert_eq!(status.sent_one_shots.len(), 2);
    let events = kube::api::Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.expect("events");
        if list.items.iter().any(|e| e.reason.as_deref() == Some("Escalated")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no Escalated event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A resync later, nothing more is sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(audit_for(&sim, "e-00"), ["restart", "reset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_completes_is_not_escalated() {
    let (client, ns, sim) = setup("esc-quiet", zone_fleet("q", "zq", 1), 400).await;
    let _controller = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    create(&api, &escalating("quiet", "q-00")).await;
    let done = wait_ready(&api, "quiet").await;
    assert_eq!(condition(&done, "Ready").map(|c| c.reason.as_str()), Some("Succeeded"));
    // Past `after`: still only the restart.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(audit_for(&sim, "q-00"), ["restart"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused_on_anything_but_a_restart() {
    let client = client().await;
    let ns = namespace(&client, "esc-invalid").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let mut obj = escalating("bad", "x-1");
    obj.spec.desired_state = DesiredState::Stopped;
    obj.spec.request_id = None;
    match api.create(&Default::default(), &obj).await {
        Err(kube::Error::Api(s)) => assert!(
            s.message.contains("escalation applies to desiredState restarted only"),
            "{}",
            s.message
        ),
        other => panic!("accepted: {other:?}"),
    }
    let mut obj = escalating("bad-after", "x-1");
    obj.spec.escalation = Some(Escalation {
        after: "five minutes".into(),
        to: EscalationTarget::Reset,
    });
    match api.create(&Default::default(), &obj).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("after must be a duration"), "{}", s.message),
        other => panic!("accepted: {other:?}"),
    }
}
