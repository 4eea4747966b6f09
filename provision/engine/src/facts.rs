//! Host facts, gathered once per host with a single command before any step is planned.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Facts {
    pub hostname: String,
    /// `ID` and `VERSION_ID` from /etc/os-release, e.g. `ubuntu`, `22.04`.
    pub os_id: String,
    pub os_version: String,
    pub os_codename: String,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Whole disks: (name, size in bytes).
    pub disks: Vec<(String, u64)>,
    /// One line per GPU from nvidia-smi: (name, memory MiB). Empty without nvidia-smi.
    pub gpus: Vec<(String, u64)>,
    /// Running inside a container (no kernel of its own: no driver install, no reboot).
    pub container: bool,
    /// systemd is PID 1.
    pub systemd: bool,
    pub boot_id: String,
}

impl Facts {
    /// `ubuntu2204` from ID and VERSION_ID, as NVIDIA's repository paths want it.
    pub fn distro_tag(&self) -> String {
        format!("{}{}", self.os_id, self.os_version.replace('.', ""))
    }
}

/// One read-only command printing `key=value` lines. Runs on every host in every run, so it
/// uses shell built-ins where it can: on a converged host, process starts are the cost.
pub const SCRIPT: &str = r#". /etc/os-release 2>/dev/null
read -r h </proc/sys/kernel/hostname && echo "hostname=$h"
echo "os_id=$ID"; echo "os_version=$VERSION_ID"; echo "os_codename=$VERSION_CODENAME"
set -- $(uname -rm)
echo "kernel=$1"; echo "arch=$2"
set -- /sys/devices/system/cpu/cpu[0-9]*
echo "cpus=$#"
while read -r k v _; do if [ "$k" = MemTotal: ]; then echo "mem_kib=$v"; break; fi; done </proc/meminfo
lsblk -dbnr -o NAME,SIZE,TYPE 2>/dev/null | while read -r n s t; do [ "$t" != disk ] || echo "disk=$n $s"; done
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null | while read -r l; do echo "gpu=$l"; done
fi
c=no
if [ -f /.dockerenv ] || [ -f /run/.containerenv ]; then c=yes; fi
if command -v systemd-detect-virt >/dev/null 2>&1 && systemd-detect-virt -cq 2>/dev/null; then c=yes; fi
echo "container=$c"
if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi
read -r b </proc/sys/kernel/random/boot_id && echo "boot_id=$b"
"#;

pub fn parse(out: &str) -> Facts {
    let mut f = Facts::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim();
        match k {
            "hostname" => f.hostname = v.into(),
            "os_id" => f.os_id = v.into(),
            "os_version" => f.os_version = v.into(),
            "os_codename" => f.os_codename = v.into(),
            "arch" => f.arch = v.into(),
            "kernel" => f.kernel = v.into(),
            "cpus" => f.cpus = v.parse().unwrap_or(0),
            "mem_kib" => f.memory_mib = v.parse::<u64>().unwrap_or(0) / 1024,
            "disk" => {
                if let Some((n, s)) = v.split_once(' ') {
                    f.disks.push((n.into(), s.trim().parse().unwrap_or(0)));
                }
            }
            "gpu" => {
                if let Some((n, m)) = v.rsplit_once(',') {
                    f.gpus.push((n.trim().into(), m.trim().parse().unwrap_or(0)));
                }
            }
            "container" => f.container = v == "yes",
            "systemd" => f.systemd = v == "yes",
            "boot_id" => f.boot_id = v.into(),
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_facts_output() {
        let f = super::parse(
            "hostname=gpu-0\nos_id=ubuntu\nos_version=22.04\narch=x86_64\ncpus=64\nmem_kib=2097152\n\
             disk=nvme0n1 3840755982336\ngpu=NVIDIA H100 80GB HBM3, 81559\ngpu=NVIDIA H100 80GB HBM3, 81559\n\
             container=no\nsystemd=yes\n",
        );
        assert_eq!((f.cpus, f.memory_mib, f.gpus.len()), (64, 2048, 2));
        assert_eq!(f.gpus[0], ("NVIDIA H100 80GB HBM3".into(), 81559));
        assert_eq!(f.distro_tag(), "ubuntu2204");
        assert!(f.systemd && !f.container);
    }
}
