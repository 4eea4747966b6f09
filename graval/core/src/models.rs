//! The per-model table of chutes-api `api/gpu.py` (Oct 2025): name pattern, specs
//! the validator sanity-checks at registration, and GraVal's `iterations` and
//! `estimate` (expected wall seconds of the whole proof) for the timing window.
//!
//! The estimates are the original's, measured for the original's closed workload.
//! This crate's workload is sized differently (see ARCHITECTURE-graval.md); a
//! deployment must recalibrate `estimate_s` per model from `graval-bench` runs.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuModel {
    pub key: &'static str,
    /// The original's Python regex; only the subset `.?`, `.*`, `(?!lit)`, `$` is used.
    pub pattern: &'static str,
    pub memory_gb: u64,
    pub processors: u64,
    pub base_mhz: u32,
    pub boost_mhz: u32,
    pub max_threads_per_processor: u32,
    pub iterations: u64,
    pub estimate_s: f64,
}

macro_rules! m {
    ($key:literal, $pat:literal, $mem:literal, $sm:literal, $base:literal, $boost:literal, $thr:literal, $it:literal, $est:literal) => {
        GpuModel {
            key: $key,
            pattern: $pat,
            memory_gb: $mem,
            processors: $sm,
            base_mhz: $base,
            boost_mhz: $boost,
            max_threads_per_processor: $thr,
            iterations: $it,
            estimate_s: $est,
        }
    };
}

pub const MODELS: &[GpuModel] = &[
    m!("3090", "RTX 3090", 24, 82, 1395, 1695, 1536, 1, 70.0),
    m!("4090", "RTX 4090", 24, 128, 2235, 2520, 1536, 2, 65.0),
    m!("5090", "RTX 5090", 32, 170, 2017, 2407, 1536, 2, 60.0),
    m!("a4000", "RTX A4000(?! Ada)", 16, 48, 765, 1560, 1536, 1, 75.0),
    m!("a4000_ada", "RTX 4000 Ada", 20, 48, 765, 2175, 1536, 1, 80.0),
    m!("a5000", "RTX A5000", 24, 64, 1170, 1695, 1536, 1, 92.0),
    m!("a6000", "RTX A6000(?! Ada)", 48, 84, 1455, 1860, 1536, 1, 140.0),
    m!("a6000_ada", "RTX 6000 Ada", 48, 142, 915, 2505, 1536, 1, 60.0),
    m!("pro_6000", "RTX PRO 6000", 96, 188, 1590, 2617, 1024, 1, 103.0),
    m!("l4", "L4(?!0)", 24, 58, 795, 2040, 1536, 1, 85.0),
    m!("a10", "A10(?!0)(?!G)", 24, 72, 1110, 1710, 1536, 1, 82.0),
    m!("a40", "A40", 48, 84, 1305, 1740, 1536, 1, 142.0),
    m!("l40", "L40(?!S)", 48, 142, 735, 2490, 1536, 1, 60.0),
    m!("l40s", "L40S", 48, 142, 1065, 2520, 1536, 1, 60.0),
    m!("a100_40gb", "A100.?PCIE.?40GB", 40, 108, 1065, 1410, 2048, 4, 60.0),
    m!("a100_40gb_sxm", "A100.?SXM.?.?40GB", 40, 108, 1065, 1410, 2048, 4, 60.0),
    m!("a100", "A100.?80GB.?PCIe", 80, 108, 1065, 1410, 2048, 2, 58.0),
    m!("a100_sxm", "A100.?SXM.?.?80GB", 80, 108, 1275, 1410, 2048, 3, 70.0),
    m!("h100", "H100.*PCIe", 80, 114, 1095, 1755, 2048, 2, 62.0),
    m!("h100_nvl", "H100.*NVL", 96, 132, 1590, 1980, 2048, 3, 75.0),
    m!("h100_sxm", "H100.*HBM3", 80, 132, 1590, 1980, 2048, 5, 70.0),
    m!("h800", "H800.*PCIe", 80, 114, 1095, 1755, 2048, 3, 75.0),
    m!("h20", " H20$", 96, 78, 1590, 1980, 1024, 1, 300.0),
    m!("h200", " H200", 140, 132, 1590, 1980, 2048, 3, 70.0),
    m!("b200", " B200", 192, 148, 1590, 1965, 1024, 2, 75.0),
];

/// The model whose pattern matches `name`, if exactly one does (as chutes-api requires).
pub fn identify(name: &str) -> Option<&'static GpuModel> {
    let mut found = MODELS.iter().filter(|m| search(m.pattern, name));
    match (found.next(), found.next()) {
        (Some(m), None) => Some(m),
        _ => None,
    }
}

/// Dense INT8 tensor-core rate per model key, TOPS (datasheet figures without
/// sparsity; none measured here except where `graval/README.md` says so).
pub const INT8_DENSE_TOPS: &[(&str, f64)] = &[
    ("3090", 284.0),
    ("4090", 661.0),
    ("5090", 838.0),
    ("a4000", 153.0),
    ("a4000_ada", 164.0),
    ("a5000", 222.0),
    ("a6000", 310.0),
    ("a6000_ada", 728.0),
    ("pro_6000", 1008.0),
    ("l4", 242.0),
    ("a10", 250.0),
    ("a40", 299.0),
    ("l40", 362.0),
    ("l40s", 733.0),
    ("a100_40gb", 624.0),
    ("a100_40gb_sxm", 624.0),
    ("a100", 624.0),
    ("a100_sxm", 624.0),
    ("h100", 1513.0),
    ("h100_nvl", 1671.0),
    ("h100_sxm", 1979.0),
    ("h800", 1513.0),
    ("h20", 296.0),
    ("h200", 1979.0),
    ("b200", 4500.0),
];

/// Fraction of the datasheet INT8 rate a whole step reaches (GEMM efficiency, the
/// fresh-operand fill, the mix pass and the hash round trip). Projected from the
/// reference study (1.4-1.64 of 1.979 POPS for the GEMM, ~0.1 ms of the rest at
/// n = 8192); replace with `graval-bench gpu` measurements per model.
pub const STEP_EFFICIENCY: f64 = 0.70;

/// Seconds of honest work a v2 proof aims at, and the iteration bounds: at least 16
/// (dropping states costs d (I - 1) / 2, so I = 16 caps d at 4% under a 1.3 window),
/// at most 64 (verifier replay grows with I).
pub const TARGET_PROOF_S: f64 = 60.0;
pub const MIN_ITERATIONS: u64 = 16;
pub const MAX_ITERATIONS: u64 = crate::proof::MAX_ITERATIONS;

/// A model's GraVal v2 parameters: what the validator asks (`iterations`) and the
/// time it expects (`estimate_s`, for `TimingWindow`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct V2Plan {
    pub matrix_size: usize,
    /// Slots a miner fits (free memory taken as 98% of the nominal GiB).
    pub slots: u64,
    pub step_s: f64,
    pub iterations: u64,
    pub estimate_s: f64,
}

impl V2Plan {
    /// The plan for a table model, from its memory and INT8 rate.
    pub fn for_model(model: &GpuModel) -> Option<Self> {
        let tops = INT8_DENSE_TOPS.iter().find(|(k, _)| *k == model.key)?.1;
        let memory = model.memory_gb << 30;
        let params =
            crate::schedule::ProofParams::with_matrix_size(crate::schedule::auto_matrix_size(memory));
        let free = (memory as f64 * 0.98) as u64;
        let slots = crate::proof::plan_matrices(free, 512 << 20, &params).ok()? as u64;
        let n = params.matrix_size as f64;
        let step_s = 2.0 * n * n * n / (STEP_EFFICIENCY * tops * 1e12);
        let per_iteration = slots as f64 * step_s;
        let iterations =
            ((TARGET_PROOF_S / per_iteration).round() as u64).clamp(MIN_ITERATIONS, MAX_ITERATIONS);
        Some(Self {
            matrix_size: params.matrix_size,
            slots,
            step_s,
            iterations,
            estimate_s: iterations as f64 * per_iteration,
        })
    }

    /// The plan for a device by its name, if the table knows it.
    pub fn for_device_name(name: &str) -> Option<Self> {
        identify(name).and_then(Self::for_model)
    }
}

/// Registration sanity checks of chutes-api (`api/node/schemas.py`).
pub fn spec_matches(model: &GpuModel, memory: u64, processors: u64, clock_rate_khz: f64) -> bool {
    let gb = (memory as f64 / 1e9) as u64;
    let spec = model.memory_gb as f64;
    let mem_ok = gb + 1 >= model.memory_gb && (gb as f64) <= spec * (1024.0f64 / 1000.0).powi(3) + 1.0;
    let mhz = clock_rate_khz / 1000.0;
    mem_ok
        && processors == model.processors
        && mhz >= f64::from(model.base_mhz)
        && mhz <= f64::from(model.boost_mhz) * 1.1
}

#[derive(Debug)]
enum Tok<'a> {
    Lit(char),
    AnyOpt,
    AnyStar,
    NotAhead(&'a str),
    End,
}

fn tokens(pattern: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix(".?") {
            out.push(Tok::AnyOpt);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(".*") {
            out.push(Tok::AnyStar);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("(?!") {
            let end = r.find(')').unwrap_or(r.len());
            out.push(Tok::NotAhead(&r[..end]));
            rest = r.get(end + 1..).unwrap_or("");
        } else if rest == "$" {
            out.push(Tok::End);
            rest = "";
        } else {
            out.push(Tok::Lit(c));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn match_here(toks: &[Tok<'_>], s: &str) -> bool {
    match toks.split_first() {
        None => true,
        Some((Tok::Lit(c), rest)) => s.strip_prefix(*c).is_some_and(|s| match_here(rest, s)),
        Some((Tok::AnyOpt, rest)) => {
            s.chars().next().is_some_and(|c| match_here(rest, &s[c.len_utf8()..])) || match_here(rest, s)
        }
        Some((Tok::AnyStar, rest)) => {
            s.char_indices().map(|(i, _)| i).chain([s.len()]).any(|i| match_here(rest, &s[i..]))
        }
        Some((Tok::NotAhead(lit), rest)) => !s.starts_with(lit) && match_here(rest, s),
        Some((Tok::End, _)) => s.is_empty(),
    }
}

/// `re.search(pattern, name)` for the pattern subset used in the table.
fn search(pattern: &str, name: &str) -> bool {
    let toks = tokens(pattern);
    name.char_indices().map(|(i, _)| i).chain([name.len()]).any(|i| match_here(&toks, &name[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_real_device_names_uniquely() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", "h100_sxm"),
            ("NVIDIA H100 PCIe", "h100"),
            ("NVIDIA H100 NVL", "h100_nvl"),
            ("NVIDIA H200", "h200"),
            ("NVIDIA H20", "h20"),
            ("NVIDIA A100-SXM4-80GB", "a100_sxm"),
            ("NVIDIA A100-PCIE-40GB", "a100_40gb"),
            ("NVIDIA A100 80GB PCIe", "a100"),
            ("NVIDIA L4", "l4"),
            ("NVIDIA L40S", "l40s"),
            ("NVIDIA L40", "l40"),
            ("NVIDIA A10", "a10"),
            ("NVIDIA RTX A6000", "a6000"),
            ("NVIDIA RTX 6000 Ada Generation", "a6000_ada"),
            ("NVIDIA GeForce RTX 4090", "4090"),
            ("NVIDIA B200", "b200"),
        ];
        for (name, key) in cases {
            assert_eq!(identify(name).map(|m| m.key), Some(key), "{name}");
        }
        assert_eq!(identify("NVIDIA A10G"), None);
        assert_eq!(identify("CPU AMD EPYC"), None);
    }

    /// Every table model gets a v2 plan whose proof lasts about a minute of honest
    /// work (longer only where 16 iterations take longer), e.g. an H100 SXM: 8192,
    /// ~1,250 slots, ~0.8 ms per step.
    #[test]
    fn every_model_has_a_v2_plan() {
        for m in MODELS {
            let p = V2Plan::for_model(m).unwrap_or_else(|| panic!("no plan for {}", m.key));
            assert!((MIN_ITERATIONS..=MAX_ITERATIONS).contains(&p.iterations), "{}: {p:?}", m.key);
            assert!(p.estimate_s >= 30.0 && p.estimate_s <= 200.0, "{}: {p:?}", m.key);
            assert!(p.slots >= 200, "{}: {p:?}", m.key);
        }
        let h100 = V2Plan::for_device_name("NVIDIA H100 80GB HBM3").unwrap();
        assert_eq!(h100.matrix_size, 8192);
        assert!((1200..1300).contains(&h100.slots), "{h100:?}");
        assert!(h100.step_s > 0.0007 && h100.step_s < 0.0009, "{h100:?}");
    }

    #[test]
    fn registration_spec_checks() {
        let h100 = identify("NVIDIA H100 80GB HBM3").unwrap();
        assert!(spec_matches(h100, 85_029_158_912, 132, 1_980_000.0));
        assert!(!spec_matches(h100, 85_029_158_912, 114, 1_980_000.0));
        assert!(!spec_matches(h100, 40_000_000_000, 132, 1_980_000.0));
        assert!(!spec_matches(h100, 85_029_158_912, 132, 1_000_000.0));
    }
}
