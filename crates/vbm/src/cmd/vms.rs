//! `vbm vms list`: the VMs of a vCenter, as a table or JSON.

use std::process::ExitCode;

use serde::Serialize;
use vbm_vsphere::{Vm, decode_name};

use crate::output;
use crate::vcenter_args::VcenterArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List every virtual machine with its power state, folder, snapshots and disks.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    vcenter: VcenterArgs,

    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,

    /// Include templates.
    #[arg(long)]
    templates: bool,
}

/// One disk in `--json` output.
#[derive(Debug, Serialize)]
struct DiskJson<'a> {
    key: i32,
    label: &'a str,
    file: &'a str,
    capacity_bytes: u64,
    datastore: &'a str,
    thin: bool,
    mode: &'a str,
    change_id: Option<&'a str>,
}

/// One VM in `--json` output. Names are decoded for display (`a/b`); `raw_name`, `folder`,
/// `inventory_path` and `datacenter` keep vSphere's escaped form (`a%2fb`), which is unambiguous
/// inside paths.
#[derive(Debug, Serialize)]
struct VmJson<'a> {
    name: String,
    raw_name: &'a str,
    moref: &'a str,
    instance_uuid: Option<&'a str>,
    bios_uuid: Option<&'a str>,
    power_state: &'a str,
    guest_os: &'a str,
    template: bool,
    datacenter: Option<&'a str>,
    folder: &'a str,
    inventory_path: &'a str,
    host: Option<&'a str>,
    vmx_path: Option<String>,
    cbt_enabled: bool,
    consolidation_needed: bool,
    snapshots: Vec<String>,
    disks: Vec<DiskJson<'a>>,
}

fn vm_json(vm: &Vm) -> VmJson<'_> {
    VmJson {
        name: vm.display_name.clone(),
        raw_name: &vm.name,
        moref: &vm.moref.value,
        instance_uuid: vm.instance_uuid.as_deref(),
        bios_uuid: vm.bios_uuid.as_deref(),
        power_state: vm.power_state.as_str(),
        guest_os: &vm.guest_os,
        template: vm.template,
        datacenter: vm.datacenter_path.as_deref(),
        folder: &vm.folder_path,
        inventory_path: &vm.inventory_path,
        host: vm.host_name.as_deref(),
        vmx_path: vm.vmx_path.as_ref().map(ToString::to_string),
        cbt_enabled: vm.cbt_enabled,
        consolidation_needed: vm.consolidation_needed,
        snapshots: vm
            .flat_snapshots()
            .into_iter()
            .map(|s| s.display_name)
            .collect(),
        disks: vm
            .disks
            .iter()
            .map(|d| DiskJson {
                key: d.key,
                label: &d.label,
                file: &d.file_name,
                capacity_bytes: d.capacity_bytes,
                datastore: &d.datastore_name,
                thin: d.thin,
                mode: d.disk_mode.as_str(),
                change_id: d.change_id.as_ref().map(|c| c.as_str()),
            })
            .collect(),
    }
}

/// Human-friendly size: 24.0 MiB, 1.5 TiB.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn table(vms: &[&Vm]) -> Vec<String> {
    let header = [
        "NAME",
        "POWER",
        "FOLDER",
        "DISKS",
        "SNAPSHOTS",
        "CBT",
        "INSTANCE UUID",
    ];
    let rows: Vec<[String; 7]> = vms
        .iter()
        .map(|vm| {
            let folder = format!(
                "{}/{}",
                vm.datacenter_path
                    .as_deref()
                    .map(decode_path)
                    .unwrap_or_default(),
                decode_path(&vm.folder_path)
            );
            let total: u64 = vm.disks.iter().map(|d| d.capacity_bytes).sum();
            let disks = if vm.disks.is_empty() {
                "-".to_owned()
            } else {
                format!("{} ({})", vm.disks.len(), size(total))
            };
            let snapshots = vm
                .flat_snapshots()
                .into_iter()
                .map(|s| s.display_name)
                .collect::<Vec<_>>()
                .join(", ");
            [
                vm.display_name.clone(),
                vm.power_state.as_str().to_owned(),
                folder.trim_end_matches('/').to_owned(),
                disks,
                if snapshots.is_empty() {
                    "-".to_owned()
                } else {
                    snapshots
                },
                if vm.cbt_enabled { "on" } else { "off" }.to_owned(),
                vm.instance_uuid.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// Decodes each component of a raw inventory path for display.
fn decode_path(path: &str) -> String {
    path.split('/')
        .map(decode_name)
        .collect::<Vec<_>>()
        .join("/")
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.vcenter.connect().await?;
    let result = client.list_vms().await;
    if let Err(err) = client.logout().await {
        tracing::warn!(error = %err, "logout from vCenter failed");
    }
    let mut vms = result?;
    vms.sort_by(|a, b| {
        (&a.datacenter_path, &a.folder_path, &a.display_name).cmp(&(
            &b.datacenter_path,
            &b.folder_path,
            &b.display_name,
        ))
    });
    let shown: Vec<&Vm> = vms
        .iter()
        .filter(|vm| args.templates || !vm.template)
        .collect();
    if args.json {
        output::json(&shown.iter().map(|vm| vm_json(vm)).collect::<Vec<_>>())?;
    } else {
        for line in table(&shown) {
            output::line(&line)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        Command::List(list_args) => runtime.block_on(list(list_args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(25_165_824), "24.0 MiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
    }

    fn sample_vm() -> Vm {
        use vbm_vsphere::{DatastorePath, DiskMode, MoRef, PowerState, VirtualDisk};
        Vm {
            moref: MoRef::new("VirtualMachine", "vm-1"),
            name: "a%2fb".into(),
            display_name: "a/b".into(),
            instance_uuid: Some("5001-aa".into()),
            bios_uuid: None,
            vmx_path: Some(DatastorePath::new("ds 1", "a%2fb/a%2fb.vmx")),
            power_state: PowerState::PoweredOn,
            guest_os: "Debian".into(),
            guest_id: "debian12_64Guest".into(),
            hardware_version: "vmx-19".into(),
            template: false,
            host: None,
            host_name: Some("esx1".into()),
            resource_pool: None,
            datastores: vec![],
            datastore_names: vec![],
            cbt_enabled: true,
            consolidation_needed: false,
            current_snapshot: None,
            snapshots: vec![],
            disks: vec![VirtualDisk {
                key: 2000,
                label: "Hard disk 1".into(),
                file_name: "[ds 1] a%2fb/a%2fb.vmdk".into(),
                capacity_bytes: 1 << 30,
                thin: true,
                disk_mode: DiskMode::Persistent,
                controller_key: Some(1000),
                unit_number: Some(0),
                backing_type: "VirtualDiskFlatVer2BackingInfo".into(),
                change_id: None,
                datastore: None,
                datastore_name: "ds 1".into(),
                delta_disk_format: None,
                uuid: None,
                compatibility_mode: None,
                parents: vec![],
            }],
            folder: None,
            folder_path: "Prod/Web".into(),
            inventory_path: "/DC/vm/Prod/Web/a%2fb".into(),
            datacenter: None,
            datacenter_path: Some("DC".into()),
            files: vec![],
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let vm = sample_vm();
        let value = serde_json::to_value(vm_json(&vm)).unwrap();
        assert_eq!(value["name"], "a/b");
        assert_eq!(value["raw_name"], "a%2fb");
        assert_eq!(value["instance_uuid"], "5001-aa");
        assert_eq!(value["power_state"], "poweredOn");
        assert_eq!(value["folder"], "Prod/Web");
        assert_eq!(value["snapshots"], serde_json::json!([]));
        assert_eq!(value["disks"][0]["key"], 2000);
        assert_eq!(value["disks"][0]["file"], "[ds 1] a%2fb/a%2fb.vmdk");
        assert_eq!(value["disks"][0]["capacity_bytes"], 1u64 << 30);
        let lines = table(&[&vm]);
        assert!(lines[0].starts_with("NAME"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "a/b",
                "poweredOn",
                "DC/Prod/Web",
                "1",
                "(1.0",
                "GiB)",
                "-",
                "on",
                "5001-aa"
            ]
        );
    }

    #[test]
    fn paths_decode_per_component() {
        assert_eq!(decode_path("Europe/a%2fb/50%25"), "Europe/a/b/50%");
    }
}
