//! Golden files for `berth export`: the exact YAML written for examples/origin and two test
//! apps (a volume and secrets; replicas with a healthcheck), so any change to the output is
//! seen in review. `BERTH_UPDATE_GOLDEN=1 cargo test -p berth-deploy --test export_golden`
//! rewrites them. Each case also runs twice to prove the output is stable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use berth_deploy::export::{self, Export, ExportOptions, Rendered};
use berth_deploy::{AppSource, Inventory};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn render(app: &Path, inventory: &Path) -> Rendered {
    let source = AppSource::load(app).expect("app file loads");
    let inventory = Inventory::load(inventory).expect("inventory loads");
    export::render(&source, &inventory, None).expect("app renders")
}

/// Compares every file of the export with the golden folder (and that no golden file is
/// left over), or rewrites the folder when BERTH_UPDATE_GOLDEN is set.
fn check_golden(name: &str, exported: &Export) {
    let golden = root().join("tests/export/golden").join(name);
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        for file in &exported.files {
            let path = golden.join(&file.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &file.contents).unwrap();
        }
        let notes: Vec<String> = exported.notes.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(golden.join("NOTES.txt"), notes.concat()).unwrap();
        return;
    }
    let mut expected_files = BTreeSet::new();
    collect(&golden, &golden, &mut expected_files);
    let mut written = BTreeSet::new();
    for file in &exported.files {
        written.insert(file.path.clone());
        let expected = std::fs::read(golden.join(&file.path)).unwrap_or_else(|e| {
            panic!(
                "{name}: golden file {} missing ({e}); BERTH_UPDATE_GOLDEN=1 writes it",
                file.path.display()
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&file.contents),
            String::from_utf8_lossy(&expected),
            "{name}: {} differs from its golden file",
            file.path.display()
        );
    }
    expected_files.remove(Path::new("NOTES.txt"));
    assert_eq!(expected_files, written, "{name}: the set of files differs");
    let notes: Vec<String> = exported.notes.iter().map(|n| format!("{n}\n")).collect();
    let expected_notes = std::fs::read_to_string(golden.join("NOTES.txt")).unwrap();
    assert_eq!(notes.concat(), expected_notes, "{name}: warnings differ");
}

fn collect(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, out);
        } else {
            out.insert(path.strip_prefix(base).unwrap().to_path_buf());
        }
    }
}

fn kube(inventories: &[(&str, Rendered)], options: &ExportOptions) -> Export {
    let named: Vec<(String, Rendered)> = inventories
        .iter()
        .map(|(n, r)| (n.to_string(), r.clone()))
        .collect();
    let first = export::kubernetes::export(&named, options).expect("export");
    let second = export::kubernetes::export(&named, options).expect("export");
    assert_eq!(
        first.files, second.files,
        "the same input gives the same bytes"
    );
    first
}

fn origin() -> PathBuf {
    root().join("../examples/origin")
}

fn app(name: &str) -> PathBuf {
    root().join("tests/export/apps").join(name)
}

#[test]
fn origin_testing_kubernetes() {
    let rendered = render(&origin().join("app.yml"), &origin().join("testing"));
    let options = ExportOptions {
        pins: BTreeMap::from([(
            "127.0.0.1:5000/app_example_image:v3".to_string(),
            format!("sha256:{}", "ab".repeat(32)),
        )]),
        ..ExportOptions::default()
    };
    check_golden(
        "origin-kubernetes",
        &kube(&[("testing", rendered)], &options),
    );
}

#[test]
fn origin_two_inventories_make_overlays() {
    let testing = render(&origin().join("app.yml"), &origin().join("testing"));
    let production = render(&origin().join("app.yml"), &origin().join("production"));
    let options = ExportOptions {
        namespace: Some("origin".to_string()),
        ..ExportOptions::default()
    };
    let exported = kube(
        &[("testing", testing), ("production", production)],
        &options,
    );
    check_golden("origin-overlays", &exported);
}

#[test]
fn origin_compose_file_exports_like_the_app_file() {
    let from_app = render(&origin().join("app.yml"), &origin().join("testing"));
    let from_compose = render(&origin().join("compose.yaml"), &origin().join("testing"));
    let options = ExportOptions::default();
    let a = kube(&[("testing", from_app)], &options);
    let b = kube(&[("testing", from_compose)], &options);
    for (x, y) in a.files.iter().zip(&b.files) {
        assert_eq!(x.path, y.path);
        if x.path.starts_with("deployment-") {
            assert_eq!(
                String::from_utf8_lossy(&x.contents),
                String::from_utf8_lossy(&y.contents)
            );
        }
    }
}

#[test]
fn origin_stack() {
    let rendered = render(&origin().join("app.yml"), &origin().join("testing"));
    let exported = export::stack::export(&rendered, &ExportOptions::default()).expect("export");
    check_golden("origin-stack", &exported);
}

#[test]
fn volume_and_secrets_kubernetes() {
    let dir = app("volume-secret");
    let rendered = render(&dir.join("app.yml"), &dir.join("inventory.yml"));
    let options = ExportOptions {
        logins: BTreeSet::from(["127.0.0.1:5000".to_string()]),
        single_file: true,
        ..ExportOptions::default()
    };
    let exported = kube(&[("inventory", rendered.clone())], &options);
    check_golden("volume-secret-kubernetes", &exported);
    // The secret values are only in the files the generator reads, never in a manifest.
    for file in &exported.files {
        let text = String::from_utf8_lossy(&file.contents);
        assert_eq!(
            text.contains("not-a-real-password"),
            file.path == Path::new("secrets/db_password"),
            "{}",
            file.path.display()
        );
        assert_eq!(file.secret, file.path.starts_with("secrets"));
    }
}

#[test]
fn volume_and_secrets_inline() {
    let dir = app("volume-secret");
    let rendered = render(&dir.join("app.yml"), &dir.join("inventory.yml"));
    let options = ExportOptions {
        inline_secrets: true,
        ..ExportOptions::default()
    };
    let exported = kube(&[("inventory", rendered)], &options);
    assert!(exported.files.iter().all(|f| !f.secret));
    let secret = exported
        .files
        .iter()
        .find(|f| f.path == Path::new("secret-db-password.yaml"))
        .expect("an inline Secret object");
    let text = String::from_utf8_lossy(&secret.contents);
    // base64 of "not-a-real-password\n"
    assert!(text.contains("bm90LWEtcmVhbC1wYXNzd29yZAo="), "{text}");
}

#[test]
fn volume_and_secrets_stack() {
    let dir = app("volume-secret");
    let rendered = render(&dir.join("app.yml"), &dir.join("inventory.yml"));
    let exported = export::stack::export(&rendered, &ExportOptions::default()).expect("export");
    check_golden("volume-secret-stack", &exported);
}

#[test]
fn replicas_and_healthcheck_kubernetes() {
    let dir = app("replicas-health");
    let rendered = render(&dir.join("app.yml"), &dir.join("inventory.yml"));
    let exported = kube(&[("inventory", rendered)], &ExportOptions::default());
    check_golden("replicas-health-kubernetes", &exported);
}

#[test]
fn replicas_and_healthcheck_stack() {
    let dir = app("replicas-health");
    let rendered = render(&dir.join("app.yml"), &dir.join("inventory.yml"));
    let exported = export::stack::export(&rendered, &ExportOptions::default()).expect("export");
    check_golden("replicas-health-stack", &exported);
}

#[test]
fn a_missing_secret_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.yml"),
        "name: x\nservices:\n  a:\n    image: busybox\n    secrets: [s]\nsecrets:\n  s: { file: ./nope }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("inv.yml"), "all:\n  hosts:\n    h1: {}\n").unwrap();
    let rendered = render(&dir.path().join("app.yml"), &dir.path().join("inv.yml"));
    let error =
        export::kubernetes::export(&[("inv".to_string(), rendered)], &ExportOptions::default())
            .expect_err("a secret that cannot be read");
    let message = error.to_string();
    assert!(
        message.contains("services.a.secrets") && message.contains("nope"),
        "{message}"
    );
}
