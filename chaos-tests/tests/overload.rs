//! Overload must not cascade: 200 retrying process tasks with no `resources` on 3 servers + 2
//! workers (2 cores) finish with no node declared lost, no attempt number above `attempts`, and
//! no successful result run again.

use std::collections::BTreeMap;
use std::time::Duration;
use troupe_chaos_tests::{Cluster, history};

#[test]
fn two_hundred_retrying_process_tasks_lose_no_node() {
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut cluster = Cluster::start(tmp.path(), 38, 3, 2, &[]);
    let m = marks.display();
    let spec = format!(
        r#"
name = "overload"
[[step]]
id = "work"
map = {{ range = [0, 200] }}
retries = {{ attempts = 5, initial = "50ms", max = "1s" }}
run = ["sh", "-c", "i=${{TROUPE_TASK_ID##*/}}; echo $i $TROUPE_ATTEMPT >> {m}/attempts; if [ $TROUPE_ATTEMPT -lt 2 ]; then exit 1; fi; sleep 0.05; echo $i >> {m}/ok"]
"#
    );
    let id = cluster.any().submit(&spec);
    let v = cluster.any().wait(&id, Duration::from_secs(240));
    assert_eq!(v["status"], "succeeded", "{v}");
    let h = history(&v);
    let losses: Vec<&String> = h
        .iter()
        .filter(|l| l.contains("lost") || l.contains("restarted"))
        .collect();
    assert!(losses.is_empty(), "nodes were lost under load: {losses:?}");
    let attempts = std::fs::read_to_string(marks.join("attempts")).unwrap();
    let max = attempts
        .lines()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
        .max()
        .unwrap();
    assert!(max <= 5, "an attempt number went above `attempts`: {max}");
    let mut ok: BTreeMap<String, u32> = BTreeMap::new();
    for l in std::fs::read_to_string(marks.join("ok")).unwrap().lines() {
        *ok.entry(l.to_string()).or_default() += 1;
    }
    assert_eq!(ok.len(), 200);
    let twice: Vec<_> = ok.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "successful results ran again: {twice:?}");
}
