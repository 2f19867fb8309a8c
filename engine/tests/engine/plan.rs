//! Plans: the rules `validate` enforces before a run is recorded, the digest, and retry delays.

use std::time::Duration;

use engine::*;

use crate::util::*;

fn base() -> Plan<Act> {
    Plan::new(["a", "b"]).group("g", 2, 1)
}

#[test]
fn given_a_valid_plan_then_it_validates_and_its_digest_is_stable() {
    let plan = base()
        .step(set("s1", "a", "x/1", 1))
        .step(set("s2", "a", "x/2", 1).in_group("g"))
        .step(set("s3", "a", "x/3", 1).in_group("g"))
        .gate("go", "b", "ok")
        .step(set("s4", "b", "x/4", 1));
    assert_eq!(plan.validate(), Ok(()));
    assert_eq!(plan.digest(), plan.clone().digest());
    assert_eq!(plan.digest().len(), 64);
    let other = plan.clone().step(set("s5", "b", "x/5", 1));
    assert_ne!(plan.digest(), other.digest());
}

#[test]
fn given_broken_plans_then_validate_names_what_is_wrong() {
    let dup = base().step(set("s", "a", "x/1", 1)).step(set("s", "a", "x/2", 1));
    assert_eq!(dup.validate(), Err(PlanError::DuplicateStep(sid("s"))));

    let unknown_phase = base().step(set("s", "zz", "x/1", 1));
    assert!(matches!(unknown_phase.validate(), Err(PlanError::UnknownPhase { .. })));

    let out_of_order = base().step(set("s1", "b", "x/1", 1)).step(set("s2", "a", "x/2", 1));
    assert!(matches!(out_of_order.validate(), Err(PlanError::PhaseOrder { .. })));

    let undeclared = base().step(set("s", "a", "x/1", 1).in_group("nope"));
    assert!(matches!(undeclared.validate(), Err(PlanError::BadGroup { .. })));

    let zero_limit = Plan::new(["a"]).group("g", 0, 1).step(set("s", "a", "x/1", 1).in_group("g"));
    assert!(matches!(zero_limit.validate(), Err(PlanError::BadGroup { .. })));

    let split = base()
        .step(set("s1", "a", "x/1", 1).in_group("g"))
        .step(set("s2", "a", "x/2", 1))
        .step(set("s3", "a", "x/3", 1).in_group("g"));
    assert_eq!(split.validate(), Err(PlanError::SplitGroup { group: "g".into(), step: sid("s3") }));

    let across_phases = base()
        .step(set("s1", "a", "x/1", 1).in_group("g"))
        .step(set("s2", "b", "x/2", 1).in_group("g"));
    assert!(matches!(across_phases.validate(), Err(PlanError::SplitGroup { .. })));

    let gates = base().gate("go", "a", "").gate("go", "b", "");
    assert_eq!(gates.validate(), Err(PlanError::DuplicateGate("go".into())));

    let never =
        base().step(set("s", "a", "x/1", 1).retry(RetryPolicy { attempts: 0, ..quick_retry() }));
    assert_eq!(never.validate(), Err(PlanError::NoAttempts(sid("s"))));
}

#[test]
fn retry_delays_double_up_to_the_cap_and_jitter_only_shortens_them() {
    let policy = RetryPolicy {
        attempts: 10,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
        jitter_percent: 0,
        deadline: None,
    };
    let delays: Vec<u64> = (1..=5).map(|t| policy.delay(t, 12345).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 5, 5]);
    let jittered = RetryPolicy { jitter_percent: 50, ..policy };
    for random in [0, 1, u64::MAX / 3, u64::MAX] {
        let d = jittered.delay(3, random);
        assert!(d <= Duration::from_secs(4) && d >= Duration::from_secs(2), "{d:?}");
    }
    let spread: std::collections::BTreeSet<Duration> =
        (0..20u64).map(|r| jittered.delay(3, r.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
    assert!(spread.len() > 10, "jitter varies the delay");
}
