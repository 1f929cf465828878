//! Upgrades: the pins carry a layout version. A daemon adopts pins of its own layout, migrates
//! older ones, refuses newer ones (leaving the running programs alone), releases the links of
//! programs it does not have, and `detach` removes every pin under its directory, known or
//! not, and says which.

use std::{fs, net::IpAddr, path::Path, process::Command};

use anyhow::{Result, ensure};
use l7r_lab::{
    lab::{BACKEND4, Lab, NODE4_UPSTREAM, SERVICE_PORT, sa},
    proxy::Upstream,
    sys::{run, unique_id},
};
use redirector::dataplane::{
    Dataplane, DataplaneError, LoadOptions, attached_programs, pinned_layout,
};
use redirector_common::{LAYOUT_VERSION, map_names, program_names};

use crate::{DATAPLANE_CTL, REDIRECTOR as EXE};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

fn service() -> std::net::SocketAddr {
    sa(BACKEND4, SERVICE_PORT)
}

/// Pins the object pinned at `pin` again at `also` (`map` or `link`), as another version's
/// pin would be.
fn pin_again(kind: &str, pin: &Path, also: &Path) -> Result<()> {
    run(
        "bpftool",
        &[
            kind,
            "pin",
            "pinned",
            &pin.to_string_lossy(),
            &also.to_string_lossy(),
        ],
    )?;
    Ok(())
}

#[test]
fn pins_made_before_the_layout_stamp_are_migrated_and_keep_the_selection() -> Result<()> {
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    assert_eq!(pinned_layout(&lab.pin_dir)?, Some(LAYOUT_VERSION));
    // What the version before the stamp pinned: no lease maps, no stamp.
    for name in [
        map_names::LAYOUT,
        map_names::PROXY_LEASE,
        map_names::PROXY_FAILED,
    ] {
        fs::remove_file(lab.pin_dir.join(name))?;
    }
    assert_eq!(pinned_layout(&lab.pin_dir)?, Some(1));

    lab.restart_dataplane_in_new_process(DATAPLANE_CTL)?;
    assert_eq!(pinned_layout(&lab.pin_dir)?, Some(LAYOUT_VERSION));
    assert!(
        lab.pinned_destinations()?.contains(&service()),
        "the selection survives the migration"
    );
    assert_eq!(attached_programs(lab.cgroup_root())?, 6);
    assert_eq!(
        lab.connect(service())?.ask("after the migration")?,
        ip(NODE4_UPSTREAM)
    );
    Ok(())
}

#[test]
fn pins_of_a_newer_layout_are_refused_and_the_running_programs_keep_steering() -> Result<()> {
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let stamp = lab.pin_dir.join(map_names::LAYOUT);
    run(
        "bpftool",
        &[
            "map",
            "update",
            "pinned",
            &stamp.to_string_lossy(),
            "key",
            "0",
            "0",
            "0",
            "0",
            "value",
            "99",
            "0",
            "0",
            "0",
        ],
    )?;

    let refused = Dataplane::load(&LoadOptions {
        pin_dir: lab.pin_dir.clone(),
        ..Default::default()
    });
    match refused {
        Err(e @ DataplaneError::UnknownLayout { found: 99, .. }) => {
            let text = e.to_string();
            ensure!(
                text.contains("layout version 99") && text.contains("redirector detach"),
                "the error must name the version and the fix: {text}"
            );
        }
        Err(e) => anyhow::bail!("refused for another reason: {e}"),
        Ok(_) => anyhow::bail!("pins of an unknown layout were adopted"),
    }
    assert_eq!(
        lab.connect(service())?.ask("still steered")?,
        ip(NODE4_UPSTREAM),
        "a refused start leaves the running datapath alone"
    );
    Ok(())
}

#[test]
fn links_of_programs_this_version_does_not_have_are_released() -> Result<()> {
    let mut lab = Lab::new()?;
    let links = lab.pin_dir.join("links");
    // A link pinned under a name no program has any more, as after a rename.
    let renamed = links.join("connect4_before_rename");
    pin_again("link", &links.join(program_names::CONNECT4), &renamed)?;
    lab.restart_dataplane_in_new_process(DATAPLANE_CTL)?;
    assert!(!renamed.exists(), "the unknown link pin is released");
    assert_eq!(
        attached_programs(lab.cgroup_root())?,
        6,
        "only this version's programs stay attached"
    );
    Ok(())
}

#[test]
fn detach_removes_every_pin_known_or_not_and_says_which() -> Result<()> {
    let lab = Lab::new()?;
    let legacy_map = lab.pin_dir.join("legacy_map");
    pin_again("map", &lab.pin_dir.join(map_names::SERVICES), &legacy_map)?;
    let legacy_link = lab.pin_dir.join("links").join("legacy_program");
    pin_again(
        "link",
        &lab.pin_dir.join("links").join(program_names::CONNECT6),
        &legacy_link,
    )?;

    let out = Command::new(EXE)
        .args(["detach", "--pin-dir", &lab.pin_dir.to_string_lossy()])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pin in [
        &legacy_map,
        &legacy_link,
        &lab.pin_dir.join(map_names::SERVICES),
    ] {
        ensure!(
            stdout.contains(&format!("removed {}", pin.display())),
            "detach must say it removed {}:\n{stdout}",
            pin.display()
        );
    }
    assert!(!lab.pin_dir.exists(), "nothing left under the pin dir");
    // `detach` detaches each link before unpinning it: nothing runs once it has returned.
    assert_eq!(attached_programs(lab.cgroup_root())?, 0, "no program left");
    Ok(())
}

#[test]
fn detach_refuses_a_directory_that_holds_none_of_its_pins() -> Result<()> {
    let dir = Path::new("/sys/fs/bpf").join(format!("l7r-not-ours-{}", unique_id()));
    fs::create_dir(&dir)?;
    let out = Command::new(EXE)
        .args(["detach", "--pin-dir", &dir.to_string_lossy()])
        .output();
    let exists = dir.exists();
    let _ = fs::remove_dir(&dir);
    let out = out?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds none of the redirector's pins"),
        "{stderr}"
    );
    assert!(exists, "the directory was left alone");
    Ok(())
}
