//! Berth reads Ansible inventories the way Ansible does: every fixture inventory under
//! `fixtures/ansible/` is loaded by Berth and by `ansible-inventory -i INV --list` (Debian's
//! `ansible-core`), and the hosts, groups (direct hosts and children) and each host's merged
//! variables must be the same.
//!
//! Without `ansible-inventory` on PATH the test fails in CI and skips (with a message) outside.

#[path = "../../tests/common/ci.rs"]
mod ci;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use berth_deploy::Inventory;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ansible")
}

/// Sorts every `hosts`/`children` list, so list order (Ansible's insertion order, Berth's
/// name order) does not count.
fn normalized(mut list: Value) -> Value {
    if let Some(top) = list.as_object_mut() {
        for (name, entry) in top.iter_mut() {
            if name == "_meta" {
                continue;
            }
            for key in ["hosts", "children"] {
                if let Some(Value::Array(items)) = entry.get_mut(key) {
                    items.sort_by_key(|item| item.as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    list
}

fn ansible_list(inventory: &Path) -> Value {
    let home = std::env::temp_dir().join(format!("berth-ansible-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("ansible home");
    let config = home.join("ansible.cfg");
    std::fs::write(&config, "[defaults]\n").expect("empty ansible.cfg");
    let output = Command::new("ansible-inventory")
        .arg("-i")
        .arg(inventory)
        .arg("--list")
        // No user or system ansible.cfg changes what is read; no warnings about them.
        .env("ANSIBLE_CONFIG", &config)
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .env("ANSIBLE_HOME", &home)
        .output()
        .expect("run ansible-inventory");
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("Failed to parse"),
        "ansible-inventory -i {} --list failed: {stderr}",
        inventory.display()
    );
    serde_json::from_slice(&output.stdout).expect("ansible-inventory prints JSON")
}

fn have_ansible() -> bool {
    let found = Command::new("ansible-inventory")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let message = "ansible-inventory not found (Debian package ansible-core)";
        if ci::in_ci() {
            panic!("{message}; CI=true, so this test must run");
        }
        eprintln!("skipping: {message}");
    }
    found
}

#[test]
fn berth_reads_inventories_as_ansible_inventory_does() {
    if !have_ansible() {
        return;
    }
    let started = Instant::now();
    let root = fixtures();
    let mut compared = 0;
    for inventory in [
        "writeup/testing",
        "writeup/testing/inventory",
        "writeup/production",
        "writeup/production/inventory",
        "ini-types/hosts",
        "ini-types",
        "mixed",
        "yaml",
        "yaml/hosts.yml",
    ] {
        let path = root.join(inventory);
        let berth = Inventory::load(&path)
            .unwrap_or_else(|err| panic!("Berth cannot read {inventory}: {err}"));
        let ours = normalized(berth.ansible_list());
        let theirs = normalized(ansible_list(&path));
        assert_eq!(
            ours,
            theirs,
            "{inventory}: Berth (left) and ansible-inventory (right) differ\nBerth:\n{}\nAnsible:\n{}",
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&theirs).unwrap()
        );
        compared += 1;
    }
    eprintln!(
        "{compared} inventories read alike by Berth and ansible-inventory in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The write-up's own layout: the host_vars override (and its symlinked copy) shows only on
/// its hosts, and `-e` beats everything.
#[test]
fn writeup_layout_host_vars_symlink_and_extra_vars() {
    let path = fixtures().join("writeup/production");
    let extra = berth_deploy::inventory::extra_vars::parse_all(&["image_tag=v4"]).unwrap();
    let inventory = Inventory::load_with_extra_vars(&path, &extra).expect("loads");
    let var = |host: &str, key: &str| inventory.host(host).unwrap().vars.get(key).cloned();
    assert_eq!(var("web-back2.prod", "log_level"), Some("debug".into()));
    assert_eq!(var("web-back3.prod", "log_level"), Some("debug".into()));
    assert_eq!(var("web-back1.prod", "log_level"), None);
    assert_eq!(var("web-back1.prod", "app_env"), Some("production".into()));
    for host in ["web-back1.prod", "web-back2.prod", "web-back3.prod"] {
        assert_eq!(var(host, "image_tag"), Some("v4".into()), "{host}");
    }
    assert_eq!(
        inventory
            .host("web-back2.prod")
            .unwrap()
            .endpoint
            .to_string(),
        "ssh://deploy@192.0.2.12:22"
    );
}
