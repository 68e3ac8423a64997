//! `xlb-perf churn`: backends added, removed and terminated (the manifest
//! the agents watch is rewritten) while long-lived connections and a steady
//! stream of new connections run through the VIP. Counts broken held
//! connections on unaffected backends (goal 0), failed new connections,
//! and new connections that still landed on a removed or terminating
//! backend after every agent had applied the change.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lab::{manifests::EndpointState, spec, LabSpec};
use serde::Serialize;
use xlb_perf::{
    churn::{run_under_load, LoadReport, LoadSpec},
    labrig::XlbLab,
};

#[derive(Clone, Debug)]
pub struct ChurnOpts {
    pub held: usize,
    /// Traffic time after each change is applied.
    pub dwell: Duration,
}

impl Default for ChurnOpts {
    fn default() -> Self {
        ChurnOpts { held: 96, dwell: Duration::from_secs(1) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub change: String,
    /// Since the load started: manifest written, applied on every agent.
    pub written_s: f64,
    pub applied_s: f64,
    /// New connections answered by a backend this step took out of
    /// service (removed or terminating), after it was applied.
    pub new_on_retired_after_apply: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub backends_at_start: usize,
    pub steps: Vec<Step>,
    pub held: usize,
    pub held_per_pod: Vec<(String, usize)>,
    pub affected_pods: Vec<String>,
    pub broken_unaffected: usize,
    pub broken_affected: usize,
    pub broken_examples: Vec<String>,
    pub new_ok: usize,
    pub new_failed: usize,
    pub new_failed_examples: Vec<String>,
    pub seconds: f64,
}

type State = Vec<(&'static str, EndpointState)>;

fn state_fn(s: &State) -> impl Fn(&str) -> EndpointState + '_ {
    move |pod| s.iter().find(|(p, _)| *p == pod).map_or(EndpointState::Ready, |(_, st)| *st)
}

pub fn run(opts: &ChurnOpts) -> Result<ChurnReport> {
    let lab_spec = LabSpec { nodes: 2, pods_per_node: 3, ..LabSpec::default() };
    let all: Vec<(String, IpAddr)> = (1..=2)
        .flat_map(|n| (1..=3).map(move |m| (spec::pod_name(n, m), IpAddr::V4(spec::pod_v4(n, m)))))
        .collect();
    // pod2-3 starts outside the service and is added under load.
    let start: State = vec![("pod2-3", EndpointState::Removed)];
    let mut rig = XlbLab::start(lab_spec, &state_fn(&start)).context("starting the lab")?;
    // The changes, cumulative; pods each step retires.
    let steps: Vec<(&str, State, Vec<&str>)> = vec![
        (
            "remove pod1-1",
            vec![("pod2-3", EndpointState::Removed), ("pod1-1", EndpointState::Removed)],
            vec!["pod1-1"],
        ),
        ("add pod2-3", vec![("pod1-1", EndpointState::Removed)], vec![]),
        (
            "pod1-2 terminating",
            vec![("pod1-1", EndpointState::Removed), ("pod1-2", EndpointState::Terminating)],
            vec!["pod1-2"],
        ),
        ("re-add pod1-1, remove pod1-2", vec![("pod1-2", EndpointState::Removed)], vec!["pod1-2"]),
        ("all ready", vec![], vec![]),
    ];
    let affected = ["pod1-1", "pod1-2"];
    let addrs = |s: &State, want: EndpointState| -> Vec<IpAddr> {
        let f = state_fn(s);
        all.iter().filter(|(p, _)| f(p) == want).map(|(_, a)| *a).collect()
    };
    let load = LoadSpec { held: opts.held, ..LoadSpec::new(SocketAddr::from((spec::VIP_V4, 80))) };
    let XlbLab { control, lab } = &mut rig;
    let (timeline, report) = run_under_load(lab, "client", &load, |t0: Instant| {
        let mut out = Vec::new();
        std::thread::sleep(opts.dwell);
        for (name, st, retired) in &steps {
            let written = t0.elapsed();
            control.write_manifest(&state_fn(st))?;
            control
                .wait_backends(
                    &addrs(st, EndpointState::Ready),
                    &addrs(st, EndpointState::Terminating),
                )
                .with_context(|| format!("step {name:?}"))?;
            let applied = t0.elapsed();
            std::thread::sleep(opts.dwell);
            out.push((name.to_string(), written, applied, t0.elapsed(), retired.clone()));
        }
        anyhow::Ok(out)
    })?;
    let timeline = timeline.with_context(|| rig.logs())?;
    let steps = timeline
        .iter()
        .map(|(change, written, applied, end, retired)| Step {
            change: change.clone(),
            written_s: written.as_secs_f64(),
            applied_s: applied.as_secs_f64(),
            new_on_retired_after_apply: retired
                .iter()
                .map(|p| report.new_on(p, *applied + Duration::from_millis(50), *end))
                .sum(),
        })
        .collect();
    Ok(summarize(&report, steps, &affected, all.len() - 1))
}

fn summarize(r: &LoadReport, steps: Vec<Step>, affected: &[&str], start: usize) -> ChurnReport {
    let unaffected = r.broken_unaffected(affected);
    let broken_all = r.held.iter().filter(|h| h.broken.is_some()).count();
    ChurnReport {
        backends_at_start: start,
        steps,
        held: r.held.len(),
        held_per_pod: r.held_per_pod().into_iter().map(|(p, n)| (p.to_string(), n)).collect(),
        affected_pods: affected.iter().map(|s| s.to_string()).collect(),
        broken_unaffected: unaffected.len(),
        broken_affected: broken_all - unaffected.len(),
        broken_examples: r
            .held
            .iter()
            .filter_map(|h| {
                h.broken.as_ref().map(|(t, e)| format!("{} at {:.2}s: {e}", h.pod, t.as_secs_f64()))
            })
            .take(5)
            .collect(),
        new_ok: r.new_ok.len(),
        new_failed: r.new_failed.len(),
        new_failed_examples: r
            .new_failed
            .iter()
            .take(5)
            .map(|(t, e)| format!("{:.2}s: {e}", t.as_secs_f64()))
            .collect(),
        seconds: r.elapsed.as_secs_f64(),
    }
}

impl ChurnReport {
    pub fn check(&self) -> Result<()> {
        if self.held == 0 || self.new_ok == 0 {
            bail!("no traffic ran: {self:?}");
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Churn under load: {} backends (2 nodes × 3 pods, one added later), {} held keep-alive \
             connections through the VIP (a request each every 20 ms) and 2 threads opening \
             short-lived connections back to back, {:.1} s. Affected backends (removed or \
             terminating at some point): {}.\n\n",
            self.backends_at_start,
            self.held,
            self.seconds,
            self.affected_pods.join(", ")
        );
        s.push_str("| change | written at s | applied on every agent at s | apply took s | new conns on retired backend after apply |\n|---|---:|---:|---:|---:|\n");
        for st in &self.steps {
            s.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {} |\n",
                st.change,
                st.written_s,
                st.applied_s,
                st.applied_s - st.written_s,
                st.new_on_retired_after_apply
            ));
        }
        s.push_str(&format!(
            "\n| held connections | per pod | broken, unaffected backends (goal 0) | broken, affected backends | new connections ok | new connections failed |\n|---:|---|---:|---:|---:|---:|\n| {} | {} | **{}** | {} | {} | **{}** |\n",
            self.held,
            self.held_per_pod.iter().map(|(p, n)| format!("{p}:{n}")).collect::<Vec<_>>().join(" "),
            self.broken_unaffected,
            self.broken_affected,
            self.new_ok,
            self.new_failed
        ));
        for e in self.broken_examples.iter().chain(&self.new_failed_examples) {
            s.push_str(&format!("\n- {e}"));
        }
        s.push('\n');
        s
    }
}
