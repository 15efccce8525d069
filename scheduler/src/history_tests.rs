use super::*;

fn op(kind: Kind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
    Op {
        client: 0,
        kind,
        invoke,
        complete: Some(complete),
        outcome,
    }
}
fn submit(key: Option<&str>, digest: u64, t: (u64, u64), id: &str, created: bool) -> Op {
    op(
        Kind::Submit {
            key: key.map(str::to_string),
            digest,
        },
        t.0,
        t.1,
        Outcome::Ok(Ret::Submitted {
            id: id.into(),
            created,
        }),
    )
}
fn read(wf: &str, t: (u64, u64), p: Phase) -> Op {
    op(
        Kind::Status { wf: wf.into() },
        t.0,
        t.1,
        Outcome::Ok(Ret::Status(p)),
    )
}
fn cancel(wf: &str, t: (u64, u64), r: Ret) -> Op {
    op(Kind::Cancel { wf: wf.into() }, t.0, t.1, Outcome::Ok(r))
}
fn redrive(wf: &str, t: (u64, u64), r: Ret) -> Op {
    op(Kind::Redrive { wf: wf.into() }, t.0, t.1, Outcome::Ok(r))
}
fn present(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}
fn not_linearizable(r: &Report) -> bool {
    r.violations
        .iter()
        .any(|v| matches!(v, Violation::NotLinearizable { .. }))
}

#[test]
fn a_plain_history_passes() {
    let h = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 12), Phase::Running),
        read("wf-1", (13, 14), Phase::Succeeded),
        submit(Some("k"), 1, (15, 16), "wf-1", false),
        cancel("wf-1", (17, 18), Ret::Refused),
        read("wf-1", (19, 20), Phase::Succeeded),
    ];
    let r = check(&h, Some(&present(&["wf-1"])));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.workflows_checked, 1);
}

#[test]
fn a_read_going_back_in_real_time_fails() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 12), Phase::Succeeded),
        read("wf-1", (13, 14), Phase::Running),
    ];
    assert!(not_linearizable(&check(&h, None)));
}

#[test]
fn overlapping_reads_may_be_ordered_either_way() {
    // The "running" read overlaps the "succeeded" one: it can be placed first.
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 20), Phase::Succeeded),
        read("wf-1", (12, 30), Phase::Running),
    ];
    assert!(check(&h, None).ok());
}

#[test]
fn a_read_after_an_acknowledged_cancel_must_not_show_running() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        cancel("wf-1", (11, 12), Ret::Done),
        read("wf-1", (13, 14), Phase::Running),
    ];
    assert!(not_linearizable(&check(&h, None)));
    // ... nor another end: the cancel took it to cancelled.
    let mut h2 = h.clone();
    h2[2] = read("wf-1", (13, 14), Phase::Succeeded);
    assert!(not_linearizable(&check(&h2, None)));
    h2[2] = read("wf-1", (13, 14), Phase::Cancelled);
    assert!(check(&h2, None).ok());
}

#[test]
fn a_cancel_refused_while_reads_show_running_fails() {
    // Refused means it had ended; a later read cannot show it running (no redrive between).
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        cancel("wf-1", (11, 12), Ret::Refused),
        read("wf-1", (13, 14), Phase::Running),
    ];
    assert!(not_linearizable(&check(&h, None)));
}

#[test]
fn redrive_takes_a_failed_workflow_back_to_running() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 12), Phase::Failed),
        redrive("wf-1", (13, 14), Ret::Done),
        read("wf-1", (15, 16), Phase::Running),
        read("wf-1", (17, 18), Phase::Succeeded),
    ];
    assert!(check(&h, None).ok());
    // A succeeded workflow cannot be redriven.
    let bad = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 12), Phase::Succeeded),
        redrive("wf-1", (13, 14), Ret::Done),
    ];
    assert!(not_linearizable(&check(&bad, None)));
}

#[test]
fn an_acknowledged_workflow_read_as_absent_later_fails() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (11, 12), Phase::Absent),
    ];
    assert!(not_linearizable(&check(&h, None)));
    // Before its submit completed, absent is a fine answer.
    let ok = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        read("wf-1", (1, 2), Phase::Absent),
    ];
    assert!(check(&ok, None).ok());
}

#[test]
fn an_unknown_submit_may_or_may_not_have_created_its_workflow() {
    let unknown = Op {
        client: 1,
        kind: Kind::Submit {
            key: Some("k".into()),
            digest: 7,
        },
        invoke: 0,
        complete: None,
        outcome: Outcome::Unknown,
    };
    // The retry found the workflow the lost answer had created.
    let h = vec![
        unknown.clone(),
        submit(Some("k"), 7, (20, 30), "wf-3", false),
        read("wf-3", (31, 32), Phase::Running),
    ];
    assert!(check(&h, Some(&present(&["wf-3"]))).ok());
    // Alone, it constrains nothing.
    assert!(check(&[unknown], Some(&present(&[]))).ok());
}

#[test]
fn retryable_errors_count_as_maybe_and_definite_ones_are_counted() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        op(
            Kind::Cancel { wf: "wf-1".into() },
            11,
            12,
            Outcome::Fail {
                retryable: true,
                why: "503".into(),
            },
        ),
        // The 503'd cancel did take effect.
        read("wf-1", (13, 14), Phase::Cancelled),
        op(
            Kind::Status { wf: "wf-1".into() },
            15,
            16,
            Outcome::Fail {
                retryable: false,
                why: "500".into(),
            },
        ),
    ];
    let r = check(&h, None);
    assert!(r.violations.is_empty(), "{r:?}");
    assert_eq!((r.retryable_errors, r.definite_errors), (1, 1));
}

#[test]
fn a_lost_acknowledged_submit_fails() {
    let h = vec![
        submit(None, 1, (0, 10), "wf-1", true),
        submit(None, 2, (0, 10), "wf-2", true),
    ];
    let r = check(&h, Some(&present(&["wf-1"])));
    assert_eq!(r.violations, vec![Violation::LostAck { id: "wf-2".into() }]);
}

#[test]
fn one_key_two_workflows_fails() {
    let h = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", true),
        submit(Some("k"), 1, (20, 30), "wf-2", true),
    ];
    let r = check(&h, None);
    assert!(r.violations.contains(&Violation::KeySplit {
        key: "k".into(),
        ids: vec!["wf-1".into(), "wf-2".into()]
    }));
    assert!(
        r.violations
            .contains(&Violation::CreatedTwice { key: "k".into() })
    );
}

#[test]
fn another_spec_under_a_key_must_be_refused() {
    let refused = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", true),
        op(
            Kind::Submit {
                key: Some("k".into()),
                digest: 2,
            },
            11,
            12,
            Outcome::Ok(Ret::KeyConflict),
        ),
    ];
    assert!(check(&refused, None).ok());
    let accepted = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", true),
        submit(Some("k"), 2, (11, 12), "wf-1", false),
    ];
    assert!(
        check(&accepted, None)
            .violations
            .contains(&Violation::OtherSpecAccepted { key: "k".into() })
    );
    let wrongly_refused = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", true),
        op(
            Kind::Submit {
                key: Some("k".into()),
                digest: 1,
            },
            11,
            12,
            Outcome::Ok(Ret::KeyConflict),
        ),
    ];
    assert!(
        check(&wrongly_refused, None)
            .violations
            .contains(&Violation::SameSpecRefused { key: "k".into() })
    );
}

#[test]
fn many_concurrent_reads_stay_within_the_budget() {
    // 4 clients x 40 overlapping reads, all consistent: checked, not given up on.
    let mut h = vec![submit(None, 1, (0, 10), "wf-1", true)];
    for c in 0..4u64 {
        for k in 0..40u64 {
            let t = 20 + k * 10 + c;
            let p = if k < 20 {
                Phase::Running
            } else {
                Phase::Succeeded
            };
            h.push(read("wf-1", (t, t + 12), p));
        }
    }
    let r = check(&h, None);
    assert!(r.ok(), "{r:?}");
    // And one read back in time among them is found.
    h.push(read("wf-1", (900, 901), Phase::Running));
    assert!(not_linearizable(&check(&h, None)));
}

#[test]
fn phases_parse_from_the_api_names() {
    assert_eq!(Phase::parse("timed_out"), Some(Phase::TimedOut));
    assert_eq!(Phase::parse("running"), Some(Phase::Running));
    assert_eq!(Phase::parse("paused"), None);
}

#[test]
fn a_duplicated_submit_may_answer_not_created_to_its_creator() {
    // The request reached the leader twice: the second copy's answer (created: false) is the
    // one the client saw, and no other submit of the key exists.
    let h = vec![
        submit(Some("k"), 1, (0, 10), "wf-1", false),
        read("wf-1", (11, 12), Phase::Running),
    ];
    assert!(check(&h, Some(&present(&["wf-1"]))).ok());
}

#[test]
fn many_maybe_applied_retries_stay_within_the_budget() {
    // A keyed submit tried 30 times with no answer, then acknowledged, then read: the
    // unanswered tries change nothing once it exists, so the search does not branch on them.
    let mut h: Vec<Op> = (0..30)
        .map(|k| Op {
            client: 0,
            kind: Kind::Submit {
                key: Some("k".into()),
                digest: 1,
            },
            invoke: k * 10,
            complete: None,
            outcome: Outcome::Unknown,
        })
        .collect();
    h.push(submit(Some("k"), 1, (400, 410), "wf-1", false));
    for k in 0..20 {
        h.push(read("wf-1", (420 + k * 10, 425 + k * 10), Phase::Running));
    }
    let r = check(&h, Some(&present(&["wf-1"])));
    assert!(r.ok(), "{r:?}");
}
