//! Spec validation: every bad spec gets an error that names the file, the line and the field.

use troupe_scheduler::spec::load_str;

fn error_of(text: &str) -> String {
    match load_str(text, Some("wf.toml"), std::path::Path::new(".")) {
        Ok(_) => panic!("accepted a bad spec:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_field_points_at_the_line() {
    let e = error_of("name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nretires = 3\n");
    assert!(e.starts_with("wf.toml:5:1:"), "{e}");
    assert!(e.contains("unknown field `retires`"), "{e}");
}

#[test]
fn bad_duration_and_size_point_at_the_field() {
    let e = error_of(
        "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\ntimeout = \"10 parsecs\"\n",
    );
    assert!(e.starts_with("wf.toml:5:"), "{e}");
    assert!(
        e.contains("step \"a\".timeout") && e.contains("bad duration"),
        "{e}"
    );
    let e = error_of(
        "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n\nresources = { memory = \"lots\" }\n",
    );
    assert!(e.starts_with("wf.toml:6:"), "{e}");
    assert!(e.contains("resources") && e.contains("bad size"), "{e}");
}

#[test]
fn unknown_and_cyclic_needs() {
    let e =
        error_of("name = \"x\"\n[[step]]\nid = \"a\"\nneeds = [\"ghost\"]\nhandler = \"noop\"\n");
    assert!(
        e.starts_with("wf.toml:4:") && e.contains("unknown step \"ghost\""),
        "{e}"
    );
    let e = error_of(
        "name = \"x\"\n[[step]]\nid = \"a\"\nneeds = [\"c\"]\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\n[[step]]\nid = \"c\"\nneeds = [\"b\"]\nhandler = \"noop\"\n",
    );
    assert!(
        e.contains("cycle:") && e.contains("a -> c -> b -> a"),
        "{e}"
    );
    assert!(e.starts_with("wf.toml:4:"), "{e}");
}

#[test]
fn empty_maps_and_bad_map_sources() {
    let e =
        error_of("name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { items = [] }\n");
    assert!(
        e.starts_with("wf.toml:5:") && e.contains("at least one item"),
        "{e}"
    );
    let e = error_of(
        "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [5, 5] }\n",
    );
    assert!(e.contains("empty"), "{e}");
    let e = error_of(
        "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nhandler = \"noop\"\nmap = { over = \"steps.a.output\" }\n",
    );
    assert!(e.contains("must also be listed in `needs`"), "{e}");
}

#[test]
fn other_rules() {
    let cases = [
        ("name = \"x\"\n", "at least one [[step]]"),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\n",
            "needs `run = [argv...]`",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"teleport\"\n",
            "unknown handler",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nrun = [\"echo\", \"{{ params.nope }}\"]\n",
            "not declared in [params]",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nrun = [\"echo\", \"{{ item }}\"]\n",
            "only defined in map steps",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nwhen = \"steps.b ==\"\n",
            "invalid CEL",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nretries = { attempts = 0 }\n",
            "attempts = 0",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n",
            "duplicate step id",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nparallelism = 4\n",
            "map steps only",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\non_failure = \"ignore\"\n",
            "dead-letter",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\n",
            "sleep needs",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nloop = { until = \"output.ok\", max_iterations = 0 }\n",
            "max_iterations",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nresources = { gpu_memory = \"8GiB\" }\n",
            "need gpu >= 1",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a b\"\nhandler = \"noop\"\n",
            "letters, digits",
        ),
    ];
    for (text, want) in cases {
        let e = error_of(text);
        assert!(e.contains(want), "for {text:?} wanted {want:?}, got {e}");
        assert!(e.starts_with("wf.toml:"), "{e}");
    }
}

#[test]
fn the_examples_in_the_repo_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            troupe_scheduler::spec::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the bundled examples");
}

#[test]
fn http_with_errors_name_the_field_and_line() {
    let head = "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"http\"\n";
    let cases = [
        ("", "step \"a\".with: http needs `with = { url"),
        (
            "with = { method = \"GET\" }\n",
            "step \"a\".with.url: http needs",
        ),
        (
            "with = { url = \"ftp://h/x\" }\n",
            "step \"a\".with.url: \"ftp://h/x\" must start with http:// or https://",
        ),
        (
            "with = { url = \"http://h\", method = \"FETCH\" }\n",
            "step \"a\".with.method: unknown method \"FETCH\"",
        ),
        (
            "with = { url = \"http://h\", rate = \"lots\" }\n",
            "step \"a\".with.rate: rate = \"lots\"",
        ),
        (
            "with = { url = \"http://h\", concurrency = 0 }\n",
            "step \"a\".with.concurrency: concurrency = 0",
        ),
        (
            "with = { url = \"http://h\", concurrency = 20000 }\n",
            "from 1 to 10000",
        ),
        (
            "with = { url = \"http://h\", timeout = \"30\" }\n",
            "step \"a\".with.timeout: bad duration",
        ),
        (
            "with = { url = \"http://h\", headers = { X = \"${env:BAD-NAME}\" } }\n",
            "step \"a\".with.headers.X:",
        ),
        (
            "with = { url = \"http://h\", retries = 3 }\n",
            "step \"a\".with.retries: unknown field `retries`",
        ),
    ];
    for (with, want) in cases {
        let e = error_of(&format!("{head}{with}"));
        assert!(e.contains(want), "for {with:?} wanted {want:?}, got {e}");
        // Without `with`, the error points at the step.
        let line = if with.is_empty() { 2 } else { 5 };
        assert!(e.starts_with(&format!("wf.toml:{line}: ")), "{e}");
    }
    // A good one compiles.
    load_str(
        &format!(
            "{head}map = {{ range = [0, 3] }}\nwith = {{ url = \"http://127.0.0.1:8000/v1/completions\", headers = {{ Authorization = \"Bearer ${{env:API_KEY}}\" }}, body = {{ prompt = \"{{{{ item }}}}\" }}, concurrency = 3, rate = \"100/s\", timeout = \"10s\" }}\n"
        ),
        Some("wf.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
}
