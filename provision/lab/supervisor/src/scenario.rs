//! The lab's short scenario: what the emulated validator does once the miner is up.
//! Ids come from a seed (the same seed, the same lab), the shape is fixed so that every
//! kind of event the issue lists happens: chutes created, a bounty and a job, instance
//! events (the miner's own, from its deployments, and another miner's), a chute update
//! and a deletion.

use validator_emulator::scenario::Step;
use validator_emulator::{ChuteJob, ChuteSpec, ImageSpec, JobSpec, Traffic};

/// The chutes and the job of a lab scenario, for checks and for `lab status`.
#[derive(Debug, Clone)]
pub struct LabScenario {
    pub seed: u64,
    /// Created first; every one of them fits the lab's GPUs.
    pub chutes: Vec<ChuteSpec>,
    /// Created with a bounty, then gets a job.
    pub bounty_chute: ChuteSpec,
    pub job_id: String,
    /// Updated to `v2` once deployed.
    pub updated_chute: String,
    /// Deleted once deployed.
    pub deleted_chute: String,
    /// Supported by none of the lab's GPUs: never deployed.
    pub unsupported_chute: ChuteSpec,
}

fn id(seed: u64, n: u64) -> String {
    // SplitMix64, as the emulator's own generator.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        z >> 32,
        (z >> 16) & 0xffff,
        z & 0xfff,
        (z >> 52) & 0xfff,
        n
    )
}

impl LabScenario {
    pub fn new(seed: u64, gpu_short_ref: &str) -> LabScenario {
        let image = id(seed, 1);
        let chute = |n: u64, name: &str, gpus: &[&str]| {
            let mut c = ChuteSpec::simple(&id(seed, n), &image, gpus);
            c.name = name.into();
            c.capacity = Some(1);
            c
        };
        let chutes = vec![
            chute(2, "lab-llm", &[gpu_short_ref]),
            chute(3, "lab-diffusion", &[gpu_short_ref]),
            chute(4, "lab-embed", &[gpu_short_ref]),
        ];
        // Announced with its bounty, and runs jobs.
        let mut bounty = chute(8, "lab-bounty", &[gpu_short_ref]);
        bounty.jobs = vec![ChuteJob { name: "run".into(), ports: Vec::new() }];
        LabScenario {
            seed,
            updated_chute: chutes[1].chute_id.clone(),
            deleted_chute: chutes[2].chute_id.clone(),
            chutes,
            bounty_chute: bounty,
            job_id: id(seed, 6),
            unsupported_chute: chute(5, "lab-unsupported", &["b200"]),
        }
    }

    pub fn image(&self) -> ImageSpec {
        ImageSpec {
            image_id: id(self.seed, 1),
            username: "chutes".into(),
            name: "lab".into(),
            tag: "0.1.0".into(),
            patch_version: None,
            chutes_version: "0.3.50".into(),
        }
    }

    /// The catalogue: the image and the chutes (created), the unsupported chute too.
    pub fn creation(&self) -> Vec<Step> {
        let mut steps = vec![Step::ImageCreated { image: self.image() }];
        for c in self.chutes.iter().chain([&self.unsupported_chute]) {
            steps.push(Step::ChuteCreated { chute: c.clone() });
        }
        steps
    }

    /// A new chute with a bounty, then a job of it; another miner's instance comes and goes.
    pub fn bounty_and_job(&self) -> Vec<Step> {
        let b = &self.bounty_chute;
        vec![
            Step::ChuteCreated { chute: b.clone() },
            Step::BountyChange { chute_id: b.chute_id.clone(), bounty: 500 },
            Step::JobCreated {
                job: JobSpec {
                    job_id: self.job_id.clone(),
                    chute_id: Some(b.chute_id.clone()),
                    method: "run".into(),
                    disk_gb: 10,
                    exclude: Vec::new(),
                },
            },
            Step::RemoteInstance {
                miner_hotkey: "5OtherLabMiner".into(),
                chute_id: self.updated_chute.clone(),
                instance_id: id(self.seed, 7),
            },
            Step::RemoteInstanceDeleted { instance_id: id(self.seed, 7) },
        ]
    }

    /// A new version of one chute and the deletion of another.
    pub fn update_and_delete(&self) -> Vec<Step> {
        let mut updated = self.chutes[1].clone();
        updated.version = "v2".into();
        updated.code.push_str("# v2\n");
        // Last hour's traffic: what Gepetto's autoscaler weighs to bring the new version up.
        let traffic = Traffic { total_invocations: 1200, total_compute_time: 600.0, ..Traffic::default() };
        vec![
            Step::Traffic { chute_id: self.updated_chute.clone(), traffic },
            Step::ChuteUpdated { chute: updated },
            Step::ChuteDeleted { chute_id: self.deleted_chute.clone() },
        ]
    }
}
