use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::error::Error;
use crate::template::Vars;

const APP: &str = r#"
name: shop
variables: { tag: v1, web_port: 80 }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100 }
  back: { driver: bridge, subnet: 10.2.3.0/24, ip_range: 10.2.3.128/25 }
services:
  web:
    image: "registry:5000/web:{{ tag }}"
    ports: ["0.0.0.0:{{ web_port }}:8000", "9000", "127.0.0.1::9001/udp", "[::1]:9443:443", { target: 53, published: 5353, protocol: udp }]
    networks: { front: { ipv4_address: 10.1.4.2, aliases: [www] }, back: }
    env: { MODE: prod, WORKERS: 4, DEBUG: false }
    command: python3 -m http.server 8000
    restart: unless-stopped
    cpus: 0.5
    memory: 256m
    healthcheck: { test: "wget -q -O- localhost:8000", interval: 10s, retries: 3 }
  worker:
    image: registry:5000/worker
    replicas: "{{ workers }}"
    networks: [back]
    env: [A=1, B=x=y]
    entrypoint: [/bin/worker, --fast]
    healthcheck: { test: [pgrep, worker] }
    build: ./worker
"#;

fn source(text: &str) -> AppSource {
    AppSource::parse(Path::new("app.yml"), text).expect("app parses")
}

fn vars(value: Value) -> Vars {
    serde_json::from_value(value).expect("mapping")
}

fn problems(text: &str, host_vars: Value) -> Vec<String> {
    match source(text).render(&vars(host_vars)) {
        Err(Error::InvalidApp { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => vec![other.to_string()],
        Ok(_) => Vec::new(),
    }
}

#[test]
fn renders_and_types_a_full_app() {
    let app = source(APP)
        .render(&vars(json!({"workers": 2, "tag": "v2"})))
        .unwrap();
    let web = &app.services["web"];
    assert_eq!(web.image, "registry:5000/web:v2");
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["python3", "-m", "http.server", "8000"]
    );
    assert_eq!(web.env["WORKERS"], "4");
    assert_eq!(web.env["DEBUG"], "false");
    assert_eq!(web.memory, Some(256 * 1024 * 1024));
    assert_eq!(
        web.restart,
        RestartPolicy {
            name: "unless-stopped".into(),
            max_retries: None
        }
    );
    assert_eq!(
        web.healthcheck.as_ref().unwrap().test,
        ["CMD-SHELL", "wget -q -O- localhost:8000"]
    );
    assert_eq!(
        web.healthcheck.as_ref().unwrap().interval,
        Some(10_000_000_000)
    );
    let ports: Vec<String> = web.ports.iter().map(ToString::to_string).collect();
    assert_eq!(
        ports,
        [
            "0.0.0.0:80->8000/tcp",
            "9000/tcp",
            "127.0.0.1:->9001/udp",
            "[::1]:9443->443/tcp",
            "5353->53/udp"
        ]
    );
    assert_eq!(
        web.networks["front"].ipv4_address,
        Some(Ipv4Addr::new(10, 1, 4, 2))
    );
    assert_eq!(web.networks["back"], ServiceNetwork::default());
    let worker = &app.services["worker"];
    assert_eq!(worker.replicas, 2);
    assert_eq!(worker.env["B"], "x=y");
    assert_eq!(
        worker.healthcheck.as_ref().unwrap().test,
        ["CMD", "pgrep", "worker"]
    );
    assert_eq!(worker.build.as_ref().unwrap().context, "./worker");
    assert_eq!(worker.hosts, "all");
    assert_eq!(app.network_docker_name("front"), "shop_front");
}

#[test]
fn inventory_vars_override_app_defaults() {
    let src = source(APP);
    let app = src
        .render(&vars(json!({"workers": 1, "web_port": 8080})))
        .unwrap();
    assert_eq!(app.services["web"].ports[0].published, Some(8080));
    assert_eq!(app.services["web"].image, "registry:5000/web:v1");
}

#[test]
fn undefined_variable_names_file_and_key() {
    let err = source(APP).render(&Vars::new()).unwrap_err().to_string();
    assert_eq!(
        err,
        "app.yml: services.worker.replicas: undefined variable `workers`"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let found = problems(
        "name: a\nservices:\n  web: { image: x, enviroment: { A: 1 } }\n",
        json!({}),
    );
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("services.web.enviroment: unknown field `enviroment`"),
        "{found:?}"
    );
    let err = AppSource::parse(Path::new("app.yml"), "name: a\nservice: {}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key `service`"), "{err}");
}

#[test]
fn an_env_item_without_equals_is_not_quoted() {
    // A forgotten `=` leaves the whole item, value included, in one string.
    let found = problems(
        "name: a\nservices:\n  web: { image: x, env: [\"MODE=prod\", \"TOKEN {{ token }}\"] }\n",
        json!({ "token": "s3cr3t-value" }),
    );
    assert_eq!(
            found,
            ["services.web.env: env item 1 has no `=`; it must be NAME=value (the item is not shown: env values may be secrets)"]
        );
}

#[test]
fn type_errors_name_the_field() {
    let found = problems("name: a\nservices:\n  web: { image: x, replicas: many }\n  db: { image: y, memory: lots }\n", json!({}));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("services.db.memory: invalid size"),
        "{found:?}"
    );
    assert!(found[1].starts_with("services.web.replicas:"), "{found:?}");
}

#[test]
fn name_is_required_and_fixed() {
    // (Without `variables`, a file with services and no name is a compose file.)
    assert!(
        AppSource::parse(Path::new("a.yml"), "variables: {}\nservices: {}\n")
            .unwrap_err()
            .to_string()
            .contains("name: missing")
    );
    assert!(AppSource::parse(Path::new("a.yml"), "name: '{{ x }}'\n")
        .unwrap_err()
        .to_string()
        .contains("cannot be templated"));
    assert!(AppSource::parse(Path::new("a.yml"), "name: 'my app'\n")
        .unwrap_err()
        .to_string()
        .contains("not a valid Docker name"));
}

#[test]
fn network_consistency() {
    let found = problems(
        r#"
name: a
networks:
  hostbits: { subnet: 10.0.0.5/24 }
  outside: { subnet: 10.1.0.0/24, gateway: 10.9.0.1 }
  broadcast: { subnet: 10.2.0.0/24, gateway: 10.2.0.255 }
  range: { subnet: 10.3.0.0/24, ip_range: 10.3.1.0/25 }
  lonely: { gateway: 10.4.0.1 }
  overlap: { subnet: 10.1.0.128/25 }
"#,
        json!({}),
    );
    let expected = [
        "networks.broadcast.gateway: 10.2.0.255 is the network or broadcast address of 10.2.0.0/24",
        "networks.hostbits.subnet: 10.0.0.5/24 has host bits set; did you mean 10.0.0.0/24?",
        "networks.lonely.gateway: a gateway needs a subnet",
        "networks.outside.gateway: 10.9.0.1 is outside subnet 10.1.0.0/24",
        "networks.overlap.subnet: 10.1.0.128/25 overlaps 10.1.0.0/24 of network `outside`",
        "networks.range.ip_range: 10.3.1.0/25 is not inside subnet 10.3.0.0/24",
    ];
    assert_eq!(found, expected);
}

#[test]
fn service_network_references_and_addresses() {
    let found = problems(
        r#"
name: a
networks:
  n: { subnet: 10.0.0.0/24, gateway: 10.0.0.1 }
  auto: {}
services:
  a: { image: x, networks: { nope: {} } }
  b: { image: x, networks: { n: { ipv4_address: 10.0.1.2 } } }
  c: { image: x, networks: { n: { ipv4_address: 10.0.0.1 } } }
  d: { image: x, networks: { auto: { ipv4_address: 10.0.0.9 } } }
  e: { image: x, replicas: 2, networks: { n: { ipv4_address: 10.0.0.9 } } }
"#,
        json!({}),
    );
    let expected = [
            "services.a.networks.nope: unknown network `nope` (defined: auto, n)",
            "services.b.networks.n: 10.0.1.2 is outside subnet 10.0.0.0/24",
            "services.c.networks.n: 10.0.0.1 is the network's gateway",
            "services.d.networks.auto: a fixed address (10.0.0.9) needs the network to have a subnet (Docker only assigns user addresses on user subnets)",
            "services.e.networks.n: 2 replicas cannot share the fixed address 10.0.0.9",
        ];
    assert_eq!(found, expected);
}

#[test]
fn port_syntax_errors() {
    for (port, expected) in [
        ("'8000-8010:8000-8010'", "port ranges"),
        ("'1.2.3:80:80'", "invalid host IP"),
        ("'80:80/icmp'", "unknown protocol"),
        ("'99999'", "invalid port"),
        ("'a:b:c:d'", "expected [HOST_IP:]"),
        ("{ published: 80 }", "missing `target`"),
        ("{ target: 80, mode: mesh }", "unknown port mode"),
        ("{ target: 80, node: 1 }", "unknown key `node`"),
    ] {
        let found = problems(
            &format!("name: a\nservices:\n  web: {{ image: x, ports: [{port}] }}\n"),
            json!({}),
        );
        assert_eq!(found.len(), 1, "{port}: {found:?}");
        assert!(found[0].contains(expected), "{port}: {found:?}");
    }
}

#[test]
fn restart_policies() {
    let restart = |text: &str| {
        source(&format!(
            "name: a\nservices:\n  w: {{ image: x, restart: {text} }}\n"
        ))
        .render(&Vars::new())
        .map(|app| app.services["w"].restart.clone())
    };
    assert_eq!(restart("no").unwrap().name, "no");
    assert_eq!(
        restart("'on-failure:5'").unwrap(),
        RestartPolicy {
            name: "on-failure".into(),
            max_retries: Some(5)
        }
    );
    assert!(restart("sometimes")
        .unwrap_err()
        .to_string()
        .contains("unknown restart policy"));
}

#[test]
fn stop_signal_and_grace_period() {
    let stop = |fields: &str| {
        source(&format!(
            "name: a\nservices:\n  w: {{ image: x, {fields} }}\n"
        ))
        .render(&Vars::new())
        .map(|app| {
            let w = &app.services["w"];
            (w.stop_signal.clone(), w.stop_grace_period)
        })
    };
    assert_eq!(
        stop("stop_signal: SIGQUIT, stop_grace_period: 1500ms").unwrap(),
        (Some("SIGQUIT".into()), Some(1_500_000_000))
    );
    assert_eq!(stop("stop_signal: 9").unwrap().0.as_deref(), Some("9"));
    assert_eq!(stop("replicas: 1").unwrap(), (None, None));
    assert!(stop("stop_signal: 'TERM; rm'")
        .unwrap_err()
        .to_string()
        .contains("expected a signal"));
    assert!(stop("stop_grace_period: soon").is_err());
}

#[test]
fn empty_service_body_reports_missing_image() {
    let found = problems("name: a\nservices:\n  web:\n", json!({}));
    assert_eq!(found, ["services.web: missing field `image`"]);
}
