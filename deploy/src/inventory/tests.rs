use super::endpoint::DEFAULT_UNIX_SOCKET;
use super::*;
use serde_json::json;

/// Writes files (path → content) into a fresh directory and loads it as an inventory.
fn inventory(files: &[(&str, &str)]) -> Result<Inventory> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, content) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
    }
    let result = Inventory::load(dir.path());
    // Keep the directory alive until loading is done; paths in the result are only text.
    drop(dir);
    result
}

fn var<'i>(inv: &'i Inventory, host: &str, name: &str) -> &'i Value {
    &inv.host(host).expect("host exists").vars[name]
}

const HOSTS: &str = r#"
all:
  vars: { level: all-inline, all_only: a }
  children:
    web:
      vars: { level: web-inline, web_only: w }
      hosts:
        web1: { level: host-inline }
        web2:
      children:
        web_eu:
          vars: { level: web_eu-inline }
          hosts: { web3: }
    db:
      hosts: { db1: { ansible_host: 10.0.0.5, ansible_user: deploy } }
"#;

#[test]
fn groups_children_and_hosts() {
    let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
    let names: Vec<_> = inv.hosts().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["db1", "web1", "web2", "web3"]);
    assert_eq!(
        inv.hosts_of_group("web").into_iter().collect::<Vec<_>>(),
        ["web1", "web2", "web3"]
    );
    assert_eq!(inv.host("web3").unwrap().groups, ["all", "web", "web_eu"]);
    assert_eq!(inv.group("web_eu").unwrap().depth, 2);
    assert_eq!(var(&inv, "web3", "group_names"), &json!(["web", "web_eu"]));
}

#[test]
fn ansible_graph_renders_the_group_tree_as_ansible_inventory() {
    let inv = inventory(&[(
        "hosts",
        "lonely\n[web]\nweb2\nweb1\n[eu]\nweb1\n[prod:children]\nweb\neu\n[empty]\n",
    )])
    .unwrap();
    assert_eq!(
        inv.ansible_graph(None).unwrap(),
        "@all:\n\
             \x20 |--@ungrouped:\n\
             \x20 |  |--lonely\n\
             \x20 |--@empty:\n\
             \x20 |--@prod:\n\
             \x20 |  |--@eu:\n\
             \x20 |  |  |--web1\n\
             \x20 |  |--@web:\n\
             \x20 |  |  |--web1\n\
             \x20 |  |  |--web2\n"
    );
    // From a group: that group at depth 0, and `all`'s rule (no hosts) only for `all`.
    assert_eq!(
        inv.ansible_graph(Some("web")).unwrap(),
        "@web:\n  |--web1\n  |--web2\n"
    );
    assert_eq!(inv.ansible_graph(Some("nosuch")), None);
}

#[test]
fn ansible_graph_shows_a_group_under_each_parent_and_empty_ungrouped() {
    let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
    assert_eq!(
        inv.ansible_graph(Some("all")).unwrap(),
        "@all:\n\
             \x20 |--@ungrouped:\n\
             \x20 |--@db:\n\
             \x20 |  |--db1\n\
             \x20 |--@web:\n\
             \x20 |  |--@web_eu:\n\
             \x20 |  |  |--web3\n\
             \x20 |  |--web1\n\
             \x20 |  |--web2\n"
    );
    let twice = inventory(&[(
        "hosts",
        "[a]\nh1\n[b]\nh2\n[a:children]\nc\n[b:children]\nc\n[c]\nh3\n",
    )])
    .unwrap();
    assert_eq!(twice.ansible_graph(None).unwrap().matches("@c:").count(), 2);
    assert_eq!(
        twice.ansible_graph(None).unwrap().matches("|--h3").count(),
        2
    );
}

#[test]
fn ansible_host_is_the_hostvars_entry() {
    let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
    let list = inv.ansible_list();
    assert_eq!(
        inv.ansible_host("db1").unwrap(),
        list["_meta"]["hostvars"]["db1"]
    );
    assert!(inv
        .ansible_host("db1")
        .unwrap()
        .get("group_names")
        .is_none());
    assert_eq!(inv.ansible_host("nosuch"), None);
}

#[test]
fn inline_precedence_all_then_parent_then_child_then_host() {
    let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
    assert_eq!(var(&inv, "web1", "level"), "host-inline");
    assert_eq!(var(&inv, "web2", "level"), "web-inline");
    assert_eq!(var(&inv, "web3", "level"), "web_eu-inline");
    assert_eq!(var(&inv, "db1", "level"), "all-inline");
    assert_eq!(var(&inv, "web3", "web_only"), "w");
    assert_eq!(var(&inv, "db1", "all_only"), "a");
}

#[test]
fn files_beat_inline_and_host_vars_beat_everything() {
    let inv = inventory(&[
        ("hosts.yml", HOSTS),
        (
            "group_vars/all.yml",
            "level: all-file\nfrom_all_file: true\nword: yes\n",
        ),
        ("group_vars/web", "level: web-file\n"),
        ("host_vars/web1.yaml", "level: web1-file\n"),
    ])
    .unwrap();
    // host_vars file > host inline
    assert_eq!(var(&inv, "web1", "level"), "web1-file");
    // group_vars/web file > web inline
    assert_eq!(var(&inv, "web2", "level"), "web-file");
    // Ansible's order: a parent's group_vars FILE beats a child's INLINE vars.
    assert_eq!(var(&inv, "web3", "level"), "web-file");
    // group_vars/all file > every inline group var
    assert_eq!(var(&inv, "db1", "level"), "all-file");
    assert_eq!(var(&inv, "db1", "from_all_file"), &json!(true));
    // YAML 1.2: `yes` is text, not a boolean (see yaml.rs).
    assert_eq!(var(&inv, "db1", "word"), "yes");
}

#[test]
fn child_group_file_beats_parent_group_file() {
    let inv = inventory(&[
        ("hosts.yml", HOSTS),
        ("group_vars/web.yml", "level: web\n"),
        ("group_vars/web_eu.yml", "level: web_eu\n"),
    ])
    .unwrap();
    assert_eq!(var(&inv, "web3", "level"), "web_eu");
    assert_eq!(var(&inv, "web1", "level"), "host-inline");
}

#[test]
fn same_depth_groups_merge_by_priority_then_name() {
    let hosts = r#"
all:
  children:
    alpha: { hosts: { h: }, vars: { v: alpha } }
    beta:  { hosts: { h: }, vars: { v: beta } }
"#;
    let inv = inventory(&[("hosts.yml", hosts)]).unwrap();
    assert_eq!(var(&inv, "h", "v"), "beta");
    let with_priority = hosts.replace(
        "vars: { v: alpha }",
        "vars: { v: alpha, ansible_group_priority: 10 }",
    );
    let inv = inventory(&[("hosts.yml", &with_priority)]).unwrap();
    assert_eq!(var(&inv, "h", "v"), "alpha");
}

#[test]
fn merging_replaces_whole_variables() {
    let inv = inventory(&[(
        "hosts.yml",
        "all:\n  vars: { env: { A: 1, B: 2 } }\n  hosts: { h: { env: { A: 9 } } }\n",
    )])
    .unwrap();
    assert_eq!(var(&inv, "h", "env"), &json!({"A": 9}));
}

#[test]
fn vars_directory_files_merge_in_order() {
    let inv = inventory(&[
        ("hosts.yml", HOSTS),
        ("group_vars/web/10-base.yml", "x: base\ny: base\n"),
        ("group_vars/web/20-over.yml", "x: over\n"),
        ("group_vars/web/notes.txt", "not: vars\n"),
    ])
    .unwrap();
    assert_eq!(var(&inv, "web2", "x"), "over");
    assert_eq!(var(&inv, "web2", "y"), "base");
    assert!(!inv.host("web2").unwrap().vars.contains_key("not"));
}

#[test]
fn top_level_groups_ungrouped_and_ranges() {
    let inv = inventory(&[(
        "hosts",
        "all:\n  hosts: { lonely: }\nweb:\n  hosts:\n    web[01:03].prod:\n    x-[a:b]:\n",
    )])
    .unwrap();
    let web: Vec<_> = inv.hosts_of_group("web").into_iter().collect();
    assert_eq!(
        web,
        ["web01.prod", "web02.prod", "web03.prod", "x-a", "x-b"]
    );
    assert_eq!(
        inv.hosts_of_group("ungrouped")
            .into_iter()
            .collect::<Vec<_>>(),
        ["lonely"]
    );
    assert_eq!(var(&inv, "web02.prod", "inventory_hostname_short"), "web02");
}

#[test]
fn host_range_errors() {
    assert!(expand_host_range("web[3:1]").is_err());
    assert!(expand_host_range("web[1:").is_err());
    assert!(expand_host_range("web[a:zz]").is_err());
    assert_eq!(expand_host_range("h[1:5:2]").unwrap(), ["h1", "h3", "h5"]);
}

#[test]
fn structural_errors_name_the_key() {
    let err = inventory(&[("hosts.yml", "all:\n  childs: {}\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("all.childs: unknown key `childs`"), "{err}");
    let err = inventory(&[("hosts.yml", "all:\n  hosts: [a, b]\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("all.hosts: hosts is a mapping"), "{err}");
    let err = inventory(&[("hosts.yml", "all:\n  hosts: { 'bad name': }\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid host name"), "{err}");
    let err = inventory(&[("hosts.yml", "web:\n  hosts: { web: }\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("both a host and a group"), "{err}");
}

#[test]
fn group_cycles_are_rejected() {
    let err = inventory(&[(
        "hosts.yml",
        "a:\n  children:\n    b:\n      children:\n        a:\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn ini_inventory_with_sections_vars_children_and_types() {
    let inv = inventory(&[
        (
            "inventory",
            "; the write-up's testing inventory\n\
                 lonely a=1\n\
                 [back]\n\
                 web-back[1:2].testing n=5 q=\"5\" s='\"5\"' b=True t=true sp=\"a b\" c=x#comment\n\
                 web-back3.testing:2222 ansible_host=10.0.0.3 ansible_user=deploy\n\
                 [back:vars]\n\
                 level=back\n\
                 text=hello world # kept\n\
                 [top:children]\n\
                 back\n\
                 [top:vars]\n\
                 level=top\n\
                 ansible_group_priority=3\n",
        ),
        ("group_vars/all", "from_file: all\n"),
    ])
    .unwrap();
    assert_eq!(var(&inv, "web-back1.testing", "n"), &json!(5));
    assert_eq!(var(&inv, "web-back1.testing", "q"), &json!(5));
    assert_eq!(var(&inv, "web-back1.testing", "s"), &json!("5"));
    assert_eq!(var(&inv, "web-back1.testing", "b"), &json!(true));
    assert_eq!(var(&inv, "web-back1.testing", "t"), &json!("true"));
    assert_eq!(var(&inv, "web-back2.testing", "sp"), &json!("a b"));
    assert_eq!(var(&inv, "web-back2.testing", "c"), &json!("x"));
    assert_eq!(
        var(&inv, "web-back2.testing", "text"),
        &json!("hello world # kept")
    );
    // child group `back` beats its parent `top`
    assert_eq!(var(&inv, "web-back2.testing", "level"), &json!("back"));
    assert_eq!(var(&inv, "lonely", "from_file"), &json!("all"));
    assert_eq!(inv.hosts_of_group("top").len(), 3);
    assert!(inv.hosts_of_group("ungrouped").contains("lonely"));
    assert_eq!(
        inv.host("web-back3.testing").unwrap().endpoint,
        DockerEndpoint::Ssh {
            user: Some("deploy".into()),
            host: "10.0.0.3".into(),
            port: Some(2222),
            identity_file: None,
            options: vec![],
        }
    );
    assert_eq!(
        inv.group("all").unwrap().children.len(),
        2,
        "ungrouped and top"
    );
}

#[test]
fn ini_errors_name_file_line_and_key() {
    for (text, expected) in [
        (
            "[web]\nweb1 novalue\n",
            "inventory: line 2: novalue: expected key=value",
        ),
        (
            "[nope:vars]\na=1\n[web]\nh\n",
            "line 1: nope: section [nope:vars]",
        ),
        (
            "[top:children]\nmissing\n",
            "line 2: missing: [top:children] names group",
        ),
        (
            "[web:hosts2]\n",
            "line 1: web: section [web:hosts2] has unknown type",
        ),
        ("[web]\nh x='open\n", "line 2: no closing quotation"),
        ("[web]\nweb[3:1]\n", "line 2: web[3:1]: host range"),
    ] {
        let err = inventory(&[("inventory", text)]).unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let err = inventory(&[("group_vars/all.yml", "a: 1\n")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no inventory file"), "{err}");
    // A YAML file with a YAML mistake gets the YAML error, not an INI one.
    let err = inventory(&[("hosts", "all:\n  hosts:\n    a: {\n")])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("line 1:"), "{err}");
}

#[test]
fn directory_inventory_mixes_ini_and_yaml_and_vars_files_match_whole_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |path: &str, text: &str| {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    };
    write("10-web", "[web]\nweb-back2.prod\nweb-back3.prod\n");
    write("20-db.yml", "db:\n  hosts: { db1: }\n");
    write("README.md", "not an inventory\n");
    write("notes.ini", "[ignored]\nx\n");
    write("group_vars/web/10.yml", "a: dir\nb: dir\n");
    write("group_vars/web/20.yml", "b: later\n");
    write("group_vars/db", "a: extensionless\n");
    write(
        "group_vars/db.yml",
        "a: shadowed by the extensionless file\n",
    );
    write("host_vars/web-back2.prod", "log_level: debug\n");
    std::os::unix::fs::symlink(
        "web-back2.prod",
        dir.path().join("host_vars/web-back3.prod"),
    )
    .unwrap();
    let inv = Inventory::load(dir.path()).unwrap();
    let names: Vec<_> = inv.hosts().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["db1", "web-back2.prod", "web-back3.prod"]);
    assert_eq!(var(&inv, "web-back2.prod", "b"), "later");
    assert_eq!(var(&inv, "db1", "a"), "extensionless");
    assert_eq!(var(&inv, "web-back2.prod", "log_level"), "debug");
    assert_eq!(var(&inv, "web-back3.prod", "log_level"), "debug");
    assert!(inv.group("ignored").is_none());
    let extra: Vars = [("b".to_string(), json!("extra"))].into_iter().collect();
    let inv = Inventory::load_with_extra_vars(dir.path(), &extra).unwrap();
    assert_eq!(var(&inv, "web-back2.prod", "b"), "extra");
    assert_eq!(var(&inv, "db1", "b"), "extra");
}

#[test]
fn unknown_group_vars_file_is_a_warning() {
    let inv = inventory(&[("hosts.yml", HOSTS), ("group_vars/webb.yml", "a: 1\n")]).unwrap();
    assert_eq!(inv.warnings.len(), 1);
    assert!(inv.warnings[0].contains("no group named `webb`"));
}

#[test]
fn vars_file_must_be_a_mapping() {
    let err = inventory(&[("hosts.yml", HOSTS), ("host_vars/web1.yml", "- a\n- b\n")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("web1.yml") && err.contains("expected a mapping"),
        "{err}"
    );
}

fn endpoint_of(host_vars: &str) -> Result<DockerEndpoint> {
    let inv = inventory(&[(
        "hosts.yml",
        &format!("all:\n  hosts:\n    h1: {host_vars}\n"),
    )])?;
    Ok(inv.host("h1").expect("h1").endpoint.clone())
}

#[test]
fn endpoint_defaults_to_ssh_like_ansible() {
    assert_eq!(
        endpoint_of("").unwrap(),
        DockerEndpoint::Ssh {
            user: None,
            host: "h1".into(),
            port: None,
            identity_file: None,
            options: vec![],
        }
    );
    assert_eq!(
        endpoint_of("{ ansible_host: 10.0.0.1, ansible_user: ops, ansible_port: 2222 }").unwrap(),
        DockerEndpoint::Ssh {
            user: Some("ops".into()),
            host: "10.0.0.1".into(),
            port: Some(2222),
            identity_file: None,
            options: vec![],
        }
    );
    assert_eq!(
        endpoint_of("{ ansible_connection: local }").unwrap(),
        DockerEndpoint::Unix {
            path: DEFAULT_UNIX_SOCKET.into()
        }
    );
}

#[test]
fn ssh_endpoints_take_ansible_s_key_and_ssh_arguments() {
    let endpoint = endpoint_of(
        "{ docker_host: 'ssh://deploy@web1', ansible_ssh_private_key_file: keys/id_ed25519, \
             ansible_ssh_common_args: \"-o StrictHostKeyChecking=accept-new -J 'bastion'\", \
             ansible_ssh_extra_args: -4 }",
    )
    .unwrap();
    let DockerEndpoint::Ssh {
        identity_file,
        options,
        ..
    } = endpoint
    else {
        panic!("not ssh: {endpoint:?}");
    };
    let identity = identity_file.expect("identity");
    assert!(
        identity.is_absolute() || identity.starts_with("."),
        "{identity:?}"
    );
    assert!(identity.ends_with("keys/id_ed25519"), "{identity:?}");
    assert_eq!(
        options,
        [
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-J",
            "bastion",
            "-4"
        ]
    );
    let broken = endpoint_of("{ ansible_ssh_common_args: \"-o 'unclosed\" }");
    assert!(broken.is_err(), "{broken:?}");
}

#[test]
fn endpoint_urls() {
    assert_eq!(
        endpoint_of("{ docker_host: 'unix:///run/d.sock' }").unwrap(),
        DockerEndpoint::Unix {
            path: "/run/d.sock".into()
        }
    );
    assert_eq!(
        endpoint_of("{ docker_host: 'tcp://10.9.0.2' }").unwrap(),
        DockerEndpoint::Tcp {
            host: "10.9.0.2".into(),
            port: 2375,
            tls: None
        }
    );
    assert_eq!(
        endpoint_of("{ docker_host: 'tcp://[fd00::2]:2380' }").unwrap(),
        DockerEndpoint::Tcp {
            host: "fd00::2".into(),
            port: 2380,
            tls: None
        }
    );
    assert_eq!(
        endpoint_of("{ docker_host: 'ssh://me@box:22' }").unwrap(),
        DockerEndpoint::Ssh {
            user: Some("me".into()),
            host: "box".into(),
            port: Some(22),
            identity_file: None,
            options: vec![],
        }
    );
    // docker_host may be templated from other vars.
    assert_eq!(
        endpoint_of("{ ip: 10.9.0.3, docker_host: 'tcp://{{ ip }}:2375' }")
            .unwrap()
            .to_string(),
        "tcp://10.9.0.3:2375"
    );
}

#[test]
fn endpoint_tls_files_resolve_relative_to_inventory() {
    let inv = inventory(&[(
        "hosts.yml",
        "all:\n  hosts:\n    h1: { docker_host: 'tcp://d:2376', docker_cert_path: certs }\n",
    )])
    .unwrap();
    let DockerEndpoint::Tcp {
        tls: Some(tls),
        port,
        ..
    } = &inv.host("h1").unwrap().endpoint
    else {
        panic!("expected tcp+tls")
    };
    assert_eq!(*port, 2376);
    assert_eq!(tls.ca_cert.as_ref().unwrap(), &inv.dir.join("certs/ca.pem"));
    assert_eq!(
        tls.client_key.as_ref().unwrap(),
        &inv.dir.join("certs/key.pem")
    );
    assert!(tls.verify);
    let DockerEndpoint::Tcp {
        tls: Some(tls),
        port,
        ..
    } = endpoint_of("{ docker_host: 'tcp://d', docker_tls: true, docker_tls_verify: false }")
        .unwrap()
    else {
        panic!("expected tcp+tls")
    };
    assert_eq!(port, 2376);
    assert!(!tls.verify && tls.client_cert.is_none());
}

#[test]
fn endpoint_errors() {
    for (vars, expected) in [
        ("{ docker_host: 'http://x' }", "unsupported scheme"),
        ("{ docker_host: 'x:2375' }", "is not a URL"),
        ("{ docker_host: 'tcp://x:99999' }", "invalid port"),
        (
            "{ docker_host: 'unix://relative.sock' }",
            "must be absolute",
        ),
        (
            "{ docker_host: 'ssh://h', docker_tls: true }",
            "only apply to tcp://",
        ),
        (
            "{ docker_host: 'tcp://h', docker_tls_client_cert: c.pem }",
            "needs its key",
        ),
        (
            "{ docker_host: 'tcp://{{ nope }}' }",
            "undefined variable `nope`",
        ),
        ("{ docker_host: [1] }", "expected text"),
    ] {
        let err = endpoint_of(vars).unwrap_err().to_string();
        assert!(err.contains(expected), "{vars}: {err}");
    }
}
