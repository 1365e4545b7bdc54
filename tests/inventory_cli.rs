//! `berth inventory` prints what Berth read the way `ansible-inventory` prints it: the real
//! `berth` binary and Debian's `ansible-inventory` (ansible-core) run on the same fixture
//! inventories (with and without `-e`), and `--list` (parsed JSON), `--host` (JSON) and
//! `--graph` (text) must agree. Ansible lists groups and hosts in the order it read them,
//! Berth by name (`ungrouped` first), so `--list` lists are compared sorted and `--graph`
//! with siblings sorted; where the fixture's order is already by name the text must be
//! identical. An unknown host or group: an error naming it and a non-zero exit.
//!
//! Without `ansible-inventory` on PATH the test fails in CI and skips (with a message) outside.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tests/fixtures/ansible")
}

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("inventory")
        .args(args)
        .output()
        .expect("run berth")
}

fn berth_ok(args: &[&str]) -> String {
    let output = berth(args);
    assert!(
        output.status.success(),
        "berth inventory {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn ansible(args: &[&str], home: &Path) -> String {
    let config = home.join("ansible.cfg");
    std::fs::write(&config, "[defaults]\n").expect("empty ansible.cfg");
    let output = Command::new("ansible-inventory")
        .args(args)
        // No user or system ansible.cfg changes what is read; no warnings about them.
        .env("ANSIBLE_CONFIG", &config)
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .env("ANSIBLE_HOME", home)
        .output()
        .expect("run ansible-inventory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("Failed to parse"),
        "ansible-inventory {args:?} failed: {stderr}"
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Sorts every group's `hosts`/`children` list (insertion order vs. name order).
fn normalized_list(text: &str) -> Value {
    let mut list: Value = serde_json::from_str(text).expect("JSON");
    for (name, entry) in list.as_object_mut().expect("object").iter_mut() {
        if name == "_meta" {
            continue;
        }
        for key in ["hosts", "children"] {
            if let Some(Value::Array(items)) = entry.get_mut(key) {
                items.sort_by_key(|item| item.as_str().unwrap_or_default().to_string());
            }
        }
    }
    list
}

/// A `--graph` drawing with the siblings of every node sorted (groups before hosts, as
/// both draw them), each subtree kept under its node.
fn normalized_graph(text: &str) -> String {
    struct Node {
        line: String,
        kids: Vec<Node>,
    }
    fn depth(line: &str) -> usize {
        line.matches("  |").count()
    }
    fn parse(lines: &[&str], at: &mut usize, level: usize) -> Vec<Node> {
        let mut nodes = Vec::new();
        while *at < lines.len() && depth(lines[*at]) == level {
            let line = lines[*at].to_string();
            *at += 1;
            let kids = parse(lines, at, level + 1);
            nodes.push(Node { line, kids });
        }
        nodes
    }
    fn render(nodes: &mut [Node], out: &mut String) {
        nodes.sort_by_key(|node| (!node.line.ends_with(':'), node.line.clone()));
        for node in nodes {
            out.push_str(&node.line);
            out.push('\n');
            render(&mut node.kids, out);
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    let mut tree = parse(&lines, &mut at, 0);
    assert_eq!(at, lines.len(), "not a --graph drawing:\n{text}");
    let mut out = String::new();
    render(&mut tree, &mut out);
    out
}

#[test]
fn berth_inventory_prints_what_ansible_inventory_prints() {
    let found = Command::new("ansible-inventory")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = "ansible-inventory not found (Debian package ansible-core)";
    if !common::require((!found).then(|| missing.to_string())) {
        return;
    }
    let started = Instant::now();
    let home = tempfile::tempdir().expect("ansible home");
    let root = fixtures();
    let extra = ["-e", "image_tag=v4", "-e", r#"{"log_level": "from-e"}"#];
    let mut compared = 0;
    // (inventory, with -e, --graph GROUP); deploy/tests/ansible_inventory.rs compares the
    // reading of every fixture, this the printing.
    for (inventory, with_extra, graph_root) in [
        ("writeup/testing", false, None),
        ("writeup/production", true, Some("all")),
        ("ini-types/hosts", false, None),
        ("mixed", true, Some("prod")),
    ] {
        let path = root.join(inventory);
        let path = path.to_str().expect("UTF-8 path");
        let extra: &[&str] = if with_extra { &extra } else { &[] };
        let mut args = vec!["-i", path];
        args.extend_from_slice(extra);
        let list_args = [&args[..], &["--list"]].concat();
        let ours = normalized_list(&berth_ok(&list_args));
        let theirs = normalized_list(&ansible(&list_args, home.path()));
        assert_eq!(
            ours, theirs,
            "{inventory} {extra:?} --list: Berth (left) and ansible-inventory (right) differ"
        );
        let host = ours["_meta"]["hostvars"]
            .as_object()
            .and_then(|hosts| hosts.keys().next_back().cloned())
            .expect("a host with variables");
        // The last host by name: in writeup/production one whose host_vars -e overrides.
        let host_args = [&args[..], &["--host", &host]].concat();
        let ours: Value = serde_json::from_str(&berth_ok(&host_args)).expect("JSON");
        let theirs: Value = serde_json::from_str(&ansible(&host_args, home.path())).expect("JSON");
        assert_eq!(ours, theirs, "{inventory} {extra:?} --host {host}");
        compared += 2;
        let mut graph_args = vec!["-i", path, "--graph"];
        graph_args.extend(graph_root);
        let ours = berth_ok(&graph_args);
        let theirs = ansible(&graph_args, home.path());
        assert_eq!(
            normalized_graph(&ours),
            normalized_graph(&theirs),
            "{inventory} --graph: Berth (left) and ansible-inventory (right) differ\n\
             Berth:\n{ours}\nAnsible:\n{theirs}"
        );
        if inventory == "writeup/testing" {
            assert_eq!(ours, theirs, "{inventory} --graph: same text");
        }
        compared += 1;
    }

    let path = root.join("mixed");
    let path = path.to_str().unwrap();
    for (flag, name) in [("--host", "nosuch"), ("--graph", "nosuch")] {
        let output = berth(&["-i", path, flag, name]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("\"nosuch\"") && output.stdout.is_empty(),
            "{flag} {name}: {:?} {stderr}",
            output.status
        );
    }
    eprintln!(
        "{compared} outputs of berth inventory and ansible-inventory alike in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
