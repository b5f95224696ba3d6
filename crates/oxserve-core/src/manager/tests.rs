//! The manager against a fake backend: a "model" is a directory with a file `model` whose text is
//! `ok` (loads), `bad` (fails) or `panic` (the loader panics).

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use oxserve_proto::tensorflow::serving::model_server_config::Config;
use oxserve_proto::tensorflow::serving::{ModelConfig, ModelConfigList};

use super::*;
use crate::backend::Model;
use crate::signature::SignatureMap;
use crate::tensor::Tensor;

#[derive(Default)]
struct FakeBackend {
    loads: StdMutex<BTreeMap<PathBuf, usize>>,
    dropped: Arc<AtomicUsize>,
}

struct FakeModel {
    signatures: SignatureMap,
    dropped: Arc<AtomicUsize>,
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Model for FakeModel {
    fn signatures(&self) -> &SignatureMap {
        &self.signatures
    }

    fn run(&self, _feeds: Vec<(&str, Tensor)>, _fetches: &[&str]) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

impl Backend for FakeBackend {
    fn load(&self, dir: &Path, _tags: &[String]) -> Result<Box<dyn Model>> {
        *lock(&self.loads).entry(dir.to_path_buf()).or_default() += 1;
        let text = fs::read_to_string(dir.join("model"))
            .map_err(|err| Error::not_found(format!("no model file: {err}")))?;
        match text.trim() {
            "ok" => Ok(Box::new(FakeModel {
                signatures: SignatureMap::new(),
                dropped: self.dropped.clone(),
            })),
            "panic" => panic!("fake loader panic"),
            other => Err(Error::invalid_argument(format!("corrupt model: {other}"))),
        }
    }
}

impl FakeBackend {
    fn loads_of(&self, dir: &Path) -> usize {
        lock(&self.loads).get(dir).copied().unwrap_or(0)
    }
}

fn options() -> ManagerOptions {
    ManagerOptions {
        file_system_poll_wait: Some(Duration::from_millis(20)),
        max_num_load_retries: 0,
        load_retry_interval: Duration::ZERO,
        settle: Duration::ZERO,
        ..ManagerOptions::new(vec!["serve".into()])
    }
}

fn write_version(base: &Path, version: i64, text: &str) {
    let dir = base.join(version.to_string());
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("model"), text).unwrap();
}

fn model(name: &str, base: &Path, policy: Option<&str>, labels: &[(&str, i64)]) -> ModelConfig {
    use oxserve_proto::tensorflow::serving::file_system_storage_path_source_config::{
        servable_version_policy::{All, Latest, PolicyChoice, Specific},
        ServableVersionPolicy,
    };
    let choice = policy.map(|policy| match policy {
        "all" => PolicyChoice::All(All {}),
        "latest2" => PolicyChoice::Latest(Latest { num_versions: 2 }),
        specific => PolicyChoice::Specific(Specific {
            versions: specific.split(',').map(|v| v.parse().unwrap()).collect(),
        }),
    });
    ModelConfig {
        name: name.into(),
        base_path: base.to_string_lossy().into_owned(),
        model_version_policy: choice.map(|choice| ServableVersionPolicy {
            policy_choice: Some(choice),
        }),
        version_labels: labels.iter().map(|(l, v)| (l.to_string(), *v)).collect(),
        ..ModelConfig::default()
    }
}

fn config(models: Vec<ModelConfig>) -> ModelServerConfig {
    ModelServerConfig {
        config: Some(Config::ModelConfigList(ModelConfigList { config: models })),
    }
}

fn states(manager: &ModelManager, name: &str) -> Vec<(i64, VersionState)> {
    manager
        .status(name, None)
        .map(|statuses| statuses.iter().map(|s| (s.version, s.state)).collect())
        .unwrap_or_default()
}

/// Waits (up to 20 s) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn latest(manager: &ModelManager, name: &str) -> Result<i64> {
    manager
        .servable(&ModelSpec {
            name: name.into(),
            version: VersionRequest::Latest,
        })
        .map(|servable| servable.version)
}

fn setup() -> (tempfile::TempDir, Arc<FakeBackend>) {
    (
        tempfile::tempdir().unwrap(),
        Arc::new(FakeBackend::default()),
    )
}

#[test]
fn policies_select_what_loads() {
    let (base, backend) = setup();
    for version in [1, 2, 3] {
        write_version(base.path(), version, "ok");
    }
    let manager = ModelManager::with_options(backend.clone(), options());
    manager
        .reload_config(config(vec![
            model("latest", base.path(), None, &[]),
            model("latest2", base.path(), Some("latest2"), &[]),
            model("all", base.path(), Some("all"), &[]),
            model("specific", base.path(), Some("1,3,9"), &[]),
        ]))
        .unwrap();
    let available = |name: &str| -> Vec<i64> {
        states(&manager, name)
            .into_iter()
            .filter(|(_, state)| *state == VersionState::Available)
            .map(|(version, _)| version)
            .collect()
    };
    eventually("policies applied", || {
        available("latest") == [3]
            && available("latest2") == [3, 2]
            && available("all") == [3, 2, 1]
            && available("specific") == [3, 1]
    });
    assert_eq!(latest(&manager, "specific").unwrap(), 3);
    assert_eq!(
        manager
            .models()
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["all", "latest", "latest2", "specific"]
    );
    assert!(manager.unavailable_models().is_empty());
}

#[test]
fn a_new_version_replaces_the_old_one_after_in_flight_requests_finish() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "ok");
    let manager = ModelManager::with_options(backend.clone(), options());
    manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap();
    assert_eq!(latest(&manager, "m").unwrap(), 1);
    // A request in flight on version 1.
    let in_flight = manager
        .servable(&ModelSpec {
            name: "m".into(),
            version: VersionRequest::Latest,
        })
        .unwrap();
    write_version(base.path(), 2, "ok");
    eventually("version 2 serves", || latest(&manager, "m") == Ok(2));
    // Version 1 left the snapshot but waits for its request.
    eventually("version 1 unloading", || {
        states(&manager, "m") == [(2, VersionState::Available), (1, VersionState::Unloading)]
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 0);
    assert!(manager
        .servable(&ModelSpec {
            name: "m".into(),
            version: VersionRequest::Specific(1),
        })
        .is_err());
    drop(in_flight);
    eventually("version 1 ended", || {
        states(&manager, "m") == [(2, VersionState::Available), (1, VersionState::End)]
    });
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_version_leaves_the_previous_one_serving_and_retries_when_fixed() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "ok");
    let manager = ModelManager::with_options(backend.clone(), options());
    manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap();
    write_version(base.path(), 2, "bad");
    eventually("version 2 failed", || {
        manager
            .status("m", Some(2))
            .is_ok_and(|s| s[0].state == VersionState::End && s[0].error.is_some())
    });
    let status = manager.status("m", Some(2)).unwrap();
    let error = status[0].error.as_ref().unwrap();
    assert_eq!(error.code, Code::InvalidArgument);
    // The loader's own error, as TF Serving's status reports it.
    assert_eq!(error.message, "corrupt model: bad");
    assert_eq!(latest(&manager, "m").unwrap(), 1);
    // No retries are left, and the directory did not change: no new attempt.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.loads_of(&base.path().join("2")), 1);
    // Fixing the directory retries at once.
    write_version(base.path(), 2, "ok  ");
    eventually("version 2 serves", || latest(&manager, "m") == Ok(2));
    eventually("version 1 ended", || {
        states(&manager, "m") == [(2, VersionState::Available), (1, VersionState::End)]
    });
}

#[test]
fn load_retries_are_bounded() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "bad");
    let manager = ModelManager::with_options(
        backend.clone(),
        ManagerOptions {
            max_num_load_retries: 2,
            file_system_poll_wait: None,
            ..options()
        },
    );
    let err = manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap_err();
    assert_eq!(err.code, Code::Unknown);
    assert!(
        err.message.starts_with("1 model(s) did not become available: {{name: m version: 1} due to error: corrupt model: bad"),
        "{}",
        err.message
    );
    assert_eq!(backend.loads_of(&base.path().join("1")), 3);
    assert_eq!(states(&manager, "m"), [(1, VersionState::End)]);
    assert_eq!(manager.unavailable_models(), ["m"]);
}

#[test]
fn a_panicking_loader_is_a_load_failure() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "panic");
    let manager = ModelManager::with_options(backend, options());
    let err = manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap_err();
    assert!(
        err.message.contains("the loader panicked"),
        "{}",
        err.message
    );
}

#[test]
fn a_model_without_versions_does_not_block_and_loads_when_one_appears() {
    let (base, backend) = setup();
    let manager = ModelManager::with_options(backend, options());
    manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap();
    assert_eq!(manager.unavailable_models(), ["m"]);
    assert_eq!(
        manager.status("m", None).unwrap_err().message,
        "Could not find any versions of model m"
    );
    write_version(base.path(), 7, "ok");
    eventually("version 7 serves", || latest(&manager, "m") == Ok(7));
    assert!(manager.unavailable_models().is_empty());
}

#[test]
fn any_model_name_loads_a_nul_byte_included() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "ok");
    let manager = ModelManager::with_options(backend, options());
    manager
        .reload_config(config(vec![model("a\0b", base.path(), None, &[])]))
        .unwrap();
    eventually("a\\0b serves", || latest(&manager, "a\0b") == Ok(1));
}

#[test]
fn a_directory_being_written_waits_until_it_is_stable() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "ok");
    let manager = ModelManager::with_options(
        backend.clone(),
        ManagerOptions {
            settle: Duration::from_secs(3600),
            file_system_poll_wait: Some(Duration::from_millis(200)),
            ..options()
        },
    );
    manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap();
    assert_eq!(latest(&manager, "m").unwrap(), 1);
    // Written file by file, much faster than the poll: never loaded half-written.
    let v2 = base.path().join("2");
    fs::create_dir_all(&v2).unwrap();
    for step in 0..60 {
        fs::write(v2.join(format!("part{step}")), "data").unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(backend.loads_of(&v2), 0);
    assert_eq!(latest(&manager, "m").unwrap(), 1);
    fs::write(v2.join("model"), "ok").unwrap();
    eventually("version 2 serves", || latest(&manager, "m") == Ok(2));
    assert_eq!(backend.loads_of(&v2), 1);
}

#[test]
fn reload_adds_removes_and_changes_models() {
    let (base, backend) = setup();
    let a = base.path().join("a");
    let b = base.path().join("b");
    write_version(&a, 1, "ok");
    write_version(&a, 2, "ok");
    write_version(&b, 5, "ok");
    let manager = ModelManager::with_options(backend, options());
    manager
        .reload_config(config(vec![model("a", &a, None, &[])]))
        .unwrap();
    assert_eq!(latest(&manager, "a").unwrap(), 2);
    // b added, a switched to version 1 only.
    manager
        .reload_config(config(vec![
            model("a", &a, Some("1"), &[]),
            model("b", &b, None, &[]),
        ]))
        .unwrap();
    assert_eq!(latest(&manager, "b").unwrap(), 5);
    eventually("a serves version 1 only", || {
        states(&manager, "a") == [(2, VersionState::End), (1, VersionState::Available)]
    });
    // a removed: NOT_FOUND for requests, END in its status, gone from the listing.
    manager
        .reload_config(config(vec![model("b", &b, None, &[])]))
        .unwrap();
    eventually("a unloaded", || {
        states(&manager, "a")
            .iter()
            .all(|(_, state)| *state == VersionState::End)
    });
    let err = latest(&manager, "a").unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (Code::NotFound, "Servable not found for request: Latest(a)")
    );
    assert_eq!(
        manager
            .models()
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    // An empty configuration changes nothing; an invalid one is refused whole.
    manager.reload_config(ModelServerConfig::default()).unwrap();
    assert_eq!(latest(&manager, "b").unwrap(), 5);
    let err = manager
        .reload_config(config(vec![
            model("b", &b, None, &[]),
            model("b", &a, None, &[]),
        ]))
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    // a comes back.
    manager
        .reload_config(config(vec![
            model("a", &a, None, &[]),
            model("b", &b, None, &[]),
        ]))
        .unwrap();
    assert_eq!(latest(&manager, "a").unwrap(), 2);
}

#[test]
fn labels_follow_tf_serving_rules() {
    let (base, backend) = setup();
    write_version(base.path(), 1, "ok");
    write_version(base.path(), 2, "ok");
    let manager = ModelManager::with_options(backend.clone(), options());
    // At start nothing is available: a label is refused.
    let err = manager
        .reload_config(config(vec![model(
            "m",
            base.path(),
            Some("all"),
            &[("stable", 1)],
        )]))
        .unwrap_err();
    assert_eq!(err.code, Code::FailedPrecondition);
    assert_eq!(
        err.message,
        "Request to assign label to version 1 of model m, which is not currently available for inference"
    );
    assert!(manager.models().is_empty());
    manager
        .reload_config(config(vec![model("m", base.path(), Some("all"), &[])]))
        .unwrap();
    eventually("both versions", || {
        states(&manager, "m") == [(2, VersionState::Available), (1, VersionState::Available)]
    });
    manager
        .reload_config(config(vec![model(
            "m",
            base.path(),
            Some("all"),
            &[("stable", 1), ("canary", 2)],
        )]))
        .unwrap();
    let by_label = |label: &str| {
        manager
            .servable(&ModelSpec {
                name: "m".into(),
                version: VersionRequest::Label(label.into()),
            })
            .map(|servable| servable.version)
    };
    assert_eq!(by_label("stable"), Ok(1));
    assert_eq!(by_label("canary"), Ok(2));
    assert_eq!(
        by_label("nope").unwrap_err().message,
        "Unrecognized servable version label: nope"
    );
    assert_eq!(manager.models()[0].labels["canary"], 2);

    // With the flag: a new label may point at a version not loaded (yet); moving one may not.
    let lenient = ModelManager::with_options(
        backend,
        ManagerOptions {
            allow_version_labels_for_unavailable_models: true,
            ..options()
        },
    );
    lenient
        .reload_config(config(vec![model(
            "m",
            base.path(),
            Some("1"),
            &[("stable", 1), ("next", 2)],
        )]))
        .unwrap();
    let err = lenient
        .reload_config(config(vec![model(
            "m",
            base.path(),
            Some("1"),
            &[("stable", 2), ("next", 2)],
        )]))
        .unwrap_err();
    assert_eq!(err.code, Code::FailedPrecondition);
    assert_eq!(
        lenient
            .servable(&ModelSpec {
                name: "m".into(),
                version: VersionRequest::Label("next".into()),
            })
            .err()
            .map(|err| err.message),
        // The label's version, as TF Serving resolves it before the lookup.
        Some("Servable not found for request: Specific(m, 2)".to_string())
    );
}

#[test]
fn ended_entries_are_pruned() {
    let (base, backend) = setup();
    let manager = ModelManager::with_options(backend, options());
    write_version(base.path(), 1, "ok");
    manager
        .reload_config(config(vec![model("m", base.path(), None, &[])]))
        .unwrap();
    for version in 2..=(MAX_ENDED_VERSIONS as i64 + 5) {
        write_version(base.path(), version, "ok");
        eventually("new version serves", || {
            latest(&manager, "m") == Ok(version)
        });
    }
    eventually("history bounded", || {
        let states = states(&manager, "m");
        states.len() == MAX_ENDED_VERSIONS + 1
            && states
                .iter()
                .filter(|(_, s)| *s == VersionState::End)
                .count()
                == MAX_ENDED_VERSIONS
    });
}

#[test]
fn load_latest_keeps_other_models() {
    let (base, backend) = setup();
    let a = base.path().join("a");
    let b = base.path().join("b");
    write_version(&a, 3, "ok");
    write_version(&b, 4, "ok");
    let manager = ModelManager::with_options(backend, options());
    assert_eq!(manager.load_latest("a", &a).unwrap(), 3);
    assert_eq!(manager.load_latest("b", &b).unwrap(), 4);
    assert_eq!(latest(&manager, "a").unwrap(), 3);
    let empty = base.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let err = manager.load_latest("c", &empty).unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}
