//! kubeca end to end on 3 control-plane + 2 worker testbeds, through the `kubeca` command as
//! an operator types it: a full rotation with zero trust failures (the no-outage figure), a
//! maintenance window that closes mid-run, SIGKILLs at seeded points with `run` resuming each
//! time, and rollbacks from every phase (one of them killed halfway and run again), each
//! checked against the live cluster with openssl, curl and kubectl.
//!
//! Two tiers (CONTRIBUTING.md): `make test` runs the scenarios of [`Tier::Test`] (a full
//! rotation on every testbed profile, kubeadm's with a window pause, seeded kills and resume,
//! and rollbacks from prepare and from finalize); `make e2e-matrix` (`KUBECA_E2E_TIER=matrix`)
//! runs every scenario. `KUBECA_E2E_SCENARIOS=a,b` runs only those, whatever their tier; a name
//! that is not a scenario fails, naming the known ones.
//!
//! The scenarios are spread over two lanes running side by side on two address blocks, so that
//! at most two testbeds run at once ([`LANES`]): 198.18.0.0/24 brings up a testbed of kubeadm's
//! default layout, then, once it is down, one of the hardened profile (`--anonymous-auth=false`);
//! 198.18.1.0/24 one of the custom profile. A lane brings up a testbed only for a profile that
//! has a scenario to run. A scenario pinned to a profile runs on that profile's testbed; the
//! others go to the lane where there is the least work, and run on its first profile's testbed.
//! A testbed runs its share in the order of [`SCENARIOS`], each rotation starting from the CAs
//! the previous one left (a completed rotation's new CA is the next one's old CA; a rollback
//! leaves the old); every testbed starts from CAs of its own. The seed of the kill points is
//! printed; `KUBECA_E2E_SEED=N` replays it: each scenario draws from its own generator, seeded
//! from N and its name, on whichever testbed it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::{Duration, Instant};

use kubeca_tests::harness::checks::{self, Cas};
use kubeca_tests::harness::in_cluster;
use kubeca_tests::harness::kubeca::{Kubeca, field};
use kubeca_tests::harness::snapshot::{Snapshot, key_material_in, private_key_pieces, snapshot};
use kubeca_tests::harness::tools::{self, sh, text};
use kubeca_tests::harness::watch::{CmdlineSampler, EtcdWatch};
use kubeca_tests::harness::{Testbed, eventually, testbed_bin};
use kubeca_tests::seeded::{self, Rng};
use kubeca_tests::testbed::profile::Profile;
use kubeca_tests::testbed::subnet::Subnet;

/// A copy of the operator's kubeconfig (the inventory's, which kubeca rewrites during the
/// rotation) as it is before a rotation.
fn save_admin(tb: &Testbed, name: &str) -> std::path::PathBuf {
    let copy = tb.dir.join(format!("admin-before-{name}.conf"));
    std::fs::copy(tb.dir.join("admin.conf"), &copy).unwrap();
    copy
}

fn inventory(tb: &Testbed) -> String {
    tb.dir.join("inventory.toml").display().to_string()
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A `started` log line of step `id`.
fn started(v: &serde_json::Value, pred: impl Fn(&str) -> bool) -> bool {
    field(v, "message") == Some("started") && field(v, "step").is_some_and(pred)
}

/// The plan's steps (id, phase, status) as `plan --output json` prints them.
fn plan_steps(k: &mut Kubeca) -> Vec<(String, String, String)> {
    let plan: serde_json::Value =
        serde_json::from_slice(&k.expect(&["plan", "--output", "json"], 0).stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["phase"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Which command runs a scenario: `make test` runs the [`Tier::Test`] ones, `make e2e-matrix`
/// every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// `make test` (and the matrix).
    Test,
    /// `make e2e-matrix` only.
    Matrix,
}

/// One end-to-end scenario.
struct Scenario {
    /// Its name in `KUBECA_E2E_SCENARIOS`.
    name: &'static str,
    tier: Tier,
    /// About how long it takes on a 3+2 testbed, in seconds (measured; only used to balance
    /// the two testbeds).
    secs: u32,
    /// The testbed profile it must run on, if any (the other scenarios go where there is room).
    profile: Option<Profile>,
    run: fn(&Testbed, &mut Rng),
}

/// Every scenario, in the order a testbed runs its share.
///
/// `make test` rotates every profile in full: kubeadm's with a window pause, seeded kills and
/// resumes (`resume`), the custom one uninterrupted with the secrets checks (`full`), and the
/// hardened one uninterrupted (`hardened`: the same rotation and end state with no anonymous
/// access to any apiserver, so every check of it presents credentials, and kubelets that
/// bootstrap their serving certificates through the CSR API). `faults` is pinned to
/// kubeadm's (its readiness checks are anonymous), `rollback-trust-nodes` to the hardened one
/// (the kubelets' `--client-ca-file` in `/etc/default/kubelet` restored); the scenarios not pinned to a profile run on
/// the kubeadm or the custom testbed, whichever lane has room. It
/// rolls back from the phases whose rollback differs most: from prepare (files restored, nothing
/// restarted) and from the middle of finalize (the inverse of finalize's rewrites, a step left
/// possibly done, kubeca back on the operator's old-CA credentials, then every forward step's
/// compensation with the restarts they owe). The rollbacks after trust-control-plane,
/// trust-nodes, mid-switch and from the gate (killed halfway and resumed) undo a prefix of what
/// finalize's rollback undoes; they and the faults are in the matrix.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "full",
        tier: Tier::Test,
        secs: 370,
        profile: Some(Profile::Custom),
        run: |tb, _| full_rotation(tb),
    },
    Scenario {
        name: "resume",
        tier: Tier::Test,
        secs: 330,
        profile: Some(Profile::Kubeadm),
        run: window_and_kills,
    },
    Scenario {
        name: "hardened",
        tier: Tier::Test,
        secs: 330,
        profile: Some(Profile::Hardened),
        run: |tb, _| full_rotation(tb),
    },
    Scenario {
        name: "rollback-prepare",
        tier: Tier::Test,
        secs: 60,
        profile: None,
        run: |tb, rng| rollback_from(tb, "prepare", rng),
    },
    Scenario {
        name: "rollback-trust-control-plane",
        tier: Tier::Matrix,
        secs: 240,
        profile: None,
        run: |tb, rng| rollback_from(tb, "trust-control-plane", rng),
    },
    Scenario {
        name: "rollback-trust-nodes",
        tier: Tier::Matrix,
        secs: 250,
        profile: Some(Profile::Hardened),
        run: |tb, rng| rollback_from(tb, "trust-nodes", rng),
    },
    Scenario {
        name: "rollback-switch",
        tier: Tier::Matrix,
        secs: 235,
        profile: None,
        run: |tb, rng| rollback_from(tb, "switch", rng),
    },
    Scenario {
        name: "rollback-gate",
        tier: Tier::Matrix,
        secs: 370,
        profile: None,
        run: |tb, rng| rollback_from(tb, "gate", rng),
    },
    Scenario {
        name: "rollback-finalize",
        tier: Tier::Test,
        secs: 365,
        profile: None,
        run: |tb, rng| rollback_from(tb, "finalize", rng),
    },
    Scenario {
        name: "faults",
        tier: Tier::Matrix,
        secs: 495,
        profile: Some(Profile::Kubeadm),
        run: |tb, _| faults(tb),
    },
];

/// The two lanes the scenarios are spread over, side by side: an address block each, and the
/// profiles of the testbeds it brings up on that block one after the other, in this order (the
/// next once the previous one is down). The scenarios not pinned to a profile that a lane takes
/// run on its first profile's testbed.
const LANES: [(&str, &[Profile]); 2] = [
    ("198.18.0.0/24", &[Profile::Kubeadm, Profile::Hardened]),
    ("198.18.1.0/24", &[Profile::Custom]),
];

/// About how long a 3+2 testbed takes to come up, in seconds: a lane pays it once more for each
/// testbed after its first (an approximation, only used to balance the lanes).
const BRING_UP_SECS: u32 = 45;

/// A lane's testbeds, in the order it brings them up: each one's profile and its scenarios, in
/// the order of [`SCENARIOS`]. Only profiles with a scenario have a testbed.
type Share = Vec<(Profile, Vec<&'static Scenario>)>;

/// The scenarios to run: those `only` names (`KUBECA_E2E_SCENARIOS`, comma-separated), else
/// those of `tier` (`KUBECA_E2E_TIER`: `test`, the default, or `matrix`). An unknown scenario or
/// tier, or a list naming none, is an error naming it and what is known.
fn select(tier: Option<&str>, only: Option<&str>) -> Result<Vec<&'static Scenario>, String> {
    let known = || SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    let matrix = match tier.unwrap_or("test") {
        "test" => false,
        "matrix" => true,
        other => {
            return Err(format!(
                "KUBECA_E2E_TIER={other:?} is not a tier; the tiers are: test (make test), \
                 matrix (make e2e-matrix)"
            ));
        }
    };
    if let Some(only) = only {
        let names: Vec<&str> = only.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        let unknown: Vec<&str> =
            names.iter().copied().filter(|n| !SCENARIOS.iter().any(|s| s.name == *n)).collect();
        if !unknown.is_empty() {
            return Err(format!(
                "KUBECA_E2E_SCENARIOS names no scenario {unknown:?}; the scenarios are: {}",
                known()
            ));
        }
        if names.is_empty() {
            return Err(format!(
                "KUBECA_E2E_SCENARIOS={only:?} names no scenario; the scenarios are: {}",
                known()
            ));
        }
        return Ok(SCENARIOS.iter().filter(|s| names.contains(&s.name)).collect());
    }
    Ok(SCENARIOS.iter().filter(|s| matrix || s.tier == Tier::Test).collect())
}

/// How long a lane takes with `testbeds` (one list of scenarios per profile of the lane, empty
/// when that profile has no testbed): its scenarios, and a bring-up for each testbed after the
/// first.
fn lane_load(testbeds: &[Vec<&Scenario>]) -> u32 {
    let up = testbeds.iter().filter(|t| !t.is_empty()).count() as u32;
    let secs: u32 = testbeds.iter().flatten().map(|s| s.secs).sum();
    secs + BRING_UP_SECS * up.saturating_sub(1)
}

/// Spreads `scenarios` over the lanes ([`LANES`]): each pinned one to the lane whose profiles
/// include its own, on that profile's testbed; then the others longest first, each to the lane
/// that is the least loaded once it has it (counting a bring-up when it needs a testbed of its
/// own), on that lane's first profile's testbed. Each testbed's share keeps the order of
/// [`SCENARIOS`]. Only lanes with work, as (index into [`LANES`], its testbeds).
fn lanes(scenarios: &[&'static Scenario]) -> Vec<(usize, Share)> {
    // For each lane, one list of scenarios per profile of it.
    let mut lanes: Vec<Vec<Vec<&'static Scenario>>> =
        LANES.iter().map(|l| vec![Vec::new(); l.1.len()]).collect();
    let (pinned, free): (Vec<&'static Scenario>, Vec<&'static Scenario>) =
        scenarios.iter().partition(|s| s.profile.is_some());
    for s in pinned {
        let (i, j) = LANES
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.1.iter().position(|p| Some(*p) == s.profile).map(|j| (i, j)))
            .unwrap_or_else(|| panic!("no lane has the profile {:?} of {}", s.profile, s.name));
        lanes[i][j].push(s);
    }
    let mut by_length = free;
    by_length.sort_by_key(|s| std::cmp::Reverse(s.secs));
    for s in by_length {
        let with = |l: &Vec<Vec<&'static Scenario>>| {
            let mut l = l.clone();
            l[0].push(s);
            lane_load(&l)
        };
        let lane = lanes.iter_mut().min_by_key(|l| with(l)).unwrap();
        lane[0].push(s);
    }
    let order = |s: &&Scenario| SCENARIOS.iter().position(|x| x.name == s.name);
    lanes
        .into_iter()
        .enumerate()
        .map(|(i, testbeds)| {
            let share: Share = LANES[i]
                .1
                .iter()
                .copied()
                .zip(testbeds)
                .filter(|(_, l)| !l.is_empty())
                .map(|(p, mut l)| {
                    l.sort_by_key(order);
                    (p, l)
                })
                .collect();
            (i, share)
        })
        .filter(|(_, share)| !share.is_empty())
        .collect()
}

/// The seed of scenario `name`'s generator: the run's seed mixed with the name (FNV-1a), so a
/// scenario draws the same kill points wherever it runs.
fn scenario_seed(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    seed ^ fnv
}

/// The text of a panic's payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Waits until nothing of the testbed in `dir` runs and no testbed holds `subnet` any more (its
/// bridge gone or without node links), so that the next one can come up on the block; why not,
/// after 30 s.
fn block_freed(dir: &std::path::Path, subnet: &Subnet) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = kubeca_tests::testbed::node::running(dir);
        let links = kubeca_tests::testbed::net::bridge_in_use(subnet);
        if running.is_empty() && links.is_none() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "after its down, {} still has {} processes running and {subnet}'s bridge {} \
                 node links",
                dir.display(),
                running.len(),
                links.unwrap_or(0)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs lane `index` ([`LANES`]): brings a testbed of each profile of `share` up on its block in
/// turn, each once the previous one is down, and runs that profile's scenarios on it in order.
/// A testbed stops at its first failure (it may be left in any state; it is taken down and the
/// lane's next testbed starts afresh). The failures, with the scenarios not run after them.
fn run_lane(index: usize, share: &[(Profile, Vec<&'static Scenario>)], seed: u64) -> Vec<String> {
    let block = LANES[index].0;
    let subnet = Subnet::parse(block).unwrap();
    let mut failures = Vec::new();
    for (n, (profile, scenarios)) in share.iter().enumerate() {
        let profile = *profile;
        let names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        let name = format!("e2e-3-2-{index}-{profile}");
        let profile_arg = format!("--profile={profile}");
        let up = std::panic::catch_unwind(|| Testbed::up_on(&name, subnet, 3, 2, &[&profile_arg]));
        // Dropped (taken down) on every way out of this block.
        let tb = match up {
            Ok(tb) => Some(tb),
            Err(p) => {
                failures.push(format!(
                    "testbed {index} ({block}, {profile} profile) did not come up ({}); not run: \
                     {names:?}",
                    panic_text(&*p)
                ));
                None
            }
        };
        if let Some(tb) = &tb {
            for (i, scenario) in scenarios.iter().enumerate() {
                let started = Instant::now();
                let mut rng = Rng(scenario_seed(seed, scenario.name));
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (scenario.run)(tb, &mut rng)
                }));
                let secs = started.elapsed().as_secs_f64();
                let verdict = if result.is_ok() { "ok  " } else { "FAIL" };
                eprintln!(
                    "{verdict} {} on testbed {index} ({block}, {profile} profile) in {secs:.0} s",
                    scenario.name
                );
                println!(
                    "FIGURES scenario {} on testbed {index} ({profile} profile): {secs:.0} s",
                    scenario.name
                );
                if let Err(p) = result {
                    failures.push(format!(
                        "{} on testbed {index} ({block}, {profile} profile): {}; not run after it \
                         on that testbed: {:?}",
                        scenario.name,
                        panic_text(&*p),
                        &names[i + 1..]
                    ));
                    break;
                }
            }
        }
        let dir = kubeca_tests::harness::scratch_dir().join(&name);
        if let Some(tb) = tb {
            let out = tb.down();
            drop(tb); // its own down then finds nothing
            if !out.status.success() {
                failures.push(format!(
                    "testbed {index} ({block}, {profile} profile) did not come down: {}",
                    text(&out)
                ));
            }
        }
        let later = &share[n + 1..];
        if later.is_empty() {
            break;
        }
        if let Err(e) = block_freed(&dir, &subnet) {
            let not_run: Vec<String> = later
                .iter()
                .map(|(p, l)| format!("{p}: {:?}", l.iter().map(|s| s.name).collect::<Vec<_>>()))
                .collect();
            failures.push(format!(
                "testbed {index} ({block}): {e}; no further testbed brought up on it; not run: {}",
                not_run.join(", ")
            ));
            break;
        }
    }
    failures
}

#[test]
fn rotation_end_to_end_3_control_planes_2_workers() {
    let tier = std::env::var("KUBECA_E2E_TIER").ok();
    let only = std::env::var("KUBECA_E2E_SCENARIOS").ok();
    let selected = select(tier.as_deref(), only.as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let seed = seeded::seed("KUBECA_E2E_SEED", "end-to-end rotation");
    let lanes = lanes(&selected);
    for (i, share) in &lanes {
        for (n, (profile, scenarios)) in share.iter().enumerate() {
            let names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
            println!(
                "testbed {i} ({}, {profile} profile, {} of {} on the block): {}",
                LANES[*i].0,
                n + 1,
                share.len(),
                names.join(", ")
            );
        }
    }
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let running: Vec<_> = lanes
            .iter()
            .map(|(i, share)| {
                std::thread::Builder::new()
                    .name(format!("testbed-{i}"))
                    .spawn_scoped(s, move || run_lane(*i, share, seed))
                    .unwrap()
            })
            .collect();
        running.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    println!(
        "FIGURES end to end: {} scenarios on {} testbeds ({} side by side) in {:.0} s",
        selected.len(),
        lanes.iter().map(|(_, share)| share.len()).sum::<usize>(),
        lanes.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}

/// A misspelt scenario fails naming it and the known ones (it used to run nothing and pass).
#[test]
fn an_unknown_scenario_fails_naming_it_and_the_known_ones() {
    let err = select(None, Some("full,rollbak-gate")).err().unwrap();
    assert!(err.contains("\"rollbak-gate\""), "{err}");
    for s in SCENARIOS {
        assert!(err.contains(s.name), "{err} does not name {}", s.name);
    }
    let err = select(None, Some(",")).err().unwrap();
    assert!(err.contains("names no scenario"), "{err}");
    let err = select(Some("matirx"), None).err().unwrap();
    assert!(err.contains("\"matirx\"") && err.contains("matrix"), "{err}");
    assert!(select(Some("matirx"), Some("full")).is_err(), "a bad tier fails with a list too");
    let picked: Vec<&str> = select(Some("matrix"), Some("rollback-gate,full"))
        .unwrap()
        .iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        picked,
        ["full", "rollback-gate"],
        "the list wins over the tier, in SCENARIOS order"
    );
}

/// `make test` runs its tier, the matrix every scenario, and each lane gets a share; a full
/// rotation runs on every profile, each scenario on its profile's testbed, at most two testbeds
/// at a time.
#[test]
fn the_tiers_cover_every_scenario_over_two_testbeds() {
    let names = |v: &[&Scenario]| v.iter().map(|s| s.name).collect::<Vec<_>>();
    let test = select(None, None).unwrap();
    assert_eq!(
        names(&test),
        ["full", "resume", "hardened", "rollback-prepare", "rollback-finalize"]
    );
    let matrix = select(Some("matrix"), None).unwrap();
    assert_eq!(matrix.len(), SCENARIOS.len());
    for selected in [test, matrix] {
        let lanes = lanes(&selected);
        assert_eq!(lanes.len(), 2, "two lanes side by side, never more");
        for (i, share) in &lanes {
            let (block, profiles) = LANES[*i];
            let ran: Vec<Profile> = share.iter().map(|(p, _)| *p).collect();
            assert_eq!(ran, profiles, "{block}: a testbed of every profile, in the lane's order");
            for (profile, scenarios) in share {
                assert!(!scenarios.is_empty(), "a {profile} testbed with nothing to run");
                let rotates =
                    scenarios.iter().any(|s| matches!(s.name, "full" | "resume" | "hardened"));
                assert!(
                    rotates,
                    "no full rotation on the {profile} profile: {:?}",
                    names(scenarios)
                );
                for s in scenarios {
                    match s.profile {
                        Some(p) => assert_eq!(p, *profile, "{} off its profile", s.name),
                        None => assert_eq!(
                            *profile, profiles[0],
                            "{} unpinned, yet not on its lane's first profile",
                            s.name
                        ),
                    }
                }
                let order: Vec<usize> = scenarios
                    .iter()
                    .map(|s| SCENARIOS.iter().position(|x| x.name == s.name).unwrap())
                    .collect();
                assert!(order.is_sorted(), "{profile}: not in SCENARIOS order: {order:?}");
            }
        }
        let mut spread: Vec<&str> =
            lanes.iter().flat_map(|(_, share)| share.iter().flat_map(|(_, l)| names(l))).collect();
        spread.sort_unstable();
        let mut want = names(&selected);
        want.sort_unstable();
        assert_eq!(spread, want, "every selected scenario runs exactly once");
        // A lane's time: its scenarios, and a bring-up for each testbed after its first.
        let load: Vec<u32> = lanes
            .iter()
            .map(|(_, share)| {
                let secs: u32 = share.iter().flat_map(|(_, l)| l.iter().map(|s| s.secs)).sum();
                secs + BRING_UP_SECS * (share.len() as u32 - 1)
            })
            .collect();
        let longest = selected.iter().map(|s| s.secs).max().unwrap();
        assert!(load[0].abs_diff(load[1]) <= longest + BRING_UP_SECS, "unbalanced: {load:?}");
    }
    let alone = |name: &str| {
        let l = lanes(&select(None, Some(name)).unwrap());
        l.iter().map(|(i, share)| (*i, share.iter().map(|(p, _)| *p).collect())).collect()
    };
    let one: Vec<(usize, Vec<Profile>)> = alone("full");
    assert_eq!(one, [(1, vec![Profile::Custom])], "one scenario, one testbed");
    let one: Vec<(usize, Vec<Profile>)> = alone("hardened");
    assert_eq!(one, [(0, vec![Profile::Hardened])], "no kubeadm testbed without its scenario");
}

/// Test 1: init, plan, run to the gate, approve, run to completion; zero trust failures
/// for the whole rotation; the end state of [`checks::completed_rotation`].
fn full_rotation(tb: &Testbed) {
    let old_admin = save_admin(tb, "full");
    let old = Cas::read(tb);
    anonymous_access_as_the_profile_says(tb, "before the rotation");
    if tb.profile.kubelet_server_tls_bootstrap() {
        // A deliberate outage of w-2's :10250 (metrics-server fails to scrape it): before the
        // rotation's figures begin.
        serving_certificates_come_from_requests_someone_approves(tb, "w-2");
    }
    let since = now();
    let kills_before = probe_kills(tb);
    let started_at = Instant::now();
    let mut k = Kubeca::new(tb, "full");
    let sampler = CmdlineSampler::start();
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    k.expect(&["plan"], 0);
    // A node's client certificate approved and signed by the old CA since the rotation began
    // (a kubelet renewing before the switch, a node joining): the gate's check refuses it by
    // name in verify; once the request is dealt with, `run` checks again and goes on.
    let csr = node_client_request_signed(tb, "w-2");
    let out = k.expect(&["run"], 1);
    let said = text(&out);
    assert!(
        said.contains("step verify/client-certs")
            && said.contains(&format!("certificate signing request {csr} of system:node:w-2"))
            && said.contains("signed by the old CA"),
        "the refusal must name the step and the request: {said}"
    );
    tb.kubectl_ok(&["delete", "csr", &csr]);
    k.expect(&["run"], 75); // the finalize gate
    let drop_in = "/etc/kubernetes/kubelet.conf.d/50-client-ca.conf";
    // The cluster CA where the profile's certificatesDir keeps it (not always kubeadm's).
    let ca_crt = format!("{}/ca.crt", tb.profile.pki_dir());
    let client_ca = |node: &str, file: &str| {
        let text = std::fs::read_to_string(tb.host_path(node, file)).unwrap();
        let line = text.lines().find(|l| l.trim_start().starts_with("clientCAFile:")).unwrap();
        line.trim_start().trim_start_matches("clientCAFile:").trim().to_string()
    };
    if tb.profile.kubelet_config_dir() {
        // The kubelet takes clientCAFile from its --config-dir drop-in: kubeca edited that one
        // (to both CAs) and left config.yaml, which the drop-in overrides, alone.
        for (node, _, _) in &tb.nodes {
            let named = client_ca(node, drop_in);
            let bundle = std::fs::read_to_string(tb.host_path(node, &named)).unwrap();
            assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{node}: {named}");
            let base = client_ca(node, "/var/lib/kubelet/config.yaml");
            assert_eq!(base, ca_crt, "{node}: config.yaml untouched");
        }
    }
    let extra_args = || {
        tb.nodes
            .iter()
            .map(|(node, _, _)| {
                let t = std::fs::read_to_string(tb.node_path(node, "etc-default/kubelet")).unwrap();
                let v = t.split("--client-ca-file=").nth(1).unwrap_or_default();
                (node.clone(), v.split(['"', ' ', '\n']).next().unwrap_or_default().to_string())
            })
            .collect::<Vec<_>>()
    };
    if tb.profile.kubelet_extra_args_client_ca() {
        // KUBELET_EXTRA_ARGS' --client-ca-file wins over clientCAFile: kubeca edited the flag
        // (to both CAs) and left config.yaml alone.
        for (node, named) in extra_args() {
            let bundle = std::fs::read_to_string(tb.host_path(&node, &named)).unwrap();
            assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{node}: {named}");
            let base = client_ca(&node, "/var/lib/kubelet/config.yaml");
            assert_eq!(base, ca_crt, "{node}: config.yaml untouched");
        }
    }
    k.expect(&["approve", "finalize"], 0);
    k.expect(&["run"], 0);
    let finished = jiff::Timestamp::now();
    if tb.profile.kubelet_extra_args_client_ca() {
        for (node, named) in extra_args() {
            assert_eq!(named, ca_crt, "{node}: the flag back at ca.crt");
        }
    }
    if tb.profile.kubelet_config_dir() {
        for (node, _, _) in &tb.nodes {
            assert_eq!(client_ca(node, drop_in), ca_crt, "{node}");
        }
    }
    let wall = started_at.elapsed().as_secs_f64();
    let (cmdlines, rounds) = sampler.stop();
    let (handshakes, failures, report) = tb.report_since(&since);
    println!(
        "FIGURES full rotation on 3+2: wall {wall:.1} s, kubeca CPU {:.2} s, handshakes seen {handshakes}, failed {failures}",
        k.cpu
    );
    assert_eq!(failures, 0, "trust failures during the rotation:\n{report}");
    // No component was so unhealthy for so long that its kubelet killed it.
    assert_eq!(probe_kills(tb), kills_before, "static pods killed by failed probes");
    anonymous_access_as_the_profile_says(tb, "after the rotation");
    let answered = in_cluster::assert_clean_since(tb, &since);
    println!("FIGURES in-cluster clients: {answered} answers through kubectl proxy, no TLS error");
    checks::completed_rotation(tb, &old, &old_admin, &mut k);
    nodes_are_measured_after(tb, finished);
    if tb.profile.kubelet_server_tls_bootstrap() {
        // Each kubelet serves the certificate its manager keeps (re-issued by the new CA, which
        // completed_rotation verified with openssl), not one it loaded before.
        for (node, address, _) in &tb.nodes {
            let file = tb.host_path(node, "/var/lib/kubelet/pki/kubelet-server-current.pem");
            assert_eq!(
                tools::served_cert(address, 10250),
                tools::file_cert(&file),
                "{node}: :10250 does not serve {}",
                file.display()
            );
        }
    }
    // No private key, old or new, in a command line sampled during the rotation, in anything
    // kubeca printed, or in the journal's exports.
    let mut roots = vec![k.state.clone(), old_admin.clone()];
    for (name, _, _) in &tb.nodes {
        roots.push(tb.node_path(name, "etc-kubernetes"));
        roots.push(tb.node_path(name, "var-lib-kubelet/pki"));
    }
    let pieces = private_key_pieces(&roots);
    let mut texts: Vec<(String, String)> =
        cmdlines.into_iter().map(|c| (format!("command line {c:.120}"), c)).collect();
    let distinct = texts.len();
    texts.push(("kubeca's output".into(), k.said.clone()));
    let csv = tb.dir.join("kubeca").join("export.csv");
    k.expect(&["journal", "export", "--format", "csv", "-o", csv.to_str().unwrap()], 0);
    for export in [tb.dir.join("kubeca").join("export.jsonl"), csv] {
        texts.push((export.display().to_string(), std::fs::read_to_string(&export).unwrap()));
    }
    let found = key_material_in(&texts, &pieces);
    println!(
        "FIGURES secrets: {} key pieces looked for in {distinct} distinct command lines ({rounds} samples), kubeca's output and its JSONL and CSV exports",
        pieces.len()
    );
    assert!(pieces.len() > 10, "only {} keys found", pieces.len());
    assert!(found.is_empty(), "key material found:\n{}", found.join("\n"));
}

/// `kubectl top nodes` works after the rotation: metrics-server has scraped every kubelet
/// since `finished` (two rounds each: its CPU figure is a rate), with the CA of its pod's start
/// where the profile has it verify kubelets.
fn nodes_are_measured_after(tb: &Testbed, finished: jiff::Timestamp) {
    let measured = || -> Vec<String> {
        let out = tb.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]);
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return Vec::new();
        };
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<String> = items
            .iter()
            .filter(|m| {
                m["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    > Some(finished)
            })
            .filter_map(|m| m["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    let mut want: Vec<String> = tb.nodes.iter().map(|(n, _, _)| n.clone()).collect();
    want.sort();
    // Two 15 s rounds after the last kubelet restart, and the round that was running.
    eventually("every node measured after the rotation", Duration::from_secs(90), || {
        measured() == want
    });
    let top = tb.kubectl_ok(&["top", "nodes", "--no-headers"]);
    for node in &want {
        assert!(top.lines().any(|l| l.split_whitespace().next() == Some(node)), "{node}:\n{top}");
    }
}

/// With `serverTLSBootstrap` the kubelet keeps its serving certificate through the CSR API, and
/// nothing approves its requests (`sarapprove.go`): `node`'s current certificate removed and its
/// kubelet restarted, it asks for one (`kubernetes.io/kubelet-serving`, its addresses as
/// names), the request stays pending, and its :10250 fails every handshake until an operator
/// approves (`kubectl certificate approve`); then it serves the certificate the
/// controller-manager signed. The request is deleted afterwards, as the gate's remedy for a
/// request approved for the old CA says.
fn serving_certificates_come_from_requests_someone_approves(tb: &Testbed, node: &str) {
    let address = tb.address(node).to_string();
    tb.ssh_ok(&address, "rm /var/lib/kubelet/pki/kubelet-server-current.pem");
    tb.ssh_ok(&address, "systemctl restart kubelet");
    let requester = format!("system:node:{node}");
    let pending = || -> Option<(String, serde_json::Value)> {
        let out = tb.kubectl_ok(&["get", "csr", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list["items"].as_array()?.iter().find_map(|c| {
            let serving = c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                && c["spec"]["username"] == requester.as_str()
                && c["status"]["certificate"].as_str().is_none_or(str::is_empty);
            serving.then(|| (c["metadata"]["name"].as_str().unwrap().to_string(), c.clone()))
        })
    };
    eventually("the kubelet's serving certificate request", Duration::from_secs(60), || {
        pending().is_some()
    });
    // The handshake fails while it waits (curl: SSL connect error), and keeps failing: nothing
    // approves the request on its own.
    let handshake = || sh(&format!("curl -sk -o /dev/null https://{address}:10250/healthz"));
    for _ in 0..3 {
        assert_eq!(handshake().status.code(), Some(35), "{node} serves without a certificate");
        std::thread::sleep(Duration::from_secs(2));
    }
    let (name, csr) = pending().expect("the request is still there");
    assert!(
        csr["status"]["conditions"].as_array().is_none_or(|c| c.is_empty()),
        "someone approved {name}: {csr}"
    );
    let mut usages: Vec<&str> =
        csr["spec"]["usages"].as_array().unwrap().iter().filter_map(|u| u.as_str()).collect();
    usages.sort();
    assert_eq!(usages, ["digital signature", "server auth"], "{csr}");
    tb.kubectl_ok(&["certificate", "approve", &name]);
    // The link is absolute inside the node: resolved on the host once it is there.
    let current = || tb.host_path(node, "/var/lib/kubelet/pki/kubelet-server-current.pem");
    eventually("the approved serving certificate served", Duration::from_secs(30), || {
        current().exists() && tools::served_cert(&address, 10250) == tools::file_cert(&current())
    });
    let file = current();
    let out =
        sh(&format!("openssl x509 -noout -subject -ext subjectAltName -in {}", file.display()));
    let said = text(&out);
    assert!(
        said.replace(' ', "").contains(&format!("CN=system:node:{node}"))
            && said.contains(&format!("IP Address:{address}")),
        "{said}"
    );
    tb.kubectl_ok(&["delete", "csr", &name]);
}

/// Makes `node`'s kubelet ask for a client certificate now, as its certificate manager does
/// (a new P-256 key; `CN=system:node:<node>, O=system:nodes`; authenticated with its current
/// certificate), with openssl and curl; waits until the controller-manager approved and signed
/// it. The request's name.
fn node_client_request_signed(tb: &Testbed, node: &str) -> String {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = format!(
        "cd {} && umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
         -nodes -keyout key.pem -subj '/O=system:nodes/CN=system:node:{node}' -out req.pem",
        d.display()
    );
    let out = sh(&keygen);
    assert!(out.status.success(), "openssl req: {}", text(&out));
    let req = std::fs::read(d.join("req.pem")).unwrap();
    let body = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"],
                 "request": base64::engine::general_purpose::STANDARD.encode(req)}});
    std::fs::write(d.join("body.json"), body.to_string()).unwrap();
    let pair = tb.host_path(node, "/var/lib/kubelet/pki/kubelet-client-current.pem");
    let ca = tb.pki("cp-1", "ca.crt");
    let post = format!(
        "curl -sS --fail-with-body --cacert {} --cert {p} --key {p} -H 'Content-Type: \
         application/json' --data @{}/body.json \
         https://{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
        ca.display(),
        d.display(),
        tb.subnet.lb_endpoint(),
        p = pair.display(),
    );
    let out = sh(&post);
    assert!(out.status.success(), "creating a CSR as {node}: {}", text(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = made["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(made["spec"]["username"], format!("system:node:{node}"), "{made}");
    eventually("the controller-manager signs the node's request", Duration::from_secs(30), || {
        let cert = tb.kubectl_ok(&["get", "csr", &name, "-o", "jsonpath={.status.certificate}"]);
        !cert.trim().is_empty()
    });
    name
}

/// Tests 5 and 2: a window that closes mid-run pauses with exit 75 at a safe point; then
/// SIGKILLs at seeded points (inside a remote write, during an apiserver restart, and four
/// more), `run` again after each; the rotation completes with the end state of test 1.
fn window_and_kills(tb: &Testbed, rng: &mut Rng) {
    let old_admin = save_admin(tb, "resume");
    let old = Cas::read(tb);
    let since = now();
    let mut k = Kubeca::new(tb, "resume");
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    // Long enough for the first phases, too short for the whole rotation.
    let window = format!("{}/150s", jiff::Timestamp::now());
    let out = k.expect(&["run", "--window", &window], 75);
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("window"), "the pause must say the window closed: {said}");
    let status: serde_json::Value =
        serde_json::from_slice(&k.expect(&["status", "--output", "json"], 0).stdout).unwrap();
    // Paused between steps: the window check runs before a step starts, never during one.
    assert!(status["condition"].as_str().unwrap().starts_with("Paused(Window"), "{status}");
    let (done, total) = (status["done"].as_u64().unwrap(), status["total"].as_u64().unwrap());
    assert!(
        done > 0 && done < total,
        "the window closed mid-run, yet {done} of {total} steps are done"
    );

    // Kill points among the steps not done yet.
    let steps = plan_steps(&mut k);
    let todo: Vec<&(String, String, String)> =
        steps.iter().filter(|s| s.2 != "Succeeded" && s.2 != "Recovered").collect();
    let pick = |rng: &mut Rng, pred: &dyn Fn(&str) -> bool| -> String {
        let c: Vec<&String> = todo.iter().map(|s| &s.0).filter(|id| pred(id)).collect();
        assert!(!c.is_empty(), "no step left to kill in");
        c[(rng.next_u64() % c.len() as u64) as usize].clone()
    };
    let mut targets: Vec<(String, Duration)> = vec![
        // Inside a remote write: re-issuing a certificate writes it on the node right away.
        (
            pick(rng, &|id| id.starts_with("switch/reissue/")),
            Duration::from_millis(rng.next_u64() % 300),
        ),
        // During an apiserver restart: its manifest is parked or being put back.
        (
            pick(rng, &|id| id.starts_with("switch/apiserver/")),
            Duration::from_millis(800 + rng.next_u64() % 1200),
        ),
    ];
    while targets.len() < 6 {
        let id = pick(rng, &|id| !targets.iter().any(|t| t.0 == id));
        targets.push((id, Duration::from_millis(rng.next_u64() % 1500)));
    }
    let index = |id: &str| steps.iter().position(|s| s.0 == id).unwrap();
    targets.sort_by_key(|t| index(&t.0));
    println!("kill points: {targets:?}");

    let mut kills = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 30, "the rotation did not complete after {runs} runs");
        let (status, killed) = match targets.first().cloned() {
            // At the target's start, or at the first start after it: a kill whose delay ran
            // past the next target's start may have let that step finish, and a finished step
            // does not start again.
            Some((id, delay)) => k.run_killed_when(&["run"], |v| {
                let at_or_after =
                    |s: &str| steps.iter().position(|x| x.0 == s).is_some_and(|i| i >= index(&id));
                started(v, at_or_after).then_some(delay)
            }),
            None => (k.run(&["run"]).status, false),
        };
        if killed {
            kills += 1;
            targets.remove(0);
            k.after_kill();
            continue;
        }
        match status.code() {
            Some(0) => break,
            // The gate (or a pause after a failure, which the next run retries).
            Some(75) => {
                let _ = k.run(&["approve", "finalize"]);
            }
            other => panic!("kubeca run exited {other:?}"),
        }
    }
    assert!(kills >= 6, "only {kills} kills happened; unfired: {targets:?}");
    let (handshakes, failures, report) = tb.report_since(&since);
    println!(
        "FIGURES resumed rotation: {kills} kills, {runs} runs, handshakes {handshakes}, failed {failures}"
    );
    assert_eq!(failures, 0, "trust failures during the resumed rotation:\n{report}");
    let answered = in_cluster::assert_clean_since(tb, &since);
    println!("FIGURES in-cluster clients: {answered} answers through kubectl proxy, no TLS error");
    checks::completed_rotation(tb, &old, &old_admin, &mut k);
}

/// Test 3 (and 4 for the rollback from the gate): a rotation stopped in `phase` and rolled
/// back leaves every file as it was and every component serving and trusting as before, with
/// zero trust failures.
fn rollback_from(tb: &Testbed, phase: &str, rng: &mut Rng) {
    let old = Cas::read(tb);
    let before = snapshot(tb);
    let since = now();
    let started_at = Instant::now();
    let mut k = Kubeca::new(tb, &format!("rollback-{phase}"));
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    match phase {
        "prepare" | "trust-control-plane" | "trust-nodes" => {
            k.expect(&["run", "--until", phase], 0);
        }
        "switch" => {
            // Killed in the middle of the switch: after one to three of its steps started.
            k.expect(&["run", "--until", "trust-nodes"], 0);
            let n = 1 + rng.next_u64() % 3;
            let mut seen = 0;
            let (_, killed) = k.run_killed_when(&["run"], |v| {
                if started(v, |s| s.starts_with("switch/")) {
                    seen += 1;
                }
                (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1500))
            });
            assert!(killed, "the run ended before the switch");
            k.after_kill();
        }
        "gate" => {
            k.expect(&["run"], 75);
        }
        "finalize" => {
            k.expect(&["run"], 75);
            k.expect(&["approve", "finalize"], 0);
            let n = 5 + rng.next_u64() % 15;
            let mut seen = 0;
            let (_, killed) = k.run_killed_when(&["run"], |v| {
                if started(v, |s| s.starts_with("finalize/")) {
                    seen += 1;
                }
                (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1500))
            });
            assert!(killed, "the run ended before the middle of finalize");
            k.after_kill();
        }
        other => panic!("no such phase {other}"),
    }
    if phase == "gate" {
        // Test 4: the rollback killed halfway, then run again, finishes.
        let n = 3 + rng.next_u64() % 10;
        let mut seen = 0;
        let (_, killed) = k.run_killed_when(&["rollback", "--yes"], |v| {
            if field(v, "message") == Some("rollback step done") {
                seen += 1;
            }
            (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1000))
        });
        assert!(killed, "the rollback ended before {n} of its steps");
        k.after_kill();
    }
    k.expect(&["rollback", "--yes"], 0);
    let finished = jiff::Timestamp::now();
    let (handshakes, failures, report) = tb.report_since(&since);
    println!(
        "FIGURES rollback from {phase}: {:.1} s, handshakes {handshakes}, failed {failures}",
        started_at.elapsed().as_secs_f64()
    );
    assert_eq!(failures, 0, "trust failures around the rollback from {phase}:\n{report}");
    let answered = in_cluster::assert_clean_since(tb, &since);
    println!("FIGURES in-cluster clients: {answered} answers through kubectl proxy, no TLS error");
    checks::rolled_back(tb, &before, &old);
    nodes_are_measured_after(tb, finished);
}

/// SIGSTOPs kubeca (pid) while `fault` is put in place, then lets it go on: the fault lands
/// inside the step whose start kubeca just logged, before that step got far.
fn while_stopped(pid: u32, fault: impl FnOnce()) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
    fault();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
}

/// `kubeca-testbed sshd --node NODE stop|start`.
fn sshd(tb: &Testbed, node: &str, action: &str) {
    let out = std::process::Command::new(testbed_bin())
        .args(["sshd", "--node", node, action, "--dir"])
        .arg(&tb.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "sshd {action} on {node}: {}", text(&out));
}

/// The hardened profile holds (`when` says when it is checked): an apiserver with
/// `--anonymous-auth=false` answers 401 to a request without credentials, health checks
/// included, so kubeca's readiness probes must authenticate to pass; one whose
/// `--authentication-config` allows anonymous requests on the health paths only answers them
/// and 401 elsewhere.
fn anonymous_access_as_the_profile_says(tb: &Testbed, when: &str) {
    if !tb.profile.anonymous_denied() {
        return;
    }
    for (node, address, _) in tb.nodes.iter().filter(|n| n.2) {
        if tb.profile.anonymous_by_config(node) {
            assert_eq!(readyz(address), 200, "anonymous /readyz on {node} {when}");
            let out = sh(&format!(
                "curl -sk -o /dev/null -w '%{{http_code}}' --max-time 3 https://{address}:6443/version"
            ));
            let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(status, "401", "anonymous /version on {node} {when}");
        } else {
            assert_eq!(readyz(address), 401, "anonymous /readyz on {node} {when}");
        }
    }
}

/// How many times the kubelets have killed a static pod for a failed liveness or startup probe
/// (prober.rs), from every node's kubelet journal.
fn probe_kills(tb: &Testbed) -> usize {
    tb.nodes
        .iter()
        .map(|(node, _, _)| {
            let journal = std::fs::read_to_string(tb.node_path(node, "kubelet.journal"));
            journal.unwrap_or_default().matches("probe, will be restarted").count()
        })
        .sum()
}

/// The HTTP status of an apiserver's /readyz, asked anonymously (0 when it does not answer):
/// only for testbeds whose apiservers allow anonymous access (not the hardened profile).
fn readyz(address: &str) -> u16 {
    let out = sh(&format!(
        "curl -sk -o /dev/null -w '%{{http_code}}' --max-time 3 https://{address}:6443/readyz"
    ));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The condition `status --output json` reports.
fn condition(k: &mut Kubeca) -> String {
    let status: serde_json::Value =
        serde_json::from_slice(&k.expect(&["status", "--output", "json"], 0).stdout).unwrap();
    status.to_string()
}

/// A small file system of its own for a state directory (to fill it up), unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: std::path::PathBuf) -> SmallFs {
        let _ = sh(&format!("umount '{}' 2>/dev/null", at.display()));
        std::fs::create_dir_all(&at).unwrap();
        let out = sh(&format!("mount -t tmpfs -o size=16m,mode=0700 tmpfs '{}'", at.display()));
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        SmallFs(at)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0u8; 512]).is_ok() {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount '{}'", self.0.display()));
    }
}

/// Every file kubeca changed on the nodes is named by a step the journal recorded as started:
/// no side effect without its record. (A kubelet roll writes its client certificate through the
/// `kubelet-client-current.pem` link; a restart parks manifests in kubeca's parking directory.)
fn every_change_is_recorded(tb: &Testbed, before: &Snapshot, k: &mut Kubeca) {
    let export = tb.dir.join("kubeca").join("faults-export.jsonl");
    k.expect(&["journal", "export", "--format", "jsonl", "-o", export.to_str().unwrap()], 0);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut actions = std::collections::BTreeMap::new();
    for r in &records {
        if let Some(items) = r["event"]["RunStarted"]["plan"]["items"].as_array() {
            for it in items {
                if let Some(id) = it["Step"]["id"].as_str() {
                    actions.insert(id.to_string(), it["Step"]["action"].clone());
                }
            }
        }
    }
    let started: Vec<&serde_json::Value> = records
        .iter()
        .filter_map(|r| r["event"]["StepStarted"]["step"].as_str())
        .filter_map(|id| actions.get(id))
        .collect();
    assert!(!started.is_empty(), "no step started before the disk filled up");
    let after = snapshot(tb);
    let mut changed: Vec<&std::path::PathBuf> =
        after.iter().filter(|(p, v)| before.get(*p) != Some(v)).map(|(p, _)| p).collect();
    changed.extend(before.keys().filter(|p| !after.contains_key(*p)));
    assert!(!changed.is_empty(), "nothing changed before the disk filled up");
    let mut unrecorded = Vec::new();
    for host in changed {
        let (node, path) = tb.node_file(host);
        let named = started.iter().any(|a| {
            let body = a.as_object().and_then(|o| o.values().next()).cloned().unwrap_or_default();
            let on_node = body["node"].as_str() == node.as_deref();
            let kubelet_pki =
                a.get("RollKubelet").is_some() && path.starts_with("/var/lib/kubelet/pki/");
            on_node
                && (a.to_string().contains(&format!("\"{path}\""))
                    || kubelet_pki
                    || path.starts_with("/etc/kubernetes/kubeca-parked/"))
        });
        if !named {
            unrecorded.push(format!("{node:?}:{path}"));
        }
    }
    assert!(
        unrecorded.is_empty(),
        "changed with no started step naming them:\n{}",
        unrecorded.join("\n")
    );
}

/// The faults of the reliability issue, one after the other in one rotation, then a rollback:
/// an etcd member stopped during the control-plane phase (kubeca pauses rather than take a
/// second apiserver down, and etcd keeps quorum throughout), a worker's sshd and SSH sessions
/// killed inside its kubelet step (retries, exit 75 naming the node; `run` goes on once sshd is
/// back), the state directory's disk filling up inside a step (the run stops saying what to
/// free; every change on the nodes has its record; `run` goes on once space is freed), and a
/// broken apiserver certificate that keeps cp-2's apiserver from coming back (the step fails,
/// cp-3 is not touched, `status` names it; `rollback --yes` restores the old-CA-only cluster).
/// No private key in any command line sampled meanwhile, nor in anything kubeca printed.
fn faults(tb: &Testbed) {
    // Its readiness checks ([`readyz`]) are anonymous: on an apiserver that denies anonymous
    // access they would take the 401 for unready, and step 1's wait for cp-3 to go unready
    // would pass at once. Pinned to kubeadm's profile; should it ever land on the hardened one,
    // it fails here instead.
    assert!(
        !tb.profile.anonymous_denied(),
        "faults checks /readyz anonymously, which the {} profile denies",
        tb.profile
    );
    let old = Cas::read(tb);
    let before = snapshot(tb);
    let since = now();
    let started_at = Instant::now();
    let small = SmallFs::mount(tb.dir.join("kubeca").join("faults-fs"));
    let mut k = Kubeca::at(small.0.join("state"));
    // A short restart timeout, so that a component that does not come back fails in seconds.
    let inv = tb.dir.join("inventory-faults.toml");
    let text_inv = std::fs::read_to_string(tb.dir.join("inventory.toml")).unwrap();
    assert!(text_inv.contains("[rotation]\n"));
    std::fs::write(
        &inv,
        text_inv.replace("[rotation]\n", "[rotation]\nrestart_timeout_secs = 20\n"),
    )
    .unwrap();

    // 0. An inventory naming a node the cluster does not have (w-2 misspelt): init refuses it
    // before anything is recorded, naming the file, the key and the cluster's names.
    let typo = tb.dir.join("inventory-typo.toml");
    assert!(text_inv.contains("name = \"w-2\""));
    std::fs::write(&typo, text_inv.replace("name = \"w-2\"", "name = \"w-02\"")).unwrap();
    let mut t = Kubeca::new(tb, "typo");
    let said = text(&t.expect(&["init", "--inventory", typo.to_str().unwrap()], 2));
    assert!(
        said.contains("inventory-typo.toml")
            && said.contains("nodes[4].name")
            && said.contains("\"w-02\" is not a node of the cluster"),
        "{said}"
    );
    let said = text(&t.run(&["plan"]));
    assert!(
        said.contains("no rotation recorded"),
        "init recorded a rotation from a bad inventory: {said}"
    );

    k.expect(&["init", "--inventory", inv.to_str().unwrap()], 0);
    let sampler = CmdlineSampler::start();
    let etcd = EtcdWatch::start(tb);
    let address = |name: &str| tb.nodes.iter().find(|n| n.0 == name).unwrap().1.clone();

    // 1. cp-3's etcd member stops as the apiservers' restarts begin.
    let manifest = tb.node_path("cp-3", "etc-kubernetes/manifests/etcd.yaml");
    let parked = tb.dir.join("cp-3-etcd.yaml");
    let mut fired = false;
    let out = k.run_watching(&["run"], |v, pid| {
        if !fired && started(v, |s| s == "trust-control-plane/apiserver-client-ca/cp-1") {
            fired = true;
            while_stopped(pid, || {
                std::fs::rename(&manifest, &parked).unwrap();
                eventually("cp-3's apiserver unready", Duration::from_secs(30), || {
                    match readyz(&address("cp-3")) {
                        200 => Err("still ready".into()),
                        _ => Ok(()),
                    }
                });
            });
        }
    });
    assert!(fired, "the run never reached the apiservers' restarts: {}", text(&out));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "an etcd member down must pause the run: {said}");
    assert!(said.contains("the apiserver on cp-3 is not ready") && said.contains("etcd"), "{said}");
    assert!(condition(&mut k).contains("cp-3"), "status must name cp-3");
    std::fs::rename(&parked, &manifest).unwrap();
    eventually("cp-3's apiserver ready again", Duration::from_secs(60), || {
        match readyz(&address("cp-3")) {
            200 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    });

    // 2. w-1's sshd and sessions killed inside w-1's kubelet step.
    let mut fired = false;
    let out = k.run_watching(&["run"], |v, pid| {
        if !fired && started(v, |s| s == "trust-nodes/kubelet/w-1") {
            fired = true;
            while_stopped(pid, || sshd(tb, "w-1", "stop"));
        }
    });
    assert!(fired, "the run never reached w-1's kubelet: {}", text(&out));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "an unreachable node must pause the run: {said}");
    assert!(said.contains("node w-1") && said.contains("trust-nodes/kubelet/w-1"), "{said}");
    let attempts = said
        .lines()
        .filter(|l| {
            l.contains("\"message\":\"started\"")
                && l.contains("\"step\":\"trust-nodes/kubelet/w-1\"")
        })
        .count();
    assert!(
        attempts >= 2,
        "w-1's step was not retried before the pause ({attempts} attempt): {said}"
    );
    assert!(condition(&mut k).contains("w-1"), "status must name w-1");
    sshd(tb, "w-1", "start");

    // 2b. w-2's kubelet keeps the old client CA whatever its configuration says: a
    // --client-ca-file flag in kubeadm-flags.env (as an operator's tooling may add) wins over
    // clientCAFile (kubernetes `cmd/kubelet/app/server.go` `kubeletConfigFlagPrecedence`). The
    // kubelet answers 401 to a client certificate of the new CA after the handshake, as the
    // real one does, so its step fails naming w-2 instead of counting any answer as trust.
    let env = tb.node_path("w-2", "var-lib-kubelet/kubeadm-flags.env");
    let flags = std::fs::read_to_string(&env).unwrap();
    let pinned = flags.replacen(
        "KUBELET_KUBEADM_ARGS=\"",
        &format!("KUBELET_KUBEADM_ARGS=\"--client-ca-file={}/ca.crt ", tb.profile.pki_dir()),
        1,
    );
    assert_ne!(pinned, flags, "{flags}");
    std::fs::write(&env, &pinned).unwrap();
    let out = k.run(&["run"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "a kubelet refusing the new CA must pause: {said}");
    assert!(
        said.contains("node w-2")
            && said.contains("trust-nodes/kubelet/w-2")
            && said.contains("401 Unauthorized")
            && said.contains("--client-ca-file"),
        "{said}"
    );
    let steps = plan_steps(&mut k);
    let state = |id: &str| steps.iter().find(|s| s.0 == id).map(|s| s.2.clone()).unwrap();
    assert_eq!(state("trust-nodes/kubelet/w-1"), "Succeeded", "w-1's kubelet step");
    assert_ne!(state("trust-nodes/kubelet/w-2"), "Succeeded", "w-2's kubelet refuses the new CA");
    assert!(condition(&mut k).contains("w-2"), "status must name w-2");
    // The operator removes the flag; the next run restarts w-2's kubelet again and goes on.
    std::fs::write(&env, &flags).unwrap();

    // 3. The state directory's disk fills up inside a certificate re-issue.
    let mut filler = None;
    let out = k.run_watching(&["run"], |v, pid| {
        if filler.is_none() && started(v, |s| s == "switch/reissue/cp-1/apiserver.crt") {
            while_stopped(pid, || filler = Some(small.fill()));
        }
    });
    let filler =
        filler.unwrap_or_else(|| panic!("the run never reached the switch: {}", text(&out)));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "a full state disk must stop the run: {said}");
    assert!(
        said.contains("full") && said.contains("Free space") && said.contains("faults-fs"),
        "{said}"
    );
    std::fs::remove_file(&filler).unwrap();
    k.expect(&["journal", "verify"], 0);
    // With the flag gone, that run carried w-2's kubelet step through before the switch.
    let w2 = plan_steps(&mut k).into_iter().find(|s| s.0 == "trust-nodes/kubelet/w-2").unwrap();
    assert_eq!(w2.2, "Succeeded", "w-2's kubelet step after its flag was removed");
    every_change_is_recorded(tb, &before, &mut k);

    // 4. cp-2's apiserver certificate broken inside its restart: it does not come back.
    let mut fired = false;
    let out = k.run_watching(&["run"], |v, pid| {
        if !fired && started(v, |s| s == "switch/apiserver/cp-2") {
            fired = true;
            while_stopped(pid, || {
                // A valid certificate of another key: the apiserver cannot serve with it.
                let other = std::fs::read(tb.pki("cp-2", "apiserver-kubelet-client.crt")).unwrap();
                std::fs::write(tb.pki("cp-2", "apiserver.crt"), other).unwrap();
            });
        }
    });
    assert!(fired, "the run never reached cp-2's apiserver: {}", text(&out));
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(75),
        "an apiserver that does not come back must stop the run: {said}"
    );
    assert!(said.contains("node cp-2: kube-apiserver did not come back healthy"), "{said}");
    assert!(condition(&mut k).contains("cp-2"), "status must name cp-2");
    for (id, _, st) in
        plan_steps(&mut k).iter().filter(|s| s.0.starts_with("switch/") && s.0.contains("/cp-3"))
    {
        assert!(st.is_empty() || st == "Pending", "{id} ran after cp-2's apiserver failed: {st}");
    }
    for cp in ["cp-1", "cp-3"] {
        assert_eq!(readyz(&address(cp)), 200, "{cp}'s apiserver must stay ready");
    }
    k.expect(&["rollback", "--yes"], 0);

    let samples = etcd.stop();
    let (cmdlines, rounds) = sampler.stop();
    let (handshakes, failures, report) = tb.report_since(&since);
    println!(
        "FIGURES faults: {:.1} s, handshakes {handshakes}, failed {failures}, etcd samples {} (cp-3 down in {}), command lines sampled {rounds} times ({} distinct)",
        started_at.elapsed().as_secs_f64(),
        samples.len(),
        samples.iter().filter(|s| !s[2]).count(),
        cmdlines.len()
    );
    assert!(samples.iter().any(|s| !s[2]), "cp-3's etcd member was never seen down");
    let lost: Vec<&Vec<bool>> =
        samples.iter().filter(|s| s.iter().filter(|h| **h).count() < 2).collect();
    assert!(lost.is_empty(), "etcd lost quorum in {} of {} samples", lost.len(), samples.len());
    assert_eq!(failures, 0, "trust failures around the faults:\n{report}");
    let answered = in_cluster::assert_clean_since(tb, &since);
    println!("FIGURES in-cluster clients: {answered} answers through kubectl proxy, no TLS error");
    checks::rolled_back(tb, &before, &old);

    // No private key (old or new: the new CAs' keys are in the state directory's blobs) in a
    // command line, a log line, an error or a report.
    let mut roots = vec![k.state.clone()];
    for (name, _, _) in &tb.nodes {
        roots.push(tb.node_path(name, "etc-kubernetes"));
        roots.push(tb.node_path(name, "var-lib-kubelet/pki"));
    }
    let pieces = private_key_pieces(&roots);
    assert!(pieces.len() > 10, "only {} keys found", pieces.len());
    let mut texts: Vec<(String, String)> =
        cmdlines.into_iter().map(|c| (format!("command line {c:.120}"), c)).collect();
    texts.push(("kubeca's output".into(), k.said.clone()));
    let found = key_material_in(&texts, &pieces);
    assert!(found.is_empty(), "key material found:\n{}", found.join("\n"));
}
