//! The proxy pod's termination exactly as `deploy/proxy-daemonset.yaml` describes it and the
//! kubelet carries it out: every container's pre-stop hook starts at once; a container gets
//! SIGTERM when its own hook has returned; whatever still runs when the grace period ends is
//! killed. The hooks' commands are the manifest's, run in the node's namespace (the pod is
//! host-networked), with two substitutions only: the `drain` volume's mount path becomes a
//! directory of the test's, and the image's `/usr/bin/redirector` the binary under test. The
//! collector's own process is not run here (its hook is; the collector e2e tests cover it).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{envoy::Envoy, lab::Lab, process::spawn_in, sys::unique_id};

/// Where the image keeps the binary (xtask/src/image.rs).
const BINARY_IN_IMAGE: &str = "/usr/bin/redirector";

/// What the proxy pod's manifest says about running and stopping it.
#[derive(Debug, Clone)]
pub struct ProxyPod {
    /// Envoy's arguments after `-c PATH`.
    pub envoy_args: Vec<String>,
    /// Envoy's pre-stop hook.
    pub envoy_pre_stop: Vec<String>,
    /// The collector's pre-stop hook (the drain).
    pub collector_pre_stop: Vec<String>,
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// Where the `drain` volume is mounted.
    pub drain_mount: String,
}

/// What a termination did.
#[derive(Debug)]
pub struct Termination {
    /// The drain hook's output (stdout and stderr).
    pub drain_output: String,
    /// From the start to Envoy's exit.
    pub took: Duration,
}

fn pre_stop(container: &Value) -> Result<Vec<String>> {
    container
        .pointer("/lifecycle/preStop/exec/command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .with_context(|| format!("container {} has no pre-stop exec hook", container["name"]))
}

impl ProxyPod {
    /// Reads `deploy/proxy-daemonset.yaml`.
    pub fn from_manifest() -> Result<Self> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/proxy-daemonset.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let doc = redirector::k8s::yaml::documents(&text)?
            .into_iter()
            .next()
            .context("an empty manifest")?;
        let pod = doc
            .pointer("/spec/template/spec")
            .context("no pod template")?;
        let container = |name: &str| -> Result<&Value> {
            pod["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == name))
                .with_context(|| format!("no container {name}"))
        };
        let envoy = container("envoy")?;
        let collector = container("collector")?;
        let mut envoy_args: Vec<String> = envoy["args"]
            .as_array()
            .context("Envoy has no args")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        // The lab gives its own bootstrap.
        if let Some(i) = envoy_args.iter().position(|a| a == "-c") {
            envoy_args.drain(i..(i + 2).min(envoy_args.len()));
        }
        let drain_mount = collector["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == "drain"))
            .and_then(|m| m["mountPath"].as_str())
            .context("the collector mounts no `drain` volume")?
            .to_owned();
        Ok(Self {
            envoy_args,
            envoy_pre_stop: pre_stop(envoy)?,
            collector_pre_stop: pre_stop(collector)?,
            grace: Duration::from_secs(
                pod["terminationGracePeriodSeconds"]
                    .as_u64()
                    .context("no terminationGracePeriodSeconds")?,
            ),
            drain_mount,
        })
    }

    /// Terminates the pod whose Envoy is `envoy` (started with [`ProxyPod::envoy_args`]) in
    /// `lab`, `redirector` standing for the image's binary. Fails if the pod outlives its
    /// grace period (then everything is killed, as the kubelet would).
    pub fn terminate(&self, envoy: &mut Envoy, lab: &Lab, redirector: &str) -> Result<Termination> {
        let volume = DrainVolume::new()?;
        let local = |argv: &[String]| -> Vec<String> {
            argv.iter()
                .map(|a| {
                    let a = a.replace(&self.drain_mount, &volume.0.to_string_lossy());
                    if a == BINARY_IN_IMAGE {
                        redirector.to_owned()
                    } else {
                        a
                    }
                })
                .collect()
        };
        let started = Instant::now();
        let spawn = |argv: Vec<String>| -> Result<Child> {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            spawn_in(cmd, &lab.node_ns, None)
        };
        let mut envoy_hook = Some(spawn(local(&self.envoy_pre_stop))?);
        let mut drain_hook = spawn(local(&self.collector_pre_stop))?;
        let mut drain_done = false;
        let deadline = started + self.grace;
        loop {
            if !drain_done && drain_hook.try_wait()?.is_some() {
                drain_done = true;
            }
            if let Some(hook) = &mut envoy_hook
                && hook.try_wait()?.is_some()
            {
                envoy_hook = None;
                // The kubelet's SIGTERM once Envoy's hook has returned.
                envoy.stop()?;
            }
            if drain_done && envoy_hook.is_none() {
                break;
            }
            if Instant::now() > deadline {
                let _ = drain_hook.kill();
                if let Some(hook) = &mut envoy_hook {
                    let _ = hook.kill();
                    let _ = hook.wait();
                }
                let _ = drain_hook.wait();
                envoy.kill()?;
                bail!(
                    "the proxy pod outlived its grace period ({:?}): the kubelet kills it\n{}",
                    self.grace,
                    output(&mut drain_hook)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        let status = drain_hook.wait()?;
        let drain_output = output(&mut drain_hook);
        if !status.success() {
            bail!("the drain hook failed ({status}):\n{drain_output}");
        }
        Ok(Termination { drain_output, took })
    }
}

fn output(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(err) = child.stderr.as_mut() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// The pod's `drain` emptyDir: a directory of the test's, removed on drop.
struct DrainVolume(PathBuf);

impl DrainVolume {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("l7r-drain-{}", unique_id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for DrainVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
