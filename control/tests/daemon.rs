//! `xlb run` end to end, as a process: attached to a veth in a network
//! namespace of its own, it programs the pinned maps from a manifest file,
//! follows edits of the file, keeps the running state when an edit is
//! invalid (logging every error), reloads on SIGHUP, and on SIGTERM with
//! --detach-on-exit detaches its programs and exits 0 with the maps still
//! pinned (without it they stay attached: see lab_e2e's restart test).
//! Privileged tier: needs root, BPF and netns; fails (never skips) without them.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{netns::NamedNetns, pins::PinDir};
use xlb_control::examples;

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

/// Cleanup of everything the test creates, even on panic: the child, then
/// (the guards) the namespace and the pin directory, and the scratch
/// directory.
struct Fixture {
    netns: NamedNetns,
    pin_dir: PinDir,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    /// A namespace holding the veth pair xv0 <-> xv1 the agent attaches to.
    fn new(tag: &str) -> Fixture {
        testkit::require_root("this test (BPF, netns)");
        let f = Fixture {
            netns: NamedNetns::create(tag).unwrap_or_else(|e| panic!("{e}")),
            pin_dir: PinDir::new(tag),
            dir: std::env::temp_dir().join(format!("xlb-ctl-{tag}-{}", std::process::id())),
            child: None,
        };
        fs::create_dir_all(&f.dir).unwrap();
        f.netns.veth("xv0", "xv1").unwrap_or_else(|e| panic!("{e}"));
        f
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("xlb.log")).unwrap_or_default()
    }

    /// Starts `xlb run` in the namespace's network (nsenter --net only: the
    /// mount namespace, and so the bpffs with the pins, stays the test's).
    fn start(&mut self) {
        let log = fs::File::create(self.dir.join("xlb.log")).unwrap();
        let child = self
            .netns
            .nsenter(XLB)
            .args(["run", "--iface", "xv0", "--node-name", "lb"])
            .arg("--config")
            .arg(self.config())
            .arg("--pin-dir")
            .arg(self.pin_dir.path())
            .args(["--small-maps", "--detach-on-exit"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning xlb run");
        self.child = Some(child);
    }

    /// `xlb service list --json`, parsed.
    fn services(&self) -> serde_json::Value {
        let out = Command::new(XLB)
            .args(["service", "list", "--json", "--pin-dir"])
            .arg(self.pin_dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits (at most 15 s) until `cond` holds, panicking with the log.
    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&Fixture) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cond(self) {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("xlb run exited ({st}) while waiting for {what}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

/// Backend addresses of a service in a `service list --json` listing.
fn backends(list: &serde_json::Value, service: &str) -> Option<Vec<String>> {
    let svc = list.as_array()?.iter().find(|s| s["name"] == service)?;
    let mut v: Vec<String> = svc["backends"]
        .as_array()?
        .iter()
        .map(|b| format!("{}:{}", b["addr"].as_str().unwrap_or("?"), b["port"]))
        .collect();
    v.sort();
    Some(v)
}

/// Writes through a temporary file and a rename, as editors and
/// configuration managers do, so the daemon never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn run_follows_the_file_keeps_state_on_bad_config_and_exits_cleanly() {
    let mut f = Fixture::new("follow");
    write_config(&f.config(), examples::NGINX);
    f.start();

    let v4 = ["10.244.1.11:80".to_string(), "10.244.2.11:80".to_string()];
    let v6 = ["2001:db8:244:1::11:80".to_string(), "2001:db8:244:2::11:80".to_string()];
    f.wait_for("the nginx service in the maps", |f| {
        let list = f.services();
        backends(&list, "default/nginx:http").as_deref() == Some(&v4[..])
            && backends(&list, "default/nginx:http/ipv6").as_deref() == Some(&v6[..])
    });
    let links = fs::read_dir(f.pin_dir.path().join("links")).unwrap().count();
    assert_eq!(links, 3, "xdp + tc ingress + tc egress links pinned");

    // An edit: pod2-1's IPv4 endpoint goes away.
    let edited = examples::NGINX.replace(
        "- addresses: [10.244.2.11]\n  nodeName: node2\n  conditions: {ready: true, serving: true, terminating: false}\n  targetRef: {kind: Pod, namespace: default, name: pod2-1}\n",
        "",
    );
    assert_ne!(edited, examples::NGINX, "the example changed shape; fix the edit");
    write_config(&f.config(), &edited);
    f.wait_for("the edit applied", |f| {
        backends(&f.services(), "default/nginx:http").is_some_and(|b| b.len() == 1)
    });
    let applied = f.services();

    // An invalid edit is logged with its error and not applied.
    let bad = edited.replace(
        "  name: nginx\n  namespace: default\nspec:",
        "  name: nginx\n  namespace: default\n  annotations: {xlb.io/maglev-size: \"1000\"}\nspec:",
    );
    assert_ne!(bad, edited);
    write_config(&f.config(), &bad);
    let want = "Service default/nginx: metadata.annotations[xlb.io/maglev-size]: \"1000\" is not a prime number <= 16381";
    f.wait_for("the rejection logged", |f| f.log().contains(want));
    assert_eq!(f.services(), applied, "a rejected configuration must change nothing");

    // SIGHUP re-reads the file (still invalid: rejected once more).
    let rejections = f.log().matches(want).count();
    f.signal(libc::SIGHUP);
    f.wait_for("the SIGHUP reload", |f| f.log().matches(want).count() > rejections);
    assert!(f.log().contains("SIGHUP: reloading"), "{}", f.log());

    // SIGTERM with --detach-on-exit: exit 0, programs detached, maps still pinned.
    f.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = f.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "xlb run did not exit on SIGTERM; log:\n{}", f.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    f.child = None;
    assert!(status.success(), "exit status {status}; log:\n{}", f.log());
    let links = fs::read_dir(f.pin_dir.path().join("links")).map_or(0, |d| d.count());
    assert_eq!(links, 0, "links detached on exit");
    assert!(f.pin_dir.path().join("xlb_frontends").exists(), "maps stay pinned");
    let out =
        Command::new("ip").args(["-n", f.netns.name(), "link", "show", "xv0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("xdp"), "XDP still attached: {text}");
    // The flows' state survives: the maps still hold the last applied config.
    assert_eq!(f.services(), applied);
}

#[test]
fn run_refuses_an_invalid_config_before_touching_anything() {
    let f = Fixture::new("refuse");
    let bad = examples::NGINX.replace("nodeName: node2", "nodeName: node9");
    write_config(&f.config(), &bad);
    let out = Command::new(XLB)
        .args(["run", "--iface", "lo", "--node-name", "lb", "--small-maps", "--config"])
        .arg(f.config())
        .arg("--pin-dir")
        .arg(f.pin_dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "EndpointSlice default/nginx-v4: endpoints[1].nodeName: node \"node9\" not found"
        ) && err.contains(
            "EndpointSlice default/nginx-v6: endpoints[1].nodeName: node \"node9\" not found"
        ),
        "{err}"
    );
    assert!(!f.pin_dir.path().exists(), "nothing may be loaded or pinned");
}
